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

As the RGB fit's exact phase: ``n_init`` weighted k-means++ starts run Lloyd to a fixed
point on a coarse grid of the histogram (cell means, 32 levels per channel), the best two
finish by exact Lloyd on every distinct colour, the lowest exact inertia wins. There is no
mini-batch phase (``algorithm`` makes no difference here) and no checkpoint: the fit is a
deterministic function of the histogram and the seed, so a rerun after a kill gives the
same palette (the histogram, once stored, is not counted again). Only ``color_space: rgb``.

The palette is stored as straight (not premultiplied) colours ``fit/palette/{r,g,b}`` with
their alpha ``fit/palette/a``, and the float centres in premultiplied RGBA
``fit/palette/centers_{0..3}``. Its MSE/PSNR are over premultiplied RGBA (four channels).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from streamq.config import StreamQConfig, fingerprint, to_dict
from streamq.console import timer
from streamq.errors import ConfigError
from streamq.metrics import psnr
from streamq.rgba import (
    codes_to_rgba,
    from_metric,
    palette_of,
    premultiplied,
    to_metric,
)
from streamq.scheduler import Runner, runner
from streamq.store import Collection, Store
from streamq.store.histogram import ingest_data, rgba_histogram
from streamq.store.results import FIT, FitResult, clear_fit, save_fit
from streamq.store.selection import refuse_alpha

__all__ = ["fit_rgba", "kmeans_rgba", "refuse_alpha", "rgba_histogram", "rgba_mse"]

log = logging.getLogger(__name__)

GRID_SHIFT = 3  # the starts race on cells of 8 levels per channel (32 per channel)
FINISHERS = 2


