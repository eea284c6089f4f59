"""Exact k-means on premultiplied RGBA histograms: the palette of colours with alpha.

No I/O: a histogram in (distinct codes of :func:`streamq.rgba.rgba_codes`, sorted, and their
counts), a palette out. The shared fit of a collection with alpha (:mod:`streamq.fit.alpha`)
runs it on the collection's RGBA histogram, the per-image fit (:mod:`streamq.per_image`) on
each transparent image's sample, so both fit alike: weighted k-means++ starts race Lloyd on a
coarse grid of the histogram, the best finish by exact Lloyd on every distinct colour, in the
metric space of :func:`streamq.rgba.to_metric` (libimagequant's comparison on black and on
white, as a Euclidean distance); the fully transparent colour, when present, is an entry of
its own that never moves (as libimagequant does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streamq.rgba import codes_to_rgba, from_metric, palette_of, premultiplied, to_metric

__all__ = ["FINISHERS", "exact_errors", "kmeans_rgba"]

GRID_SHIFT = 3  # the starts race on cells of 8 levels per channel (32 per channel)
FINISHERS = 2


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
    never moves a fully transparent entry): the core's :func:`streamq.kmeans.bounded.lloyd` on
    the 4-d points (exact fixed-point sums, distance bounds; whole weights). A cluster left
    empty takes the point farthest from its centre. Stops when no label changes, on
    scikit-learn's ``tol`` rule (the squared centre shift at most ``tol`` times the points'
    mean variance) or after ``max_iter``."""
    from streamq.kmeans.bounded import lloyd

    res = lloyd(x, w, centers, tol=tol, max_iter=max_iter, fixed=np.arange(len(centers)) < fixed)
    return {"centers": res.centers, "inertia": res.inertia, "n_iter": res.n_iter,
            "stop": res.stop, "history": res.history}


def _kmeans(x: np.ndarray, w: np.ndarray, codes: np.ndarray, k: int, n_init: int,
            seed: int | Sequence[int],
            init: str, tol: float, max_iter: int, held: np.ndarray | None = None) -> dict[str, Any]:
    """Best of ``n_init`` starts raced on the grid, ``FINISHERS`` finished on every colour.
    ``held`` (``(F, 4)`` metric points, fixed colours) are the first ``F`` centres and never
    move (k-means++ starts from them); with fully transparent pixels (code 0) the next centre
    is fully transparent and stays so (unless a fixed colour is that point already)."""
    from streamq.kmeans import initial_centers

    user = np.zeros((0, x.shape[1])) if held is None else np.asarray(held, np.float64)
    clear = 1 if len(codes) and codes[0] == 0 else 0
    pinned = 1 if clear and not (user == 0).all(1).any() else 0
    fixed = len(user) + pinned
    gx, gw = _grid(codes, w, x)
    if 2 * len(gx) > len(x) or len(gx) < k:  # a grid that saves little: race on the colours
        gx, gw = x, w.astype(np.float64)
    pin = np.zeros((pinned, x.shape[1]))
    free = gx[clear:] if clear and np.all(gx[0] == 0) else gx  # the pinned point is no start
    fw = gw[len(gx) - len(free):]
    raced = []
    for j in range(n_init):
        start = initial_centers(free, fw, k - pinned, init,
                                 np.random.default_rng([*_seeds(seed), 1000 + j]),
                                 fixed=user if len(user) else None)
        res = _lloyd(gx, gw, np.concatenate([user, pin, start[len(user):]]), fixed, 0.0,
                     max_iter)
        raced.append((res["inertia"], j, res))
    raced.sort(key=lambda r: (r[0], r[1]))
    finished = []
    for _, j, res in raced[:FINISHERS]:
        exact = _lloyd(x, w.astype(np.float64), res["centers"], fixed, tol, max_iter)
        finished.append((exact["inertia"], j, exact, res))
    inertia, j, best, grid = min(finished, key=lambda r: (r[0], r[1]))
    done = {fj: e for _, fj, e, _ in finished}
    return {"centers": best["centers"], "inertia": inertia, "start": j, "stop": best["stop"],
            "history": best["history"], "iterations": best["n_iter"], "fixed": pinned,
            "n_fixed": len(user),
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
                seed: int | Sequence[int] = 0, init: str = "k-means++", tol: float = 0.0,
                max_iter: int = 1000, fixed: np.ndarray | None = None) -> dict[str, Any]:
    """The palette of an RGBA histogram (distinct codes of :func:`streamq.rgba.rgba_codes`,
    sorted, and their counts; at least ``k`` of them): the k-means of :func:`fit_rgba`, with
    K distinct uint8 entries where the data allows, those with transparency first.

    ``fixed`` (``(F, 4)`` uint8 straight RGBA, distinct premultiplied values, ``F < K``):
    fixed colours (:mod:`streamq.fixed`), the first ``F`` entries in their order, held at
    their premultiplied colour's point and stored as given; the other entries follow, those
    with transparency first.

    Returns ``_kmeans``'s dict with ``metric_centers`` (``(K, 4)`` in the metric space of
    :func:`streamq.rgba.to_metric`), ``centers`` (premultiplied RGBA in ``[0, 1]``: a fixed
    colour's exactly its uint8 value / 255), ``palette`` (straight ``(K, 3)`` uint8) and
    ``alpha``."""
    rgba = codes_to_rgba(codes)
    x = to_metric(rgba / 255.0)
    n_fixed = 0 if fixed is None else len(fixed)
    exact = None
    if n_fixed:
        assert fixed is not None
        given = np.asarray(fixed, np.uint8).reshape(-1, 4)
        exact = premultiplied(given[:, :3], given[:, 3]) / 255.0
    best = _kmeans(x, counts, codes, k, n_init, seed, init, tol, max_iter,
                   None if exact is None else to_metric(exact))
    centers = _ensure_distinct(best["centers"], x, rgba)
    plain = from_metric(centers)
    palette, alpha = palette_of(plain)
    if exact is not None:  # held by every step; stored as given
        assert fixed is not None
        plain[:n_fixed] = exact
        palette[:n_fixed], alpha[:n_fixed] = given[:, :3], given[:, 3]
    # entries with transparency first (the fully transparent one, when pinned, first after
    # the fixed colours): a palette PNG's tRNS chunk then stops at the last of them, as
    # pngquant orders it
    rest = np.arange(n_fixed, len(alpha))
    order = np.concatenate([np.arange(n_fixed),
                            rest[np.lexsort((rest, alpha[rest] == 255))]]).astype(np.int64)
    return {**best, "metric_centers": centers[order], "centers": plain[order],
            "palette": palette[order], "alpha": alpha[order]}


def _seeds(seed: int | Sequence[int]) -> list[int]:
    """The seed as a list: an int (the shared fit), or several (a per-image fit's seed, image
    and K), so that each start's generator is ``[*seeds, 1000 + start]``."""
    return [int(seed)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
