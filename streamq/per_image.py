"""One palette per image: the tutorial's workflow at collection scale.

For every image and every K, k-means with k-means++ starts is fitted on a seeded random
``sample`` fraction (default 70%) of the image's pixels, scaled to [0, 1]; then every pixel
is labelled with its exact nearest centre (as ``KMeans.predict`` does). ``method`` chooses
the fit: ``kmeans`` is the tutorial's scikit-learn ``KMeans`` on the sample, ``histogram``
the same k-means on the sample's distinct colours with compiled loops
(:mod:`streamq.kmeans`), many times faster at large K. Fitting runs in Dask tasks over
groups of images, each recording its palettes when done (so a rerun fits only unfinished
groups). Labelling with these palettes is part of ``quantize``
(:mod:`streamq.quantize.per_image`), chunk by chunk like the shared-palette labels.

With fixed colours (``fixed_colors``, :mod:`streamq.fixed`; the ``histogram`` method only:
scikit-learn's ``KMeans`` cannot hold centres) every palette's first ``F`` entries are those
colours and k-means fits the other ``K - F`` of each image; with a quality target too (``F``
below LO), each K tried holds them, and the exact palette is they and the image's other colours.

**A quality target** (``quality = [MIN, MAX]``, ``fit --per-image --quality MIN-MAX``)
instead of a list of K: each image gets the smallest K of ``k_range = [LO, HI]`` whose palette
reaches MAX dB PSNR on that image's pixels, as pngquant's ``--quality`` does per file. The
palette of each K tried is the same :func:`fit_image` fit a list of K would give (one
generator per image and K, so it does not depend on which other K were tried), except that a K
of at least the image's distinct colours takes those colours themselves (every pixel exact).
Its PSNR is exact: every distinct colour of the whole image (not of the sample) is labelled
with its nearest centre and its error counted as many times as it occurs, which equals
labelling every pixel, at the cost of one image histogram. The search (:func:`search_image`)
is deterministic: K = LO, 2 LO, 4 LO, ... until one reaches MAX, then a binary search between
the last K that missed and it, which ends on a K reaching MAX whose K - 1 was fitted and
misses it (unless K = LO). When even HI misses MAX, HI is kept (pngquant's rule: between MIN
and MAX the best the range allows), and below MIN the image is recorded as below MIN with that
palette. Galloping up from LO (the shared search starts at HI) because a per-image fit's
cost grows with K and most images need far fewer than HI colours: the K fitted stay below twice
the answer, about ``2 log2(K / LO)`` fits (6 faces, K in 2..64 for 30 dB: 28 fits against 36
HI-first and 48 for a scan from LO, same K). k-means gives a local optimum, so PSNR is not
strictly monotone in K and a smaller K the search skipped may, rarely, also reach MAX. Images
below MIN do not stop the others: the fit finishes, then raises
:class:`streamq.errors.QualityError` (exit status 99, one line naming them).

**Images with alpha** (method ``histogram``): each gets an RGBA palette, the shared alpha
fit's k-means (:func:`streamq.kmeans.rgba.kmeans_rgba`: premultiplied RGBA, libimagequant's
alpha weighting, the fully transparent entry pinned) on its sample's RGBA histogram
(:func:`fit_image_rgba`); the other images of the collection keep their RGB fit, exactly as in
a store without alpha. Fixed colours (read with their alpha) are each such image's first
entries, held at their premultiplied colours, stored as given; a quality target searches each
image's K alike (:func:`search_image_rgba`: PSNR over every pixel and the four premultiplied
channels, the exact palette being the fixed colours and the image's other RGBA colours).
``kmeans`` (scikit-learn cannot hold the transparent entry fixed) is refused in one line for
such a collection.

Layout: ``per_image/k{K}/{centers,palette}`` hold ``(N, K, 3)`` arrays (with alpha: ``(N, K,
4)`` premultiplied RGBA centres and the companion ``(N, K)`` ``per_image/k{K}/alpha``), ``labels`` the
``(P,)`` labels, ``images/{sse,mse,psnr}`` the per-image errors. A quality fit stores its
palettes as the one K = HI, each padded to HI entries by repeating its first (nearest-centre
ties go to the lowest index, so no label ever points past the image's own K), and the table
``per_image/quality/{k,mse,psnr,met,reason}``: each image's K, its exact error, whether it
reached MAX and why not when it is below MIN.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.colorspace import to_space
from streamq.config import (
    PerImageConfig,
    StreamQConfig,
    fingerprint,
    parse_config,
    replaced,
    to_dict,
)
from streamq.console import timer
from streamq.errors import ConfigError, QualityError, StoreMismatchError
from streamq.fixed import FixedColors, read_fixed_colors
from streamq.fs import Location, check_access
from streamq.lock import store_lock
from streamq.metrics import psnr
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import (
    ALPHA,
    PIXELS,
    Collection,
    Store,
    open_array,
    store_location,
    write_record,
)
from streamq.store.names import (
    PER_IMAGE,
    PER_IMAGE_QUALITY,
    PER_IMAGE_RECORDS,
    PER_IMAGE_TASKS,
    per_image_alpha,
    per_image_centers,
    per_image_palette,
)
from streamq.store.results import load_per_image
from streamq.store.summaries import PerImageSummary, per_image_summary, summary_of

__all__ = ["PerImageSummary", "exact_codes", "exact_rgba", "fit_image", "fit_image_rgba",
           "fit_per_image", "image_psnr", "image_psnr_rgba", "load_per_image", "padded",
           "sample_index", "search_image", "search_image_rgba", "summary_of"]

log = logging.getLogger(__name__)

SECTION = PER_IMAGE
RECORDS = PER_IMAGE_RECORDS


def padded(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` (``(n, d)``, n <= k) grown to ``k`` rows by repeating its first: the palette of
    an image with fewer colours than K (a repeated entry never wins a tie, so labels never
    point at the padding)."""
    return np.concatenate([x, np.repeat(x[:1], k - len(x), axis=0)])


