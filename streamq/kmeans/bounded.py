"""Weighted Lloyd iterations with distance bounds and exact sums.

One module of about 400 lines on purpose: one compiled kernel family, the bounded Lloyd. Its
kernels (exact sums, moves, means, empty-cluster relocation, relabelling with bounds) and
the driver that runs them share one state (fixed-point points, integer sums, per-point
bounds) whose invariants are explained once, here; apart, neither half reads on its own.

:func:`lloyd` runs Lloyd's algorithm on points ``x`` with integer weights ``w`` (a colour
histogram: the distinct colours and their pixel counts, which is *exactly* k-means over every
pixel, since identical pixels always share a cluster). Each iteration labels every point with
its nearest centre (lowest index on ties) and moves each centre to the weighted mean of its
points. The labels are exact at every iteration; only the work differs:

- **Exact sums.** The points are held in fixed point (``round(x * 2**F)`` in int64, with ``F``
  as large as the total weight allows: 2**-32 of a unit for a billion pixels), so each
  cluster's weighted sum is an exact integer. A point that changes cluster moves its weight
  from one sum to the other: an update costs the points that moved, not all of them, and
  the centres do not depend on the order of anything (threads, resumes, bounds or not).
- **Colours skip work with distance bounds** (3-d points, and the 4-d premultiplied RGBA of
  :mod:`streamq.fit.alpha`). When a point is searched, it remembers its
  nearest and second nearest centre and the distance to the third; every iteration adds the
  largest centre travel to a running total ``D``. A point is looked at again only when ``D``
  has grown past its slack (the gap between its own centre and the others, shrunk by at most
  two travels per iteration); then its two distances are measured anew, and only if that does
  not settle it is it searched (by the sorted search of :mod:`streamq.kmeans.nearest`: centres
  sorted by their projection on the points' principal axis, exact in any dimension since a
  projection gap never exceeds the distance). Late iterations look at the few points near a
  boundary; one pass over an array of ``n`` slacks finds them. The bounds themselves hold in
  any dimension; ``BOUNDED_DIMS`` keeps them to the low dimensions where one projection
  still prunes the search.
- Points of other dimensions (image descriptors) are labelled by a plain loop over every centre.

**Stopping** (one rule, scikit-learn's): after each update, stop when the squared centre
shifts summed over all centres are at most ``tol`` times the mean per-coordinate variance of
the data (the *weighted* variance: the variance of the pixels the points stand for), or when
the labels no longer change (then the centres are a fixed point: another update would give
the same centres bit for bit), or after ``max_iter`` updates. ``tol=0`` runs to zero label
changes. When an update meets both rules, the stop is reported as the fixed point
(``"labels"``): a run stopped by ``tol`` is known not to be one, and can go on.

**Empty clusters** (as scikit-learn): a cluster left without points takes the point farthest
from its own centre (squared distance, unweighted; ties to the lowest index), whose weight
leaves its old cluster.

**Fixed centres** (``fixed``, a mask): a fixed centre takes its nearest points like any
other, but never moves, and when it has no points it stays empty (only the other empty
clusters take the farthest points). Without it every centre is free.

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
    BOUND_EPS,
    assign,
    covariance,
    nearest3,
    principal_axis,
    sort_centers_into,
    squared_distance,
)

__all__ = ["BOUNDED_DIMS", "LloydResult", "fixed_bits", "fixed_mask", "fixed_point", "lloyd", "objective",
           "tolerance"]

MAX_TOTAL_WEIGHT = 2**46  # int64 sums of 2**16-scaled points: a fit over ~70 Tpx at most
BOUNDED_DIMS = (3, 4)  # RGB colours and premultiplied RGBA: labelled with distance bounds


@dataclass
class LloydResult:
    """What :func:`lloyd` returns."""

    centers: np.ndarray  # (K, d) float64
    labels: np.ndarray  # (n,) int64: the nearest centre of each point for ``centers``
    inertia: float  # sum(w * squared distance to the nearest of ``centers``)
    n_iter: int  # centre updates done, counting those before ``start_iter``
    stop: str  # "labels" (a fixed point), "tol" or "max_iter"
    history: list[tuple[int, float, int]]  # (it, squared shift, labels changed) of this call

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


def fixed_mask(fixed: np.ndarray | None, k: int) -> np.ndarray:
    """``fixed`` as a boolean mask of ``k`` centres (None: none fixed), checked."""
    if fixed is None:
        return np.zeros(k, dtype=np.bool_)
    mask = np.ascontiguousarray(fixed, dtype=np.bool_)
    if mask.shape != (k,):
        raise ValueError(f"fixed mask of shape {mask.shape}, expected ({k},) (one per centre)")
    return mask


@numba.njit(nogil=True, cache=True)
def _whole(w: np.ndarray) -> bool:
    """Are all weights whole non-negative numbers? (One pass, no temporary arrays.)"""
    for v in w:
        if not (v >= 0 and v == np.rint(v)):
            return False
    return True


def fixed_bits(x: np.ndarray, w: np.ndarray) -> int:
    """The ``F`` of :func:`fixed_point` (the weights checked), without making the points."""
    w = np.ascontiguousarray(w, np.float64)
    if len(w) and not _whole(w):
        raise ValueError("weights must be whole non-negative numbers (pixel counts)")
    total = float(w.sum())
    if total >= MAX_TOTAL_WEIGHT:
        raise ValueError(f"total weight {total:.3g} is over {MAX_TOTAL_WEIGHT:.3g}: split the fit")
    x = np.asarray(x, np.float64)
    span = max(1.0, float(x.max(initial=0.0)), -float(x.min(initial=0.0)))
    bits = math.ceil(math.log2(max(total, 1.0) * span + 1))
    return min(40, 62 - bits)


def fixed_point(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``(X, W, F)``: the points as int64 ``round(x * 2**F)`` and the weights as int64, with
    the largest ``F <= 40`` for which every weighted sum ``sum(W * X)`` fits in int64.

    ``w`` must hold whole numbers (pixel counts) adding up to less than ``MAX_TOTAL_WEIGHT``.
    """
    f = fixed_bits(x, w)
    return (np.round(np.asarray(x, np.float64) * 2.0**f).astype(np.int64),
            np.asarray(w, np.float64).astype(np.int64), f)


