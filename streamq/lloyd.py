"""Exact K-Means over every pixel of a collection, out of core, via its colour histogram.

Pixels are 24-bit colours, so a collection of any size has at most 2**24 distinct values.
One Dask pass over all chunks builds the histogram (each task counts a group of chunks
with a compiled loop and returns only the colours it saw); every Lloyd iteration after
that works on the distinct colours with their counts as weights, which is *exactly*
K-Means on all pixels (identical pixels always share a cluster) at a cost bounded by the
number of distinct colours, not of pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from streamq.batches import PixelSource

__all__ = ["collection_histogram", "kmeans_plusplus_weighted", "weighted_lloyd"]

log = logging.getLogger(__name__)

PIXELS_PER_HIST_TASK = 32 * 2**20  # each task zeroes and scans a 128 MiB table: amortise it


def _hist_task(args: tuple[PixelSource, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from streamq.kernels import histogram24
    from streamq.store import open_array

    source, c0, c1 = args
    arr = open_array(source.store, source.array)
    hist = np.zeros(1 << 24, dtype=np.int64)
    for c in range(c0, c1):
        a, b = source.chunk_runs(c)
        if not len(a):
            continue
        lo = c * source.chunk
        data = np.asarray(arr[lo:lo + int(b[-1])])
        for s, e in zip(a, b, strict=True):
            histogram24(data[s:e], hist)
    codes = np.flatnonzero(hist)
    return codes.astype(np.int64), hist[codes]


def collection_histogram(run: Any, source: PixelSource,
                         on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, counts)`` of every distinct colour of the collection (codes sorted)."""
    n_blocks = len(source.weights)
    step = max(1, PIXELS_PER_HIST_TASK // source.chunk)
    groups = [(source, c, min(c + step, n_blocks)) for c in range(0, n_blocks, step)]
    futures = {run.submit(_hist_task, g): g for g in groups}
    total = np.zeros(1 << 24, dtype=np.int64)
    for fut in run.as_completed(futures):
        codes, counts = fut.result()
        total[codes] += counts
        if on_progress:
            g = futures[fut]
            on_progress(g[2] - g[1])
    codes = np.flatnonzero(total)
    return codes.astype(np.int64), total[codes]


def grid_points(rgb: np.ndarray, space: str, k: int, min_per_centre: int = 8
                ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted points that stand for the ``(n, 3)`` uint8 pixels ``rgb`` on a coarse RGB grid.

    Each occupied cell of a grid with 5 bits per channel (32,768 cells) becomes one point:
    the mean of its pixels in ``space``, weighted by their number. Lloyd iterations on these
    points cost ~20x less than on a 1 Mpx sample's distinct colours and land in the same basin
    (a cell is at most 8 levels wide per channel, small against the gaps between K <= 256
    palette colours); the fit uses them to choose among starts, then finishes on the exact
    sample. When the grid leaves fewer than ``min_per_centre`` points per centre (a large K or
    a narrow collection), finer grids are tried, up to every distinct colour.
    """
    from streamq.colorspace import to_space

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    for bits in (5, 6, 7, 8):
        q = (rgb >> (8 - bits)).astype(np.int64)
        key = (q[:, 0] << (2 * bits)) | (q[:, 1] << bits) | q[:, 2]
        cells, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        if len(cells) >= min_per_centre * k:
            break
    x = to_space(rgb, space).astype(np.float64)
    inverse = inverse.reshape(-1)
    means = np.stack([np.bincount(inverse, weights=x[:, j], minlength=len(cells))
                      for j in range(x.shape[1])], axis=1) / counts[:, None]
    return means, counts.astype(np.float64)


def kmeans_plusplus_weighted(x: np.ndarray, w: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding on weighted points (scikit-learn's, with sample weights)."""
    from sklearn.cluster import kmeans_plusplus

    centres, _ = kmeans_plusplus(x, k, sample_weight=w.astype(np.float64), random_state=seed)
    return centres


def weighted_lloyd(x: np.ndarray, w: np.ndarray, centres: np.ndarray, tol: float, max_iter: int,
                   on_iter: Callable[[int, np.ndarray, float, float], bool | None] | None = None,
                   start_iter: int = 0, n_threads: int = 1) -> tuple[np.ndarray, float, int, bool]:
    """Lloyd iterations on points ``x`` with weights ``w`` from ``centres``.

    Stops when no centre moves more than ``tol`` (Euclidean, in the units of ``x``), when
    no label changes, or after ``max_iter`` iterations. A cluster left empty is moved to
    the point farthest from its centre (as scikit-learn does). ``on_iter(it, centres,
    shift, inertia)`` is called after every iteration (for history and checkpoints).

    Returns ``(centres, inertia, n_iter, converged)``; inertia is the weighted sum of
    squared distances for the returned centres.
    """
    from streamq.kernels import assign

    x = np.ascontiguousarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    centres = np.array(centres, dtype=np.float64)
    k, d = centres.shape
    labels_prev = None
    it = start_iter
    converged = False
    while it < max_iter:
        labels, dist = assign(x, centres, n_threads)
        sums = np.stack([np.bincount(labels, weights=w * x[:, j], minlength=k) for j in range(d)], 1)
        weight = np.bincount(labels, weights=w, minlength=k)
        new = centres.copy()
        full = weight > 0
        new[full] = sums[full] / weight[full, None]
        empty = np.flatnonzero(~full)
        if len(empty):
            far = np.argsort(-(dist * w), kind="stable")[: len(empty)]
            new[empty] = x[far]
        shift = float(np.sqrt(((new - centres) ** 2).sum(1)).max())
        inertia = float((dist * w).sum())
        unchanged = labels_prev is not None and np.array_equal(labels, labels_prev) and not len(empty)
        centres = new
        labels_prev = labels
        it += 1
        if on_iter is not None:
            on_iter(it, centres, shift, inertia)
        if shift < tol or unchanged:
            converged = True
            break
    _, dist = assign(x, centres, n_threads)
    return centres, float((dist * w).sum()), it, converged
