"""k-means from one or several starts: seeding, then Lloyd, keeping the lowest inertia.

Lloyd is :func:`streamq.kmeans.bounded.lloyd`; for colours (3-d points) and up to
``CELLS_MAX_K`` centres, its cell-by-cell form :func:`streamq.kmeans.filtering.lloyd_cells`
(the same result bit for bit, faster on a histogram's few hundred thousand colours, and
cheaper to compile), on the grid k-means++ has made already.

``fixed`` centres (``(F, d)``, colours a palette must keep) are the first ``F`` centres of
every start and never move: k-means++ starts from them, Lloyd moves only the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamq.kmeans.bounded import LloydResult, lloyd
from streamq.kmeans.filtering import CellPoints, lloyd_cells
from streamq.kmeans.plusplus import cell_layout, kmeans_plusplus

__all__ = ["CELLS_MAX_K", "INITS", "converge", "fixed_first", "initial_centers", "kmeans"]

INITS = ("k-means++", "random")
CELLS_MAX_K = 512  # lloyd_cells bounds every centre against every grid cell: for moderate K


def fixed_first(k: int, n_fixed: int) -> np.ndarray | None:
    """The mask of ``k`` centres whose first ``n_fixed`` are fixed (None when there are none)."""
    if not n_fixed:
        return None
    mask = np.zeros(k, dtype=np.bool_)
    mask[:n_fixed] = True
    return mask


def initial_centers(x: np.ndarray, w: np.ndarray | None, k: int, init: str,
                    rng: np.random.Generator, layout: tuple[np.ndarray, ...] | None = None,
                    fixed: np.ndarray | None = None) -> np.ndarray:
    """``k`` starting centres: greedy weighted k-means++, or ``random`` (``k`` distinct points
    drawn with probability proportional to their weights, kept in point order). ``layout`` is
    :func:`streamq.kmeans.plusplus.cell_layout` of 3-d ``x`` when the caller has it. With
    ``fixed`` centres, they come first and only ``k - F`` are chosen (k-means++ from them)."""
    if init == "k-means++":
        return kmeans_plusplus(x, w, k, rng, layout, fixed)
    if init == "random":
        held = np.zeros((0, np.shape(x)[1])) if fixed is None else np.asarray(fixed, np.float64)
        p = None if w is None else np.asarray(w, np.float64) / np.sum(w)
        pick = np.sort(rng.choice(len(x), size=k - len(held), replace=False, p=p))
        return np.concatenate([held, np.asarray(x, np.float64)[pick]])
    raise ValueError(f"unknown init {init!r}, expected one of {', '.join(map(repr, INITS))}")


def converge(x: np.ndarray, w: np.ndarray | None, centers: np.ndarray, *,
             layout: tuple[np.ndarray, ...] | None = None, n_threads: int = 1,
             cells: CellPoints | None = None, **kwargs: Any) -> LloydResult:
    """Lloyd from ``centers`` (``kwargs`` as :func:`~streamq.kmeans.bounded.lloyd`'s:
    ``tol``, ``max_iter``, ``start_iter``, ``on_iter``, ``fixed``) by whichever of its two equal forms is
    faster: :func:`~streamq.kmeans.filtering.lloyd_cells` for colours (3-d points) and up to
    ``CELLS_MAX_K`` centres, on ``cells`` (:class:`~streamq.kmeans.filtering.CellPoints` of
    ``x`` and ``w``, for runs that share them) or else ``layout``
    (:func:`~streamq.kmeans.plusplus.cell_layout` of ``x``, computed when None), on
    ``n_threads``; else the bounds of :func:`~streamq.kmeans.bounded.lloyd`, on one thread.
    The result is the same either way."""
    x = np.ascontiguousarray(x, np.float64)
    if x.ndim == 2 and x.shape[1] == 3 and len(centers) <= CELLS_MAX_K and len(x) > 0:
        if cells is not None:
            return lloyd_cells(x, w, centers, cells=cells, n_threads=n_threads, **kwargs)
        if layout is None:
            layout = cell_layout(x)
        return lloyd_cells(x, w, centers, order=layout[0], start=layout[1], n_threads=n_threads,
                           **kwargs)
    return lloyd(x, w, centers, **kwargs)


def kmeans(x: np.ndarray, w: np.ndarray | None, k: int, rng: np.random.Generator, *,
           init: str = "k-means++", n_init: int = 1, tol: float = 1e-4,
           max_iter: int = 300, fixed: np.ndarray | None = None) -> LloydResult:
    """Weighted k-means of the distinct points ``x``: ``n_init`` starts from ``rng`` (drawn
    one after the other), each run by :func:`streamq.kmeans.bounded.lloyd` (or its equal
    :func:`~streamq.kmeans.filtering.lloyd_cells`, see above); the lowest inertia wins (the
    first on ties). With at most ``k`` points, every point is a centre and the rest
    repeat the first.

    ``fixed`` (``(F, d)``, ``F < k``): the first ``F`` centres, held where they are; with at
    most ``k - F`` points, every point is one of the other centres.
    """
    x = np.ascontiguousarray(x, np.float64)
    cells = x.ndim == 2 and x.shape[1] == 3 and k <= CELLS_MAX_K and len(x) > 0
    layout = cell_layout(x) if cells else None
    held = None if fixed is None else np.asarray(fixed, np.float64).reshape(-1, x.shape[1])
    n_fixed = 0 if held is None else len(held)
    mask = fixed_first(k, n_fixed)
    if len(x) <= k - n_fixed:
        c = np.concatenate([x, np.repeat(x[:1], k - n_fixed - len(x), axis=0)])
        if held is not None:
            c = np.concatenate([held, c])
        if layout is not None:
            return lloyd_cells(x, w, c, max_iter=0, order=layout[0], start=layout[1], fixed=mask)
        return lloyd(x, w, c, max_iter=0, fixed=mask)
    best: LloydResult | None = None
    shared = None if layout is None else CellPoints(x, w, layout[0], layout[1])  # every start's
    for _ in range(n_init):
        start = initial_centers(x, w, k, init, rng, layout, held)
        result = converge(x, w, start, cells=shared, tol=tol, max_iter=max_iter, fixed=mask)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best
