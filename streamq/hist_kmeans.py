"""Fast k-means of one image's pixels on their colour histogram (the per-image
``histogram`` method).

The pixel sample is reduced to its distinct colours with their counts: *exactly* the same
k-means problem (identical pixels always share a cluster) on ~5x fewer points for photos.
Then:

- **weighted greedy k-means++** (scikit-learn's rule: ``2 + int(log K)`` candidates per
  centre, the one that lowers the potential most is kept), every random number drawn from
  one seeded NumPy generator. The points are grouped by the cell of a 16x16x16 grid, each
  cell knowing its bounding box and its largest current distance, so a candidate skips the
  cells it cannot bring closer: the same centres as the plain loop over every point;
- **weighted Lloyd with bounds** (after Hamerly, with Newling and Fleuret's "ns" bounds):
  each point keeps the exact distances to its centre, to its second nearest centre and to
  the third, with the iteration they were measured at; a point is examined again only when
  those distances, moved by how far the centres have travelled since, no longer prove that
  its centre is the nearest, and then by the sorted search of :mod:`streamq.nearest`. The
  iterations are Lloyd's exactly, and the run stops as scikit-learn's does (squared centre
  shifts summing to at most ``tol`` times the mean variance, labels unchanged, or
  ``max_iter``).

Loops are serial and release the GIL: the parallelism comes from the tasks.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from streamq.nearest import (
    _EPS,
    CHANNEL,
    _covariance,
    _d2,
    _nearest3,
    _principal,
    _sort_centres,
    inertia,
)

__all__ = ["cell_order", "distinct_colours", "fit_histogram", "kmeans_plusplus", "lloyd"]



def distinct_colours(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(points, counts)``: the distinct colours of ``(n, 3)`` uint8 pixels as float64
    coordinates (``value / 255`` as :func:`streamq.colorspace.to_space`), sorted by their
    24-bit code, and how many pixels have each."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    code = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
    codes, counts = np.unique(code, return_counts=True)
    points = np.stack([CHANNEL[codes >> 16], CHANNEL[(codes >> 8) & 255], CHANNEL[codes & 255]], 1)
    return points, counts.astype(np.float64)


# --- k-means++ -----------------------------------------------------------------------------

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
              grid: np.ndarray, low: np.ndarray, scale: np.ndarray, k: int, first: float,
              uniforms: np.ndarray, chosen: np.ndarray) -> None:
    n = x.shape[0]
    nc = start.shape[0] - 1
    total = 0.0
    for i in range(n):
        total += w[i]
    acc = 0.0
    i0 = n - 1
    for i in range(n):
        acc += w[i]
        if acc > first * total:
            i0 = i
            break
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


def kmeans_plusplus(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy weighted k-means++: ``k`` distinct rows of ``x`` as initial centres.

    Each step draws ``2 + int(log k)`` candidates with probability ``w * D(x)**2`` (the
    points taken in :func:`cell_order`) and keeps the one that lowers the potential
    ``sum(w * D**2)`` most. ``x`` needs at least ``k`` distinct rows; the draws come from
    ``rng`` only (one uniform, then a ``(k, trials)`` block), so the result is deterministic.
    """
    x = np.ascontiguousarray(x, np.float64)
    if len(x) < k:
        raise ValueError(f"k-means++ needs at least k={k} points, got {len(x)}")
    trials = 2 + int(math.log(k))
    first = float(rng.random())
    uniforms = rng.random((k, trials))
    order, start, grid, low, scale = _cell_layout(x)
    xs = np.ascontiguousarray(x[order])
    ws = np.ascontiguousarray(np.asarray(w, np.float64)[order])
    lo = np.ascontiguousarray(np.minimum.reduceat(xs, start[:-1], axis=0))
    hi = np.ascontiguousarray(np.maximum.reduceat(xs, start[:-1], axis=0))
    chosen = np.empty(k, dtype=np.int64)
    _kmeanspp(xs, ws, start, lo, hi, grid, low, scale, k, first, uniforms, chosen)
    return xs[chosen].copy()


# --- Lloyd ---------------------------------------------------------------------------------

