"""Exact nearest centres: ties go to the lowest index, whatever the search.

:func:`assign` labels rows of any dimension. For 3-d rows (colours) the centres are sorted
by their projection on an axis (the principal axis of the centres or of the points); a query
walks outward from its own projection and stops on each side as soon as the projection gap
alone exceeds the best squared distance found, so it measures a few centres instead of all
K. Results are those of an ``argmin`` over float64 squared distances summed coordinate by
coordinate (no expansion trick): only the speed depends on the axis.

Used everywhere a colour meets a palette: the bounded Lloyd of :mod:`streamq.kmeans.bounded`,
the pixel labels of :mod:`streamq.kmeans.table` (its label table, and per-image labels),
inertia. Loops are serial and release the GIL; :func:`assign` splits large inputs over
threads (each row's result does not depend on the split).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

__all__ = ["BOUND_EPS", "SORTED_FROM_K", "assign", "assign_rows", "covariance", "inertia",
           "nearest3", "nearest_from", "principal_axis", "sort_centers_into", "sorted_centers",
           "spread_duplicates", "squared_distance"]

_GREY = np.full(3, 1 / math.sqrt(3))
BOUND_EPS = 1e-12  # slack on every bound test: float rounding never prunes a candidate that counts


@numba.njit(nogil=True, cache=True)
def covariance(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted ``(d, d)`` covariance of the rows of ``x`` (weights ``w``; zeros when the
    weights sum to zero or less)."""
    d = x.shape[1]
    total = 0.0
    mean = np.zeros(d)
    for i in range(x.shape[0]):
        total += w[i]
        for t in range(d):
            mean[t] += w[i] * x[i, t]
    cov = np.zeros((d, d))
    if total <= 0:
        return cov
    mean /= total
    for i in range(x.shape[0]):
        for a in range(d):
            da = x[i, a] - mean[a]
            for b in range(a, d):
                cov[a, b] += w[i] * da * (x[i, b] - mean[b])
    for a in range(d):
        for b in range(a, d):
            cov[a, b] /= total
            cov[b, a] = cov[a, b]
    return cov


def principal_axis(cov: np.ndarray) -> np.ndarray:
    """Unit principal axis of a ``(d, d)`` covariance (the diagonal, the grey axis of colours,
    when degenerate)."""
    if not np.isfinite(cov).all() or not cov.any():
        return np.full(len(cov), 1 / math.sqrt(len(cov)))  # the grey axis, in any dimension
    axis = np.linalg.eigh(cov)[1][:, -1]
    return np.ascontiguousarray(axis / np.linalg.norm(axis), dtype=np.float64)


