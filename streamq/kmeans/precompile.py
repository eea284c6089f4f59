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
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numba
from numba import types

__all__ = ["per_image_kernels", "precompile"]

log = logging.getLogger(__name__)

_F1 = types.float64[::1]
_F2 = types.float64[:, ::1]
_I1 = types.int64[::1]
_I2 = types.int64[:, ::1]
_I64 = types.int64
_F64 = types.float64
_BOOL = types.boolean
_B1 = types.boolean[::1]
# pixels: read-only (streamq.kmeans.codes.pixels_in)
_RGB = types.Array(types.uint8, 2, "C", readonly=True)

_done: set[tuple[str, str]] = set()
_guard = threading.Lock()


def per_image_kernels() -> list[tuple[Any, tuple[Any, ...]]]:
    """``(dispatcher, argument types)`` of the per-image path (``--method histogram``), the
    costliest to compile first: k-means++, Lloyd, pixel labels (for the quantize that
    follows the fit), the sample's shuffle and colour counts."""
    from streamq.kmeans import codes, filtering, plusplus, sampling, table

    return [
        (plusplus._kmeanspp, (_F2, _F1, _I1, _F2, _F2, types.int64[:, :, ::1], _F1, _F1, _I64,
                              _I64, _F2, _I1, _F1, _F1, _F1)),
        (filtering._run, (_F2, _I2, _I1, _I1, _F2, _F2, _F2, _F2, _F64, _F64, _BOOL, _I64, _I1,
                          _F1, _I1, _I2, _I1, _I1, _F1, _I1, _F1, _F1, _BOOL, _B1)),
        (table._label, (_RGB, _F1, _F2, _I1, _F1, _F1, _I2, _I1, _I1, _F2, _I1, _I1)),
        (sampling._shuffle, (types.int32[::1], _I64, _I64, types.uint32[::1], _I1)),
        (codes._count_codes, (_RGB, types.uint8[::1], _BOOL, types.int32[::1], _I1)),
    ]


def _key(dispatcher: Any) -> str:
    fn = dispatcher.py_func
    return f"{inspect.getsourcefile(fn)}:{fn.__qualname__}:{numba.__version__}"


@contextlib.contextmanager
def _file_lock(key: str, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock file for ``key`` (in the temporary directory, so per machine);
    yields whether it is held (False: another process holds it and ``wait`` is off). Where
    locks are not available (no ``fcntl``, a file another user owns), yields True unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: every process compiles for itself
        yield True
        return
    name = "streamq-numba-" + hashlib.sha1(key.encode()).hexdigest()[:20] + ".lock"
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
            with _file_lock(_key(dispatcher), wait=False) as mine:
                if mine:
                    dispatcher.compile(sig)
                    _done.add((_key(dispatcher), str(sig)))
                else:
                    held.append((dispatcher, sig))
        for dispatcher, sig in held:  # compiled by another process meanwhile: load it
            with _file_lock(_key(dispatcher), wait=True):
                dispatcher.compile(sig)
                _done.add((_key(dispatcher), str(sig)))
    log.debug("Compiled or loaded %s kernels", len(todo))
    return len(todo)
