"""Weighted greedy k-means++ seeding (scikit-learn's rule), deterministic from one generator.

Each step draws ``2 + int(log K)`` candidates with probability ``w * D(x)**2`` and keeps the
one that lowers the potential ``sum(w * D**2)`` most (Arthur and Vassilvitskii's k-means++ in
scikit-learn's greedy form, with sample weights). Every random number comes from one NumPy
``Generator``: one uniform for the first centre, then a ``(K, trials)`` block.

For 3-d points (colours) the points are grouped by the cell of a 16x16x16 grid, each cell
knowing its bounding box and its largest current distance, so a candidate skips the cells it
cannot bring closer: the same centres as the plain loop over every point, in the grid's
point order (:func:`cell_order`). Points of other dimensions (image descriptors) take the
plain loop in their own order; for 4-d points (premultiplied RGBA) that loop's very centres
come from a search tree instead of a scan of every point for every candidate
(:func:`_kmeanspp_tree`).

With ``fixed`` centres (colours a palette must keep) the seeding starts from them instead of
a first drawn point: every point's distance is its distance to the nearest fixed centre, and
the greedy rule adds the other ``K - F`` centres.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from streamq.kmeans.nearest import BOUND_EPS

__all__ = ["cell_layout", "cell_order", "kmeans_plusplus", "tree_layout"]


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


def _bounds(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest value of each column of ``(n, d)`` points, column by column:
    NumPy's reduction over axis 0 of so narrow an array is 12x slower (60 against 5 ms on
    2.3 M points of 3 columns)."""
    return (np.array([x[:, t].min() for t in range(x.shape[1])]),
            np.array([x[:, t].max() for t in range(x.shape[1])]))


