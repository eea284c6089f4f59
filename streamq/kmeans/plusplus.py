"""Weighted greedy k-means++ seeding (scikit-learn's rule), deterministic from one generator.

Each step draws ``2 + int(log K)`` candidates with probability ``w * D(x)**2`` and keeps the
one that lowers the potential ``sum(w * D**2)`` most (Arthur and Vassilvitskii's k-means++ in
scikit-learn's greedy form, with sample weights). Every random number comes from one NumPy
``Generator``: one uniform for the first centre, then a ``(K, trials)`` block.

For 3-d points (colours) the points are grouped by the cell of a 16x16x16 grid, each cell
knowing its bounding box and its largest current distance, so a candidate skips the cells it
cannot bring closer: the same centres as the plain loop over every point, in the grid's
point order (:func:`cell_order`). Points of other dimensions (image descriptors) take the
plain loop in their own order.

With ``fixed`` centres (colours a palette must keep) the seeding starts from them instead of
a first drawn point: every point's distance is its distance to the nearest fixed centre, and
the greedy rule adds the other ``K - F`` centres.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from streamq.kmeans.nearest import BOUND_EPS

__all__ = ["cell_layout", "cell_order", "kmeans_plusplus"]


@numba.njit(nogil=True, cache=True)
def _kmeanspp(x: np.ndarray, w: np.ndarray, start: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              grid: np.ndarray, low: np.ndarray, scale: np.ndarray, k: int, i0: int,
              uniforms: np.ndarray, chosen: np.ndarray, closest: np.ndarray, csum: np.ndarray,
              cmax: np.ndarray) -> None:
    """The greedy rule on the points sorted by cell (cell ``c`` holds points
    ``start[c]:start[c+1]`` in the box ``lo[c]``..``hi[c]``).

    ``i0`` is the first centre (:func:`_first`); ``i0 = -1``: none is drawn, ``closest``
    holds each point's squared distance to the fixed centres already (``chosen[0]`` is -1). ``csum[c]`` and ``cmax[c]`` are the sum of
    ``w * closest`` and the largest ``closest`` of cell ``c``. A candidate ``j`` only visits the cells within ``sqrt(top)`` (the largest
    current distance) of it, enumerated on the grid when that is fewer than the occupied
    cells, and of those only the ones whose box is within a point's current distance.
    One function, its work arrays (``closest``, ``csum``, ``cmax``) allocated by the caller:
    every compiled callee and every NumPy allocation in compiled code costs tenths of a second
    of compilation on first use.
    """
    n = x.shape[0]
    nc = start.shape[0] - 1
    cells = grid.shape[0]
    trials = uniforms.shape[1]
    chosen[0] = i0
    if i0 >= 0:
        for i in range(n):
            d0 = x[i, 0] - x[i0, 0]
            d1 = x[i, 1] - x[i0, 1]
            d2 = x[i, 2] - x[i0, 2]
            closest[i] = d0 * d0 + d1 * d1 + d2 * d2
    for c in range(nc):
        s = 0.0
        m = 0.0
        for i in range(start[c], start[c + 1]):
            s += w[i] * closest[i]
            if closest[i] > m:
                m = closest[i]
        csum[c] = s
        cmax[c] = m
    for c in range(1, k):
        pot = 0.0
        top = 0.0
        for q in range(nc):
            pot += csum[q]
            top = max(top, cmax[q])
        best = np.inf
        best_j = -1
        for t in range(trials + 1):  # the trials, then the best of them becomes a centre
            apply = t == trials
            if apply:
                j = best_j
            else:
                # the draw: the first point whose cumulative w * closest exceeds the target
                # (the last point with any mass when rounding runs past the end)
                target = uniforms[c, t] * pot
                acc = 0.0
                last = -1
                j = -1
                for b in range(nc):
                    if csum[b] > 0:
                        last = b
                    if acc + csum[b] > target:
                        for i in range(start[b], start[b + 1]):
                            acc += w[i] * closest[i]
                            if acc > target:
                                j = i
                                break
                        break  # (rounding inside the cell: fall back as below)
                    acc += csum[b]
                if j < 0:
                    b = last if last >= 0 else nc - 1
                    j = start[b + 1] - 1
                    for i in range(start[b + 1] - 1, start[b] - 1, -1):
                        if closest[i] > 0:
                            j = i
                            break
            # the gain of j: cells near it, on the grid or all of them
            r = math.sqrt(top) + 1e-9
            a0 = max(int(math.floor((x[j, 0] - r - low[0]) * scale[0])) - 1, 0)
            a1 = min(int(math.floor((x[j, 0] + r - low[0]) * scale[0])) + 1, cells - 1)
            b0 = max(int(math.floor((x[j, 1] - r - low[1]) * scale[1])) - 1, 0)
            b1 = min(int(math.floor((x[j, 1] + r - low[1]) * scale[1])) + 1, cells - 1)
            e0 = max(int(math.floor((x[j, 2] - r - low[2]) * scale[2])) - 1, 0)
            e1 = min(int(math.floor((x[j, 2] + r - low[2]) * scale[2])) + 1, cells - 1)
            nb = b1 - b0 + 1
            ne = e1 - e0 + 1
            volume = (a1 - a0 + 1) * nb * ne
            on_grid = volume < nc
            gain = 0.0
            for v in range(volume if on_grid else nc):
                if on_grid:
                    cc = grid[a0 + v // (nb * ne), b0 + (v // ne) % nb, e0 + v % ne]
                    if cc < 0:
                        continue
                else:
                    cc = v
                box = 0.0
                for u in range(3):
                    y = x[j, u]
                    g = lo[cc, u] - y if y < lo[cc, u] else (y - hi[cc, u] if y > hi[cc, u] else 0.0)
                    box += g * g
                if box > cmax[cc] + BOUND_EPS:
                    continue  # the cell's box is farther than any of its points' current distance
                part = 0.0
                changed = False
                for i in range(start[cc], start[cc + 1]):
                    d0 = x[i, 0] - x[j, 0]
                    d1 = x[i, 1] - x[j, 1]
                    d2 = x[i, 2] - x[j, 2]
                    d = d0 * d0 + d1 * d1 + d2 * d2
                    if d < closest[i]:
                        part += w[i] * (closest[i] - d)
                        if apply:
                            closest[i] = d
                            changed = True
                gain += part
                if changed:
                    s = 0.0
                    m = 0.0
                    for i in range(start[cc], start[cc + 1]):
                        s += w[i] * closest[i]
                        if closest[i] > m:
                            m = closest[i]
                    csum[cc] = s
                    cmax[cc] = m
            if apply:
                chosen[c] = j
            elif pot - gain < best:
                best = pot - gain
                best_j = j


_CELLS = 16  # grid cells per axis in k-means++


def cell_layout(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, start, grid, low, scale)``: the points sorted by grid cell (stable), the
    occupied cells' starts (with the end appended), ``grid`` (cell -> occupied cell number,
    -1 when empty), and ``low``, ``scale`` (a point's cell along axis ``t`` is
    ``floor((x - low[t]) * scale[t])``, clipped to the grid). In NumPy: no compilation."""
    x = np.ascontiguousarray(x, np.float64)
    cells = _CELLS
    low = x.min(axis=0) if len(x) else np.zeros(3)
    span = (x.max(axis=0) if len(x) else np.zeros(3)) - low
    scale = np.zeros(3)
    for t in range(3):
        if span[t] > 0:
            scale[t] = cells / span[t]
    cell = np.zeros(len(x), dtype=np.int16)
    for t in range(3):
        q = np.clip(np.floor((x[:, t] - low[t]) * scale[t]), 0, cells - 1).astype(np.int16)
        cell = cell * np.int16(cells) + q
    order = np.argsort(cell, kind="stable").astype(np.int64)
    counts = np.bincount(cell, minlength=cells ** 3)
    occupied = np.flatnonzero(counts)
    start = np.concatenate([[0], np.cumsum(counts[occupied])]).astype(np.int64)
    grid = np.full(cells ** 3, -1, dtype=np.int64)
    grid[occupied] = np.arange(len(occupied))
    return order, start, grid.reshape(cells, cells, cells), np.ascontiguousarray(low, np.float64), scale


