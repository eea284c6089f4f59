"""Weighted Lloyd iterations with distance bounds, and k-means from several starts.

:func:`lloyd` runs Lloyd's algorithm on points ``x`` with weights ``w`` (a colour histogram:
the distinct colours and their pixel counts, which is *exactly* k-means over every pixel,
since identical pixels always share a cluster). Each iteration labels every point with its
nearest centre (lowest index on ties) and moves each centre to the weighted mean of its
points. The labels are exact at every iteration; only the work differs:

- **3-d points** keep distance bounds (after Hamerly, with Newling and Fleuret's "ns"
  bounds): each point remembers exact distances to its centre, to its second nearest centre
  and to the third, with the iteration each was measured at. A bound now is such a distance
  moved by how far the centre(s) concerned travelled *since it was measured*. A point is
  searched again (by the sorted search of :mod:`streamq.kmeans.nearest`) only when its bounds
  no longer prove that its centre is the nearest; late iterations touch few points.
- other dimensions (image descriptors) are labelled by a plain loop over every centre.

Both give bit-identical centres: the means are summed in point order in float64, whatever
the path. Nothing depends on threads (the loops are serial and release the GIL; run several
starts side by side for parallelism).

**Stopping** (one rule, scikit-learn's): after each update, stop when the squared centre
shifts summed over all centres are at most ``tol`` times the mean per-coordinate variance of
the data (the *weighted* variance: the variance of the pixels the points stand for), or when
the labels no longer change (then the centres are a fixed point: another update would give
the same centres bit for bit), or after ``max_iter`` updates. ``tol=0`` runs to zero label
changes.

**Empty clusters** (as scikit-learn): a cluster left without points takes the point farthest
from its own centre (squared distance, unweighted; ties to the lowest index), whose weight
leaves its old cluster.

**Checkpoints**: ``on_iter`` is called after every update the run goes on from; the state
of a run is its centres and iteration count, so ``lloyd(x, w, saved_centers,
start_iter=saved_it, ...)`` continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from streamq.kmeans.nearest import (
    _EPS,
    _covariance,
    _d2,
    _nearest3,
    _principal,
    _sort_centres,
    assign,
)

__all__ = ["LloydResult", "lloyd", "tolerance"]


@dataclass
class LloydResult:
    """What :func:`lloyd` returns."""

    centers: np.ndarray  # (K, d) float64
    labels: np.ndarray  # (n,) int64: the nearest centre of each point for ``centers``
    inertia: float  # sum(w * squared distance to the nearest of ``centers``)
    n_iter: int  # centre updates done, counting those before ``start_iter``
    stop: str  # "labels" (a fixed point), "tol" or "max_iter"
    history: list[tuple[int, float, float]]  # (it, shift, objective) of each update of this call

    @property
    def converged(self) -> bool:
        return self.stop != "max_iter"


def tolerance(x: np.ndarray, w: np.ndarray, tol: float) -> float:
    """The absolute stopping threshold: ``tol`` times the mean weighted variance per coordinate."""
    if tol == 0:
        return 0.0
    x = np.ascontiguousarray(x, np.float64)
    w = np.ascontiguousarray(w, np.float64)
    mean = (w @ x) / w.sum()
    var = (w @ ((x - mean) ** 2)) / w.sum()
    return float(tol * var.mean())


# --- the update step (any dimension) -----------------------------------------------------------

@numba.njit(nogil=True, cache=True)
def _update(x: np.ndarray, w: np.ndarray, labels: np.ndarray, old: np.ndarray, new: np.ndarray,
            weight: np.ndarray) -> tuple[float, int]:
    """New centres from the labels: weighted means summed in point order; an empty cluster
    takes the point farthest from its centre. Returns the objective of ``labels`` with the
    ``old`` centres and the number of empty clusters."""
    n, d = x.shape
    k = new.shape[0]
    new[:] = 0.0
    weight[:] = 0.0
    objective = 0.0
    for i in range(n):
        a = labels[i]
        weight[a] += w[i]
        s = 0.0
        for t in range(d):
            new[a, t] += w[i] * x[i, t]
            e = x[i, t] - old[a, t]
            s += e * e
        objective += w[i] * s
    n_empty = 0
    for j in range(k):
        if weight[j] == 0:
            n_empty += 1
    if n_empty:
        far = np.empty(n)
        for i in range(n):
            s = 0.0
            for t in range(d):
                e = x[i, t] - old[labels[i], t]
                s += e * e
            far[i] = -s
        rank = np.argsort(far, kind="mergesort")  # farthest first, lowest index on ties
        r = 0
        for j in range(k):
            if weight[j] == 0:
                i = rank[r]
                r += 1
                a = labels[i]
                for t in range(d):
                    new[a, t] -= w[i] * x[i, t]
                    new[j, t] = w[i] * x[i, t]
                weight[a] -= w[i]
                weight[j] = w[i]
    for j in range(k):
        if weight[j] > 0:
            for t in range(d):
                new[j, t] = new[j, t] / weight[j]
        else:
            for t in range(d):
                new[j, t] = old[j, t]
    return objective, n_empty


@numba.njit(nogil=True, cache=True)
def _shift(a: np.ndarray, b: np.ndarray) -> float:
    s = 0.0
    for j in range(a.shape[0]):
        for t in range(a.shape[1]):
            e = a[j, t] - b[j, t]
            s += e * e
    return s


@numba.njit(nogil=True, cache=True)
def _objective(x: np.ndarray, w: np.ndarray, labels: np.ndarray, c: np.ndarray) -> float:
    total = 0.0
    for i in range(x.shape[0]):
        s = 0.0
        for t in range(x.shape[1]):
            e = x[i, t] - c[labels[i], t]
            s += e * e
        total += w[i] * s
    return total


# --- the labelling step with bounds (3-d) ------------------------------------------------------

@numba.njit(nogil=True, cache=True)
def _search_all(x: np.ndarray, px: np.ndarray, c: np.ndarray, order: np.ndarray, sp: np.ndarray,
                labels: np.ndarray, second: np.ndarray, d1: np.ndarray, d2: np.ndarray,
                d3: np.ndarray, t1: np.ndarray, t2: np.ndarray, t3: np.ndarray, it: int) -> None:
    for i in range(x.shape[0]):
        a1, b1, a2, b2, b3 = _nearest3(x, i, px[i], c, order, sp)
        labels[i] = a1
        second[i] = a2
        d1[i] = math.sqrt(b1)
        d2[i] = math.sqrt(b2)
        d3[i] = math.sqrt(b3)
        t1[i] = it
        t2[i] = it
        t3[i] = it


@numba.njit(nogil=True, cache=True)
def _travel(c: np.ndarray, history: np.ndarray, it: int, disp: np.ndarray, far: np.ndarray) -> None:
    """How far each centre is now from where it was at each earlier iteration."""
    k = c.shape[0]
    for t in range(it):
        m = 0.0
        for j in range(k):
            d = math.sqrt(_d2(c, j, history[t], j))
            disp[t, j] = d
            if d > m:
                m = d
        far[t] = m


@numba.njit(nogil=True, cache=True)
def _half_gaps(c: np.ndarray, order: np.ndarray, sp: np.ndarray, half: np.ndarray) -> None:
    """Half the distance from each centre to its nearest other centre."""
    k = c.shape[0]
    for r in range(k):
        j = order[r]
        best = np.inf
        for step in (-1, 1):
            q = r + step
            while 0 <= q < k:
                g = sp[q] - sp[r]
                if g * g > best + _EPS:
                    break
                s2 = _d2(c, j, c, order[q])
                if s2 < best:
                    best = s2
                q += step
        half[j] = 0.5 * math.sqrt(best)


@numba.njit(nogil=True, cache=True)
def _relabel(x: np.ndarray, px: np.ndarray, c: np.ndarray, order: np.ndarray, sp: np.ndarray,
             half: np.ndarray, disp: np.ndarray, far: np.ndarray, it: int, labels: np.ndarray,
             second: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray, t1: np.ndarray,
             t2: np.ndarray, t3: np.ndarray) -> int:
    """Exact labels for the centres ``c`` of iteration ``it``; returns how many changed.

    A point is skipped while its centre is provably nearest: its own distance, moved by its
    centre's travel since measured, stays below half the gap to the next centre (Hamerly's
    test) or below both lower bounds (the second centre's distance minus its travel, the
    third distance minus the largest travel). Then the two distances are measured anew, and
    only if that does not settle it is the point searched.
    """
    changed = 0
    for i in range(x.shape[0]):
        a = labels[i]
        b = second[i]
        upper = d1[i] + disp[t1[i], a]
        low3 = d3[i] - far[t3[i]]
        low2 = d2[i] - disp[t2[i], b] if b >= 0 else np.inf
        if upper + _EPS < max(half[a], min(low2, low3)):
            continue
        if t1[i] < it:
            upper = math.sqrt(_d2(x, i, c, a))
            d1[i] = upper
            t1[i] = it
            if upper + _EPS < max(half[a], min(low2, low3)):
                continue
        if t2[i] < it and b >= 0:
            low2 = math.sqrt(_d2(x, i, c, b))
            d2[i] = low2
            t2[i] = it
            if upper + _EPS < max(half[a], min(low2, low3)):
                continue
        a1, b1, a2, b2, b3 = _nearest3(x, i, px[i], c, order, sp)
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
    return changed


class _Bounds:
    """The labelling step of 3-d points with distance bounds, kept across iterations."""

    def __init__(self, x: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        n, k = len(x), len(c)
        self.x = x
        self.axis = _principal(_covariance(x, w))
        self.px = x @ self.axis
        self.order = np.empty(k, dtype=np.int64)
        self.sp = np.empty(k)
        self.half = np.empty(k)
        self.labels = np.empty(n, dtype=np.int64)
        self.second = np.empty(n, dtype=np.int64)
        self.d1, self.d2, self.d3 = np.empty(n), np.empty(n), np.empty(n)
        self.t1 = np.zeros(n, dtype=np.int64)
        self.t2 = np.zeros(n, dtype=np.int64)
        self.t3 = np.zeros(n, dtype=np.int64)
        self.history = np.empty((64, k, 3))
        self.disp = np.zeros((64, k))
        self.far = np.zeros(64)
        self.it = 0
        self.history[0] = c
        _sort_centres(c, self.axis, self.order, self.sp)
        _search_all(x, self.px, c, self.order, self.sp, self.labels, self.second, self.d1,
                    self.d2, self.d3, self.t1, self.t2, self.t3, 0)

    def relabel(self, c: np.ndarray) -> int:
        """Labels for the next centres ``c``; returns how many changed."""
        self.it += 1
        it = self.it
        if it >= len(self.history):  # room for more iterations
            grow = len(self.history)
            self.history = np.concatenate([self.history, np.empty_like(self.history)])
            self.disp = np.concatenate([self.disp, np.zeros((grow, len(c)))])
            self.far = np.concatenate([self.far, np.zeros(grow)])
        self.history[it] = c
        _travel(c, self.history, it, self.disp, self.far)
        _sort_centres(c, self.axis, self.order, self.sp)
        _half_gaps(c, self.order, self.sp, self.half)
        return _relabel(self.x, self.px, c, self.order, self.sp, self.half, self.disp, self.far,
                        it, self.labels, self.second, self.d1, self.d2, self.d3, self.t1,
                        self.t2, self.t3)


class _Plain:
    """The labelling step of points of any dimension: every centre, every time."""

    def __init__(self, x: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        self.x = x
        self.labels = assign(x, c)[0]

    def relabel(self, c: np.ndarray) -> int:
        old = self.labels
        self.labels = assign(self.x, c)[0]
        return int(np.count_nonzero(old != self.labels))


def lloyd(x: np.ndarray, w: np.ndarray | None, centers: np.ndarray, *, tol: float = 1e-4,
          max_iter: int = 300, start_iter: int = 0,
          on_iter: Callable[[int, np.ndarray, list[tuple[int, float, float]]], object] | None = None,
          bounds: bool = True) -> LloydResult:
    """Weighted Lloyd on points ``x`` (``(n, d)``, weights ``w``, None: all 1) from ``centers``.

    Stops by the rule in the module docstring (``tol`` relative, as scikit-learn's; ``tol=0``
    runs to zero label changes). ``start_iter`` is the number of updates already done (a
    resumed run counts on from it; ``max_iter`` counts all of them). After each update ``it``
    that the run goes on from, ``on_iter(it, centers, history)`` is called with the new
    centres and this call's history so far: one ``(it, shift, objective)`` row per update
    (the summed squared centre shift, and the objective of the labels the update was made
    from). Saving ``centers`` and ``it`` there is a complete checkpoint. ``bounds=False``
    labels 3-d points without bounds (the same result, slower: for comparisons).
    """
    x = np.ascontiguousarray(x, np.float64)
    w = np.ones(len(x)) if w is None else np.ascontiguousarray(w, np.float64)
    c = np.array(centers, dtype=np.float64, order="C")
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise ValueError(f"centers of shape {c.shape} do not match points of shape {x.shape}")
    threshold = tolerance(x, w, tol)
    step = _Bounds(x, w, c) if bounds and x.shape[1] == 3 else _Plain(x, w, c)
    new = np.empty_like(c)
    weight = np.empty(len(c))
    history: list[tuple[int, float, float]] = []
    it = start_iter
    stop = "max_iter"
    relabelled = True  # step.labels are those of c
    while it < max_iter:
        objective, n_empty = _update(x, w, step.labels, c, new, weight)
        shift = _shift(new, c)
        c, new = new, c
        it += 1
        history.append((it, float(shift), float(objective)))
        relabelled = False
        if tol > 0 and shift <= threshold:
            stop = "tol"
            break
        changed = step.relabel(c)
        relabelled = True
        if changed == 0 and n_empty == 0:
            stop = "labels"
            break
        if on_iter is not None:
            on_iter(it, c, history)
    if not relabelled:
        step.relabel(c)
    labels = step.labels
    return LloydResult(centers=c, labels=labels, inertia=float(_objective(x, w, labels, c)),
                       n_iter=it, stop=stop, history=history)
