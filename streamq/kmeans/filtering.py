"""Weighted Lloyd on colour points, labelled cell by cell: the result of
:func:`streamq.kmeans.bounded.lloyd`, bit for bit, in one compiled loop.

For 3-d points (a colour histogram of up to a few million distinct colours) the labelling
step of each iteration goes by the cells of a grid over the points (the ``16**3`` grid of
:func:`streamq.kmeans.plusplus.cell_order`): for a cell's bounding box, every centre gets a
lower and an upper bound on its squared distance to any point of the box, and only the
centres whose lower bound is within the smallest upper bound are *candidates* (the
filtering algorithm of Kanungo et al. on a fixed grid). A cell with one candidate takes it
for all its points without looking at them; in a cell with several, each point takes the
nearest candidate (the lowest index on ties). Every other centre is farther from every
point of the box by more than the rounding slack, so the labels are those of an ``argmin``
over all centres, as in :mod:`streamq.kmeans.bounded`. A cell whose single candidate was
clear by a margin is not looked at again until the centres have travelled that margin.

Everything else is :func:`~streamq.kmeans.bounded.lloyd`'s, done the same way in the same
order: fixed-point points and exact integer sums (:func:`~streamq.kmeans.bounded.fixed_point`),
centres ``S / N * 2**-F``, the summed squared shift, scikit-learn's relative ``tol``
(:func:`~streamq.kmeans.bounded.tolerance`), the empty-cluster rule (the farthest points from
their own centres, ties to the lowest index) and the inertia summed in point order. So the
centres, labels, inertia, iteration count, stopping reason and history are equal; tests
check it against ``bounded.lloyd``. One compiled function runs the whole loop: on the
per-image path (50 k to 500 k colours, K = 2 to 256) it compiles in about a second and
runs several times faster than the bounds, which pay a pass over every point each iteration.
With ``n_threads``, the loop's two compiled parts (the update and the labelling of a share
of the cells) are run from Python, the labelling on that many threads: the same result.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numba
import numpy as np

from streamq.kmeans.bounded import LloydResult, fixed_bits, fixed_mask, objective, tolerance
from streamq.kmeans.nearest import BOUND_EPS

__all__ = ["CellPoints", "lloyd_cells"]



@numba.njit(nogil=True, cache=True)
def _update(c: np.ndarray, new: np.ndarray, S: np.ndarray, N: np.ndarray, scale: float,
            fixed: np.ndarray, state: np.ndarray, resume: bool, max_iter: int) -> int:
    """One centre update from the sums ``S``, ``N``: returns -1 (done: ``state`` =
    ``[updates done, drift, empty clusters, summed squared shift, clusters refilled]``),
    0 (``max_iter`` updates done already) or 3 (clusters left empty: ``new`` holds the means,
    ``state[2]`` how many; the caller refills them and calls again with ``resume``)."""
    k = c.shape[0]
    if int(state[0]) >= max_iter:
        return 0
    # the centres of the sums (an empty cluster keeps its centre)
    n_empty = 0
    for j in range(k):
        if fixed[j]:
            for t in range(3):
                new[j, t] = c[j, t]
        elif N[j] > 0:
            for t in range(3):
                new[j, t] = np.float64(S[j, t]) / np.float64(N[j]) * scale
        else:
            n_empty += 1
            for t in range(3):
                new[j, t] = c[j, t]
    if resume:  # the empty clusters were refilled: these are the means after it
        n_empty = int(state[2])
    elif n_empty:
        state[2] = n_empty
        return 3
    shift = 0.0
    top = 0.0
    for j in range(k):
        q = 0.0
        for t in range(3):
            e = new[j, t] - c[j, t]
            q += e * e
        shift += q
        top = max(top, q)
    for j in range(k):
        for t in range(3):
            c[j, t] = new[j, t]
    state[0] += 1
    state[1] += 2.0 * math.sqrt(top)  # twice the largest centre travel, summed over the updates
    state[3] = shift
    state[4] = n_empty
    return -1


@numba.njit(nogil=True, cache=True)
def _record(state: np.ndarray, changed: int, shifts: np.ndarray, changes: np.ndarray,
            use_tol: bool, threshold: float) -> int:
    """After the labelling that follows an update: its shift and label changes recorded, and
    2 (a fixed point: no label changed, no cluster refilled; whatever ``tol`` says), 1
    (``tol``) or -1 (go on)."""
    it = int(state[0])
    shifts[it - 1] = state[3]
    changes[it - 1] = changed
    if changed == 0 and state[4] == 0:
        return 2
    if use_tol and state[3] <= threshold:
        return 1
    return -1


@numba.njit(nogil=True, cache=True)
def _label(x: np.ndarray, X: np.ndarray, W: np.ndarray, start: np.ndarray, lo: np.ndarray,
           hi: np.ndarray, c: np.ndarray, labels: np.ndarray, S: np.ndarray, N: np.ndarray,
           cand: np.ndarray, mind: np.ndarray, pure: np.ndarray, due: np.ndarray, drift: float,
           part: int, parts: int, block: int) -> int:
    """Label the points of the cells of blocks ``part``, ``part + parts``, ... (``block``
    cells each) with their exact nearest centre, moving the weight of every point that
    changes cluster in ``S``, ``N`` (integers: the sums do not depend on the order of the
    moves, so parts may run in threads, each on sums of its own, added up after). Returns
    how many labels changed. ``cand``, ``mind`` are work arrays (``k`` each) of this part."""
    k = c.shape[0]
    nc = start.shape[0] - 1
    changed = 0
    for first in range(part * block, nc, parts * block):
        for b in range(first, min(first + block, nc)):
            if pure[b] >= 0 and due[b] > drift:
                continue
            ub = np.inf
            for j in range(k):
                lower = 0.0
                upper = 0.0
                for t in range(3):
                    v = c[j, t]
                    lo_t = lo[b, t]
                    hi_t = hi[b, t]
                    g = lo_t - v if v < lo_t else (v - hi_t if v > hi_t else 0.0)
                    lower += g * g
                    f = max(v - lo_t, hi_t - v)
                    upper += f * f
                mind[j] = lower
                ub = min(ub, upper)
            m = 0
            second = np.inf
            for j in range(k):
                if mind[j] <= ub + BOUND_EPS:
                    cand[m] = j
                    m += 1
                else:
                    second = min(second, mind[j])
            if m == 1:  # one candidate for the whole box
                due[b] = drift + (math.sqrt(second) - math.sqrt(ub)) - BOUND_EPS
                if pure[b] == cand[0]:
                    continue
            else:
                due[b] = -np.inf
            same = -2  # the label of every point so far (-2: none yet, -1: several)
            for p in range(start[b], start[b + 1]):
                arg = cand[0]
                if m > 1:
                    best = np.inf
                    for r in range(m):
                        j = cand[r]
                        d0 = x[p, 0] - c[j, 0]
                        d1 = x[p, 1] - c[j, 1]
                        d2 = x[p, 2] - c[j, 2]
                        s = d0 * d0 + d1 * d1 + d2 * d2
                        if s < best:
                            best = s
                            arg = j
                a = labels[p]
                if a != arg:
                    if a >= 0:
                        N[a] -= W[p]
                        for t in range(3):
                            S[a, t] -= W[p] * X[p, t]
                    N[arg] += W[p]
                    for t in range(3):
                        S[arg, t] += W[p] * X[p, t]
                    labels[p] = arg
                    changed += 1
                if same == -2:
                    same = arg
                elif arg != same:
                    same = -1
            pure[b] = max(same, -1)
    return changed


@numba.njit(nogil=True, cache=True)
def _run(x: np.ndarray, X: np.ndarray, W: np.ndarray, start: np.ndarray, lo: np.ndarray,
         hi: np.ndarray, c: np.ndarray, new: np.ndarray, scale: float, threshold: float,
         use_tol: bool, max_iter: int, labels: np.ndarray, shifts: np.ndarray, changes: np.ndarray,
         S: np.ndarray, N: np.ndarray, cand: np.ndarray, mind: np.ndarray, pure: np.ndarray,
         due: np.ndarray, state: np.ndarray, resume: bool, fixed: np.ndarray) -> int:
    """Lloyd on points ``x`` (fixed-point values ``X``, weights ``W``) sorted by cell (cell
    ``b`` holds points ``start[b]:start[b+1]`` in the box ``lo[b]``..``hi[b]``), from the
    centres ``c`` (updated in place) and ``state`` (:func:`_update`'s), on one thread.

    Returns 0 (``max_iter`` reached), 1 (``tol``), 2 (no label changed) or 3: an update left
    clusters empty; ``new`` holds its means and ``state[2]`` the number of empty clusters,
    and the caller refills them (``labels``, ``S``, ``N``; the cells of the moved points get
    ``pure = -1``) and calls again with ``resume``. ``labels`` (all -1 before the first call),
    ``shifts`` and ``changes`` (one per update) are filled. The rest are work arrays,
    allocated by the caller (every NumPy allocation in compiled code costs tenths of a second
    of compilation): ``S``, ``N`` zeros; ``pure`` (the label of every point of a cell, or -1)
    all -1; ``due`` (a pure cell needs no look while the drift stays below it) all -inf.
    A centre ``j`` with ``fixed[j]`` keeps its place: it takes its nearest points like any
    other, but its update leaves it where it is, and it is never counted as empty.
    """
    update = state[0] > 0 or resume  # the first call labels the points before any update
    nc = start.shape[0] - 1
    while True:
        if update:
            stop = _update(c, new, S, N, scale, fixed, state, resume, max_iter)
            if stop >= 0:
                return stop
            resume = False
        # every cell, as one part (computed, not literal: numba compiles literals apart)
        changed = _label(x, X, W, start, lo, hi, c, labels, S, N, cand, mind, pure, due,
                         state[1], nc - nc, nc - nc + 1, max(nc, 1))
        if update:
            stop = _record(state, changed, shifts, changes, use_tol, threshold)
            if stop >= 0:
                return stop
        update = True


_STOP_NAMES = ("max_iter", "tol", "labels")
_REFILL = 3
BLOCK = 16  # cells a thread labels in a row (threads take blocks in turn: the work evens out)


class _Threads:
    """:func:`_run` with the labelling split among ``n`` threads (its compiled parts,
    :func:`_update` and :func:`_label`, release the GIL), each moving weights in sums of its
    own that are added up after each labelling: integers, so the same sums, hence the same
    run, bit for bit, as one thread."""

    def __init__(self, n: int, k: int) -> None:
        import concurrent.futures as cf

        self.n = n
        self.pool = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="streamq-lloyd")
        self.work = [(np.zeros((k, 3), np.int64), np.zeros(k, np.int64), np.empty(k, np.int64),
                      np.empty(k)) for _ in range(n)]

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def run(self, x: np.ndarray, X: np.ndarray, W: np.ndarray, start: np.ndarray,
            lo: np.ndarray, hi: np.ndarray, c: np.ndarray, new: np.ndarray, scale: float,
            threshold: float, use_tol: bool, max_iter: int, labels: np.ndarray,
            shifts: np.ndarray, changes: np.ndarray, S: np.ndarray, N: np.ndarray,
            _cand: np.ndarray, _mind: np.ndarray, pure: np.ndarray, due: np.ndarray,
            state: np.ndarray, resume: bool, fixed: np.ndarray) -> int:
        def part(i: int) -> int:
            dS, dN, cand, mind = self.work[i]
            dS[:] = 0
            dN[:] = 0
            return int(_label(x, X, W, start, lo, hi, c, labels, dS, dN, cand, mind, pure, due,
                              float(state[1]), i, self.n, BLOCK))

        update = state[0] > 0 or resume
        while True:
            if update:
                stop = _update(c, new, S, N, scale, fixed, state, resume, max_iter)
                if stop >= 0:
                    return stop
                resume = False
            changed = sum(self.pool.map(part, range(self.n)))
            for dS, dN, _, _ in self.work:
                S += dS
                N += dN
            if update:
                stop = _record(state, changed, shifts, changes, use_tol, threshold)
                if stop >= 0:
                    return stop
            update = True


@numba.njit(nogil=True, cache=True)
def _arrange(x: np.ndarray, w: np.ndarray, order: np.ndarray, start: np.ndarray, up: float,
             scale: float, xq: np.ndarray, xs: np.ndarray, Xs: np.ndarray, Ws: np.ndarray,
             lo: np.ndarray, hi: np.ndarray) -> None:
    """:func:`~streamq.kmeans.bounded.fixed_point` of the points (``round(x * up)``, ``up =
    2**F``) and weights, sorted by ``order``, the same values into ``Xs``, ``Ws`` and, times
    ``scale``, into ``xs`` (sorted) and ``xq`` (in point order); each cell's bounding box
    into ``lo``, ``hi`` (``np.minimum.reduceat``'s, as the cells of ``start`` give them)."""
    n = order.shape[0]
    for p in range(n):
        i = order[p]
        Ws[p] = np.int64(w[i])
        for t in range(3):
            v = np.int64(np.rint(x[i, t] * up))
            Xs[p, t] = v
            q = v * scale
            xs[p, t] = q
            xq[i, t] = q
    for b in range(start.shape[0] - 1):
        a, e = start[b], max(start[b + 1], start[b] + 1)  # reduceat: an empty cell is its first
        for t in range(3):
            low = xs[a, t]
            high = xs[a, t]
            for p in range(a + 1, e):
                low = min(low, xs[p, t])
                high = max(high, xs[p, t])
            lo[b, t] = low
            hi[b, t] = high


class CellPoints:
    """Weighted 3-d points arranged for :func:`lloyd_cells`, made once and used by any number
    of runs (at once too, from several threads): their fixed-point values (in the points' own
    order, and sorted by cell with their integer weights), each cell's bounding box, and
    spare label arrays.

    A run on a few million colours otherwise sorts and copies ~0.4 GB of arrays before its
    first iteration and frees them after its last: on a virtual machine that hands freed
    memory back to its host, touching new memory again cost 60-260 ms per 56 MB (measured
    here), more than the iterations of a well-started run.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray | None = None, order: np.ndarray | None = None,
                 start: np.ndarray | None = None) -> None:
        x = np.ascontiguousarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != 3 or not len(x):
            raise ValueError(f"lloyd_cells takes 3-d points, got shape {x.shape}")
        self.w = np.ones(len(x)) if w is None else np.ascontiguousarray(w, np.float64)
        if self.w.shape != (len(x),):
            raise ValueError(f"{self.w.shape} weights given for {len(x)} points")
        f = fixed_bits(x, self.w)
        self.scale = 2.0 ** -f
        if order is None or start is None:  # (any grouping gives the same runs)
            from streamq.kmeans.plusplus import cell_order

            order, start = cell_order(x)
        self.order = np.ascontiguousarray(order, np.int64)
        self.start = np.ascontiguousarray(start, np.int64)
        n, nc = len(x), len(self.start) - 1
        if (self.order.shape != (n,) or nc < 1 or self.start[0] != 0 or self.start[-1] != n
                or np.any(np.diff(self.start) < 0)):
            raise ValueError(f"order of shape {self.order.shape} and start {self.start[:3]}..."
                             f"{self.start[-1:]} are not a grouping of {n} points into cells")
        # fixed_point's values, made in one pass (no temporary arrays; see the class doc)
        self.xq = np.empty((n, 3))  # the points the runs work on (exact in float64)
        self.xs = np.empty((n, 3))  # ... sorted by cell
        self.Xs = np.empty((n, 3), np.int64)
        self.Ws = np.empty(n, np.int64)
        self.lo = np.empty((nc, 3))
        self.hi = np.empty((nc, 3))
        _arrange(x, self.w, self.order, self.start, 2.0**f, self.scale, self.xq, self.xs, self.Xs,
                 self.Ws, self.lo, self.hi)
        self._spread: float | None = None
        self._spare: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.xq)

    def threshold(self, tol: float) -> float:
        """:func:`~streamq.kmeans.bounded.tolerance` of these points (computed once)."""
        if tol == 0:
            return 0.0
        with self._lock:
            if self._spread is None:
                self._spread = tolerance(self.xq, self.w, 1.0)
        return float(tol * self._spread)

    def labels(self) -> np.ndarray:
        """A label array of every point, all -1 (a spare one when there is one)."""
        with self._lock:
            out = self._spare.pop() if self._spare else np.empty(len(self.xq), np.int64)
        out.fill(-1)
        return out

    def give_back(self, labels: np.ndarray) -> None:
        """Return a label array from :meth:`labels` once its run is over."""
        with self._lock:
            self._spare.append(labels)


def lloyd_cells(x: np.ndarray, w: np.ndarray | None, centers: np.ndarray, *, tol: float = 1e-4,
                max_iter: int = 300, order: np.ndarray | None = None,
                start: np.ndarray | None = None, start_iter: int = 0,
                on_iter: Callable[[int, np.ndarray, list[tuple[int, float, int]]], object]
                | None = None, fixed: np.ndarray | None = None, n_threads: int = 1,
                cells: CellPoints | None = None) -> LloydResult:
    """:func:`streamq.kmeans.bounded.lloyd` of 3-d points (the same arguments, checkpoints
    included): the same :class:`~streamq.kmeans.bounded.LloydResult`, bit for bit.

    With ``on_iter`` the compiled loop hands back after every update (its state stays in
    the work arrays) so the hook sees ``(it, centers, history)`` as ``lloyd`` gives them; a
    run resumed from saved ``centers`` and ``start_iter`` labels the points afresh, which
    gives the labels, sums and hence the updates of the unbroken run.

    ``order`` and ``start`` are a grouping of the points into cells, as
    :func:`streamq.kmeans.plusplus.cell_order` returns (computed when None); any grouping
    gives the same result, a compact one gives it sooner. ``cells`` is
    :class:`CellPoints` of ``x`` and ``w`` made before (then ``order`` and ``start`` are its
    own): for several runs on the same points. ``fixed`` is ``lloyd``'s: a mask of the
    centres that never move. ``n_threads`` label the cells in blocks side by side (the same
    result; worth it for a large histogram on otherwise idle cores).
    """
    if cells is None:
        cells = CellPoints(x, w, order, start)
    elif len(cells) != len(x):
        raise ValueError(f"cells of {len(cells)} points given with {len(x)} points")
    c = np.array(centers, dtype=np.float64, order="C")
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"centers of shape {c.shape} do not match points of shape {np.shape(x)}")
    n, k, nc = len(cells), len(c), len(cells.start) - 1
    total = max(max_iter - start_iter, 0)  # updates left to this call
    shifts = np.empty(total)
    changes = np.empty(total, dtype=np.int64)
    S = np.zeros((k, 3), np.int64)
    N = np.zeros(k, np.int64)
    new = np.empty((k, 3))
    pure = np.full(nc, -1, np.int64)
    due = np.full(nc, -np.inf)
    state = np.zeros(5)
    work = (np.empty(k, np.int64), np.empty(k), pure, due, state)

    threshold = cells.threshold(tol)
    held = fixed_mask(fixed, k)
    resume = False
    limit = total if on_iter is None else min(total, 1)  # updates before handing back
    rows: list[tuple[int, float, int]] = []
    threads = _Threads(n_threads, k) if n_threads > 1 else None
    run = _run if threads is None else threads.run
    labels = cells.labels()
    try:
        while True:
            stop = run(cells.xs, cells.Xs, cells.Ws, cells.start, cells.lo, cells.hi, c, new,
                       cells.scale, threshold, tol > 0, limit, labels, shifts, changes, S, N,
                       *work, resume, held)
            if stop == _REFILL:
                _refill(cells.xq, cells.order, cells.start, c, labels, cells.Xs, cells.Ws, S, N,
                        pure, due, held)
                resume = True
                continue
            resume = False
            if stop == 0 and limit < total and on_iter is not None:  # a pause after an update
                i = limit - 1
                rows.append((start_iter + limit, float(shifts[i]), int(changes[i])))
                on_iter(start_iter + limit, c, rows)
                limit += 1
                continue
            break
        out = np.empty(n, dtype=np.int64)
        out[cells.order] = labels
    finally:
        if threads is not None:
            threads.close()
        cells.give_back(labels)
    it = int(state[0])
    history = [(start_iter + i + 1, float(shifts[i]), int(changes[i])) for i in range(it)]
    return LloydResult(centers=c, labels=out, inertia=float(objective(cells.xq, cells.w, out, c)),
                       n_iter=start_iter + it, stop=_STOP_NAMES[stop], history=history)


def _refill(xq: np.ndarray, order: np.ndarray, start: np.ndarray, c: np.ndarray,
            labels: np.ndarray, Xs: np.ndarray, Ws: np.ndarray, S: np.ndarray, N: np.ndarray,
            pure: np.ndarray, due: np.ndarray, fixed: np.ndarray) -> None:
    """Each empty cluster that is not ``fixed``, in order, takes the point farthest from its
    own centre (squared distance, ties to the lowest index; the ranking is made once, before
    any move), with its weight: :mod:`streamq.kmeans.bounded`'s rule, in NumPy (rare: not
    worth compiling)."""
    n = len(order)
    lab = np.empty(n, dtype=np.int64)
    lab[order] = labels
    e = xq - c[lab]
    rank = np.argsort(-(e[:, 0] * e[:, 0] + e[:, 1] * e[:, 1] + e[:, 2] * e[:, 2]), kind="stable")
    where = np.empty(n, dtype=np.int64)  # position of each point in cell order
    where[order] = np.arange(n)
    r = 0
    for j in range(len(N)):
        if N[j] == 0 and not fixed[j]:
            p = where[rank[r]]
            r += 1
            a = labels[p]
            N[a] -= Ws[p]
            S[a] -= Ws[p] * Xs[p]
            N[j] += Ws[p]
            S[j] += Ws[p] * Xs[p]
            labels[p] = j
            b = int(np.searchsorted(start, p, side="right")) - 1
            pure[b] = -1
            due[b] = -np.inf