@numba.njit(nogil=True, cache=True)
def _means(x: np.ndarray, w: np.ndarray, labels: np.ndarray, old: np.ndarray, new: np.ndarray,
           weight: np.ndarray) -> None:
    k = new.shape[0]
    new[:] = 0.0
    weight[:] = 0.0
    for i in range(x.shape[0]):
        a = labels[i]
        weight[a] += w[i]
        for t in range(3):
            new[a, t] += w[i] * x[i, t]
    for j in range(k):
        for t in range(3):
            new[j, t] = new[j, t] / weight[j] if weight[j] > 0 else old[j, t]


@numba.njit(nogil=True, cache=True)
def _bounded_lloyd(x: np.ndarray, w: np.ndarray, axis: np.ndarray, centres: np.ndarray,
                   tol: float, max_iter: int, labels: np.ndarray) -> tuple[int, bool]:
    """Weighted Lloyd from ``centres`` (updated in place), skipping points that cannot move.

    Each point remembers exact distances measured at some iteration: to its own centre, to
    its second nearest centre (by name), and to the third nearest (a bound for every other
    centre). A bound now is such a distance moved by how far the centre(s) concerned have
    travelled *since it was measured* (Newling and Fleuret's "ns" bounds; the third one by
    the largest travel of any centre). A point is examined again only when its own centre
    may be farther than the others, or than half the distance from its centre to the next
    one (Hamerly's test); most points near a boundary between two clusters are settled by
    re-measuring those two distances, without a search.
    """
    n = x.shape[0]
    k = centres.shape[0]
    px = np.empty(n)
    for i in range(n):
        px[i] = x[i, 0] * axis[0] + x[i, 1] * axis[1] + x[i, 2] * axis[2]
    order = np.empty(k, dtype=np.int64)
    sp = np.empty(k)
    _sort_centres(centres, axis, order, sp)
    second = np.empty(n, dtype=np.int64)
    d1 = np.empty(n)  # distance to the own centre, measured at iteration t1
    d2 = np.empty(n)  # distance to the centre ``second``, at t2
    d3 = np.empty(n)  # distance to the third nearest centre, at t3
    t1 = np.zeros(n, dtype=np.int64)
    t2 = np.zeros(n, dtype=np.int64)
    t3 = np.zeros(n, dtype=np.int64)
    for i in range(n):
        a1, b1, a2, b2, b3 = _nearest3(x, i, px[i], centres, order, sp)
        labels[i] = a1
        second[i] = a2
        d1[i] = math.sqrt(b1)
        d2[i] = math.sqrt(b2)
        d3[i] = math.sqrt(b3)
    history = np.empty((max_iter + 1, k, 3))  # the centres of every iteration
    history[0] = centres
    disp = np.zeros((max_iter + 1, k))  # how far each centre is now from where it was at t
    far = np.zeros(max_iter + 1)  # the largest of disp[t]
    new = np.empty_like(centres)
    weight = np.empty(k)
    half = np.empty(k)
    it = 0
    converged = False
    while it < max_iter:
        it += 1
        _means(x, w, labels, centres, new, weight)
        n_empty = 0
        for j in range(k):
            if weight[j] == 0:
                n_empty += 1
        if n_empty:  # an empty cluster takes the point farthest from its centre
            dist = np.empty(n)
            for i in range(n):
                dist[i] = -w[i] * _d2(x, i, centres, labels[i])
            rank = np.argsort(dist, kind="mergesort")
            e = 0
            for j in range(k):
                if weight[j] == 0:
                    new[j] = x[rank[e]]
                    e += 1
        total = 0.0
        for j in range(k):
            total += _d2(new, j, centres, j)
        centres[:] = new
        history[it] = centres
        if total <= tol:
            converged = True
            break
        for t in range(it):
            m = 0.0
            for j in range(k):
                d = math.sqrt(_d2(centres, j, history[t], j))
                disp[t, j] = d
                if d > m:
                    m = d
            far[t] = m
        _sort_centres(centres, axis, order, sp)
        for r in range(k):  # half the distance from each centre to its nearest other one
            j = order[r]
            best = np.inf
            for step in (-1, 1):
                q = r + step
                while 0 <= q < k:
                    g = sp[q] - sp[r]
                    if g * g > best + _EPS:
                        break
                    s2 = _d2(centres, j, centres, order[q])
                    if s2 < best:
                        best = s2
                    q += step
            half[j] = 0.5 * math.sqrt(best)
        changed = 0
        for i in range(n):
            a = labels[i]
            b = second[i]
            upper = d1[i] + disp[t1[i], a]
            low3 = d3[i] - far[t3[i]]
            low2 = d2[i] - disp[t2[i], b]
            if upper + _EPS < max(half[a], min(low2, low3)):
                continue
            if t1[i] < it:
                upper = math.sqrt(_d2(x, i, centres, a))
                d1[i] = upper
                t1[i] = it
                if upper + _EPS < max(half[a], min(low2, low3)):
                    continue
            if t2[i] < it and b >= 0:
                low2 = math.sqrt(_d2(x, i, centres, b))
                d2[i] = low2
                t2[i] = it
                if upper + _EPS < max(half[a], min(low2, low3)):
                    continue
            a1, b1, a2, b2, b3 = _nearest3(x, i, px[i], centres, order, sp)
            second[i] = a2
            d1[i] = math.sqrt(b1)
            d2[i] = math.sqrt(b2)
            d3[i] = math.sqrt(b3)
            t1[i] = it
            t2[i] = it
            t3[i] = it
            if a1 != a:
                labels[i] = a1
                changed += 1
        if changed == 0 and n_empty == 0:  # strict convergence: the means would not move
            converged = True
            break
    return it, converged


