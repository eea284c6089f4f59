"""Exact colour histograms: the distinct 24-bit colours of uint8 RGB pixels and their counts.

:func:`count_colors` counts in a dense table of ``2**24`` one-byte counters (16 MiB), one per
thread and reused across calls, and lists every code the first time its counter leaves
zero. A counter that would pass 255 starts again at 1 and the overflow is logged as an
event (one per 255 pixels of that colour, so at most ``n / 255``). Reading the counts out
and zeroing them again then visits only the listed codes, so a call costs O(pixels +
distinct colours), never O(2**24): cheap enough to run inside every ingest write task (3.7
ns per pixel on 4 Mpx of photo tiles with the caches evicted before each call, two processes
counting at once; 5-6 ns inside ingest's write tasks; one-byte counters keep the table four
times smaller than 32-bit ones, which measured 30% faster on photos). The counting loop's
block size and prefetch distance barely matter (14.5-18.5 ms for 4 Mpx from 32 to 256 pixels
ahead, 4 Ki to 64 Ki pixels a block); without the prefetch it is 5-40% slower. A two-pass
count by buckets of the high 12 bits, each counted in a 4 Ki table in L1, measured 1.6-2.3
times slower. The loop releases the GIL, so threads count in parallel, each in its own
table.

:class:`ColorTotals` sums such sparse histograms (of parts of a collection) exactly, in a
dense int64 table.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from streamq.kmeans.codes import N_CODES, code24

if TYPE_CHECKING:
    from numba.core.base import BaseContext
    from numba.core.typing.templates import Signature

__all__ = ["ColorTotals", "count_colors"]

_WRAP = 255  # pixels an overflow event stands for
_BLOCK = 1 << 14  # pixels whose codes are computed together, then counted
_AHEAD = 64  # pixels between a counter's prefetch and its update


@intrinsic
def _prefetch(typingctx: object, arr: types.Array, index: types.Integer) -> object:
    """Ask the CPU to bring ``arr[index]`` into cache for writing (``llvm.prefetch``).

    A write task meets its table cold (decoding evicted it): fetching the counter of the
    pixel ``_AHEAD`` rows on hides those misses.
    """
    def codegen(context: BaseContext, builder: ir.IRBuilder, signature: Signature,
                args: tuple) -> object:
        arrty = signature.args[0]
        ary = context.make_array(arrty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=arrty.layout,
            inds=[args[1]], wraparound=False, boundscheck=False)
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0" if getattr(ptr.type, "is_opaque", False) else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name)
        builder.call(fn, [ptr, i32(1), i32(3), i32(1)])  # write, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, index), codegen


@numba.njit(nogil=True, cache=True)
def _count(rgb: np.ndarray, starts: np.ndarray, stops: np.ndarray, table: np.ndarray,
           touched: np.ndarray, events: np.ndarray, block: np.ndarray) -> tuple[int, int]:
    """Add rows ``[starts[s], stops[s])`` of ``rgb`` to ``table``; list each new code in
    ``touched`` and each overflow in ``events``. Returns how many of each.

    Block by block: the codes of ``_BLOCK`` rows first, then the counting loop, which
    prefetches the counter ``_AHEAD`` codes on
    (``block`` holds ``_BLOCK + _AHEAD`` codes; the tail is code 0, a harmless prefetch).
    Measured on photos with the table evicted: 4.1 ns per pixel computing each code twice
    in one loop, 2.9 ns like this.
    """
    n = 0
    m = 0
    for s in range(starts.shape[0]):
        for a in range(starts[s], stops[s], _BLOCK):
            k = min(_BLOCK, stops[s] - a)
            for j in range(k):
                block[j] = code24(rgb, a + j)
            block[k:k + _AHEAD] = 0
            for j in range(k):
                # numba's stub types the call with the typing function's own parameters
                # (typingctx included); compiled code passes only (arr, index)
                _prefetch(table, block[j + _AHEAD])  # type: ignore[call-arg]
                c = block[j]
                v = table[c]
                touched[n] = c  # kept only when new: no branch on a poorly predicted path
                n += v == 0
                if v == _WRAP:
                    events[m] = c
                    m += 1
                    v = 0
                table[c] = v + 1
    return n, m


@numba.njit(nogil=True, cache=True)
def _radix_sort24(keys: np.ndarray, tmp: np.ndarray) -> None:
    """Sort 24-bit ``keys`` in place: two passes of 12 bits (``tmp``: same length)."""
    src, dst = keys, tmp
    for shift in (0, 12):
        pos = np.zeros(4097, np.int64)
        for k in src:
            pos[((k >> shift) & 4095) + 1] += 1
        for b in range(4096):
            pos[b + 1] += pos[b]
        for k in src:
            b = (k >> shift) & 4095
            dst[pos[b]] = k
            pos[b] += 1
        src, dst = dst, src


@numba.njit(nogil=True, cache=True)
def _take(table: np.ndarray, codes: np.ndarray, events: np.ndarray) -> np.ndarray:
    """Counts of the sorted ``codes`` (overflow ``events`` included), zeroing their counters."""
    counts = np.empty(codes.shape[0], np.int64)
    for j in range(codes.shape[0]):
        c = codes[j]
        counts[j] = table[c]
        table[c] = 0
    for c in events:
        counts[np.searchsorted(codes, c)] += _WRAP
    return counts


class _Scratch(threading.local):
    """One thread's table, list of touched codes and block of codes, made on first use."""

    table: np.ndarray | None = None
    touched: np.ndarray | None = None
    block: np.ndarray | None = None
    dirty = False  # a call was interrupted between counting and zeroing