# --- the update step (any dimension) -----------------------------------------------------------

# --- exact sums (any dimension) ----------------------------------------------------------------

@numba.njit(nogil=True, cache=True)
def _sums(X: np.ndarray, W: np.ndarray, labels: np.ndarray, S: np.ndarray, N: np.ndarray) -> None:
    """Each cluster's weighted sum of fixed-point points and its total weight, from scratch."""
    S[:] = 0
    N[:] = 0
    for i in range(X.shape[0]):
        a = labels[i]
        N[a] += W[i]
        for t in range(X.shape[1]):
            S[a, t] += W[i] * X[i, t]


@numba.njit(nogil=True, cache=True)
def _move(X: np.ndarray, W: np.ndarray, i: int, a: int, b: int, S: np.ndarray, N: np.ndarray) -> None:
    """Point ``i`` leaves cluster ``a`` for cluster ``b``."""
    N[a] -= W[i]
    N[b] += W[i]
    for t in range(X.shape[1]):
        S[a, t] -= W[i] * X[i, t]
        S[b, t] += W[i] * X[i, t]


@numba.njit(nogil=True, cache=True)
def _means(S: np.ndarray, N: np.ndarray, old: np.ndarray, scale: float, new: np.ndarray,
           fixed: np.ndarray) -> int:
    """The centres of the sums (an empty cluster and a ``fixed`` centre keep their centres);
    returns how many clusters that are not fixed are empty."""
    empty = 0
    for j in range(S.shape[0]):
        if fixed[j]:
            for t in range(S.shape[1]):
                new[j, t] = old[j, t]
        elif N[j] > 0:
            for t in range(S.shape[1]):
                new[j, t] = np.float64(S[j, t]) / np.float64(N[j]) * scale
        else:
            empty += 1
            for t in range(S.shape[1]):
                new[j, t] = old[j, t]
    return empty


@numba.njit(nogil=True, cache=True)
def _relocate(x: np.ndarray, X: np.ndarray, W: np.ndarray, labels: np.ndarray, old: np.ndarray,
              S: np.ndarray, N: np.ndarray, moved: np.ndarray, fixed: np.ndarray) -> int:
    """Give each empty cluster that is not ``fixed`` the point farthest from its own centre (ties: lowest index); the
    point's label and weight go with it. Returns how many points moved (listed in ``moved``)."""
    n = x.shape[0]
    far = np.empty(n)
    for i in range(n):
        s = 0.0
        for t in range(x.shape[1]):
            e = x[i, t] - old[labels[i], t]
            s += e * e
        far[i] = -s
    rank = np.argsort(far, kind="mergesort")
    r = 0
    for j in range(S.shape[0]):
        if N[j] == 0 and not fixed[j]:
            i = rank[r]
            r += 1
            _move(X, W, i, labels[i], j, S, N)
            labels[i] = j
            moved[r - 1] = i
    return r


