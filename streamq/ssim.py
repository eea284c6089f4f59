"""SSIM of each quantized image against its original, summed chunk by chunk.

The structural similarity index (Wang et al. 2004) as the common reference implementations
compute it — scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``, the settings of the paper:

- on **luma**: ITU-R BT.601 ``Y = 0.299 R + 0.587 G + 0.114 B`` of the uint8 RGB pixels, as
  float64 in [0, 255], the same for the original and the quantized image (``data_range``
  255, so ``C1 = (0.01 * 255)**2`` and ``C2 = (0.03 * 255)**2``);
- local means, variances and covariance under an 11 x 11 **Gaussian window** (sigma 1.5,
  truncated at 3.5 sigma, weights summing to 1; population covariance);
- the image's SSIM is the **mean of the SSIM map over the pixels at least 5 from every
  border** (scikit-image crops the same border), so it only needs pixels of the image
  itself, whatever the border mode. An image smaller than 11 x 11 has no SSIM (NaN), as
  scikit-image refuses it.

**An image with alpha** is compared the way the RGBA distance of :mod:`streamq.rgba`
(libimagequant's) compares colours: composited on black and on white. Its SSIM is the mean
of the SSIM above of the original and the quantized image composited on black and of the
two composited on white. The store holds premultiplied colours, so a pixel ``(r', g', b')``
with alpha ``a`` is ``(r', g', b')`` on black and ``(r' + 255 - a, ...)`` on white, both
uint8 (``r' <= a``); a palette colour is premultiplied first, as its errors are
(:func:`composite_luts`). An opaque image keeps the SSIM above, computed once (on black and
on white it is the same image).

Quantize computes it chunkwise: the task that owns a chunk of pixels sums the SSIM map over
the interior pixels whose flat index lies in its chunk, reading the 5 rows above and below
(the *halo*, :func:`halo`) from the neighbouring chunks and labelling them again in memory.
Its completion record holds ``[image_id, sum, count]`` per image (with alpha: the mean of the
sums on black and on white), and
:func:`ssim_from_records` adds them up in chunk order, so a rerun gives the same numbers to
the last bit. The kernel keeps the horizontally filtered rows in a ring of 11 rows, so every
pixel is filtered once whatever the image width.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence

import numba
import numpy as np

__all__ = ["LUMA", "RADIUS", "chunk_ssim", "composite_luts", "halo", "luma", "on_white", "ssim",
           "ssim_from_records", "ssim_stats", "window"]

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B
SIGMA = 1.5
TRUNCATE = 3.5
RADIUS = int(TRUNCATE * SIGMA + 0.5)  # 5: an 11 x 11 window
DATA_RANGE = 255.0
C1 = (0.01 * DATA_RANGE) ** 2
C2 = (0.03 * DATA_RANGE) ** 2


def window() -> np.ndarray:
    """The 1-d Gaussian weights (``2 * RADIUS + 1``, summing to 1) scipy's ``gaussian_filter``
    uses for ``sigma=1.5, truncate=3.5``; the 2-d window is their outer product."""
    x = np.arange(-RADIUS, RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 / SIGMA ** 2 * x ** 2)
    return w / w.sum()


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 RGB pixels (``(..., 3)``) as float64 in [0, 255]."""
    rgb = np.asarray(rgb)
    return (LUMA[0] * rgb[..., 0].astype(np.float64) + LUMA[1] * rgb[..., 1]) \
        + LUMA[2] * rgb[..., 2]


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied uint8 colours ``(..., 3)`` with their alpha ``(...)`` composited on
    white: ``c' + 255 - a`` (uint8: ``c' <= a``). On black they are ``rgb`` itself."""
    rgb = np.asarray(rgb)
    return (rgb + (255 - np.asarray(alpha, dtype=np.uint8))[..., None]).astype(np.uint8)


def composite_luts(rgba: np.ndarray) -> np.ndarray:
    """``(2, K)`` luma of a palette's ``(K, 4)`` uint8 premultiplied RGBA colours composited
    on black (row 0) and on white (row 1): what :func:`chunk_ssim` takes for an image with
    alpha."""
    rgba = np.asarray(rgba, dtype=np.uint8).reshape(-1, 4)
    return np.stack([luma(rgba[:, :3]), luma(on_white(rgba[:, :3], rgba[:, 3]))])


@numba.njit(nogil=True, cache=True)
def _hrow(rgb: np.ndarray, labels: np.ndarray, lut: np.ndarray, start: int, width: int,
          w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """Horizontal pass of one image row (pixels ``start .. start + width``): ``out[m, j]``,
    ``j < width - 2 * RADIUS``, the window sums of x, y, x*x, y*y, x*y centred on column
    ``j + RADIUS``, x the original's luma and y the quantized one's (``lut[label]``).
    The window is symmetric: each pair of taps is one multiplication."""
    r = RADIUS
    for c in range(width):
        i = start + c
        xc = (0.299 * np.float64(rgb[i, 0]) + 0.587 * np.float64(rgb[i, 1])) \
            + 0.114 * np.float64(rgb[i, 2])
        yc = lut[labels[i]]
        x[0, c] = xc
        x[1, c] = yc
        x[2, c] = xc * xc
        x[3, c] = yc * yc
        x[4, c] = xc * yc
    for m in range(5):
        xm = x[m]
        om = out[m]
        for j in range(width - 2 * r):
            s = w[r] * xm[j + r]
            for t in range(r):
                s += w[t] * (xm[j + t] + xm[j + 2 * r - t])
            om[j] = s


@numba.njit(nogil=True, cache=True)
def _ssim_sum(rgb: np.ndarray, labels: np.ndarray, lut: np.ndarray, height: int, width: int,
              row0: int, p0: int, p1: int, w: np.ndarray) -> tuple[float, int]:
    """Sum and count of the SSIM map over the interior pixels of flat index ``p0 <= p < p1``
    of a ``height x width`` image; ``rgb`` (uint8 ``(n, 3)``) and ``labels`` hold its rows
    from ``row0`` on, at least those the window of these pixels reaches."""
    r = RADIUS
    n_taps = 2 * r + 1
    wo = width - 2 * r
    ro0 = max(r, p0 // width)
    ro1 = min(height - r, (p1 - 1) // width + 1)
    if wo <= 0 or ro0 >= ro1:
        return 0.0, 0
    ring = np.empty((n_taps, 5, wo), dtype=np.float64)  # horizontal sums of the last 11 rows
    x = np.empty((5, width), dtype=np.float64)
    acc = np.empty((5, wo), dtype=np.float64)
    total = 0.0
    count = 0
    for row in range(ro0 - r, ro1 + r):  # input rows, each filtered once
        _hrow(rgb, labels, lut, (row - row0) * width, width, w, x, ring[row % n_taps])
        out = row - r  # the output row whose window this row completes
        if out < ro0:
            continue
        for m in range(5):  # vertical pass
            am = acc[m]
            hc = ring[out % n_taps, m]
            for j in range(wo):
                am[j] = w[r] * hc[j]
            for t in range(r):
                ha = ring[(out - r + t) % n_taps, m]
                hb = ring[(out + r - t) % n_taps, m]
                wt = w[t]
                for j in range(wo):
                    am[j] += wt * (ha[j] + hb[j])
        c_lo, c_hi = r, width - r
        if out == p0 // width:
            c_lo = max(r, p0 - out * width)
        if out == (p1 - 1) // width:
            c_hi = min(width - r, p1 - out * width)
        for c in range(c_lo, c_hi):
            j = c - r
            ux = acc[0, j]
            uy = acc[1, j]
            vx = acc[2, j] - ux * ux
            vy = acc[3, j] - uy * uy
            vxy = acc[4, j] - ux * uy
            a1 = 2.0 * ux * uy + C1
            a2 = 2.0 * vxy + C2
            b1 = ux * ux + uy * uy + C1
            b2 = vx + vy + C2
            total += (a1 * a2) / (b1 * b2)
            count += 1
    return total, count


def ssim(original: np.ndarray, quantized: np.ndarray) -> float:
    """SSIM of two ``(H, W, 3)`` uint8 RGB images on their BT.601 luma (NaN when smaller
    than 11 x 11): what quantize stores per image, computed on whole images. Two
    ``(H, W, 4)`` uint8 images are premultiplied RGBA (as the store holds them): the mean of
    the SSIM of the two composited on black and of the two composited on white."""
    a = np.asarray(original)
    b = np.asarray(quantized)
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected two (H, W, 3) or (H, W, 4) images of one shape, got "
                         f"{a.shape} and {b.shape}")
    if a.shape[2] == 4:
        return (ssim(a[..., :3], b[..., :3]) + ssim(on_white(a[..., :3], a[..., 3]),
                                                    on_white(b[..., :3], b[..., 3]))) / 2
    h, w = a.shape[:2]
    from streamq.kmeans.codes import codes_to_rgb, rgb_to_codes

    codes, labels = np.unique(rgb_to_codes(b.reshape(-1, 3)), return_inverse=True)
    total, count = _ssim_sum(np.ascontiguousarray(a.reshape(-1, 3), dtype=np.uint8),
                             labels.reshape(-1).astype(np.int64), luma(codes_to_rgb(codes)), h,
                             w, 0, 0, h * w, window())
    return total / count if count else math.nan


def halo(images: Iterable[Sequence[int]], shapes: Sequence[Sequence[int]], lo: int,
         hi: int) -> tuple[int, int]:
    """The pixel range ``[a, b)`` around a chunk ``[lo, hi)`` whose SSIM sums read it: the
    rows within ``RADIUS`` of the chunk's first and last interior pixels, of the images that
    cross its ends (``images``: ``(id, offset, n_pixels)``, ``shapes``: their ``(h, w)``)."""
    a, b = lo, hi
    for (_, off, size), (h, w) in zip(images, shapes, strict=True):
        if off < lo:  # starts before the chunk: rows above its first pixels
            first = max(RADIUS, (lo - off) // w)
            if first < h - RADIUS:
                a = min(a, off + (first - RADIUS) * w)
        if off + size > hi:  # ends after it: rows below its last pixels
            last = min(h - RADIUS - 1, (hi - 1 - off) // w)
            if last >= RADIUS:
                b = max(b, off + (last + RADIUS + 1) * w)
    return a, b


def chunk_ssim(rgb: np.ndarray, labels: np.ndarray, start: int, lo: int, hi: int,
               images: Iterable[Sequence[int]], shapes: Sequence[Sequence[int]],
               lut_of: Callable[[int], np.ndarray],
               alpha: np.ndarray | None = None) -> list[list[float | int]]:
    """``[image_id, sum, count]`` of the SSIM map over each image's interior pixels in the
    chunk ``[lo, hi)``: ``rgb`` and ``labels`` hold the pixels ``start ..`` (at least
    :func:`halo`), ``lut_of(image_id)`` the luma of the palette its labels index. An image
    compared with alpha has a ``(2, K)`` one (:func:`composite_luts`): its sum is then the
    mean of the sums on black and on white, and ``alpha`` holds the alpha of the pixels
    ``start ..`` (``rgb`` premultiplied)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    labels = np.ascontiguousarray(labels)
    w = window()
    white: np.ndarray | None = None  # the pixels on white, made for the first image with alpha
    out: list[list[float | int]] = []
    for (image_id, off, size), (h, wd) in zip(images, shapes, strict=True):
        p0, p1 = max(off, lo) - off, min(off + size, hi) - off
        first, stop = max(RADIUS, p0 // wd), min(h - RADIUS, (p1 - 1) // wd + 1)
        if wd <= 2 * RADIUS or first >= stop:  # no interior pixel in this chunk
            out.append([int(image_id), 0.0, 0])
            continue
        row0 = first - RADIUS
        s = off + row0 * wd - start
        e = off + (stop + RADIUS) * wd - start
        if s < 0 or e > len(rgb) or e > len(labels):  # the kernel does not check bounds
            raise ValueError(f"image {image_id}: its SSIM window reaches pixels {s + start}.."
                             f"{e + start}, outside those given ({start}..{start + len(rgb)})")
        lut = np.asarray(lut_of(int(image_id)), dtype=np.float64)
        if lut.ndim == 1:  # opaque
            total, count = _ssim_sum(rgb[s:], labels[s:], lut, int(h), int(wd), row0, p0, p1, w)
        else:  # with alpha: the mean of the two composites
            if alpha is None:
                raise ValueError(f"image {image_id}: compared with alpha, but no alpha given")
            if white is None:
                white = np.ascontiguousarray(on_white(rgb, np.asarray(alpha)[:len(rgb)]))
            black_sum, count = _ssim_sum(rgb[s:], labels[s:], np.ascontiguousarray(lut[0]),
                                         int(h), int(wd), row0, p0, p1, w)
            white_sum, _ = _ssim_sum(white[s:], labels[s:], np.ascontiguousarray(lut[1]),
                                     int(h), int(wd), row0, p0, p1, w)
            total = (black_sum + white_sum) / 2
        out.append([int(image_id), float(total), int(count)])
    return out


def ssim_from_records(records: Iterable[str], shapes: np.ndarray) -> np.ndarray:
    """Per-image SSIM from the ``"ssim"`` entries of completion records, added in record
    order (NaN for images smaller than the window). ``shapes`` is ``(N, 2)`` heights and
    widths; a count that misses pixels means a record without SSIM and raises ValueError."""
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
    total = np.zeros(len(shapes), dtype=np.float64)
    count = np.zeros(len(shapes), dtype=np.int64)
    for r in records:
        for image_id, s, n in json.loads(r)["ssim"]:
            total[image_id] += s
            count[image_id] += n
    expect = np.maximum(shapes[:, 0] - 2 * RADIUS, 0) * np.maximum(shapes[:, 1] - 2 * RADIUS, 0)
    if not np.array_equal(count, expect):
        bad = int(np.flatnonzero(count != expect)[0])
        raise ValueError(f"image {bad}: SSIM over {count[bad]} pixels, expected {expect[bad]}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expect > 0, total / np.maximum(expect, 1), np.nan)


def ssim_stats(values: np.ndarray) -> dict[str, float | int | None]:
    """``ssim_mean``, ``ssim_min`` (None when no image has an SSIM) and ``ssim_images`` (how
    many have one) of per-image SSIM values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return {"ssim_mean": float(v.mean()) if len(v) else None,
            "ssim_min": float(v.min()) if len(v) else None, "ssim_images": int(len(v))}
