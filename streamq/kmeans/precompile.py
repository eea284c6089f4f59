"""Compile the per-image kernels ahead of their first call, once per machine for all workers.

numba compiles a kernel on its first call in each process (about a second each for the
larger ones) and keeps the machine code in its on-disk cache (``cache=True``), where other
processes find it. A cluster's workers start together, so on a cold cache every one of them
would compile every kernel at the same time. :func:`precompile` shares the work instead:
each kernel is compiled under a lock file, a worker that finds a kernel locked goes on to the
next one, and at the end it waits for the kernels the others held and loads them from the
cache. With two workers the first use of the per-image path costs about half the
compilation; with a warm cache it only loads (milliseconds a kernel).

The signatures are the ones the per-image path calls with (C-contiguous arrays, int64 and
float64 scalars); a test checks that a fit and labelling add none.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numba
from numba import types

__all__ = ["count_kernels", "fit_kernels", "label_kernels", "machine_lock", "per_image_kernels",
           "precompile", "signature", "typed"]

log = logging.getLogger(__name__)

_done: set[tuple[str, str]] = set()
_guard = threading.Lock()

_SCALARS: dict[str, Any] = {"i8": types.int64, "f8": types.float64, "b1": types.boolean}
_DTYPES: dict[str, Any] = {"u1": types.uint8, "u2": types.uint16, "i4": types.int32,
                           "u4": types.uint32, "i8": types.int64, "f8": types.float64,
                           "b1": types.boolean}


def signature(spec: str) -> tuple[Any, ...]:
    """numba argument types from a compact spec: ``"f8[2] i8[1]ro i8 b1"`` is a C-contiguous
    2-d float64 array, a read-only 1-d int64 array (``ro``), an int64 and a bool.

    Kernels get C-contiguous arrays (``np.ascontiguousarray`` or fresh ``np.empty``) and
    int64/float64/bool scalars; pixels decoded by Pillow or viewed read-only
    (:func:`streamq.kmeans.codes.pixels_in`) are read-only arrays.
    """
    out = []
    for token in spec.split():
        m = re.fullmatch(r"([a-z]\d)(?:\[(\d)\](ro)?)?", token)
        code, ndim, ro = m.groups() if m else ("", None, None)
        if code not in (_SCALARS if ndim is None else _DTYPES):
            raise ValueError(f"bad kernel argument type {token!r} in {spec!r}")
        out.append(_SCALARS[code] if ndim is None
                   else types.Array(_DTYPES[code], int(ndim), "C", readonly=bool(ro)))
    return tuple(out)


def typed(kernels: tuple[tuple[Any, str], ...]) -> list[tuple[Any, tuple[Any, ...]]]:
    """``(dispatcher, spec)`` pairs as ``(dispatcher, argument types)`` (:func:`signature`)."""
    return [(d, signature(spec)) for d, spec in kernels]


def per_image_kernels() -> list[tuple[Any, tuple[Any, ...]]]:
    """``(dispatcher, argument types)`` of the per-image path (``--method histogram``), the
    costliest to compile first: k-means++, Lloyd (its points arranged by cell, their weights
    checked, its inertia), pixel labels (for the quantize that follows the fit), the sample's
    shuffle and colour counts."""
    from streamq.kmeans import bounded, codes, filtering, plusplus, sampling, table

    return typed((
        (plusplus._kmeanspp, "f8[2] f8[1] i8[1] f8[2] f8[2] i8[3] f8[1] f8[1] i8 i8 f8[2] i8[1] "
                             "f8[1] f8[1] f8[1]"),
        (filtering._run, "f8[2] i8[2] i8[1] i8[1] f8[2] f8[2] f8[2] f8[2] f8 f8 b1 i8 i8[1] f8[1] "
                         "i8[1] i8[2] i8[1] i8[1] f8[1] i8[1] f8[1] f8[1] b1 b1[1]"),
        (filtering._arrange, "f8[2] f8[1] i8[1] i8[1] f8 f8 f8[2] f8[2] i8[2] i8[1] f8[2] f8[2]"),
        (bounded._whole, "f8[1]"),
        (bounded.objective, "f8[2] f8[1] i8[1] f8[2]"),
        (table._label, "u1[2]ro f8[1] f8[2] i8[1] f8[1] f8[1] i8[2] i8[1] i8[1] f8[2] i8[1] i8[1]"),
        (sampling._shuffle, "i4[1] i8 i8 u4[1] i8[1]"),
        (codes._count_codes, "u1[2]ro u1[1] b1 i4[1] i8[1]"),
    ))


def fit_kernels() -> list[tuple[Any, tuple[Any, ...]]]:
    """The shared fit's kernels: weighted k-means++ (greedy, and its tree for many
    candidates), the bounded Lloyd over the colour histogram (and the parts of its cell by
    cell form that threads run), exact assignment and inertia."""
    from streamq.kmeans import bounded, codes, filtering, nearest, plusplus

    return typed((
        (codes._squared_errors, "i8[1] i8[1] i8[1] i8[2] i8[1]"),
        (filtering._arrange, "f8[2] f8[1] i8[1] i8[1] f8 f8 f8[2] f8[2] i8[2] i8[1] f8[2] f8[2]"),
        (bounded._whole, "f8[1]"),
        (filtering._update, "f8[2] f8[2] i8[2] i8[1] f8 b1[1] f8[1] b1 i8"),
        (filtering._record, "f8[1] i8 f8[1] i8[1] b1 f8"),
        (filtering._label, "f8[2] i8[2] i8[1] i8[1] f8[2] f8[2] f8[2] i8[1] i8[2] i8[1] i8[1] "
                           "f8[1] i8[1] f8[1] f8 i8 i8 i8"),
        (plusplus._kmeanspp_tree, "f8[2] f8[1] i8[1] f8[2] f8[1] i8[1] i8[1] i8[1] i8[1] f8[2] "
                                  "f8[2] i8 i8 f8[2] i8[1] f8[1] f8[1] f8[1] f8[1] i8[1] i8[1] "
                                  "i8[1] f8[1] i8[1]"),
        (plusplus._kmeanspp_plain, "f8[2] f8[1] i8 i8 f8[2] i8[1] f8[1]"),
        (bounded._sums, "i8[2] i8[1] i8[1] i8[2] i8[1]"),
        (bounded._move, "i8[2] i8[1] i8 i8 i8 i8[2] i8[1]"),
        (bounded._means, "i8[2] i8[1] f8[2] f8 f8[2] b1[1]"),
        (bounded._relocate, "f8[2] i8[2] i8[1] i8[1] f8[2] i8[2] i8[1] i8[1] b1[1]"),
        (bounded._shift, "f8[2] f8[2]"),
        (bounded.objective, "f8[2] f8[1] i8[1] f8[2]"),
        (bounded._search_all, "f8[2] f8[1] f8[2] i8[1] f8[1] i8[1] i8[1] f8[1] f8[1] f8[1]"),
        (bounded._relabel, "f8[2] i8[2] i8[1] f8[1] f8[2] i8[1] f8[1] f8 i8[1] i8[1] f8[1] "
                           "f8[1] f8[1] i8[2] i8[1]"),
        (bounded._relabel_plain, "f8[2] i8[2] i8[1] f8[2] i8[1] i8[2] i8[1]"),
        (nearest.covariance, "f8[2] f8[1]"),
        (nearest._first_at_least, "f8[1] f8"),
        (nearest.nearest3, "f8[2] i8 f8 f8[2] i8[1] f8[1]"),
        (nearest._inertia, "f8[2] f8[1] f8[2] f8[1] i8[1] f8[1]"),
        (nearest._assign, "f8[2] f8[2] f8[1] i8[1] f8[1] i8[1] f8[1]"),
        (nearest._assign_plain, "f8[2] f8[2] i8[1] f8[1]"),
    ))


def count_kernels() -> list[tuple[Any, tuple[Any, ...]]]:
    """Counting colours: a block of pixels (stored, or decoded read-only) into the 24-bit
    histogram, sorted and gathered."""
    from streamq.kmeans import histogram

    return typed((
        (histogram._count, "u1[2] i8[1] i8[1] u1[1] u4[1] u4[1] u4[1]"),
        (histogram._count, "u1[2]ro i8[1] i8[1] u1[1] u4[1] u4[1] u4[1]"),
        (histogram._radix_sort24, "u4[1] u4[1]"),
        (histogram._take, "u1[1] u4[1] u4[1]"),
    ))


def label_kernels() -> list[tuple[Any, tuple[Any, ...]]]:
    """Labelling pixels with a palette's 24-bit lookup table: uint8 labels up to 256
    colours, uint16 beyond; the table's distinct colours first; the squared error of a given
    palette over the histogram."""
    from streamq.kmeans import codes, table

    return typed((
        (codes._squared_errors, "i8[1] i8[1] i8[1] i8[2] i8[1]"),
        (table._distinct, "u1[2] i8[1] b1[1]"),
        (table._lookup_all, "u1[2] i4[1] i8[2] b1 u1[1] i8[1] i8[1] i8[1]"),
        (table._lookup_all, "u1[2] i4[1] i8[2] b1 u2[1] i8[1] i8[1] i8[1]"),
        (table._lookup_some, "u1[2] i8[1] i4[1] i8[2] b1 u1[1] i8[1] i8[1] i4[1]"),
        (table._lookup_some, "u1[2] i8[1] i4[1] i8[2] b1 u2[1] i8[1] i8[1] i4[1]"),
        (table._lookup_some, "u1[2] i8[1] i4[1] i8[2] b1 i4[1] i8[1] i8[1] i4[1]"),
    ))


def _key(dispatcher: Any) -> str:
    fn = dispatcher.py_func
    return f"{inspect.getsourcefile(fn)}:{fn.__qualname__}:{numba.__version__}"


@contextlib.contextmanager
def machine_lock(key: str, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock file for ``key`` (in the temporary directory, so per machine);
    yields whether it is held (False: another process holds it and ``wait`` is off). Where
    locks are not available (no ``fcntl``, a file another user owns), yields True unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: every process goes on alone
        yield True
        return
    name = "streamq-" + hashlib.sha1(key.encode()).hexdigest()[:20] + ".lock"
    try:
        fd = os.open(os.path.join(tempfile.gettempdir(), name), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def precompile(kernels: list[tuple[Any, tuple[Any, ...]]] | None = None) -> int:
    """Compile (or load from numba's cache) each kernel for its signature, sharing the work
    with the other processes of this machine; returns how many this call compiled or loaded.

    Cheap once done in a process (a set lookup), so tasks call it on entry.
    """
    kernels = per_image_kernels() if kernels is None else kernels
    todo = [(d, sig) for d, sig in kernels
            if hasattr(d, "compile") and (_key(d), str(sig)) not in _done]  # (NUMBA_DISABLE_JIT)
    if not todo:
        return 0
    with _guard:  # one thread of a process at a time (numba has its own compiler lock too)
        held: list[tuple[Any, tuple[Any, ...]]] = []
        for dispatcher, sig in todo:
            with machine_lock(_key(dispatcher), wait=False) as mine:
                if mine:
                    dispatcher.compile(sig)
                    _done.add((_key(dispatcher), str(sig)))
                else:
                    held.append((dispatcher, sig))
        for dispatcher, sig in held:  # compiled by another process meanwhile: load it
            with machine_lock(_key(dispatcher), wait=True):
                dispatcher.compile(sig)
                _done.add((_key(dispatcher), str(sig)))
    log.debug("Compiled or loaded %s kernels", len(todo))
    return len(todo)