_scratch = _Scratch()


def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _scratch
    if s.table is None or s.touched is None or s.block is None or s.dirty:
        s.table = np.zeros(N_CODES, dtype=np.uint8)
        s.touched = np.empty(N_CODES + 1, dtype=np.uint32)  # + 1: the unkept last write
        s.block = np.empty(_BLOCK + _AHEAD, dtype=np.uint32)
    s.dirty = False
    return s.table, s.touched, s.block


def _runs(n: int, starts: np.ndarray | None, stops: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if starts is None and stops is None:
        return np.zeros(1, np.int64), np.full(1, n, np.int64)
    if starts is None or stops is None:
        raise ValueError("give both starts and stops, or neither")
    a = np.ascontiguousarray(starts, dtype=np.int64).reshape(-1)
    b = np.ascontiguousarray(stops, dtype=np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"starts ({len(a)}) and stops ({len(b)}) differ in length")
    if len(a) and (a.min() < 0 or b.max() > n or (b < a).any()):
        raise ValueError(f"runs must satisfy 0 <= start <= stop <= {n} (the number of pixels)")
    return a, b


def count_colors(rgb: np.ndarray, starts: np.ndarray | None = None,
                 stops: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours of ``(n, 3)`` uint8 pixels and how many times each occurs.

    Parameters
    ----------
    rgb : ndarray of shape (n, 3), uint8
        The pixels.
    starts, stops : ndarray of int, optional
        Count only rows ``[starts[i], stops[i])`` for every ``i`` (default: every row).

    Returns
    -------
    codes : ndarray of shape (d,), int64
        The distinct 24-bit codes ``r << 16 | g << 8 | b``, sorted.
    counts : ndarray of shape (d,), int64
        How many counted pixels have each colour (all > 0).

    Examples
    --------
    >>> rgb = np.array([[0, 0, 1], [255, 0, 0], [0, 0, 1]], dtype=np.uint8)
    >>> count_colors(rgb)
    (array([       1, 16711680]), array([2, 1]))
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"rgb has shape {rgb.shape}, expected (n, 3)")
    starts, stops = _runs(len(rgb), starts, stops)
    events = np.empty(int((stops - starts).sum()) // _WRAP + 1, dtype=np.uint32)
    table, touched, block = _arrays()
    _scratch.dirty = True
    n, m = _count(rgb, starts, stops, table, touched, events, block)
    codes = touched[:n]  # the scratch list, sorted in place: nothing reads it again
    _radix_sort24(codes, np.empty(n, dtype=np.uint32))
    counts = _take(table, codes, events[:m])
    _scratch.dirty = False
    return codes.astype(np.int64), counts


class ColorTotals:
    """The exact sum of sparse colour histograms.

    The histograms added are kept as they come until they hold ``DENSE_AT`` entries in all;
    from then on they are summed in a dense int64 table of ``2**24`` counters (128 MiB). A
    small collection thus never pays for the table (allocating it, and the page faults of
    the colours it touches across all of it, cost ~0.1 s), and a large one sums each
    histogram in one pass.

    Examples
    --------
    >>> totals = ColorTotals()
    >>> totals.add(np.array([1, 5]), np.array([2, 3]))
    >>> totals.add(np.array([5]), np.array([4]))
    >>> totals.result()
    (array([1, 5]), array([2, 7]))
    """

    #: entries kept sparse before the dense table takes over
    DENSE_AT = 1 << 21

    def __init__(self) -> None:
        self._total: np.ndarray | None = None
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_parts = 0

    def add(self, codes: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts[j]`` pixels of colour ``codes[j]`` (24-bit codes) for every ``j``."""
        codes = np.ascontiguousarray(codes, dtype=np.int64)
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        if codes.shape != counts.shape or codes.ndim != 1:
            raise ValueError(f"codes {codes.shape} and counts {counts.shape} must be 1-d and alike")
        if not len(codes):
            return
        if codes.min() < 0 or codes.max() >= N_CODES:
            raise ValueError(f"colour codes must lie in [0, {N_CODES}), got "
                             f"[{codes.min()}, {codes.max()}]")
        if self._total is None:
            self._parts.append((codes, counts))
            self._n_parts += len(codes)
            if self._n_parts < self.DENSE_AT:
                return
            self._total = np.zeros(N_CODES, dtype=np.int64)
            parts, self._parts, self._n_parts = self._parts, [], 0
            for c, n in parts:
                self._add_dense(c, n)
            return
        self._add_dense(codes, counts)

    def _add_dense(self, codes: np.ndarray, counts: np.ndarray) -> None:
        assert self._total is not None
        if bool((codes[1:] > codes[:-1]).all()):
            self._total[codes] += counts  # distinct codes (a count_colors result): one pass
        else:
            np.add.at(self._total, codes, counts)  # repeated codes add up

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, counts)`` of every colour with a nonzero total, codes sorted (int64)."""
        if self._total is None:
            if not self._parts:
                return np.zeros(0, np.int64), np.zeros(0, np.int64)
            codes = np.concatenate([c for c, _ in self._parts])
            counts = np.concatenate([n for _, n in self._parts])
            order = np.argsort(codes, kind="stable")
            codes, counts = codes[order], counts[order]
            first = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            codes, counts = codes[first], np.add.reduceat(counts, first)
            keep = counts != 0
            return codes[keep], counts[keep]
        codes = np.flatnonzero(self._total).astype(np.int64)
        return codes, self._total[codes]
