"""The palette fit of a collection with alpha: exact k-means on premultiplied RGBA.

When some image kept its alpha at ingest (``images/has_alpha``), :func:`streamq.fit.fit`
hands over to :func:`fit_rgba`: k-means with the alpha-aware distance of
:mod:`streamq.rgba` (libimagequant's comparison on black and on white, as a Euclidean
distance) over every pixel, opaque ones included (alpha 255). It runs on the collection's
**RGBA histogram** — every distinct premultiplied RGBA colour with its pixel count, table
``colors_rgba`` — counted in one Dask pass over ``pixels`` and ``alpha`` at the first fit and
kept in the store (:func:`streamq.store.histogram.rgba_histogram`, the counting tasks of the RGB
histogram; a 32-bit colour has no dense counting table: each task sorts its pixels' codes, the
client merges the sorted counts).

The k-means (:func:`streamq.kmeans.rgba.kmeans_rgba`, shared with the per-image fit of images
with alpha) is as the RGB fit's exact phase was before its race stopped early and its finer
grid (:mod:`streamq.fit.lloyd`): ``n_init`` weighted k-means++ starts run Lloyd to a fixed
point on a coarse grid of the histogram (cell means, 32 levels per channel), the best two
finish by exact Lloyd on every distinct colour, the lowest exact inertia wins. There is no
mini-batch phase (``algorithm`` makes no difference here) and no checkpoint: the fit is a
deterministic function of the histogram and the seed, so a rerun after a kill gives the
same palette (the histogram, once stored, is not counted again). Only ``color_space: rgb``.

With fixed colours (``fit.fixed_colors``, :mod:`streamq.fixed` read with their alpha) the
palette's first ``F`` entries are those colours, held at their premultiplied RGBA points by
every start and Lloyd step (:func:`streamq.kmeans.rgba.kmeans_rgba`); the pinned fully
transparent entry follows them.

The palette is stored as straight (not premultiplied) colours ``fit/palette/{r,g,b}`` with
their alpha ``fit/palette/a``, and the float centres in premultiplied RGBA
``fit/palette/centers_{0..3}``. Its MSE/PSNR are over premultiplied RGBA (four channels).
The result says what ran: ``algorithm`` ``lloyd``.

A quality target (``fit.quality``, ``fit --quality MIN-MAX``) runs the K search of
:mod:`streamq.fit.quality` (:func:`streamq.fit.quality.search_k`) with this k-means at each K
tried, on the RGBA histogram (read once), PSNR over premultiplied RGBA: the smallest K of
``fit.k_range`` reaching MAX (each K's palette the one ``fit -k K`` gives), exit 99 below MIN.
Nothing is checkpointed per K (each K's fit is a deterministic function of the histogram and
the seed): a rerun after a kill searches again to the same K and palette.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from streamq.config import FitConfig, StreamQConfig, fingerprint, to_dict
from streamq.console import timer
from streamq.errors import ConfigError
from streamq.fixed import FixedColors
from streamq.kmeans.rgba import FINISHERS, exact_errors, kmeans_rgba
from streamq.metrics import psnr
from streamq.rgba import codes_to_rgba, palette_of, to_metric
from streamq.scheduler import Runner, runner
from streamq.store import Collection, Store
from streamq.store.histogram import ingest_data, rgba_histogram
from streamq.store.results import FIT, FitResult, clear_fit, save_fit
from streamq.store.selection import refuse_alpha

__all__ = ["fit_rgba", "kmeans_rgba", "refuse_alpha", "rgba_histogram", "rgba_mse"]

log = logging.getLogger(__name__)


def rgba_mse(run: Runner, st: Store, coll: Collection, centers: np.ndarray) -> float:
    """Exact MSE over premultiplied RGBA of the palette of ``centers`` (``(K, 4)``
    premultiplied RGBA in [0, 1]) over every pixel of ``coll``."""
    if centers.ndim != 2 or centers.shape[1] != 4:
        raise ConfigError(f"{st.path} has images with alpha: centres must be (K, 4) "
                          f"premultiplied RGBA, got shape {centers.shape}")
    codes, counts = rgba_histogram(run, st, coll)
    rgba = codes_to_rgba(codes)
    palette, alpha = palette_of(centers)
    return exact_errors(to_metric(rgba / 255.0), rgba, counts, to_metric(centers), palette,
                        alpha)[0]


# -- the stage -------------------------------------------------------------------------------------
def fit_rgba(st: Store, coll: Collection, cfg: StreamQConfig, fcfg: FitConfig, fp: str,
             clear: bool, progress: bool | None, fixed: FixedColors | None = None) -> FitResult:
    """Fit the palette of a collection with alpha (see the module docstring). ``fcfg`` are
    the fit keys (a quality search's: :func:`streamq.fit.quality.search_config`); ``fp`` is
    the fit's fingerprint; ``clear`` replaces a fit already in the store; ``fixed``: fixed
    colours read with their alpha (:mod:`streamq.fixed`), the palette's first entries."""
    if fcfg.color_space != "rgb":
        raise ConfigError(
            f"{st.path} has {coll.n_alpha} images with alpha, fitted in premultiplied RGBA: "
            f"color_space {fcfg.color_space!r} is not available for them; use rgb, or ingest "
            "with alpha: flatten")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with runner(cfg.dask, threads=True) as run:
        run.check_paths(st.path)
        facts = run.facts()
        if clear:
            clear_fit(st)
        st.set_section(FIT, {"state": "running", "fingerprint": fp, "config": to_dict(fcfg)})
        with timer("RGBA histogram", timings):
            codes, counts = rgba_histogram(run, st, coll, progress)
    extra: dict[str, Any] = {"rgba": {"histogram": fingerprint(ingest_data(st)),
                                      "n_distinct": len(codes)}}
    record = None
    if fcfg.quality is not None:  # the smallest K reaching a PSNR target
        from streamq.fit.quality import search_k

        with timer("quality search", timings):
            best, record = search_k(
                st, fcfg, len(codes), lambda k: {"k": k, **_kmeans(codes, counts, fcfg, k, None)},
                [], what="RGBA colours")
        k = best["k"]
    else:
        if len(codes) < fcfg.colors:
            raise ConfigError(
                f"the collection has only {len(codes)} distinct RGBA colours, fewer than "
                f"colors={fcfg.colors}; choose --colors {len(codes)} or fewer")
        with timer("exact lloyd", timings):
            best = _kmeans(codes, counts, fcfg, fcfg.colors, fixed)
        k = fcfg.colors
        if fixed is not None:
            extra["fixed_colors"] = fixed.record()
    result = _result(st, fcfg, k, codes, counts, best, started, fixed, record)
    save_fit(st, result, fp, timings, facts, {"starts": best["starts"], **extra})
    log.info("%s", result)
    return result


def _kmeans(codes: np.ndarray, counts: np.ndarray, fcfg: FitConfig, k: int,
            fixed: FixedColors | None) -> dict[str, Any]:
    """The RGBA k-means of ``k`` colours with the fit's seed and starts, and its exact MSE
    (``mse``) and pixels per entry (``counts``)."""
    best = kmeans_rgba(codes, counts, k, n_init=fcfg.n_init, seed=fcfg.seed, init=fcfg.init,
                       tol=fcfg.tol, max_iter=fcfg.max_iter,
                       fixed=None if fixed is None else fixed.rgba())
    rgba = codes_to_rgba(codes)
    mse, pixel_counts = exact_errors(to_metric(rgba / 255.0), rgba, counts,
                                     best["metric_centers"], best["palette"], best["alpha"])
    return {**best, "mse": mse, "counts": pixel_counts}


def _result(st: Store, fcfg: FitConfig, k: int, codes: np.ndarray, counts: np.ndarray,
            best: dict[str, Any], started: float, fixed: FixedColors | None,
            quality: dict[str, Any] | None = None) -> FitResult:
    """The :class:`FitResult` of an RGBA k-means (``_kmeans``'s dict): what ran is exact
    Lloyd (``algorithm`` lloyd, whatever the config says: there is no mini-batch phase)."""
    n_px = int(counts.sum())
    rows = np.asarray(best["history"], dtype=np.float64).reshape(-1, 3)
    objective = np.full(len(rows), np.nan)
    objective[-1:] = best["inertia"] / n_px
    history = {"step": rows[:, 0].astype(np.int64),
               "pixels_seen": (rows[:, 0] * n_px).astype(np.int64),
               "shift": rows[:, 1], "inertia": objective}
    how = {"labels": "converged (no label changed)",
           "tol": f"converged (squared centre shift within tol={fcfg.tol:g} of the variance)",
           "max_iter": f"max_iter={fcfg.max_iter}"}[best["stop"]]
    held = [f"{fixed.n} fixed colours"] if fixed is not None else []
    held += ["the fully transparent colour"] if best["fixed"] else []
    pinned = f", {' and '.join(held)} kept" if held else ""
    reason = (f"exact Lloyd on every premultiplied RGBA colour ({len(codes)}{pinned}), best of "
              f"{fcfg.n_init} starts raced on the colour grid, {FINISHERS} finished "
              f"(k-means++ start {best['start'] + 1}): {how} after {best['grid_iterations']} + "
              f"{best['iterations']} iterations")
    mse = float(best["mse"])
    return FitResult(
        store=st.path, k=k, algorithm="lloyd", color_space="rgb",
        centers=np.asarray(best["centers"], np.float64), palette=best["palette"],
        counts=np.asarray(best["counts"], np.int64), history=history,
        steps=best["iterations"], pixels_seen=best["iterations"] * n_px, stop_reason=reason,
        mse=mse, psnr=psnr(mse), seconds=round(time.perf_counter() - started, 3),
        seed=fcfg.seed, config=to_dict(fcfg), alpha=best["alpha"], quality=quality,
        n_fixed=0 if fixed is None else fixed.n)