# -- k-means ---------------------------------------------------------------------------------------
def _grid(codes: np.ndarray, counts: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means of the points ``x`` per grid cell (codes >> GRID_SHIFT per channel);
    the fully transparent colour (code 0) is a cell of its own, the first."""
    mask = (0xFF >> GRID_SHIFT) << GRID_SHIFT
    cell = np.where(codes == 0, -1, codes & ((mask << 24) | (mask << 16) | (mask << 8) | mask))
    uniq, inv = np.unique(cell, return_inverse=True)
    w = np.bincount(inv, weights=counts, minlength=len(uniq))
    means = np.stack([np.bincount(inv, weights=counts * x[:, j], minlength=len(uniq))
                      for j in range(x.shape[1])], axis=1) / w[:, None]
    return means, w


def _lloyd(x: np.ndarray, w: np.ndarray, centers: np.ndarray, fixed: int, tol: float,
           max_iter: int) -> dict[str, Any]:
    """Weighted Lloyd from ``centers`` whose first ``fixed`` rows never move (libimagequant
    never moves a fully transparent entry): the core's :func:`streamq.kmeans.lloyd` on the
    4-d points (exact fixed-point sums, distance bounds; whole weights). A cluster left empty
    takes the point farthest from its centre. Stops when no label changes, on scikit-learn's
    ``tol`` rule (the squared centre shift at most ``tol`` times the points' mean variance)
    or after ``max_iter``."""
    from streamq.kmeans import lloyd

    res = lloyd(x, w, centers, tol=tol, max_iter=max_iter, fixed=np.arange(len(centers)) < fixed)
    return {"centers": res.centers, "inertia": res.inertia, "n_iter": res.n_iter,
            "stop": res.stop, "history": res.history}


def _kmeans(x: np.ndarray, w: np.ndarray, codes: np.ndarray, k: int, n_init: int, seed: int,
            init: str, tol: float, max_iter: int) -> dict[str, Any]:
    """Best of ``n_init`` starts raced on the grid, ``FINISHERS`` finished on every colour.
    With fully transparent pixels (code 0) the first centre is fully transparent and stays so."""
    from streamq.kmeans import initial_centers

    fixed = 1 if len(codes) and codes[0] == 0 else 0
    gx, gw = _grid(codes, w, x)
    if 2 * len(gx) > len(x) or len(gx) < k:  # a grid that saves little: race on the colours
        gx, gw = x, w.astype(np.float64)
    pin = np.zeros((fixed, x.shape[1]))
    free = gx[fixed:] if fixed and np.all(gx[0] == 0) else gx  # the pinned point is no start
    fw = gw[len(gx) - len(free):]
    raced = []
    for j in range(n_init):
        start = initial_centers(free, fw, k - fixed, init, np.random.default_rng([seed, 1000 + j]))
        res = _lloyd(gx, gw, np.concatenate([pin, start]), fixed, 0.0, max_iter)
        raced.append((res["inertia"], j, res))
    raced.sort(key=lambda r: (r[0], r[1]))
    finished = []
    for _, j, res in raced[:FINISHERS]:
        exact = _lloyd(x, w.astype(np.float64), res["centers"], fixed, tol, max_iter)
        finished.append((exact["inertia"], j, exact, res))
    inertia, j, best, grid = min(finished, key=lambda r: (r[0], r[1]))
    done = {fj: e for _, fj, e, _ in finished}
    return {"centers": best["centers"], "inertia": inertia, "start": j, "stop": best["stop"],
            "history": best["history"], "iterations": best["n_iter"], "fixed": fixed,
            "grid_iterations": grid["n_iter"],
            "starts": [{"start": s, "grid_inertia": gi, "grid_iterations": r["n_iter"],
                        **({"inertia": done[s]["inertia"], "iterations": done[s]["n_iter"],
                            "stop": done[s]["stop"]} if s in done else {})}
                       for gi, s, r in sorted(raced, key=lambda r: r[1])]}


def _ensure_distinct(centers: np.ndarray, x: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Move every centre (metric space) whose uint8 RGBA entry repeats an earlier one to the
    colour worst served by the palette that is not in it yet
    (:func:`streamq.kmeans.nearest.spread_duplicates`)."""
    from streamq.kmeans.nearest import spread_duplicates

    pal, alpha = palette_of(from_metric(centers))

    def entry(i: int) -> tuple[Any, ...]:
        p, a = palette_of(rgba[i:i + 1] / 255.0)
        return (*p[0], a[0])

    return spread_duplicates(centers, x, np.concatenate([pal, alpha[:, None]], axis=1), entry)


def exact_errors(x: np.ndarray, rgba: np.ndarray, counts: np.ndarray, centers: np.ndarray,
                 palette: np.ndarray, alpha: np.ndarray) -> tuple[float, np.ndarray]:
    """MSE over premultiplied RGBA (uint8 units, four channels) of every pixel labelled with
    its nearest centre (metric space) and compared with that entry's premultiplied colour;
    and the pixels of each entry."""
    from streamq.kmeans.nearest import assign

    labels, _ = assign(x, centers)
    target = premultiplied(palette, alpha).astype(np.int64)
    err = ((rgba.astype(np.int64) - target[labels]) ** 2).sum(1)
    n = float(counts.sum())
    per = np.bincount(labels, weights=counts, minlength=len(centers)).astype(np.int64)
    return float((err * counts).sum() / (4 * n)), per


def kmeans_rgba(codes: np.ndarray, counts: np.ndarray, k: int, *, n_init: int = 16,
                seed: int = 0, init: str = "k-means++", tol: float = 0.0,
                max_iter: int = 1000) -> dict[str, Any]:
    """The palette of an RGBA histogram (distinct codes of :func:`streamq.rgba.rgba_codes`,
    sorted, and their counts; at least ``k`` of them): the k-means of :func:`fit_rgba`, with
    K distinct uint8 entries where the data allows, those with transparency first.

    Returns ``_kmeans``'s dict with ``metric_centers`` (``(K, 4)`` in the metric space of
    :func:`streamq.rgba.to_metric`), ``palette`` (straight ``(K, 3)`` uint8) and ``alpha``."""
    rgba = codes_to_rgba(codes)
    x = to_metric(rgba / 255.0)
    best = _kmeans(x, counts, codes, k, n_init, seed, init, tol, max_iter)
    centers = _ensure_distinct(best["centers"], x, rgba)
    palette, alpha = palette_of(from_metric(centers))
    # entries with transparency first (the fully transparent one, when pinned, at 0): a
    # palette PNG's tRNS chunk then stops at the last of them, as pngquant orders it
    order = np.lexsort((np.arange(len(alpha)), alpha == 255))
    return {**best, "metric_centers": centers[order], "palette": palette[order],
            "alpha": alpha[order]}


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
def fit_rgba(st: Store, coll: Collection, cfg: StreamQConfig, fp: str, clear: bool,
             progress: bool | None) -> FitResult:
    """Fit the palette of a collection with alpha (see the module docstring). ``fp`` is the
    fit's fingerprint; ``clear`` replaces a fit already in the store."""
    fcfg = cfg.fit
    if fcfg.color_space != "rgb":
        raise ConfigError(
            f"{st.path} has {coll.n_alpha} images with alpha, fitted in premultiplied RGBA: "
            f"color_space {fcfg.color_space!r} is not available for them; use rgb, or ingest "
            "with alpha: flatten")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    with runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        if clear:
            clear_fit(st)
        st.set_section(FIT, {"state": "running", "fingerprint": fp, "config": to_dict(fcfg)})
        with timer("RGBA histogram", timings):
            codes, counts = rgba_histogram(run, st, coll, progress)
    if len(codes) < fcfg.colors:
        raise ConfigError(
            f"the collection has only {len(codes)} distinct RGBA colours, fewer than "
            f"colors={fcfg.colors}; choose --colors {len(codes)} or fewer")
    with timer("exact lloyd", timings):
        best = kmeans_rgba(codes, counts, fcfg.colors, n_init=fcfg.n_init, seed=fcfg.seed,
                           init=fcfg.init, tol=fcfg.tol, max_iter=fcfg.max_iter)
    centers, palette, alpha = best["metric_centers"], best["palette"], best["alpha"]
    x = to_metric(codes_to_rgba(codes) / 255.0)
    mse, pixel_counts = exact_errors(x, codes_to_rgba(codes), counts, centers, palette, alpha)
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
    pinned = ", the fully transparent colour kept" if best["fixed"] else ""
    reason = (f"exact Lloyd on every premultiplied RGBA colour ({len(codes)}{pinned}), best of "
              f"{fcfg.n_init} starts raced on the colour grid, {FINISHERS} finished "
              f"(k-means++ start {best['start'] + 1}): {how} after {best['grid_iterations']} + "
              f"{best['iterations']} iterations")
    result = FitResult(
        store=st.path, k=fcfg.colors, algorithm=fcfg.algorithm, color_space="rgb",
        centers=from_metric(centers), palette=palette, counts=pixel_counts, history=history,
        steps=best["iterations"], pixels_seen=best["iterations"] * n_px, stop_reason=reason,
        mse=mse, psnr=psnr(mse), seconds=round(time.perf_counter() - started, 3),
        seed=fcfg.seed, config=to_dict(fcfg), alpha=alpha)
    save_fit(st, result, fp, timings, facts,
                 {"starts": best["starts"], "rgba": {"histogram": fingerprint(ingest_data(st)),
                                                     "n_distinct": len(codes)}})
    log.info("%s", result)
    return result
