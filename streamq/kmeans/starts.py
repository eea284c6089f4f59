"""k-means from one or several starts: seeding, then Lloyd, keeping the lowest inertia."""

from __future__ import annotations

import numpy as np

from streamq.kmeans.bounded import LloydResult, lloyd
from streamq.kmeans.plusplus import kmeans_plusplus

__all__ = ["INITS", "initial_centers", "kmeans"]

INITS = ("k-means++", "random")


def initial_centers(x: np.ndarray, w: np.ndarray | None, k: int, init: str,
                    rng: np.random.Generator) -> np.ndarray:
    """``k`` starting centres: greedy weighted k-means++, or ``random`` (``k`` distinct points
    drawn with probability proportional to their weights, kept in point order)."""
    if init == "k-means++":
        return kmeans_plusplus(x, w, k, rng)
    if init == "random":
        p = None if w is None else np.asarray(w, np.float64) / np.sum(w)
        return np.asarray(x, np.float64)[np.sort(rng.choice(len(x), size=k, replace=False, p=p))]
    raise ValueError(f"unknown init {init!r}, expected one of {', '.join(map(repr, INITS))}")


def kmeans(x: np.ndarray, w: np.ndarray | None, k: int, rng: np.random.Generator, *,
           init: str = "k-means++", n_init: int = 1, tol: float = 1e-4,
           max_iter: int = 300) -> LloydResult:
    """Weighted k-means of the distinct points ``x``: ``n_init`` starts from ``rng`` (drawn
    one after the other), each run by :func:`streamq.kmeans.bounded.lloyd`; the lowest inertia
    wins (the first on ties). With at most ``k`` points, every point is a centre and the rest
    repeat the first.
    """
    x = np.ascontiguousarray(x, np.float64)
    if len(x) <= k:
        c = np.concatenate([x, np.repeat(x[:1], k - len(x), axis=0)])
        return lloyd(x, w, c, max_iter=0)
    best: LloydResult | None = None
    for _ in range(n_init):
        start = initial_centers(x, w, k, init, rng)
        result = lloyd(x, w, start, tol=tol, max_iter=max_iter)
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best