def _axis(x: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Unit principal axis of the rows of ``x`` (weights ``w``; the centres of a search). Only
    the speed of the searches depends on it, never their results. In NumPy: a handful of
    centres is not worth a compiled loop's compilation."""
    if len(x) < 2:
        return _GREY.copy()
    x = np.asarray(x, np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    total = w.sum()
    if not total > 0:
        return _GREY.copy()
    d = x - (w @ x) / total
    return principal_axis((d * w[:, None]).T @ d / total)


@numba.njit(nogil=True, cache=True, inline="always")
def squared_distance(x: np.ndarray, i: int, c: np.ndarray, j: int) -> float:
    """Squared distance between row ``i`` of ``x`` and row ``j`` of ``c`` (rows of any
    dimension; 3-d rows, colours, unrolled)."""
    if x.shape[1] == 3:
        a = x[i, 0] - c[j, 0]
        b = x[i, 1] - c[j, 1]
        d = x[i, 2] - c[j, 2]
        return a * a + b * b + d * d
    s = 0.0
    for t in range(x.shape[1]):
        e = x[i, t] - c[j, t]
        s += e * e
    return s


def sort_centers_into(c: np.ndarray, axis: np.ndarray, order: np.ndarray, sp: np.ndarray) -> None:
    """Fill ``order`` (centres by projection on ``axis``, stable) and ``sp`` (their sorted
    projections). In NumPy: a compiled sort costs seconds of compilation for microseconds of
    work on at most a few thousand centres. Any dimension (summed coordinate by coordinate,
    as ``x @ axis`` of the points' projections up to rounding, which the searches' slack
    ``BOUND_EPS`` absorbs)."""
    pc = c[:, 0] * axis[0]
    for t in range(1, c.shape[1]):
        pc = pc + c[:, t] * axis[t]
    order[:] = np.argsort(pc, kind="stable")
    sp[:] = pc[order]


@numba.njit(nogil=True, cache=True)
def _first_at_least(sp: np.ndarray, p: float) -> int:
    """``np.searchsorted(sp, p)``: the first index whose value is at least ``p`` (a loop:
    cheaper to compile than NumPy's)."""
    lo = 0
    hi = sp.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sp[mid] < p:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(nogil=True, cache=True)
def nearest3(x: np.ndarray, i: int, p: float, c: np.ndarray, order: np.ndarray,
              sp: np.ndarray) -> tuple[int, float, int, float, float]:
    """The nearest centre of point ``i`` (first on ties) and its squared distance, the second
    nearest and its squared distance, and the squared distance to the third nearest (inf when
    there are only two centres). ``p`` is the point's projection, ``sp`` the sorted
    projections of the centres (``order[r]`` is the centre of rank ``r``): the search goes
    outward from ``p`` and stops on each side when the gap alone exceeds the third distance.
    Rows of any dimension (a projection gap never exceeds the distance along a unit axis)."""
    k = c.shape[0]
    b1 = np.inf
    b2 = np.inf
    b3 = np.inf
    a1 = -1
    a2 = -1
    if k <= 8:  # a few centres: look at all of them
        for j in range(k):
            s = squared_distance(x, i, c, j)
            if s < b1:
                b3 = b2
                b2 = b1
                a2 = a1
                b1 = s
                a1 = j
            elif s < b2:
                b3 = b2
                b2 = s
                a2 = j
            elif s < b3:
                b3 = s
        return a1, b1, a2, b2, b3
    up = _first_at_least(sp, p)
    down = up - 1
    while up < k or down >= 0:
        for side in range(2):
            if side == 0:
                if up >= k:
                    continue
                g = sp[up] - p
                if g * g > b3 + BOUND_EPS:
                    up = k
                    continue
                j = order[up]
                up += 1
            else:
                if down < 0:
                    continue
                g = p - sp[down]
                if g * g > b3 + BOUND_EPS:
                    down = -1
                    continue
                j = order[down]
                down -= 1
            s = squared_distance(x, i, c, j)
            if s < b1 or (s == b1 and j < a1):
                b3 = b2
                b2 = b1
                a2 = a1
                b1 = s
                a1 = j
            elif s < b2 or (s == b2 and j < a2):
                b3 = b2
                b2 = s
                a2 = j
            elif s < b3:
                b3 = s
    return a1, b1, a2, b2, b3


@numba.njit(nogil=True, cache=True, inline="always")
def nearest_from(x: np.ndarray, i: int, p: float, c: np.ndarray, order: np.ndarray, sp: np.ndarray,
             a: int) -> tuple[int, float]:
    """Nearest centre of point ``i`` (first on ties) and its squared distance, searched
    outward from the projection ``p`` with centre ``a`` as the first bound."""
    k = c.shape[0]
    best = squared_distance(x, i, c, a)
    up = _first_at_least(sp, p)
    down = up - 1
    while up < k or down >= 0:
        if up < k:
            g = sp[up] - p
            if g * g > best + BOUND_EPS:
                up = k
            else:
                j = order[up]
                s = squared_distance(x, i, c, j)
                if s < best or (s == best and j < a):
                    best = s
                    a = j
                up += 1
        if down >= 0:
            g = p - sp[down]
            if g * g > best + BOUND_EPS:
                down = -1
            else:
                j = order[down]
                s = squared_distance(x, i, c, j)
                if s < best or (s == best and j < a):
                    best = s
                    a = j
                down -= 1
    return a, best


@numba.njit(nogil=True, cache=True)
def _inertia(x: np.ndarray, w: np.ndarray, c: np.ndarray, axis: np.ndarray, order: np.ndarray,
             sp: np.ndarray) -> float:
    total = 0.0
    a = 0
    for i in range(x.shape[0]):
        p = x[i, 0] * axis[0] + x[i, 1] * axis[1] + x[i, 2] * axis[2]
        a, d = nearest_from(x, i, p, c, order, sp, a)
        total += w[i] * d
    return total


@numba.njit(nogil=True, cache=True)
def _assign(x: np.ndarray, c: np.ndarray, axis: np.ndarray, order: np.ndarray, sp: np.ndarray,
            labels: np.ndarray, dist: np.ndarray) -> None:
    a = 0
    for i in range(x.shape[0]):
        p = x[i, 0] * axis[0] + x[i, 1] * axis[1] + x[i, 2] * axis[2]
        a, d = nearest_from(x, i, p, c, order, sp, a)  # the previous row's centre bounds first
        labels[i] = a
        dist[i] = d


def assign_rows(x: np.ndarray, centers: np.ndarray,
                search: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                labels: np.ndarray | None = None, dist: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (first on ties) and squared distance of each ``(n, 3)`` float64 row.

    ``search`` is :func:`sorted_centers` of ``centers`` (computed when None); ``labels``
    (int64) and ``dist`` (float64) are filled when given.
    """
    c = np.ascontiguousarray(centers, dtype=np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    labels = np.empty(len(x), dtype=np.int64) if labels is None else labels
    dist = np.empty(len(x), dtype=np.float64) if dist is None else dist
    if len(x):
        _assign(x, c, *(search or sorted_centers(c)), labels, dist)
    return labels, dist


def sorted_centers(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(axis, order, sorted projections)`` of the centres ``c``: what the searches need."""
    return _sorted_centers(np.ascontiguousarray(c, dtype=np.float64))


def _sorted_centers(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axis = _axis(c)
    order = np.empty(len(c), dtype=np.int64)
    sp = np.empty(len(c))
    sort_centers_into(c, axis, order, sp)
    return axis, order, sp


def inertia(x: np.ndarray, w: np.ndarray, centers: np.ndarray) -> float:
    """``sum(w * D**2)``: weighted squared distance of each point to its nearest centre."""
    c = np.ascontiguousarray(centers, dtype=np.float64)
    return float(_inertia(np.ascontiguousarray(x, np.float64), np.asarray(w, np.float64), c,
                          *_sorted_centers(c)))


# Serial loop for rows of any dimension; parallelism comes from Dask tasks or from the thread
# blocks of ``assign(..., n_threads=N)`` (numba's own parallel layers are not safe to call
# from several threads at once).
@numba.njit(nogil=True, cache=True)
def _assign_plain(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, dist: np.ndarray) -> None:
    n, d = x.shape
    k = centers.shape[0]
    for i in range(n):
        best = np.inf
        arg = 0
        for j in range(k):
            s = 0.0
            for c in range(d):
                t = x[i, c] - centers[j, c]
                s += t * t
            if s < best:
                best = s
                arg = j
        labels[i] = arg
        dist[i] = best


SORTED_FROM_K = 16  # from this many centres on, 3-d rows use the sorted search


def _assign_block(x: np.ndarray, centers: np.ndarray,
                  search: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                  labels: np.ndarray, dist: np.ndarray) -> None:
    if search is None:
        _assign_plain(x, centers, labels, dist)
    else:
        assign_rows(x, centers, search, labels, dist)


def assign(x: np.ndarray, centers: np.ndarray, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre of each row of ``x`` (first on ties) and its squared distance.

    Exact for any dimension; for 3-d rows and from ``SORTED_FROM_K`` centres on, each row only
    visits the centres near it along the centres' principal axis (same result, a fraction of
    the distance computations). ``n_threads > 1`` splits large inputs into blocks.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    if not len(x):
        return labels, dist
    sort = (sorted_centers(centers) if x.shape[1] == 3 and len(centers) >= SORTED_FROM_K
            else None)
    if n_threads <= 1 or len(x) < 100_000:
        _assign_block(x, centers, sort, labels, dist)
        return labels, dist
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, len(x), n_threads * 4 + 1).astype(np.int64)

    def block(b: int) -> None:
        s = slice(bounds[b], bounds[b + 1])
        _assign_block(x[s], centers, sort, labels[s], dist[s])

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(block, range(len(bounds) - 1)))
    return labels, dist


def spread_duplicates(centers: np.ndarray, points: np.ndarray, center_keys: np.ndarray,
                      point_key: Callable[[int], tuple[Any, ...]]) -> np.ndarray:
    """Move every centre whose key (a row of ``center_keys``: its palette entry) repeats an
    earlier centre's to a point whose key (``point_key(i)``) is not taken yet, taking the
    points worst served by the centres first (one assignment pass, whatever the number of
    duplicates); ``centers`` themselves when no key repeats."""
    _, first = np.unique(center_keys, axis=0, return_index=True)
    dup = np.setdiff1d(np.arange(len(centers)), first)
    if not len(dup):
        return centers
    centers = centers.copy()
    _, d = assign(points, centers)
    used = {tuple(k) for k in center_keys[first]}
    todo = list(dup)
    for i in np.argsort(-d, kind="stable"):
        if not todo:
            break
        key = point_key(int(i))
        if key not in used:
            used.add(key)
            centers[todo.pop(0)] = points[i]
    return centers
