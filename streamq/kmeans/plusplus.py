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
"""

from __future__ import annotations

import math

import numba
import numpy as np

from streamq.kmeans.nearest import _EPS, _d2

__all__ = ["cell_order", "kmeans_plusplus"]


@numba.njit(nogil=True, cache=True)
def _cell_stats(closest: np.ndarray, w: np.ndarray, start: np.ndarray, c: int,
                csum: np.ndarray, cmax: np.ndarray) -> None:
    s = 0.0
    m = 0.0
    for i in range(start[c], start[c + 1]):
        s += w[i] * closest[i]
        if closest[i] > m:
            m = closest[i]
    csum[c] = s
    cmax[c] = m


@numba.njit(nogil=True, cache=True)
def _draw(target: float, w: np.ndarray, closest: np.ndarray, start: np.ndarray,
          csum: np.ndarray) -> int:
    """First point whose cumulative ``w * closest`` exceeds ``target`` (the last point with
    any mass when rounding runs past the end)."""
    acc = 0.0
    last = -1
    for c in range(csum.shape[0]):
        if csum[c] > 0:
            last = c
        if acc + csum[c] > target:
            for i in range(start[c], start[c + 1]):
                acc += w[i] * closest[i]
                if acc > target:
                    return i
            break  # rounding inside the cell: fall back to the last point with mass
        acc += csum[c]
    c = last if last >= 0 else csum.shape[0] - 1
    for i in range(start[c + 1] - 1, start[c] - 1, -1):
        if closest[i] > 0:
            return i
    return start[c + 1] - 1


@numba.njit(nogil=True, cache=True, inline="always")
def _gain_cell(j: int, c: int, x: np.ndarray, w: np.ndarray, closest: np.ndarray,
               start: np.ndarray, lo: np.ndarray, hi: np.ndarray, csum: np.ndarray,
               cmax: np.ndarray, apply: bool) -> float:
    box = 0.0
    for t in range(3):
        v = x[j, t]
        g = lo[c, t] - v if v < lo[c, t] else (v - hi[c, t] if v > hi[c, t] else 0.0)
        box += g * g
    if box > cmax[c] + _EPS:
        return 0.0  # the cell's box is farther than any of its points' current distance
    gain = 0.0
    changed = False
    for i in range(start[c], start[c + 1]):
        d = _d2(x, i, x, j)
        if d < closest[i]:
            gain += w[i] * (closest[i] - d)
            if apply:
                closest[i] = d
                changed = True
    if changed:
        _cell_stats(closest, w, start, c, csum, cmax)
    return gain


@numba.njit(nogil=True, cache=True)
def _gain(j: int, x: np.ndarray, w: np.ndarray, closest: np.ndarray, start: np.ndarray,
          lo: np.ndarray, hi: np.ndarray, csum: np.ndarray, cmax: np.ndarray, top: float,
          grid: np.ndarray, low: np.ndarray, scale: np.ndarray, apply: bool) -> float:
    """How much the potential drops if point ``j`` becomes a centre (and, when ``apply``,
    make it one). Only cells within ``sqrt(top)`` (the largest current distance) of ``j`` can
    change: they are enumerated on the grid when that is fewer than the occupied cells."""
    cells = grid.shape[0]
    r = math.sqrt(top) + 1e-9
    q0 = np.empty(3, dtype=np.int64)
    q1 = np.empty(3, dtype=np.int64)
    volume = 1
    for t in range(3):
        q0[t] = max(int(math.floor((x[j, t] - r - low[t]) * scale[t])) - 1, 0)
        q1[t] = min(int(math.floor((x[j, t] + r - low[t]) * scale[t])) + 1, cells - 1)
        volume *= q1[t] - q0[t] + 1
    gain = 0.0
    if volume < csum.shape[0]:
        for a in range(q0[0], q1[0] + 1):
            for b in range(q0[1], q1[1] + 1):
                for e in range(q0[2], q1[2] + 1):
                    c = grid[a, b, e]
                    if c >= 0:
                        gain += _gain_cell(j, c, x, w, closest, start, lo, hi, csum, cmax, apply)
    else:
        for c in range(csum.shape[0]):
            gain += _gain_cell(j, c, x, w, closest, start, lo, hi, csum, cmax, apply)
    return gain


@numba.njit(nogil=True, cache=True)
def _kmeanspp(x: np.ndarray, w: np.ndarray, start: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              grid: np.ndarray, low: np.ndarray, scale: np.ndarray, k: int, i0: int,
              uniforms: np.ndarray, chosen: np.ndarray) -> None:
    n = x.shape[0]
    nc = start.shape[0] - 1
    chosen[0] = i0
    closest = np.empty(n)
    for i in range(n):
        closest[i] = _d2(x, i, x, i0)
    csum = np.empty(nc)
    cmax = np.empty(nc)
    for c in range(nc):
        _cell_stats(closest, w, start, c, csum, cmax)
    for c in range(1, k):
        pot = 0.0
        top = 0.0
        for q in range(nc):
            pot += csum[q]
            top = max(top, cmax[q])
        best = np.inf
        best_j = -1
        for t in range(uniforms.shape[1]):
            j = _draw(uniforms[c, t] * pot, w, closest, start, csum)
            p = pot - _gain(j, x, w, closest, start, lo, hi, csum, cmax, top, grid, low, scale,
                            False)
            if p < best:
                best = p
                best_j = j
        chosen[c] = best_j
        _gain(best_j, x, w, closest, start, lo, hi, csum, cmax, top, grid, low, scale, True)


_CELLS = 16  # grid cells per axis in k-means++


@numba.njit(nogil=True, cache=True)
def _cells(x: np.ndarray, cells: int, order: np.ndarray, grid: np.ndarray, low: np.ndarray,
           scale: np.ndarray) -> np.ndarray:
    """Counting sort of the points by grid cell (stable); returns the occupied cells' starts
    and fills ``grid`` (cell -> occupied cell number, -1 when empty), ``low`` and ``scale``
    (a point's cell along axis ``t`` is ``floor((x - low[t]) * scale[t])``)."""
    n = x.shape[0]
    for t in range(3):
        a = np.inf
        b = -np.inf
        for i in range(n):
            a = min(a, x[i, t])
            b = max(b, x[i, t])
        low[t] = a
        scale[t] = cells / (b - a) if b > a else 0.0
    cell = np.empty(n, dtype=np.int64)
    count = np.zeros(cells ** 3 + 1, dtype=np.int64)
    for i in range(n):
        c = 0
        for t in range(3):
            q = int(math.floor((x[i, t] - low[t]) * scale[t]))
            c = c * cells + min(max(q, 0), cells - 1)
        cell[i] = c
        count[c + 1] += 1
    flat = grid.reshape(-1)
    occupied = 0
    for c in range(cells ** 3):
        flat[c] = -1
        if count[c + 1]:
            flat[c] = occupied
            occupied += 1
        count[c + 1] += count[c]
    start = np.empty(occupied + 1, dtype=np.int64)
    m = 0
    for c in range(cells ** 3):
        if count[c + 1] > count[c]:
            start[m] = count[c]
            m += 1
    start[occupied] = n
    for i in range(n):
        c = cell[i]
        order[count[c]] = i
        count[c] += 1
    return start


def _cell_layout(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    order = np.empty(len(x), dtype=np.int64)
    grid = np.empty((_CELLS, _CELLS, _CELLS), dtype=np.int64)
    low = np.empty(3)
    scale = np.empty(3)
    start = _cells(np.ascontiguousarray(x, np.float64), _CELLS, order, grid, low, scale)
    return order, start, grid, low, scale


def cell_order(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How k-means++ arranges the points: ``(order, start)``, the points sorted by the cell of
    a 16x16x16 grid over their bounding box (then by index), and where each occupied cell
    starts in that order (with the end appended)."""
    return _cell_layout(x)[:2]


@numba.njit(nogil=True, cache=True)
def _dist2(x: np.ndarray, i: int, y: np.ndarray, j: int) -> float:
    s = 0.0
    for t in range(x.shape[1]):
        d = x[i, t] - y[j, t]
        s += d * d
    return s


@numba.njit(nogil=True, cache=True)
def _kmeanspp_plain(x: np.ndarray, w: np.ndarray, k: int, i0: int, uniforms: np.ndarray,
                    chosen: np.ndarray) -> None:
    """The same greedy rule over every point of any dimension, in the points' own order."""
    n = x.shape[0]
    chosen[0] = i0
    closest = np.empty(n)
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


def kmeans_plusplus(x: np.ndarray, w: np.ndarray | None, k: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """Greedy weighted k-means++: ``k`` rows of ``x`` as initial centres.

    ``x`` is ``(n, d)`` (any ``d``; 3-d points use the grid, in :func:`cell_order`), ``w``
    its weights (None: all 1). ``x`` needs at least ``k`` distinct rows for ``k`` distinct
    centres. The result depends only on ``x``, ``w``, ``k`` and the generator's state.
    """
    x = np.ascontiguousarray(x, np.float64)
    w = np.ones(len(x)) if w is None else np.ascontiguousarray(w, np.float64)
    if len(x) < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {len(x)}")
    trials = 2 + int(math.log(k))
    first = float(rng.random())
    uniforms = rng.random((k, trials))
    chosen = np.empty(k, dtype=np.int64)
    if x.shape[1] != 3:
        _kmeanspp_plain(x, w, k, _first(w, first), uniforms, chosen)
        return x[chosen].copy()
    order, start, grid, low, scale = _cell_layout(x)
    xs = np.ascontiguousarray(x[order])
    ws = np.ascontiguousarray(w[order])
    lo = np.ascontiguousarray(np.minimum.reduceat(xs, start[:-1], axis=0))
    hi = np.ascontiguousarray(np.maximum.reduceat(xs, start[:-1], axis=0))
    _kmeanspp(xs, ws, start, lo, hi, grid, low, scale, k, _first(ws, first), uniforms, chosen)
    return xs[chosen].copy()