def cell_order(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How k-means++ arranges the points: ``(order, start)``, the points sorted by the cell of
    a 16x16x16 grid over their bounding box (then by index), and where each occupied cell
    starts in that order (with the end appended)."""
    return cell_layout(x)[:2]


@numba.njit(nogil=True, cache=True)
def _dist2(x: np.ndarray, i: int, y: np.ndarray, j: int) -> float:
    s = 0.0
    for t in range(x.shape[1]):
        d = x[i, t] - y[j, t]
        s += d * d
    return s


@numba.njit(nogil=True, cache=True)
def _kmeanspp_plain(x: np.ndarray, w: np.ndarray, k: int, i0: int, uniforms: np.ndarray,
                    chosen: np.ndarray, closest: np.ndarray) -> None:
    """The same greedy rule over every point of any dimension, in the points' own order
    (``i0`` and ``closest`` as :func:`_kmeanspp`'s)."""
    n = x.shape[0]
    chosen[0] = i0
    if i0 >= 0:
        for i in range(n):
            closest[i] = _dist2(x, i, x, i0)
    for c in range(1, k):
        pot = 0.0
        for i in range(n):
            pot += w[i] * closest[i]
        best = np.inf
        best_j = -1
        for t in range(uniforms.shape[1]):
            target = uniforms[c, t] * pot
            acc = 0.0
            j = -1
            for i in range(n):
                acc += w[i] * closest[i]
                if acc > target:
                    j = i
                    break
            if j < 0:  # rounding ran past the end: the last point with any mass
                for i in range(n - 1, -1, -1):
                    if w[i] * closest[i] > 0:
                        j = i
                        break
                if j < 0:
                    j = n - 1
            p = 0.0
            for i in range(n):
                p += w[i] * min(closest[i], _dist2(x, i, x, j))
            if p < best:
                best = p
                best_j = j
        chosen[c] = best_j
        for i in range(n):
            closest[i] = min(closest[i], _dist2(x, i, x, best_j))


def _first(w: np.ndarray, u: float) -> int:
    """The first centre: the first point whose running weight exceeds ``u`` of the total."""
    cum = np.cumsum(w)  # summed in order
    return int(min(np.searchsorted(cum, u * cum[-1], side="right"), len(w) - 1))


def _to_fixed(x: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Each point's squared distance to the nearest of the ``fixed`` centres."""
    d = np.full(len(x), np.inf)
    for f in fixed:
        e = x - f
        np.minimum(d, (e * e).sum(axis=1), out=d)
    return d


def kmeans_plusplus(x: np.ndarray, w: np.ndarray | None, k: int, rng: np.random.Generator,
                    layout: tuple[np.ndarray, ...] | None = None,
                    fixed: np.ndarray | None = None) -> np.ndarray:
    """Greedy weighted k-means++: ``k`` rows of ``x`` as initial centres.

    ``x`` is ``(n, d)`` (any ``d``; 3-d points use the grid, in :func:`cell_order`), ``w``
    its weights (None: all 1). ``x`` needs at least ``k`` distinct rows for ``k`` distinct
    centres. The result depends only on ``x``, ``w``, ``k`` and the generator's state.
    ``layout`` is ``cell_layout(x)`` when the caller has it already (3-d points).

    ``fixed`` (``(F, d)``, ``F < k``): the first ``F`` centres are these, the other ``k - F``
    rows of ``x`` chosen by the greedy rule from the points' distances to them (no first
    draw; the generator gives one ``(k - F + 1, trials)`` block).
    """
    x = np.ascontiguousarray(x, np.float64)
    w = np.ones(len(x)) if w is None else np.ascontiguousarray(w, np.float64)
    held = None if fixed is None else np.asarray(fixed, np.float64).reshape(-1, x.shape[1])
    n_fixed = 0 if held is None else len(held)
    if n_fixed >= k:
        raise ValueError(f"k-means++ with {n_fixed} fixed centres needs k > {n_fixed}, got {k}")
    if len(x) < k - n_fixed:
        raise ValueError(f"k-means++ needs at least k={k - n_fixed} points, got {len(x)}")
    trials = 2 + int(math.log(k))
    if held is None:
        first = float(rng.random())
        uniforms = rng.random((k, trials))
        m = k
    else:  # row 0 of the block is unused: the fixed centres take the first draw's place
        uniforms = rng.random((k - n_fixed + 1, trials))
        m = k - n_fixed + 1
    chosen = np.empty(m, dtype=np.int64)
    if x.shape[1] != 3:
        closest = np.empty(len(x)) if held is None else _to_fixed(x, held)
        _kmeanspp_plain(x, w, m, -1 if held is not None else _first(w, first), uniforms, chosen,
                        closest)
        if held is None:
            return x[chosen].copy()
        return np.concatenate([held, x[chosen[1:]]])
    order, start, grid, low, scale = cell_layout(x) if layout is None else layout
    xs = np.ascontiguousarray(x[order])
    ws = np.ascontiguousarray(w[order])
    lo = np.ascontiguousarray(np.minimum.reduceat(xs, start[:-1], axis=0))
    hi = np.ascontiguousarray(np.maximum.reduceat(xs, start[:-1], axis=0))
    nc = len(start) - 1
    closest = np.empty(len(x)) if held is None else _to_fixed(xs, held)
    _kmeanspp(xs, ws, start, lo, hi, grid, low, scale, m,
              -1 if held is not None else _first(ws, first), uniforms, chosen, closest,
              np.empty(nc), np.empty(nc))
    if held is None:
        return xs[chosen].copy()
    return np.concatenate([held, xs[chosen[1:]]])
