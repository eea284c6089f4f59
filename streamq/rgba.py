"""Premultiplied RGBA: the alpha-aware colour distance, 32-bit colour codes, exact labels.

No I/O: plain arrays in, arrays out. A pixel of an image with alpha is stored as its colour
premultiplied by alpha (``pixels``: ``(c * a + 127) // 255``) and its alpha (``alpha``);
as a point it is ``p = (r', g', b', a) / 255`` in ``[0, 1]``, and a pixel without alpha is
``(r, g, b, 255) / 255``.

**The distance** is the one libimagequant (pngquant) builds its palette with, made
Euclidean. libimagequant compares two premultiplied colours by what they look like
composited on black (``Δc'``) and on white (``Δc' - Δa``), and takes per channel
``max(Δc'², (Δc' - Δa)²)``. Here the *mean* of the two is taken:

    d(p, q) = Σ_c [Δc'² + (Δc' - Δa)²] / 2 = |T p - T q|²,
    T(r', g', b', a) = (r' - a/2, g' - a/2, b' - a/2, a·√3/2),

a squared Euclidean distance after a linear map, between half the max form and the max form
itself. So k-means in ``T`` space is exact k-means (a centre is the weighted mean of its
pixels in premultiplied RGBA as well) and the nearest-centre search of
:mod:`streamq.kmeans` runs on it unchanged. An alpha difference ``δ`` alone costs as a
difference ``δ`` on every channel on white and nothing on black: ``3δ²/2``. In libimagequant
alpha is scaled like an average channel (``LIQ_WEIGHT_A`` 0.625 beside the channel weights
0.5, 1, 0.45); here every channel weighs 1, alpha included. As libimagequant does, the fit
never moves a fully transparent palette entry (:mod:`streamq.fit.alpha`).

**Errors** (MSE, PSNR) of images with alpha are over premultiplied RGBA in uint8 units: the
mean over pixels and the four channels ``r', g', b', a`` of the squared difference between
the pixel and its palette colour (that colour as an RGBA PNG decoder returns it,
premultiplied by :func:`premultiplied`).

**Codes**: ``r' << 24 | g' << 16 | b' << 8 | a`` (int64), the keys of the RGBA histogram.
A 24-bit colour has ``2**24`` values and a dense table (the label table of
:mod:`streamq.kmeans.table`, the counters of :mod:`streamq.kmeans.histogram`); a 32-bit one
has ``2**32`` (``r' <= a``: about ``2**30`` occur at most), too many for a dense table per
worker. So the pixels are split: **opaque** ones (``a = 255``, most pixels of most images,
and every pixel of an opaque image) go through the 24-bit tricks — counted in the dense
table, labelled through a ``2**24`` label table filled in the RGBA distance — and only the
others (soft edges, transparent areas) are counted and labelled by sorting: the distinct
codes of the chunk, then one nearest-centre search per distinct colour
(:func:`count_rgba`, :class:`RgbaLabels`; measured by ``benchmarks/alpha_vs_pngquant.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq.decode import premultiply

if TYPE_CHECKING:
    from streamq.kmeans.table import LabelTable

__all__ = ["RgbaLabels", "codes_to_rgba", "count_rgba", "from_metric", "merge_counts",
           "metric8", "palette_of", "premultiplied", "rgba_codes", "to_metric"]

_H = math.sqrt(3.0) / 2.0
_BLOCK = 1 << 20  # distinct colours labelled at once (bounds the distance buffers)


def to_metric(p: np.ndarray) -> np.ndarray:
    """Points ``(n, 4)`` of premultiplied RGBA in ``[0, 1]`` in the space whose squared
    Euclidean distance is the module's ``d``."""
    p = np.asarray(p, dtype=np.float64)
    half = p[:, 3:4] / 2.0
    return np.concatenate([p[:, :3] - half, p[:, 3:4] * _H], axis=1)