def sample_size(n: int, k: int, sample: float) -> int:
    """Pixels in the sample of an ``n``-pixel image: the ``sample`` fraction, at least ``k``."""
    return min(n, max(k, int(round(sample * n))))


def sample_index(n: int, k: int, sample: float, seed: int, image_id: int) -> np.ndarray:
    """Sorted indices of the seeded ``sample`` fraction (at least ``k``) of ``n`` pixels."""
    m = sample_size(n, k, sample)
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, image_id])
    if n <= 10_000 or m > n // 20 or m <= n // 50:
        # The set of ``rng.choice(n, m, replace=False)``, drawn without its final shuffle:
        # for these sizes NumPy picks the set alike with or without it (a partial tail
        # shuffle, or Floyd's algorithm for few pixels; tests check it), and a mask puts it in
        # order in O(n) instead of a sort. A 4 Mpx image: 0.2 s instead of 0.7 s.
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=m, replace=False, shuffle=False)] = True
        return np.flatnonzero(mask)
    return np.sort(rng.choice(n, size=m, replace=False))


def _sample_histogram(rgb: np.ndarray, m: int, seed: int, image_id: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours and counts of the pixels :func:`sample_index` picks (``m`` of
    them), drawn and counted in one compiled pass (:mod:`streamq.kmeans.sampling`)."""
    from streamq.kmeans.sampling import sample_histogram

    return sample_histogram(rgb, m, np.random.default_rng([seed, image_id]))


def fit_image(rgb: np.ndarray, k: int, sample: float, seed: int, image_id: int,
              init: str = "k-means++", n_init: int = 1, method: str = "kmeans",
              index: np.ndarray | None = None,
              histogram: tuple[np.ndarray, np.ndarray] | None = None,
              fixed: np.ndarray | None = None) -> np.ndarray:
    """The palette of one image: k-means on a seeded ``sample`` of its pixels.

    ``rgb`` is ``(n, 3)`` uint8; returns ``(k, 3)`` float centres in [0, 1] units.
    ``method="kmeans"`` is the tutorial's ``KMeans(init=init, n_init=n_init)`` on the
    sample; ``"histogram"`` runs the same k-means (to the same stopping rule) on the
    sample's distinct colours weighted by their counts, with compiled loops
    (:mod:`streamq.kmeans`): other random starts, so other centres, of the same
    quality. ``index`` is :func:`sample_index` when the caller has it already, and
    ``histogram`` the sample's :func:`streamq.kmeans.distinct_colours` (histogram method).
    ``fixed`` (``(F, 3)`` uint8, histogram method) are the first ``F`` centres, held.
    """
    n = len(rgb)
    m = sample_size(n, k, sample) if index is None else len(index)
    if fixed is not None and len(fixed):
        if method != "histogram":
            raise ValueError("fixed colours need the histogram method")
        from streamq.kmeans import codes_to_points, distinct_colours, kmeans, rgb_to_codes

        if m < k:  # fewer pixels than colours: all of them (kmeans takes every colour then)
            histogram = distinct_colours(rgb)
        elif histogram is None:
            histogram = (_sample_histogram(rgb, m, seed, image_id) if index is None
                         else distinct_colours(rgb, index))
        codes, counts = histogram
        return kmeans(codes_to_points(codes), counts, k, np.random.default_rng([seed, image_id, k]),
                      init=init, n_init=n_init,
                      fixed=codes_to_points(rgb_to_codes(np.asarray(fixed, np.uint8)))).centers
    if m < k:  # fewer pixels than colours: every pixel is a centre, the rest repeat the first
        x = to_space(rgb, "rgb")
        return padded(x, k).astype(np.float64)
    if method == "histogram":
        from streamq.kmeans import codes_to_points, distinct_colours, kmeans

        if histogram is None:  # drawn and counted in one pass unless the caller has the index
            histogram = (_sample_histogram(rgb, m, seed, image_id) if index is None
                         else distinct_colours(rgb, index))
        codes, counts = histogram
        # one generator per (image, K): palettes do not depend on which other K are fitted
        return kmeans(codes_to_points(codes), counts, k, np.random.default_rng([seed, image_id, k]),
                      init=init, n_init=n_init).centers
    if method != "kmeans":
        raise ValueError(f"unknown per-image method {method!r}, expected 'kmeans' or 'histogram'")
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    idx = sample_index(n, k, sample, seed, image_id) if index is None else index
    x = to_space(rgb[idx], "rgb")
    # One thread: KMeans sums in thread order, so this makes the palette independent of the
    # machine and scheduler (and tasks are the parallelism anyway).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # fewer distinct colours than k: duplicate centres
        km = KMeans(n_clusters=k, init=init, n_init=n_init, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float64)


def fit_image_rgba(rgb: np.ndarray, alpha: np.ndarray, k: int, sample: float, seed: int,
                   image_id: int, init: str = "k-means++", n_init: int = 1,
                   fixed: np.ndarray | None = None) -> np.ndarray:
    """The palette of one image with alpha: the shared RGBA fit's k-means
    (:func:`streamq.kmeans.rgba.kmeans_rgba`: premultiplied RGBA, libimagequant's alpha
    weighting, the fully transparent entry pinned) on the RGBA histogram of the image's seeded
    ``sample`` (the pixels :func:`sample_index` picks, as the RGB fit samples them).

    ``rgb`` ``(n, 3)`` premultiplied uint8 and ``alpha`` ``(n,)``; returns ``(k, 4)``
    premultiplied RGBA centres in [0, 1], entries with transparency first. ``fixed``
    (``(F, 4)`` uint8 straight RGBA, :meth:`streamq.fixed.FixedColors.rgba`) are the first
    ``F`` entries, held at their premultiplied colours. A sample of fewer than ``k`` distinct
    colours takes the whole image's; an image whose exact palette (:func:`exact_rgba`) has
    fewer than ``k`` entries takes it, the rest repeating the first (ties label the first)."""
    from streamq.kmeans.rgba import kmeans_rgba
    from streamq.rgba import count_rgba

    index = sample_index(len(rgb), k, sample, seed, image_id)
    codes, counts = count_rgba(rgb[index], alpha[index])
    if len(codes) < k:
        codes, counts = count_rgba(rgb, alpha)
    exact = exact_rgba(codes, fixed)
    if len(exact) < k:
        return padded(exact, k)
    # one generator per (image, K) as for RGB palettes
    res = kmeans_rgba(codes, counts, k, n_init=n_init, seed=[seed, image_id, k], init=init,
                      fixed=fixed)
    return np.asarray(res["centers"], dtype=np.float64)


def exact_rgba(codes: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """The exact palette of an image with alpha whose distinct RGBA ``codes``
    (:func:`streamq.rgba.count_rgba`) are given, as ``(n, 4)`` premultiplied RGBA centres in
    [0, 1]: the ``fixed`` colours (``(F, 4)`` uint8 straight RGBA) first, then the image's
    colours that are not among them, those with transparency first."""
    from streamq.rgba import codes_to_rgba, premultiplied, rgba_codes

    rgba = codes_to_rgba(codes)
    held = np.zeros((0, 4), np.uint8)
    if fixed is not None and len(fixed):
        given = np.asarray(fixed, np.uint8).reshape(-1, 4)
        held = premultiplied(given[:, :3], given[:, 3])
        rgba = rgba[~np.isin(codes, rgba_codes(held[:, :3], held[:, 3]))]
    rgba = rgba[np.lexsort((np.arange(len(rgba)), rgba[:, 3] == 255))]  # transparent first
    return np.concatenate([held, rgba]).astype(np.float64) / 255.0


def image_psnr_rgba(colours: tuple[np.ndarray, np.ndarray], centers: np.ndarray,
                    fixed: np.ndarray | None = None) -> tuple[float, float]:
    """``(MSE, PSNR)`` of an image with alpha quantized with ``centers`` (``(k, 4)``
    premultiplied RGBA), over every pixel and the four premultiplied channels: each distinct
    colour (``colours``: :func:`streamq.rgba.count_rgba` of the whole image) labelled by its
    exact nearest centre, as quantize labels it, and compared with its uint8 entry."""
    from streamq.kmeans.rgba import exact_errors
    from streamq.rgba import codes_to_rgba, to_metric

    codes, counts = colours
    if len(codes) == 0:
        return 0.0, psnr(0.0)
    palette, alpha = _rgba_palette(centers, fixed)
    rgba = codes_to_rgba(codes)
    mse = exact_errors(to_metric(rgba / 255.0), rgba, counts, to_metric(centers), palette,
                       alpha)[0]
    return mse, psnr(mse)


def _rgba_palette(centers: np.ndarray, fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 straight palette and alpha of premultiplied RGBA ``centers``
    (:func:`streamq.rgba.palette_of`), the ``fixed`` colours' entries as given."""
    from streamq.rgba import palette_of

    palette, alpha = palette_of(centers)
    if fixed is not None and len(fixed):
        given = np.asarray(fixed, np.uint8).reshape(-1, 4)
        palette[:len(given)], alpha[:len(given)] = given[:, :3], given[:, 3]
    return palette, alpha


def _rgba_refusal(pcfg: PerImageConfig) -> str | None:
    """Why these settings cannot fit the palettes of images with alpha (None: they can)."""
    if pcfg.method != "histogram":
        return (f"per_image.method {pcfg.method!r} (scikit-learn's KMeans) cannot keep the fully "
                "transparent entry fixed as the RGBA fit does; add --method histogram")
    return None


def _palettes(centers: np.ndarray, has_alpha: np.ndarray, fixed: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """The uint8 palettes ``(N, K, 3)`` of centres ``(N, K, D)``, and for D = 4 their alpha
    ``(N, K)``: an opaque image's entries rounded as in an opaque store (alpha 255), an image
    with alpha's by :func:`streamq.rgba.palette_of` (straight colours, as a PNG holds them),
    its ``fixed`` colours' entries (``(F, 4)`` straight RGBA) as given."""
    palette = np.round(np.clip(centers[..., :3] * 255, 0, 255)).astype(np.uint8)
    if centers.shape[-1] == 3:
        return palette, None
    alpha = np.full(centers.shape[:2], 255, np.uint8)
    for i in np.flatnonzero(has_alpha):
        palette[i], alpha[i] = _rgba_palette(centers[i], fixed)
    return palette, alpha


def exact_codes(colours: tuple[np.ndarray, np.ndarray], fixed: np.ndarray | None = None
                ) -> np.ndarray:
    """Colour codes of the exact palette of an image (``colours``: its
    :func:`streamq.kmeans.distinct_colours`): its distinct colours, or with fixed colours
    (``(F, 3)`` uint8) those first, then the image's colours that are not among them."""
    from streamq.kmeans import rgb_to_codes

    codes = colours[0]
    if fixed is None or not len(fixed):
        return codes
    held = rgb_to_codes(np.asarray(fixed, np.uint8))
    return np.concatenate([held, codes[~np.isin(codes, held)]])


def image_psnr(colours: tuple[np.ndarray, np.ndarray], centers: np.ndarray) -> tuple[float, float]:
    """``(MSE, PSNR)`` of an image quantized with ``centers``, over every pixel: each distinct
    colour labelled by its exact nearest centre (as quantize labels pixels) and compared with
    the rounded palette colour, weighted by how many pixels have it."""
    from streamq.kmeans import codes_to_rgb, label_pixels

    codes, counts = colours
    if len(codes) == 0:
        return 0.0, psnr(0.0)
    _, _, err = label_pixels(codes_to_rgb(codes), centers, want_err=True)
    mse = float((err * counts).sum()) / (3.0 * float(counts.sum()))
    return mse, psnr(mse)


def search_image(rgb: np.ndarray, k_range: tuple[int, int] | list[int],
                 quality: tuple[float, float] | list[float],
                 fit: Callable[[int], np.ndarray],
                 fixed: np.ndarray | None = None) -> dict[str, Any]:
    """The smallest K of ``k_range`` whose palette reaches ``quality[1]`` dB on this image.

    ``fit(k)`` is the image's :func:`fit_image` for ``k`` (with ``fixed`` colours, ``(F, 3)``
    uint8 and ``F`` < LO, its first ``F`` entries); HI is capped at the entries of the image's
    exact palette (:func:`exact_codes`: its distinct colours, after the fixed ones). K = LO, 2 LO, 4 LO, ... (the last capped at HI) are
    measured until one reaches MAX; then a binary search between the last K that missed and
    that one ends on a K reaching MAX whose K - 1 was measured and misses it (unless K = LO).
    When even HI misses MAX, HI is kept, and below MIN the image is below MIN with that
    palette (``reason`` says so). The K tried depend only on the PSNRs, and each palette only
    on the image and K: a rerun makes the same choice. Returns ``k``, ``centers`` (``(k, 3)``), ``mse``, ``reason``
    (``""`` unless below MIN) and ``tried`` (``[[K, MSE], ...]`` in the order measured).
    """
    from streamq.kmeans import codes_to_points, distinct_colours

    colours = distinct_colours(rgb)
    exact = codes_to_points(exact_codes(colours, fixed))
    # an image of d < HI colours: K = d exact (with fixed colours: F + those not among them)
    top = max(1, min(int(k_range[1]), len(exact)))

    def measure(k: int) -> tuple[np.ndarray, float]:
        # from the exact palette's size on, its colours themselves: the sample may miss
        # colours, the image's own colours miss none
        centers = fit(k) if k < len(exact) else padded(exact, k)
        return centers, image_psnr(colours, centers)[0]

    return _search(k_range, quality, top, measure)


def search_image_rgba(rgb: np.ndarray, alpha: np.ndarray, k_range: tuple[int, int] | list[int],
                      quality: tuple[float, float] | list[float], args: dict[str, Any],
                      image_id: int, fixed: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`search_image` for an image with alpha (``rgb`` premultiplied, ``alpha``): each K
    tried is :func:`fit_image_rgba` with the task's ``sample``, ``seed``, ``init`` and
    ``n_init`` (``fixed``: ``(F, 4)`` straight RGBA, its first entries), or from the entries
    of the image's exact RGBA palette (:func:`exact_rgba`) on, that palette; its MSE is over
    every pixel and the four premultiplied channels (:func:`image_psnr_rgba`). Centres are
    ``(k, 4)`` premultiplied RGBA."""
    from streamq.rgba import count_rgba

    colours = count_rgba(rgb, alpha)
    exact = exact_rgba(colours[0], fixed)
    top = max(1, min(int(k_range[1]), len(exact)))

    def measure(k: int) -> tuple[np.ndarray, float]:
        if k < len(exact):
            centers = fit_image_rgba(rgb, alpha, k, args["sample"], args["seed"], image_id,
                                     args["init"], args["n_init"], fixed)
        else:
            centers = padded(exact, k)
        return centers, image_psnr_rgba(colours, centers, fixed)[0]

    return _search(k_range, quality, top, measure)


def _search(k_range: tuple[int, int] | list[int], quality: tuple[float, float] | list[float],
            top: int, measure: Callable[[int], tuple[np.ndarray, float]]) -> dict[str, Any]:
    """The galloping and binary search of :func:`search_image` up to ``top`` (HI capped at the
    image's exact palette); ``measure(k)`` is K's ``(centres, MSE)``."""
    qmin, qmax = quality
    lo = min(int(k_range[0]), top)
    measured: dict[int, tuple[np.ndarray, float]] = {}
    tried: list[list[Any]] = []

    def quality_of(k: int) -> float:
        if k not in measured:
            centers, mse = measure(k)
            measured[k] = (centers, mse)
            tried.append([k, mse])
            return psnr(mse)
        return psnr(measured[k][1])

    # Galloping from LO (LO, 2 LO, 4 LO, ... capped at HI): a fit's cost grows with K, so the
    # K tried stay within twice the answer instead of starting at HI.
    a, b = lo - 1, None  # a: the largest K measured to miss MAX (LO - 1: none yet)
    probe = lo
    while True:
        if quality_of(probe) >= qmax:
            b = probe
            break
        a = probe
        if probe == top:
            break
        probe = min(top, 2 * probe)
    reason = ""
    if b is None:  # even HI misses MAX: kept if at least MIN (the best the range allows)
        k = top
        if psnr(measured[top][1]) < qmin:
            reason = (f"below MIN {qmin:g} dB: K={top}, the largest searched, gives PSNR "
                      f"{psnr(measured[top][1]):.2f} dB")
    else:  # a misses, b reaches: the binary search between them
        a += 1
        while a < b:
            mid = (a + b) // 2
            if quality_of(mid) >= qmax:
                b = mid
            else:
                a = mid + 1
        k = b
    centers, mse = measured[k]
    return {"k": k, "centers": centers, "mse": mse, "reason": reason, "tried": tried}


def _fit_task(args: dict[str, Any]) -> dict[str, Any]:
    if args["method"] == "histogram":  # on a cold numba cache, the workers share the compiling
        from streamq.kmeans.precompile import precompile

        precompile()
    pixels = open_array(args["store"], PIXELS)
    a, b = args["px_start"], args["px_stop"]
    data = np.asarray(pixels[a:b])
    with_alpha = set(args.get("with_alpha") or ())  # images with alpha: RGBA palettes
    alpha = np.asarray(open_array(args["store"], ALPHA)[a:b]) if with_alpha else None
    result: dict[str, list[Any]] = {str(k): [] for k in args["colors"]}
    fixed = None if args.get("fixed") is None else np.asarray(args["fixed"], np.uint8).reshape(-1, 3)
    fixed_rgba = (None if args.get("fixed_rgba") is None
                  else np.asarray(args["fixed_rgba"], np.uint8).reshape(-1, 4))
    quality = args.get("quality")
    if quality is not None:
        result["quality"] = []
    for image_id, off, size in args["images"]:
        rgb = data[off - a: off - a + size]
        index: dict[int, np.ndarray] = {}  # one sample per image, whatever the K (unless tiny)
        hist: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # and its histogram

        def fit(k: int, rgb: np.ndarray = rgb, size: int = size, image_id: int = image_id,
                index: dict[int, np.ndarray] = index,
                hist: dict[int, tuple[np.ndarray, np.ndarray]] = hist) -> np.ndarray:
            m = sample_size(size, k, args["sample"])
            if args["method"] == "histogram":
                if m not in hist and m >= k:
                    hist[m] = _sample_histogram(rgb, m, args["seed"], image_id)
            elif m not in index:
                index[m] = sample_index(size, k, args["sample"], args["seed"], image_id)
            return fit_image(rgb, k, args["sample"], args["seed"], image_id, args["init"],
                             args["n_init"], args["method"], index.get(m), hist.get(m), fixed)

        if quality is not None:  # one K per image, padded to HI (see the module's docstring)
            if image_id in with_alpha:  # (k, 4) premultiplied RGBA centres
                assert alpha is not None, "read for the images with alpha"
                found = search_image_rgba(rgb, alpha[off - a: off - a + size], args["k_range"],
                                          quality, args, image_id, fixed_rgba)
            else:
                found = search_image(rgb, args["k_range"], quality, fit, fixed)
            hi = int(args["k_range"][1])
            c = np.concatenate([found["centers"],  # the rest repeat the first entry
                                np.repeat(found["centers"][:1], hi - found["k"], axis=0)])
            result[str(hi)].append([image_id, c.reshape(-1).tolist()])
            result["quality"].append([image_id, found["k"], found["mse"], found["reason"],
                                      found["tried"]])
            continue
        if image_id in with_alpha:  # (k, 4) premultiplied RGBA centres
            assert alpha is not None, "read for the images with alpha"
            for k in args["colors"]:
                c = fit_image_rgba(rgb, alpha[off - a: off - a + size], k, args["sample"],
                                   args["seed"], image_id, args["init"], args["n_init"],
                                   fixed_rgba)
                result[str(k)].append([image_id, c.reshape(-1).tolist()])
            continue
        for k in args["colors"]:
            c = fit(k)
            result[str(k)].append([image_id, c.reshape(-1).tolist()])
    write_record(args["store"], RECORDS, args["task"], result)
    return {"n": len(args["images"])}


def _config_record(pcfg: PerImageConfig) -> dict[str, Any]:
    """The keys recorded in the section: without a quality target, those recorded before there
    was one (its keys would change every store's attribute and the report's tables)."""
    out = to_dict(pcfg)
    if out.get("quality") is None:
        out.pop("quality", None)
        out.pop("k_range", None)
    return out


def _fingerprint(st: Store, pcfg: PerImageConfig, fixed: FixedColors | None = None) -> str:
    ingest = st.section("ingest")
    semantic = {k: v for k, v in to_dict(pcfg).items() if k not in ("enabled", "pixels_per_task")}
    if semantic.get("fixed_colors") is None:
        semantic.pop("fixed_colors", None)  # as before there were fixed colours
    elif fixed is not None:  # the colours themselves, wherever the file is
        semantic["fixed_colors"] = fixed.sha256
    if semantic.get("method") == "kmeans":  # the only method before there was a choice
        del semantic["method"]
    if semantic.get("quality") is None:  # as before there was a quality target
        semantic.pop("quality", None)
        semantic.pop("k_range", None)
    else:  # the K come from the range, not the list
        semantic.pop("colors", None)
    return fingerprint({"data": [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")],
                        "per_image": semantic})


def fit_per_image(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool | None = None,
                  scheduler: str | None = None, storage_options: dict[str, Any] | None = None,
                  **options: Any) -> PerImageSummary:
    """Fit one palette per image and per K (``options`` override ``per_image`` keys), or
    with ``quality=[MIN, MAX]`` one per image of the smallest K of ``k_range`` reaching MAX
    (see the module's docstring; raises :class:`streamq.errors.QualityError` after the fit
    when some image stays below MIN)."""
    cfg = parse_config(config)
    cfg = replaced(cfg, {**{f"per_image.{k}": v for k, v in options.items()},
                         "dask.scheduler": scheduler})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="fit --per-image", config=cfg.lock):
        return _fit_per_image(loc, cfg, overwrite, progress)


def _fit_per_image(store: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None
                   ) -> PerImageSummary:
    pcfg = cfg.per_image
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    if coll.n_alpha and (why := _rgba_refusal(pcfg)) is not None:
        raise ConfigError(f"{st.path} has {coll.n_alpha} images with alpha, fitted per image in "
                          f"premultiplied RGBA: {why} (or ingest with --alpha flatten)")
    fixed = None
    if pcfg.fixed_colors is not None:
        if pcfg.method != "histogram":
            raise ConfigError(f"key 'per_image.fixed_colors' needs per_image.method 'histogram', "
                              f"got {pcfg.method!r} (scikit-learn's KMeans cannot hold centres "
                              "fixed); add --method histogram")
        fixed = read_fixed_colors(pcfg.fixed_colors, min(pcfg.colors) if pcfg.quality is None
                                  else pcfg.k_range[0],
                                  key="per_image.fixed_colors",
                                  storage_options=cfg.storage_options or None,
                                  with_alpha=bool(coll.n_alpha))
    fp = _fingerprint(st, pcfg, fixed)
    sec = st.section(SECTION)
    if sec and not overwrite:
        if sec.get("fingerprint") != fp:
            old = sec.get("config", {})
            raise StoreMismatchError(
                f"{st.path} already has per-image palettes with other parameters (colors="
                f"{old.get('colors')}, sample={old.get('sample')}, seed={old.get('seed')}, "
                f"method={old.get('method', 'kmeans')}"
                + (f", quality={old.get('quality')}, k_range={old.get('k_range')}"
                   if old.get("quality") or pcfg.quality else "")
                + "); pass --overwrite to replace them")
        if sec.get("state") == "complete":
            summary = per_image_summary(st, "already complete")
            _refuse_below_min(st, summary)  # as the first run ended: a rerun fails again at once
            return summary
    colors = list(pcfg.groups)
    timings: dict[str, float] = {}
    sizes = coll.heights * coll.widths
    with timer("per-image fit", timings), runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        if not sec or overwrite or sec.get("state") == "planning":
            # at most pixels_per_task per task, and a small collection still gets about four
            # tasks per worker (the plan is stored: a resumed run keeps it, whatever its workers)
            budget = min(pcfg.pixels_per_task, max(1, -(-int(sizes.sum()) // (4 * run.n_workers))))
            tasks = coll.groups_by_pixels(range(len(coll)), budget)
            st.set_section(SECTION, {"state": "planning", "fingerprint": fp})
            st.write_table(PER_IMAGE_TASKS, {"first": np.asarray([t[0] for t in tasks], np.int64),
                                               "last": np.asarray([t[-1] for t in tasks], np.int64)})
            st.create_records(RECORDS, len(tasks))
            extra: dict[str, Any] = {} if fixed is None else {"fixed_colors": fixed.record()}
            if pcfg.quality is not None:
                extra["quality"] = {"min": pcfg.quality[0], "max": pcfg.quality[1],
                                    "k_range": list(pcfg.k_range)}
            st.set_section(SECTION, {"state": "running", "fingerprint": fp,
                                     "config": _config_record(pcfg), "colors": colors,
                                     "n_tasks": len(tasks), **extra})
        t = st.read_table(PER_IMAGE_TASKS, ("first", "last"))
        records = st.records(RECORDS)
        pending = [i for i in range(len(records)) if not records[i]]
        todo = []
        # the largest tasks first, so that no worker is left with a big one at the end
        cost = {ti: int(sizes[int(t["first"][ti]):int(t["last"][ti]) + 1].sum()) for ti in pending}
        for ti in sorted(pending, key=lambda ti: -cost[ti]):
            ids = range(int(t["first"][ti]), int(t["last"][ti]) + 1)
            images = [(i, int(coll.offsets[i]), int(sizes[i])) for i in ids]
            a = images[0][1]
            b = images[-1][1] + images[-1][2]
            args = {"store": st.location, "task": ti, "px_start": a, "px_stop": b, "images": images,
                    "colors": colors, "sample": pcfg.sample, "seed": pcfg.seed,
                    "init": pcfg.init, "n_init": pcfg.n_init, "method": pcfg.method,
                    "fixed": None if fixed is None else fixed.rgb.tolist()}
            if coll.n_alpha:  # only then: an opaque store's tasks are unchanged
                args["with_alpha"] = [i for i in ids if coll.has_alpha[i]]
                if fixed is not None:  # images with alpha hold them with their alpha
                    args["fixed_rgba"] = fixed.rgba().tolist()
            if pcfg.quality is not None:
                args.update(quality=list(pcfg.quality), k_range=list(pcfg.k_range))
            todo.append(Task(_fit_task, args, len(images)))
        run_tasks(run, todo, "per-image fit", "image", progress)
    with timer("consolidating", timings):
        parsed = [json.loads(r) for r in st.records(RECORDS)]  # once, read for every K
        dims = 4 if coll.n_alpha else 3  # premultiplied RGBA centres beside images with alpha
        for k in colors:
            centers = np.zeros((len(coll), k, dims), dtype=np.float64)
            centers[..., 3:] = 1.0  # an opaque image's centres: alpha 1
            for r in parsed:
                for image_id, flat in r[str(k)]:
                    c = np.asarray(flat, dtype=np.float64).reshape(k, -1)
                    centers[image_id, :, :c.shape[1]] = c
            palette, alpha = _palettes(centers, coll.has_alpha,
                                       None if fixed is None or fixed.alpha is None
                                       else fixed.rgba())
            st.write_array(per_image_centers(k), centers)
            st.write_array(per_image_palette(k), palette)
            if alpha is not None:
                st.write_array(per_image_alpha(k), alpha)
        done: dict[str, Any] = {}
        if pcfg.quality is not None:
            done["quality"] = _write_quality(st, parsed, len(coll), pcfg)
        st.set_section(SECTION, {**st.section(SECTION), **done, "state": "complete",
                                 "timings": timings, "runtime": facts, "finished": timestamp()})
    st.set_section(SECTION, {**st.section(SECTION), "timings": timings})  # with consolidating
    summary = per_image_summary(st, "fitted", timings, len(coll))
    _refuse_below_min(st, summary)
    return summary


def _write_quality(st: Store, records: list[dict[str, Any]], n: int, pcfg: PerImageConfig
                   ) -> dict[str, Any]:
    """The table ``per_image/quality`` from the (parsed) task records; the section's record of it
    (target, range, mean K, images that reached MAX, images below MIN)."""
    assert pcfg.quality is not None
    k = np.zeros(n, np.int64)
    mse = np.zeros(n, np.float64)
    reason = [""] * n
    for r in records:
        for image_id, kk, m, why, _ in r["quality"]:
            k[image_id], mse[image_id], reason[image_id] = kk, m, why
    value = np.asarray([psnr(m) for m in mse], np.float64)
    met = value >= pcfg.quality[1]
    st.write_table(PER_IMAGE_QUALITY, {"k": k, "mse": mse, "psnr": value, "met": met,
                                       "reason": reason})
    return {"min": pcfg.quality[0], "max": pcfg.quality[1], "k_range": list(pcfg.k_range),
            "mean_k": float(k.mean()) if n else 0.0, "met": int(met.sum()),
            "below_min": sum(1 for w in reason if w)}


def _refuse_below_min(st: Store, summary: PerImageSummary) -> None:
    """Raise :class:`QualityError` (exit status 99) when a quality fit left images below MIN:
    one line naming how many, and the first few (their palettes are stored all the same)."""
    q = summary.quality
    if not q or not q["below_min"]:
        return
    names = [f"{im['path']} ({im['psnr']:.2f} dB at K={im['k']})" for im in q["images"]
             if im["reason"]]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    raise QualityError(f"{st.path}: {len(names)} of {summary.n_images} images stay below MIN "
                       f"{q['min']:g} dB even with K={q['k_range'][1]}: {', '.join(names[:3])}"
                       f"{more}; the others are fitted; widen key 'per_image.k_range' "
                       "(--k-range) or lower MIN")