def cell_layout(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, start, grid, low, scale)``: the points sorted by grid cell (stable), the
    occupied cells' starts (with the end appended), ``grid`` (cell -> occupied cell number,
    -1 when empty), and ``low``, ``scale`` (a point's cell along axis ``t`` is
    ``floor((x - low[t]) * scale[t])``, clipped to the grid). In NumPy: no compilation."""
    x = np.ascontiguousarray(x, np.float64)
    cells = _CELLS
    low, high = _bounds(x) if len(x) else (np.zeros(3), np.zeros(3))
    span = high - low
    scale = np.zeros(3)
    for t in range(3):
        if span[t] > 0:
            scale[t] = cells / span[t]
    cell = np.zeros(len(x), dtype=np.int16)
    q = np.empty(len(x))  # one work array, in place (a few MB of new memory, not ~100)
    for t in range(3):
        np.subtract(x[:, t], low[t], out=q)
        np.multiply(q, scale[t], out=q)
        np.floor(q, out=q)
        np.clip(q, 0, cells - 1, out=q)
        cell *= np.int16(cells)
        cell += q.astype(np.int16)
    order = np.argsort(cell, kind="stable").astype(np.int64, copy=False)
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


@numba.njit(nogil=True, cache=True)
def _kmeanspp_tree(x: np.ndarray, w: np.ndarray, order: np.ndarray, xs: np.ndarray,
                   ws: np.ndarray, pfirst: np.ndarray, pend: np.ndarray, cfirst: np.ndarray,
                   cend: np.ndarray, lo: np.ndarray, hi: np.ndarray, k: int, i0: int,
                   uniforms: np.ndarray, chosen: np.ndarray, closest: np.ndarray,
                   cs: np.ndarray, cum: np.ndarray, cmax: np.ndarray, stack: np.ndarray,
                   visited: np.ndarray, picks: np.ndarray, estimates: np.ndarray,
                   firsts: np.ndarray) -> None:
    """:func:`_kmeanspp_plain`'s centres, bit for bit, without its scan of every point for
    every candidate: the points also sit in the tree of :func:`tree_layout` (``xs``, ``ws``
    in its ``order``; node ``v`` holds the points ``pfirst[v]:pend[v]`` in the box
    ``lo[v]``..``hi[v]``, its children are the nodes ``cfirst[v]:cend[v]``, none for a
    leaf, every child numbered after its parent), each node knowing its points' largest
    current distance (``cmax``), so a candidate only visits the nodes whose box is nearer
    than that.

    Why the centres are the plain loop's: what decides a draw is computed as the plain loop
    computes it, in the points' own order: ``cum`` holds the running sums of ``w * closest``
    (the plain loop's ``acc``; the last is its potential), so a draw is a binary search in
    it, redone after each centre from the first point whose distance changed. A
    candidate's potential (the plain loop sums ``w * min(closest, d)`` over every point)
    is estimated as the potential less the gain of the points it brings closer: the same up
    to rounding, at most ``unit * pot`` apart (each of the sums over at most ``n + 1``
    terms, and their difference, is within ``(n + 2) * 2**-53`` of the terms' total, itself
    at most the potential: ``unit`` takes 8 times that). A candidate ahead of every other
    by more than twice that bound is the plain loop's choice; when several are that close,
    their potentials are summed exactly as the plain loop sums them (lattice colours tie
    often; that sum starts from the running sum before the first point the candidate brings
    closer, the plain loop's own partial sum up to there). A candidate at the coordinates of
    an earlier one has its potential exactly and never wins (the plain loop keeps the first
    of equals).

    ``closest`` (the points' order) is each point's squared distance to the first centre
    ``i0`` (computed here) or, with ``i0 = -1``, to the fixed centres already; ``cs`` is the
    same in the tree's order. ``cum`` (one per point), ``cmax``, ``stack``, ``visited`` (one
    per node), ``picks``, ``estimates`` and ``firsts`` (one per trial) are work arrays: a
    NumPy allocation in compiled code costs compilation time. Weights are at least 0 (the
    rounding bound holds for sums of terms of one sign).
    """
    n, d = x.shape
    nodes = pfirst.shape[0]
    trials = uniforms.shape[1]
    unit = 8.0 * (n + 4) * 2.0 ** -53
    chosen[0] = i0
    if i0 >= 0:
        for i in range(n):
            s = 0.0
            for u in range(d):
                e = x[i, u] - x[i0, u]
                s += e * e
            closest[i] = s
    for p in range(n):
        cs[p] = closest[order[p]]
    for v in range(nodes - 1, -1, -1):  # children before their parents
        m = 0.0
        if cfirst[v] == cend[v]:
            for p in range(pfirst[v], pend[v]):
                m = max(m, cs[p])
        else:
            for ch in range(cfirst[v], cend[v]):
                m = max(m, cmax[ch])
        cmax[v] = m
    first = 0  # cum is stale from this point on
    for c in range(1, k):
        acc = cum[first - 1] if first > 0 else 0.0
        for i in range(first, n):
            acc += w[i] * closest[i]
            cum[i] = acc
        first = n
        pot = cum[n - 1]
        for t in range(trials + 1):  # the trials, then the best of them becomes a centre
            apply = t == trials
            if apply:
                best = 0  # a potential of 0: every candidate's is 0, the first wins
                if pot > 0.0:
                    lowest = np.inf
                    for s in range(trials):
                        if picks[s] >= 0:
                            lowest = min(lowest, estimates[s])
                    bar = lowest + 2.0 * (unit * pot + 1e-300)
                    close = 0
                    for s in range(trials):
                        if picks[s] >= 0 and estimates[s] <= bar:
                            close += 1
                            best = s
                    if close > 1:  # too close to call: the plain loop's sums
                        best_p = np.inf
                        for s in range(trials):
                            if picks[s] < 0 or estimates[s] > bar:
                                continue
                            i1 = firsts[s]  # the terms before it are the running sum's
                            total = cum[i1 - 1] if i1 > 0 else 0.0
                            for i in range(i1, n):
                                dd = 0.0
                                for u in range(d):
                                    e = x[i, u] - x[picks[s], u]
                                    dd += e * e
                                total += w[i] * min(closest[i], dd)
                            if total < best_p:
                                best_p = total
                                best = s
                j = picks[best]
            else:
                # the draw: the first point whose running sum exceeds the target (the last
                # point with any mass when rounding runs past the end)
                target = uniforms[c, t] * pot
                a = 0
                b = n
                while a < b:
                    mid = (a + b) // 2
                    if cum[mid] > target:
                        b = mid
                    else:
                        a = mid + 1
                j = a
                if j == n:
                    j = n - 1
                    for i in range(n - 1, -1, -1):
                        if w[i] * closest[i] > 0:
                            j = i
                            break
                picks[t] = j
                for s in range(t):  # at an earlier candidate's coordinates: no contest
                    if picks[s] >= 0:
                        same = True
                        for u in range(d):
                            same = same and x[picks[s], u] == x[j, u]
                        if same:
                            picks[t] = -1
                            break
                if picks[t] < 0:
                    continue
            # the gain of j: the nodes whose box is nearer than their farthest point
            gain = 0.0
            improved = n  # the first point (in the points' order) j brings closer
            top = 0
            stack[0] = 0
            seen = 0
            while top >= 0:
                v = stack[top]
                top -= 1
                box = 0.0
                for u in range(d):
                    y = x[j, u]
                    g = lo[v, u] - y if y < lo[v, u] else (y - hi[v, u] if y > hi[v, u] else 0.0)
                    box += g * g
                if box > cmax[v] * (1.0 + 1e-9) + BOUND_EPS:
                    continue  # (relative slack: rounding never prunes a point that counts)
                if cfirst[v] < cend[v]:
                    for ch in range(cfirst[v], cend[v]):
                        top += 1
                        stack[top] = ch
                    if apply:
                        visited[seen] = v
                        seen += 1
                    continue
                changed = False
                for p in range(pfirst[v], pend[v]):
                    dd = 0.0
                    for u in range(d):
                        e = xs[p, u] - x[j, u]
                        dd += e * e
                    if dd < cs[p]:
                        if apply:
                            cs[p] = dd
                            closest[order[p]] = dd
                            first = min(first, order[p])
                            changed = True
                        else:
                            gain += ws[p] * (cs[p] - dd)
                            improved = min(improved, order[p])
                if changed:
                    m = 0.0
                    for p in range(pfirst[v], pend[v]):
                        m = max(m, cs[p])
                    cmax[v] = m
            if apply:
                for q in range(seen - 1, -1, -1):  # the visited parents, after their children
                    v = visited[q]
                    m = 0.0
                    for ch in range(cfirst[v], cend[v]):
                        m = max(m, cmax[ch])
                    cmax[v] = m
                chosen[c] = j
            else:
                estimates[t] = pot - gain
                firsts[t] = improved


TREE_FROM = 200_000  # point-candidate distances: fewer take the plain loop
TREE_SETUP = 100  # the tree's set-up, in point-candidate distances per point


def _tree_pays(n: int, k: int, trials: int) -> bool:
    """Whether :func:`_plain_by_tree` is worth its set-up (~0.2 ms and ~0.25 us a point, as
    much as the plain loop's ~0.05 ms and ~100 distances a point): when the plain loop's
    ``n * k * trials`` distances are many more."""
    return n * k * trials >= TREE_FROM + TREE_SETUP * n


def tree_layout(x: np.ndarray, bits: int | None = None) -> tuple[np.ndarray, ...]:
    """The tree :func:`_kmeanspp_tree` searches, from the points ``(n, d)``:
    ``(order, xs, pfirst, pend, cfirst, cend, lo, hi)``.

    Each axis is cut into ``2 ** bits`` equal steps over the points' range (``bits`` from
    the number of points when None: leaves of a few points); the points are sorted by the
    Morton code of their step on every axis (stable), so every prefix of the code is a node
    holding a run of them: the root, ``2 ** d`` children a node at most, ``bits`` levels
    below. Nodes are numbered level by level (children after parents), each with its run of
    points (``pfirst``..``pend`` in ``order``), its children (``cfirst``..``cend``, empty
    for leaves) and the bounding box of its points (``lo``, ``hi``). In NumPy: no
    compilation."""
    x = np.ascontiguousarray(x, np.float64)
    n, d = x.shape
    if bits is None:
        bits = int(min(max(math.ceil(math.log(max(n, 1) / 4) / (d * math.log(2))), 2), 5))
    if bits * d > 62:
        raise ValueError(f"tree_layout: {bits} bits on {d} axes do not fit a 64-bit code")
    low, high = _bounds(x)
    span = high - low
    scale = np.where(span > 0, (1 << bits) / np.where(span > 0, span, 1.0), 0.0)
    q = np.clip(np.floor((x - low) * scale), 0, (1 << bits) - 1).astype(np.int64)
    code = np.zeros(n, np.int64)
    for b in range(bits - 1, -1, -1):
        for t in range(d):
            code = (code << 1) | ((q[:, t] >> b) & 1)
    order = np.argsort(code, kind="stable").astype(np.int64)
    code = code[order]
    xs = np.ascontiguousarray(x[order])
    starts = []
    for level in range(bits + 1):
        key = code >> (d * (bits - level))
        starts.append(np.concatenate([[0], np.flatnonzero(key[1:] != key[:-1]) + 1]).astype(np.int64))
    offset = np.cumsum([0] + [len(s) for s in starts])
    ends = [np.append(s[1:], n).astype(np.int64) for s in starts]
    cfirst = np.zeros(offset[-1], np.int64)
    cend = np.zeros(offset[-1], np.int64)
    for level in range(bits):
        below = starts[level + 1]
        cfirst[offset[level]:offset[level + 1]] = offset[level + 1] + np.searchsorted(below, starts[level])
        cend[offset[level]:offset[level + 1]] = offset[level + 1] + np.searchsorted(below, ends[level])
    lo = np.concatenate([np.minimum.reduceat(xs, s, axis=0) for s in starts])
    hi = np.concatenate([np.maximum.reduceat(xs, s, axis=0) for s in starts])
    return (order, xs, np.concatenate(starts), np.concatenate(ends), cfirst, cend,
            np.ascontiguousarray(lo), np.ascontiguousarray(hi))


def _plain_by_tree(x: np.ndarray, w: np.ndarray, k: int, i0: int, uniforms: np.ndarray,
                   chosen: np.ndarray, closest: np.ndarray) -> None:
    """:func:`_kmeanspp_plain` (the same arguments, the same centres) by
    :func:`_kmeanspp_tree` on :func:`tree_layout`."""
    order, xs, pfirst, pend, cfirst, cend, lo, hi = tree_layout(x)
    nodes = len(pfirst)
    trials = uniforms.shape[1]
    _kmeanspp_tree(x, w, order, xs, np.ascontiguousarray(w[order]), pfirst, pend, cfirst, cend,
                   lo, hi, k, i0, uniforms, chosen, closest, np.empty(len(x)),
                   np.empty(len(x)), np.empty(nodes), np.empty(nodes, np.int64),
                   np.empty(nodes, np.int64), np.empty(trials, np.int64), np.empty(trials),
                   np.empty(trials, np.int64))


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
        plain = (_plain_by_tree if x.shape[1] == 4 and _tree_pays(len(x), m, trials)
                 else _kmeanspp_plain)
        plain(x, w, m, -1 if held is not None else _first(w, first), uniforms, chosen, closest)
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