def lloyd(x: np.ndarray, w: np.ndarray, centres: np.ndarray, tol: float = 1e-4,
          max_iter: int = 300) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Weighted Lloyd on points ``x`` (``(n, 3)``, weights ``w``) from ``centres``.

    Each iteration labels every point with its nearest centre (first on ties), then moves
    every centre to the weighted mean of its points (a centre left empty takes the point
    with the largest ``w * D**2``). ``tol`` is relative, as scikit-learn's: the run stops
    when the squared centre shifts of an iteration sum to at most ``tol`` times the mean
    per-coordinate weighted variance of ``x``, or when no label changes.

    Returns ``(centres, labels, n_iter, converged)``; ``labels`` are those of the last
    labelling step.
    """
    x = np.ascontiguousarray(x, np.float64)
    w = np.ascontiguousarray(w, np.float64)
    cov = _covariance(x, w)
    var = float(np.trace(cov)) / 3
    c = np.array(centres, dtype=np.float64, order="C")
    labels = np.empty(len(x), dtype=np.int64)
    it, converged = _bounded_lloyd(x, w, _principal(cov), c, tol * var, max_iter, labels)
    return c, labels, it, converged


def fit_histogram(rgb: np.ndarray, k: int, rng: np.random.Generator, init: str = "k-means++",
                  n_init: int = 1, tol: float = 1e-4, max_iter: int = 300) -> np.ndarray:
    """K-means of the ``(n, 3)`` uint8 pixels ``rgb`` through their distinct colours.

    ``init`` is ``"k-means++"`` (:func:`kmeans_plusplus`) or ``"random"`` (``k`` distinct
    colours drawn with probability proportional to their counts); with ``n_init > 1`` the
    run with the lowest inertia wins (the first on ties). Returns ``(k, 3)`` float64 centres
    in [0, 1] units. With at most ``k`` distinct colours, every colour is a centre and the
    rest repeat the first.
    """
    x, w = distinct_colours(rgb)
    if len(x) <= k:
        return np.concatenate([x, np.repeat(x[:1], k - len(x), axis=0)])
    best: tuple[float, np.ndarray] | None = None
    for _ in range(n_init):
        if init == "k-means++":
            start = kmeans_plusplus(x, w, k, rng)
        elif init == "random":
            start = x[np.sort(rng.choice(len(x), size=k, replace=False, p=w / w.sum()))]
        else:
            raise ValueError(f"unknown init {init!r}, expected 'k-means++' or 'random'")
        centres = lloyd(x, w, start, tol, max_iter)[0]
        if n_init == 1:
            return centres
        e = inertia(x, w, centres)
        if best is None or e < best[0]:
            best = (e, centres)
    assert best is not None
    return best[1]