def from_metric(u: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_metric`."""
    u = np.asarray(u, dtype=np.float64)
    a = u[:, 3:4] / _H
    return np.concatenate([u[:, :3] + a / 2.0, a], axis=1)


def rgba_codes(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """int64 codes of ``(n, 3)`` uint8 premultiplied colours and their ``(n,)`` alpha (None:
    every pixel opaque)."""
    rgb = np.asarray(rgb).reshape(-1, 3).astype(np.int64)
    a = np.full(len(rgb), 255, np.int64) if alpha is None else np.asarray(alpha).reshape(-1).astype(np.int64)
    return (rgb[:, 0] << 24) | (rgb[:, 1] << 16) | (rgb[:, 2] << 8) | a


def codes_to_rgba(codes: np.ndarray) -> np.ndarray:
    """``(n, 4)`` uint8 premultiplied RGBA of codes."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.stack([(codes >> s) & 255 for s in (24, 16, 8, 0)], axis=1).astype(np.uint8)


def count_rgba(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct codes (sorted) of the pixels and their counts (int64): the opaque pixels in
    the dense 24-bit table, the others by sorting their codes."""
    from streamq.kmeans.histogram import count_colors

    rgb = np.ascontiguousarray(np.asarray(rgb).reshape(-1, 3), dtype=np.uint8)
    alpha = np.full(len(rgb), 255, np.uint8) if alpha is None else np.asarray(alpha).reshape(-1)
    opaque = alpha == 255
    parts = []
    if opaque.all():
        codes, counts = count_colors(rgb)
        return (codes << 8) | 255, counts
    if opaque.any():
        codes, counts = count_colors(rgb[opaque])
        parts.append(((codes << 8) | 255, counts))
    clear = alpha == 0  # premultiplied: all code 0
    if clear.any():
        parts.append((np.zeros(1, np.int64), np.asarray([int(clear.sum())], np.int64)))
    rest = ~opaque & ~clear
    codes, counts = np.unique(rgba_codes(rgb[rest], alpha[rest]), return_counts=True)
    parts.append((codes, counts.astype(np.int64)))
    return merge_counts(parts)


def merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum several ``(codes, counts)`` into one (codes sorted)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    first = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    return codes[first], np.add.reduceat(counts, first).astype(np.int64)


def palette_of(centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 palette of premultiplied RGBA centres ``(K, 4)`` in ``[0, 1]``: straight
    (not premultiplied) colours ``(K, 3)``, as a PNG holds them, and alphas ``(K,)``.

    Alpha is rounded; the colour is the straight colour whose premultiplied value
    (:func:`premultiplied`) is nearest the centre's premultiplied colour; a fully
    transparent entry is black."""
    c = np.clip(np.asarray(centers, dtype=np.float64), 0.0, 1.0)
    a = np.round(c[:, 3] * 255).astype(np.int64)
    target = np.minimum(c[:, :3] * 255, a[:, None])
    # candidates around target * 255 / a: the one whose premultiplied value is nearest
    safe = np.maximum(a, 1)[:, None]
    guess = np.floor(target * 255 / safe).astype(np.int64)
    best = np.zeros_like(guess)
    best_err = np.full(guess.shape, np.inf)
    for d in (-1, 0, 1, 2):
        s = np.clip(guess + d, 0, 255)
        err = np.abs((s * a[:, None] + 127) // 255 - target)
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    best[a == 0] = 0
    return best.astype(np.uint8), a.astype(np.uint8)


def premultiplied(palette: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(K, 4)`` uint8 premultiplied RGBA of straight colours ``(K, 3)`` and alphas ``(K,)``
    (the rounding of ingest: :func:`streamq.decode.premultiply`)."""
    rgba = np.concatenate([np.asarray(palette, np.uint8).reshape(-1, 3),
                           np.asarray(alpha, np.uint8).reshape(-1, 1)], axis=1)
    return np.concatenate([premultiply(rgba), rgba[:, 3:]], axis=1)


def metric8(rgba: np.ndarray) -> np.ndarray:
    """Points ``(n, 6)`` of ``(n, 4)`` uint8 premultiplied RGBA whose squared Euclidean
    distance is ``4 · 255² · d`` in integers, ``(2r' − a, 2g' − a, 2b' − a, a, a, a)``: the
    alpha term ``3Δa²`` spelled as three coordinates instead of one scaled by ``√3``, so that
    float64 sums are exact and equal distances tie exactly (a given palette's colours)."""
    v = np.asarray(rgba, dtype=np.float64).reshape(-1, 4)
    a = v[:, 3:4]
    return np.concatenate([2 * v[:, :3] - a, a, a, a], axis=1)


def _opaque_table(metric_centers: np.ndarray, target: np.ndarray,
                  points: Callable[[np.ndarray], np.ndarray]) -> LabelTable:
    """A :class:`~streamq.kmeans.table.LabelTable` of opaque colours (K <= 256): labels by
    the RGBA distance, errors over the four channels (at most ``4 * 255**2``: the packed
    entry's 18 bits hold it)."""
    from streamq.kmeans.table import LabelTable

    class _Opaque(LabelTable):
        def _label_colours(self, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            from streamq.kmeans.nearest import assign

            rgba = np.concatenate([colours.astype(np.int64),
                                   np.full((len(colours), 1), 255)], axis=1)
            lab, _ = assign(points(rgba), metric_centers)
            return lab, ((rgba - target[lab]) ** 2).sum(1)

    return _Opaque(np.zeros((len(target), 3)), target[:, :3], "rgb")


class RgbaLabels:
    """Exact nearest-centre labels of premultiplied RGBA pixels (first centre on ties), and
    their squared errors against the palette's premultiplied colours.

    ``centers``: ``(K, 4)`` premultiplied RGBA in ``[0, 1]`` (the fit's float centres);
    ``palette``, ``alpha``: the uint8 palette errors are measured against. Opaque pixels go
    through a lazily filled ``2**24`` label table (K <= 256; 80 MB, worth it over many
    pixels: ``table=False`` labels them by their distinct colours too), the others through
    their distinct colours. ``exact``: the centres are uint8 colours (a given palette's,
    ``centers * 255`` integers) compared in the integer space of :func:`metric8`, so that
    equal distances tie exactly (the first centre wins)."""

    def __init__(self, centers: np.ndarray, palette: np.ndarray, alpha: np.ndarray,
                 table: bool = True, exact: bool = False) -> None:
        self.points: Callable[[np.ndarray], np.ndarray] = (
            metric8 if exact else (lambda rgba: to_metric(rgba / 255.0)))
        self.metric_centers = np.ascontiguousarray(
            metric8(np.round(np.asarray(centers, np.float64) * 255)) if exact
            else to_metric(centers))
        self.target = premultiplied(palette, alpha).astype(np.int64)
        self.table = (_opaque_table(self.metric_centers, self.target, self.points)
                      if table and len(self.target) <= 256 else None)
        lab, err = self.distinct(np.zeros(1, np.int64))  # the fully transparent colour
        self.clear_label, self.clear_err = int(lab[0]), int(err[0])

    def distinct(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels (int64) and squared error (int64, uint8 units) of distinct ``codes``."""
        from streamq.kmeans.nearest import assign

        labels = np.empty(len(codes), np.int64)
        err = np.empty(len(codes), np.int64)
        for s in range(0, len(codes), _BLOCK):
            rgba = codes_to_rgba(codes[s:s + _BLOCK])
            lab, _ = assign(self.points(rgba), self.metric_centers)
            labels[s:s + _BLOCK] = lab
            err[s:s + _BLOCK] = ((rgba.astype(np.int64) - self.target[lab]) ** 2).sum(1)
        return labels, err

    def labels_sse(self, rgb: np.ndarray, alpha: np.ndarray | None, dtype: Any,
                   ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels (``dtype``) of ``(n, 3)`` premultiplied pixels with alpha ``(n,)`` (None:
        opaque), and the summed squared RGBA error of each segment (segment ``s`` ends
        before ``ends[s]``; the last ends at ``n``), as :class:`~streamq.kmeans.table.LabelTable`."""
        rgb = np.ascontiguousarray(np.asarray(rgb).reshape(-1, 3), dtype=np.uint8)
        n = len(rgb)
        ends = np.asarray(ends, dtype=np.int64)
        if not len(ends) or ends[-1] != n:
            ends = np.append(ends, n)
        alpha = np.full(n, 255, np.uint8) if alpha is None else np.asarray(alpha).reshape(-1)
        opaque = alpha == 255
        if self.table is not None and opaque.all():  # an opaque chunk: the 24-bit path only
            return self.table.labels_sse(rgb, dtype, ends)[:2]
        labels = np.empty(n, dtype=dtype)
        sse = np.zeros(len(ends), np.int64)
        # each part's segments end where the segment ends fall among that part's pixels
        if self.table is not None and opaque.any():
            before = np.concatenate([[0], np.cumsum(opaque)])
            lab, part_sse, _ = self.table.labels_sse(rgb[opaque], dtype, before[ends])
            labels[opaque] = lab
            sse += part_sse[:len(ends)]
        elif self.table is None:
            opaque = np.zeros(n, bool)  # K > 256: every pixel by its distinct colour
        clear = alpha == 0
        if clear.any():
            labels[clear] = self.clear_label
            before_clear = np.concatenate([[0], np.cumsum(clear)])[ends]
            sse += np.diff(np.concatenate([[0], before_clear])) * self.clear_err
        rest = ~opaque & ~clear
        if rest.any():
            uniq, inv = np.unique(rgba_codes(rgb[rest], alpha[rest]), return_inverse=True)
            lab, err = self.distinct(uniq)
            labels[rest] = lab[inv]
            cum = np.concatenate([[0], np.cumsum(err[inv])])
            stop = np.concatenate([[0], np.cumsum(rest)])[ends]  # such pixels before each end
            sse += cum[stop] - cum[np.concatenate([[0], stop[:-1]])]
        return labels, sse
