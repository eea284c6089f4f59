"""Compiled inner loops (numba): nearest-centre assignment and 24-bit colour histograms."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

__all__ = ["assign", "histogram24"]


# Serial loops that release the GIL: parallelism comes from Dask tasks, or from the
# thread blocks of ``assign(..., n_threads=N)``; numba's own parallel layers are not safe to
# call from several threads at once.
@numba.njit(nogil=True, cache=True)
def _assign(x: np.ndarray, centers: np.ndarray, labels: np.ndarray, dist: np.ndarray) -> None:
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


def assign(x: np.ndarray, centers: np.ndarray, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre of each row of ``x`` (first on ties) and its squared distance.

    Exact: distances are summed in float64 coordinate by coordinate (no expansion trick).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    labels = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float64)
    if n_threads <= 1 or len(x) < 100_000:
        if len(x):
            _assign(x, centers, labels, dist)
        return labels, dist
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, len(x), n_threads * 4 + 1).astype(np.int64)
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(lambda i: _assign(x[bounds[i]:bounds[i + 1]], centers,
                                        labels[bounds[i]:bounds[i + 1]], dist[bounds[i]:bounds[i + 1]]),
                      range(len(bounds) - 1)))
    return labels, dist


@numba.njit(cache=True)
def _hist24(rgb: np.ndarray, hist: np.ndarray) -> None:
    for i in range(rgb.shape[0]):
        hist[(np.int64(rgb[i, 0]) << 16) | (np.int64(rgb[i, 1]) << 8) | np.int64(rgb[i, 2])] += 1


def histogram24(rgb: np.ndarray, hist: np.ndarray | None = None) -> np.ndarray:
    """Add the ``(n, 3)`` uint8 pixels to a dense ``2**24`` int64 histogram (made if None)."""
    if hist is None:
        hist = np.zeros(1 << 24, dtype=np.int64)
    if len(rgb):
        _hist24(np.ascontiguousarray(rgb, dtype=np.uint8), hist)
    return hist


from streamq.colorspace import codes_to_rgb  # noqa: E402  (re-exported)


@numba.njit(nogil=True, cache=True)
def _map_labels(rgb: np.ndarray, lut: np.ndarray, palette: np.ndarray,
                labels: np.ndarray, err: np.ndarray, misses: np.ndarray) -> int:
    """Look every pixel up; return how many missed (their indices go to ``misses``)."""
    n_miss = 0
    for i in range(rgb.shape[0]):
        c = (np.int64(rgb[i, 0]) << 16) | (np.int64(rgb[i, 1]) << 8) | np.int64(rgb[i, 2])
        lab = lut[c]
        if lab < 0:
            misses[n_miss] = i
            n_miss += 1
            continue
        labels[i] = lab
        s = 0
        for j in range(3):
            t = np.int64(rgb[i, j]) - np.int64(palette[lab, j])
            s += t * t
        err[i] = s
    return n_miss


@numba.njit(nogil=True, cache=True)
def _distinct(rgb: np.ndarray, idx: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Distinct 24-bit codes of ``rgb[idx]`` (``seen`` is all False before and after)."""
    out = np.empty(len(idx), dtype=np.int64)
    n = 0
    for i in idx:
        c = (np.int64(rgb[i, 0]) << 16) | (np.int64(rgb[i, 1]) << 8) | np.int64(rgb[i, 2])
        if not seen[c]:
            seen[c] = True
            out[n] = c
            n += 1
    for k in range(n):
        seen[out[k]] = False
    return out[:n]


class LabelTable:
    """Exact nearest-centre labels for 24-bit colours, filled lazily (a 2**24 lookup table).

    Only colours that occur are ever computed, with :func:`assign` on their coordinates in the
    fit's colour space; every later pixel of a known colour is one table lookup.
    """

    def __init__(self, centers: np.ndarray, palette: np.ndarray, space: str) -> None:
        self.centers = np.ascontiguousarray(centers, dtype=np.float64)
        self.palette = np.ascontiguousarray(palette, dtype=np.int64)
        self.space = space
        self.lut = np.full(1 << 24, -1, dtype=np.int32)
        self._seen = np.zeros(1 << 24, dtype=np.bool_)
        import threading

        self._lock = threading.Lock()  # tasks in threads share a table; misses fill it one at a time

    def labels(self, rgb: np.ndarray, dtype: Any = np.int32) -> tuple[np.ndarray, np.ndarray]:
        """Labels (``dtype``) and squared RGB error per pixel (int32: at most 3 * 255**2) of
        ``(n, 3)`` uint8 pixels."""
        from streamq.colorspace import to_space

        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        labels = np.empty(len(rgb), dtype=dtype)
        err = np.empty(len(rgb), dtype=np.int32)
        misses = np.empty(len(rgb), dtype=np.int32)
        n_miss = _map_labels(rgb, self.lut, self.palette, labels, err, misses)
        if n_miss:
            idx = misses[:n_miss]
            sub = rgb[idx]
            with self._lock:
                new = _distinct(rgb, idx, self._seen)
                new = new[self.lut[new] < 0]
                if len(new):
                    lab, _ = assign(to_space(codes_to_rgb(new), self.space), self.centers)
                    self.lut[new] = lab
            again = np.empty(n_miss, dtype=np.int32)
            sub_labels = np.empty(n_miss, dtype=dtype)
            sub_err = np.empty(n_miss, dtype=np.int32)
            if _map_labels(sub, self.lut, self.palette, sub_labels, sub_err, again):
                raise RuntimeError("label table still misses colours after filling them")
            labels[idx] = sub_labels
            err[idx] = sub_err
        return labels, err
