"""Exact labels of uint8 pixels against a palette, each distinct colour searched once.

Quantize labels every pixel of a collection against one palette: each worker keeps a
:class:`LabelTable`, a lazily filled ``2**24`` lookup table, computes the nearest centre
(:func:`streamq.kmeans.nearest.assign`) only for colours it has not met yet, and looks every
other pixel up. One image's pixels against its own palette (the per-image results) go through
:func:`label_pixels` instead: a small cache of recent colours in front of the sorted search
of :mod:`streamq.kmeans.nearest`.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from streamq.kmeans.codes import CHANNEL, code24, codes_to_rgb, pixels_in
from streamq.kmeans.nearest import assign, nearest_from, sorted_centers

__all__ = ["LabelTable", "label_pixels"]


@numba.njit(nogil=True, cache=True)
def _lookup_all(rgb: np.ndarray, lut: np.ndarray, palette: np.ndarray, packed: bool,
                labels: np.ndarray, ends: np.ndarray, sse: np.ndarray, misses: np.ndarray) -> int:
    """Look every pixel up; return how many missed (their indices go to ``misses``).

    Writes ``labels[i]`` and adds each pixel's squared RGB error to ``sse[s]`` of its segment
    (segment ``s`` is ``[ends[s - 1], ends[s])``; the last ends at ``len(rgb)``). A ``packed``
    table holds ``label | error << 8`` (K <= 256): the error is a shift, not a computation.
    Every entry is stored plus one: 0 is a colour not met yet.
    """
    n_miss = 0
    start = 0
    for s in range(ends.shape[0]):
        stop = ends[s]
        acc = np.int64(0)
        for i in range(start, stop):
            c = code24(rgb, i)
            v = lut[c] - 1
            if v < 0:
                misses[n_miss] = i
                n_miss += 1
            elif packed:
                labels[i] = v & 255
                acc += v >> 8
            else:
                labels[i] = v
                for j in range(3):
                    d = np.int64(rgb[i, j]) - palette[v, j]
                    acc += d * d
        sse[s] += acc
        start = stop
    return n_miss


@numba.njit(nogil=True, cache=True)
def _lookup_some(rgb: np.ndarray, idx: np.ndarray, lut: np.ndarray, palette: np.ndarray,
                 packed: bool, labels: np.ndarray, ends: np.ndarray, sse: np.ndarray,
                 err: np.ndarray) -> int:
    """:func:`_lookup_all` for the sorted pixel indices ``idx`` only, also writing ``err[i]``
    when ``err`` is not empty; returns how many still missed (0 after a fill)."""
    s = 0
    n_miss = 0
    want_err = err.shape[0] > 0
    for t in range(idx.shape[0]):
        i = idx[t]
        while s < ends.shape[0] - 1 and i >= ends[s]:
            s += 1
        c = code24(rgb, i)
        v = lut[c] - 1
        if v < 0:
            n_miss += 1
            continue
        if packed:
            lab = v & 255
            e = np.int64(v >> 8)
        else:
            lab = v
            e = np.int64(0)
            for j in range(3):
                d = np.int64(rgb[i, j]) - palette[lab, j]
                e += d * d
        labels[i] = lab
        sse[s] += e
        if want_err:
            err[i] = e
    return n_miss


@numba.njit(nogil=True, cache=True)
def _distinct(rgb: np.ndarray, idx: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Distinct 24-bit codes of ``rgb[idx]`` (``seen`` is all False before and after)."""
    out = np.empty(len(idx), dtype=np.int64)
    n = 0
    for i in idx:
        c = code24(rgb, i)
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
    fit's colour space; every later pixel of a known colour is one table lookup. For K <= 256
    an entry also holds the colour's squared error to its palette colour (``label | err << 8``,
    at most 8 + 18 bits), which the per-image error sums then read instead of recomputing.
    """

    def __init__(self, centers: np.ndarray, palette: np.ndarray, space: str) -> None:
        self.centers = np.ascontiguousarray(centers, dtype=np.float64)
        self.palette = np.ascontiguousarray(palette, dtype=np.int64)
        self.space = space
        self.packed = len(self.palette) <= 256
        # entry + 1, 0 for a colour not met yet: zeros, so the pages of colours never met are
        # never touched (filling 64 MiB with -1 cost every table tens of ms)
        self.lut = np.zeros(1 << 24, dtype=np.int32)
        self._seen = np.zeros(1 << 24, dtype=np.bool_)
        import threading

        self._lock = threading.Lock()  # tasks in threads share a table; misses fill it one at a time

    def _fill(self, rgb: np.ndarray, idx: np.ndarray) -> None:
        """Compute the table entries of the colours of ``rgb[idx]`` that have none yet."""
        with self._lock:
            new = _distinct(rgb, idx, self._seen)
            new = new[self.lut[new] == 0]
            if not len(new):
                return
            lab, err = self._label_colours(codes_to_rgb(new))
            if err is not None:
                self.lut[new] = ((lab.astype(np.int64) | (err << 8)) + 1).astype(np.int32)
            else:
                self.lut[new] = lab + 1

    def _label_colours(self, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels of the ``(n, 3)`` uint8 ``colours`` and, for a packed table, their squared
        errors to their palette colours (int64; else None): what their entries hold. A table
        that measures another way (:mod:`streamq.rgba`'s opaque colours) overrides this."""
        from streamq.colorspace import to_space

        lab, _ = assign(to_space(colours, self.space), self.centers)
        if not self.packed:
            return lab, None
        return lab, ((colours.astype(np.int64) - self.palette[lab]) ** 2).sum(1)

    def labels_sse(self, rgb: np.ndarray, dtype: Any, ends: np.ndarray,
                   want_err: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels (``dtype``) of ``(n, 3)`` uint8 pixels, the summed squared RGB error of each
        segment (segment ``s`` ends before ``ends[s]``; the last ends at ``n``), and the error
        per pixel (int32) when ``want_err`` (else an empty array)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        n = len(rgb)
        ends = np.asarray(ends, dtype=np.int64)
        if not len(ends) or ends[-1] != n:
            ends = np.append(ends, n)
        labels = np.empty(n, dtype=dtype)
        sse = np.zeros(len(ends), dtype=np.int64)
        err = np.empty(n if want_err else 0, dtype=np.int32)
        if want_err:  # the per-pixel path: every pixel through the indexed loop
            idx = np.arange(n, dtype=np.int64)
            if _lookup_some(rgb, idx, self.lut, self.palette, self.packed, labels, ends, sse, err):
                self._fill(rgb, idx)
                sse[:] = 0
                _lookup_some(rgb, idx, self.lut, self.palette, self.packed, labels, ends, sse, err)
            return labels, sse, err
        misses = np.empty(n, dtype=np.int64)
        n_miss = _lookup_all(rgb, self.lut, self.palette, self.packed, labels, ends, sse, misses)
        if n_miss:
            idx = misses[:n_miss].copy()
            self._fill(rgb, idx)
            if _lookup_some(rgb, idx, self.lut, self.palette, self.packed, labels, ends, sse, err):
                raise RuntimeError("label table still misses colours after filling them")
        return labels, sse, err

    def labels(self, rgb: np.ndarray, dtype: Any = np.int32) -> tuple[np.ndarray, np.ndarray]:
        """Labels (``dtype``) and squared RGB error per pixel (int32: at most 3 * 255**2) of
        ``(n, 3)`` uint8 pixels."""
        labels, _, err = self.labels_sse(rgb, dtype, np.zeros(0, np.int64), want_err=True)
        return labels, err


_CACHE_BITS = 14  # entries of the label cache: 2**14 colours


@numba.njit(nogil=True, cache=True)
def _label(rgb: np.ndarray, table: np.ndarray, c: np.ndarray, order: np.ndarray,
           sp: np.ndarray, axis: np.ndarray, palette: np.ndarray, labels: np.ndarray,
           err: np.ndarray, q: np.ndarray, key: np.ndarray, value: np.ndarray) -> int:
    """Label pixels through a direct-mapped cache of recent colours (photos repeat colours):
    ``key[slot]`` is the code + 1 of the colour held (zeros: empty), ``value[slot]`` its
    label and error packed. ``q`` is a ``(1, 3)`` work row (the work arrays come from the
    caller: a NumPy allocation in compiled code costs tenths of a second of compilation)."""
    mask = key.shape[0] - 1
    lab = 0
    total = 0
    for i in range(rgb.shape[0]):
        code = code24(rgb, i)
        slot = ((code * 2654435761) >> 11) & mask
        if key[slot] == code + 1:
            v = value[slot]
            lab = v & 0xFFFFF
            e = v >> 20
        else:
            for t in range(3):
                q[0, t] = table[rgb[i, t]]
            p = q[0, 0] * axis[0] + q[0, 1] * axis[1] + q[0, 2] * axis[2]
            lab, _ = nearest_from(q, 0, p, c, order, sp, lab)  # the previous centre bounds first
            e = 0
            for t in range(3):
                dv = np.int64(rgb[i, t]) - palette[lab, t]
                e += dv * dv
            key[slot] = code + 1
            value[slot] = lab | (e << 20)
        labels[i] = lab
        if err.shape[0]:
            err[i] = e
        total += e
    return total


def label_pixels(rgb: np.ndarray, centers: np.ndarray, palette: np.ndarray | None = None,
                 want_err: bool = False) -> tuple[np.ndarray, int, np.ndarray]:
    """Exact nearest centre of ``(n, 3)`` uint8 pixels, in ``value / 255`` coordinates.

    The same labels as an ``argmin`` over float64 squared distances (first centre on ties).
    Returns ``(labels, sse, err)``: int64 labels, the summed squared RGB error to ``palette``
    (``(k, 3)`` uint8, default the rounded centres), and the error per pixel (int64) when
    ``want_err`` (else an empty array).
    """
    rgb = pixels_in(rgb)
    c = np.ascontiguousarray(centers, dtype=np.float64)
    if palette is None:
        palette = np.round(np.clip(c * 255, 0, 255)).astype(np.uint8)
    pal = np.ascontiguousarray(palette, dtype=np.int64)
    axis, order, sp = sorted_centers(c)
    labels = np.empty(len(rgb), dtype=np.int64)
    err = np.empty(len(rgb) if want_err else 0, dtype=np.int64)
    size = 1 << _CACHE_BITS
    sse = _label(rgb, CHANNEL, c, order, sp, axis, pal, labels, err, np.empty((1, 3)),
                 np.zeros(size, np.int64), np.empty(size, np.int64)) if len(rgb) else 0
    return labels, int(sse), err