@numba.njit(nogil=True, cache=True)
def _shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Summed squared shift of the centres, and the largest shift of one centre."""
    s = 0.0
    m = 0.0
    for j in range(a.shape[0]):
        q = 0.0
        for t in range(a.shape[1]):
            e = a[j, t] - b[j, t]
            q += e * e
        s += q
        m = max(m, q)
    return s, math.sqrt(m)


@numba.njit(nogil=True, cache=True)
def objective(x: np.ndarray, w: np.ndarray, labels: np.ndarray, c: np.ndarray) -> float:
    """The inertia ``sum(w * squared distance to the centre of each point's label)``, summed
    in point order (the one figure both Lloyd forms report)."""
    total = 0.0
    for i in range(x.shape[0]):
        s = 0.0
        for t in range(x.shape[1]):
            e = x[i, t] - c[labels[i], t]
            s += e * e
        total += w[i] * s
    return total


# --- the labelling step with bounds (3-d and 4-d) ---------------------------------------------

@numba.njit(nogil=True, cache=True, inline="always")
def _search(x: np.ndarray, i: int, px: np.ndarray, c: np.ndarray, order: np.ndarray,
            sp: np.ndarray, second: np.ndarray, d3: np.ndarray, d0: np.ndarray,
            due: np.ndarray, drift: float) -> int:
    a1, b1, a2, b2, b3 = nearest3(x, i, px[i], c, order, sp)
    r1 = math.sqrt(b1)
    second[i] = a2
    d3[i] = math.sqrt(b3)
    d0[i] = drift
    due[i] = drift + (math.sqrt(b2) - r1) - BOUND_EPS
    return a1


@numba.njit(nogil=True, cache=True)
def _search_all(x: np.ndarray, px: np.ndarray, c: np.ndarray, order: np.ndarray, sp: np.ndarray,
                labels: np.ndarray, second: np.ndarray, d3: np.ndarray, d0: np.ndarray,
                due: np.ndarray) -> None:
    for i in range(x.shape[0]):
        labels[i] = _search(x, i, px, c, order, sp, second, d3, d0, due, 0.0)


@numba.njit(nogil=True, cache=True)
def _relabel(x: np.ndarray, X: np.ndarray, W: np.ndarray, px: np.ndarray, c: np.ndarray,
             order: np.ndarray, sp: np.ndarray, drift: float, labels: np.ndarray,
             second: np.ndarray, d3: np.ndarray, d0: np.ndarray, due: np.ndarray,
             S: np.ndarray, N: np.ndarray) -> int:
    """Exact labels for the centres ``c``, moving the sums of the points that change cluster;
    returns how many changed.

    ``drift`` is twice the largest centre travel summed over the iterations so far. A point
    whose ``due`` is above it is provably still nearest its centre: since it was measured its
    own distance grew by at most half the drift added, every other distance shrank by as much.
    """
    changed = 0
    for i in range(x.shape[0]):
        if due[i] > drift:
            continue
        a = labels[i]
        b = second[i]
        r1 = math.sqrt(squared_distance(x, i, c, a))
        r2 = math.sqrt(squared_distance(x, i, c, b)) if b >= 0 else np.inf
        r3 = d3[i] - 0.5 * (drift - d0[i])  # a lower bound for every other centre
        if r1 + BOUND_EPS < r2 and r1 + BOUND_EPS < r3:  # still nearest: a new due
            due[i] = min(drift + (r2 - r1), d3[i] - r1 + 0.5 * (drift + d0[i])) - BOUND_EPS
            continue
        a1 = _search(x, i, px, c, order, sp, second, d3, d0, due, drift)
        if a1 != a:
            _move(X, W, i, a, a1, S, N)
            labels[i] = a1
            changed += 1
    return changed


@numba.njit(nogil=True, cache=True)
def _relabel_plain(x: np.ndarray, X: np.ndarray, W: np.ndarray, c: np.ndarray,
                   labels: np.ndarray, S: np.ndarray, N: np.ndarray) -> int:
    """Exact labels by a loop over every centre (any dimension); returns how many changed."""
    changed = 0
    k = c.shape[0]
    for i in range(x.shape[0]):
        best = np.inf
        arg = 0
        for j in range(k):
            s = 0.0
            for t in range(x.shape[1]):
                e = x[i, t] - c[j, t]
                s += e * e
            if s < best:
                best = s
                arg = j
        if arg != labels[i]:
            _move(X, W, i, labels[i], arg, S, N)
            labels[i] = arg
            changed += 1
    return changed


class _Bounded:
    """The labelling step of points of ``BOUNDED_DIMS`` with bounds, kept across iterations."""

    def __init__(self, x: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        n, k = len(x), len(c)
        self.x = x
        self.axis = principal_axis(covariance(x, w))
        self.px = x @ self.axis
        self.order = np.empty(k, dtype=np.int64)
        self.sp = np.empty(k)
        self.labels = np.empty(n, dtype=np.int64)
        self.second = np.empty(n, dtype=np.int64)
        self.d3 = np.empty(n)
        self.d0 = np.empty(n)
        self.due = np.empty(n)
        self.drift = 0.0
        sort_centers_into(c, self.axis, self.order, self.sp)
        _search_all(x, self.px, c, self.order, self.sp, self.labels, self.second, self.d3,
                    self.d0, self.due)

    def forget(self, moved: np.ndarray) -> None:
        """These points were moved by hand: search them next time (their bounds are void)."""
        self.due[moved] = -np.inf
        self.d3[moved] = -np.inf

    def relabel(self, c: np.ndarray, travel: float, X: np.ndarray, W: np.ndarray,
                S: np.ndarray, N: np.ndarray) -> int:
        self.drift += 2.0 * travel
        sort_centers_into(c, self.axis, self.order, self.sp)
        return _relabel(self.x, X, W, self.px, c, self.order, self.sp, self.drift, self.labels,
                        self.second, self.d3, self.d0, self.due, S, N)


class _Plain:
    """The labelling step of points of any dimension: every centre, every time."""

    def __init__(self, x: np.ndarray, w: np.ndarray, c: np.ndarray) -> None:
        self.x = x
        self.labels = assign(x, c)[0]

    def forget(self, moved: np.ndarray) -> None:
        pass

    def relabel(self, c: np.ndarray, travel: float, X: np.ndarray, W: np.ndarray,
                S: np.ndarray, N: np.ndarray) -> int:
        return _relabel_plain(self.x, X, W, c, self.labels, S, N)


def lloyd(x: np.ndarray, w: np.ndarray | None, centers: np.ndarray, *, tol: float = 1e-4,
          max_iter: int = 300, start_iter: int = 0,
          on_iter: Callable[[int, np.ndarray, list[tuple[int, float, int]]], object] | None = None,
          bounds: bool = True, fixed: np.ndarray | None = None) -> LloydResult:
    """Weighted Lloyd on points ``x`` (``(n, d)``, whole weights ``w``, None: all 1) from
    ``centers``.

    The points are taken in fixed point (:func:`fixed_point`: a change of at most
    ``2**-(F+1)`` per coordinate, below 1e-9 for collections of a billion pixels). Stops by the
    rule in the module docstring (``tol`` relative, as scikit-learn's; ``tol=0`` runs to zero
    label changes). ``start_iter`` is the number of updates already done (a resumed run counts
    on from it; ``max_iter`` counts all of them). After each update ``it`` that the run goes
    on from, ``on_iter(it, centers, history)`` is called with the new centres and this call's
    history so far: one ``(it, shift, changed)`` row per update (the summed squared centre
    shift, and how many labels the new centres changed). Saving ``centers`` and ``it`` there
    is a complete checkpoint. ``bounds=False`` labels points without bounds (the same
    result, slower: for comparisons). ``fixed`` (``(K,)`` booleans) marks the centres that
    never move (see the module docstring).
    """
    w = np.ones(len(x)) if w is None else np.ascontiguousarray(w, np.float64)
    X, W, f = fixed_point(x, w)
    scale = 2.0 ** -f
    xq = X * scale  # the points the run works on (exact in float64)
    c = np.array(centers, dtype=np.float64, order="C")
    if c.ndim != 2 or c.shape[1] != xq.shape[1]:
        raise ValueError(f"centers of shape {c.shape} do not match points of shape {xq.shape}")
    threshold = tolerance(xq, w, tol)
    held = fixed_mask(fixed, len(c))
    step = (_Bounded(xq, w, c) if bounds and xq.shape[1] in BOUNDED_DIMS
            else _Plain(xq, w, c))
    S = np.empty(c.shape, dtype=np.int64)
    N = np.empty(len(c), dtype=np.int64)
    _sums(X, W, step.labels, S, N)
    new = np.empty_like(c)
    moved = np.empty(len(c), dtype=np.int64)
    history: list[tuple[int, float, int]] = []
    it = start_iter
    stop = "max_iter"
    while it < max_iter:
        n_empty = _means(S, N, c, scale, new, held)
        if n_empty:  # the farthest points refill the empty clusters, then the means again
            n_moved = _relocate(xq, X, W, step.labels, c, S, N, moved, held)
            step.forget(moved[:n_moved])
            _means(S, N, c, scale, new, held)
        shift, travel = _shift(new, c)
        c, new = new, c
        it += 1
        changed = step.relabel(c, travel, X, W, S, N)
        history.append((it, float(shift), int(changed)))
        if changed == 0 and n_empty == 0:  # a fixed point (whatever tol says)
            stop = "labels"
            break
        if tol > 0 and shift <= threshold:
            stop = "tol"
            break
        if on_iter is not None:
            on_iter(it, c, history)
    labels = step.labels
    return LloydResult(centers=c, labels=labels, inertia=float(objective(xq, w, labels, c)),
                       n_iter=it, stop=stop, history=history)
