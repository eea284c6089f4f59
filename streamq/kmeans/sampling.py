"""The colour histogram of a seeded random sample of pixels, in one compiled pass.

:func:`sample_histogram` gives ``distinct_colours(rgb, sort(rng.choice(n, m,
replace=False)))`` for a fresh NumPy ``Generator`` (PCG64) without building the index. It
takes the generator's own 32-bit draws (``random_raw`` 64-bit words, low half first: the
order of PCG64's ``next_uint32``) and makes the same choices as NumPy's ``choice`` for these
sizes: a partial Fisher-Yates shuffle of ``0..n-1`` from the end, each step swapping position
``i`` with one drawn uniformly in ``0..i`` by Lemire's method (NumPy's
``random_bounded_uint64``), whose last ``m`` positions are the sample. Then
:func:`~streamq.kmeans.codes.distinct_colours` counts the sampled pixels' 24-bit codes in
pixel order. Positions are int32 and nothing is sorted but the distinct colours.

Only for the sizes where NumPy takes that path (``n > 10000`` and ``m > n // 50``), for a
fresh PCG64 generator on a little-endian machine (else NumPy draws the sample); tests check
the result against NumPy's ``choice``.
"""

from __future__ import annotations

import sys

import numba
import numpy as np

from streamq.kmeans.codes import distinct_colours

__all__ = ["sample_histogram", "takes_fisher_yates"]


def takes_fisher_yates(n: int, m: int) -> bool:
    """Whether NumPy's ``Generator.choice(n, m, replace=False)`` picks its set by the partial
    shuffle this module reproduces (else by Floyd's algorithm)."""
    return n > 10_000 and m > n // 50 and m < n


@numba.njit(nogil=True, cache=True)
def _shuffle(pos: np.ndarray, start: int, stop: int, draws: np.ndarray, used: np.ndarray) -> int:
    """Steps ``i = start, start-1, ..., stop+1`` of the shuffle of ``pos`` (NumPy's
    ``_shuffle_int``), taking 32-bit draws from ``draws`` at ``used[0]`` on; returns the step
    it stopped at (``stop``: done; else the draws ran out before step ``i``)."""
    k = used[0]
    for i in range(start, stop, -1):
        # j uniform in 0..i: NumPy's buffered_bounded_lemire_uint32 with rng = i
        if k >= draws.shape[0]:
            used[0] = k
            return i
        rng_excl = np.uint64(i + 1)
        first = k
        v = np.uint64(draws[k]) * rng_excl
        k += 1
        if (v & np.uint64(0xFFFFFFFF)) < rng_excl:  # maybe biased: reject below the threshold
            threshold = (np.uint64(0xFFFFFFFF) - np.uint64(i)) % rng_excl
            while (v & np.uint64(0xFFFFFFFF)) < threshold:
                if k >= draws.shape[0]:
                    used[0] = first  # redo this step, from its first draw
                    return i
                v = np.uint64(draws[k]) * rng_excl
                k += 1
        j = np.int64(v >> np.uint64(32))
        t = pos[i]
        pos[i] = pos[j]
        pos[j] = t
    used[0] = k
    return stop


def sample_histogram(rgb: np.ndarray, m: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, counts)`` of the pixels a fresh ``rng.choice(len(rgb), m, replace=False)``
    would pick, sorted by code (as :func:`streamq.kmeans.codes.distinct_colours`). Outside
    the sizes of :func:`takes_fisher_yates`, or for a generator other than PCG64, NumPy draws
    the sample."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    n = len(rgb)
    if (not takes_fisher_yates(n, m) or type(rng.bit_generator) is not np.random.PCG64
            or n >= 2**31 or sys.byteorder != "little" or rng.bit_generator.state["has_uint32"]):
        idx = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
        return distinct_colours(rgb, idx)
    pos = np.arange(n, dtype=np.int32)
    used = np.zeros(1, np.int64)
    i = n - 1
    # one 32-bit draw a step, a few more for Lemire's rare rejections (else: more draws)
    draws = rng.bit_generator.random_raw(m // 2 + 64).view(np.uint32)
    while (i := _shuffle(pos, i, n - m - 1, draws, used)) != n - m - 1:
        draws = np.concatenate([draws[used[0]:], rng.bit_generator.random_raw(64).view(np.uint32)])
        used[0] = 0
    return distinct_colours(rgb, pos[n - m:])
