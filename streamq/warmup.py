"""Compile streamq's kernels ahead of their first use (``streamq warmup``).

streamq's inner loops are numba kernels kept in numba's on-disk cache: the first process
that calls one on a machine compiles it (0.1–2 s each, about 22 s for all of them in one
process), every later process loads it (milliseconds). On a cold cache the processes of a
job that start together — a local cluster's workers, the tests of a test run — would each
compile the same kernels at once. :func:`warmup` compiles every kernel a stage calls, for the
argument types it calls with, sharing the work between the processes that run it together
(:func:`streamq.kmeans.precompile.precompile`); a test checks that a whole pipeline after it
compiles nothing more.

It also writes the bytecode of streamq's own modules (:func:`compile_bytecode`). An editable
install (``pip install -e``) has none, and where ``PYTHONDONTWRITEBYTECODE`` is set no
process writes it: each one that imports streamq (every job, every cluster worker) then
compiled its ~100 modules from source again, ~0.25 s of CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["GROUPS", "compile_bytecode", "kernels", "warmup"]


def _ingest() -> list[tuple[Any, tuple[Any, ...]]]:
    from streamq.ingest import png_rows
    from streamq.kmeans.precompile import count_kernels, signature

    # a PNG's rows undone band by band, then the colours each write task stores counted
    return [(png_rows._unfilter, signature("u1[2]ro u1[1] u1[2] i8")), *count_kernels()]


def _fit() -> list[tuple[Any, tuple[Any, ...]]]:
    from streamq.kmeans.precompile import fit_kernels

    return fit_kernels()


def _per_image() -> list[tuple[Any, tuple[Any, ...]]]:
    from streamq.kmeans.precompile import per_image_kernels

    return per_image_kernels()


def _quantize() -> list[tuple[Any, tuple[Any, ...]]]:
    from streamq import dither
    from streamq.kmeans.precompile import label_kernels, signature

    return [*label_kernels(),
            (dither._nearest, signature("f8[1] f8[2]")),
            (dither._diffuse, signature("f8[3] f8[2] i8 u1[2]"))]


def _ssim() -> list[tuple[Any, tuple[Any, ...]]]:
    from streamq import ssim
    from streamq.kmeans.precompile import signature

    # labels as stored: uint8 up to 256 colours, uint16 beyond, int64 from a fresh predict
    out: list[tuple[Any, tuple[Any, ...]]] = []
    for labels in ("u1[1]", "u2[1]", "i8[1]"):
        out.append((ssim._hrow, signature(f"u1[2] {labels} f8[1] i8 i8 f8[1] f8[2] f8[2]")))
        out.append((ssim._ssim_sum, signature(f"u1[2] {labels} f8[1] i8 i8 i8 i8 i8 f8[1]")))
    return out


#: The kernels of each part of streamq, by the name ``streamq warmup`` takes.
GROUPS: dict[str, Callable[[], list[tuple[Any, tuple[Any, ...]]]]] = {
    "ingest": _ingest,
    "fit": _fit,
    "per-image": _per_image,
    "quantize": _quantize,
    "ssim": _ssim,
}


def kernels(groups: Iterable[str] | None = None) -> list[tuple[Any, tuple[Any, ...]]]:
    """``(dispatcher, argument types)`` of the named groups (all of :data:`GROUPS` by
    default), each pair once."""
    names = list(GROUPS) if groups is None else list(groups)
    unknown = [g for g in names if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown kernel group {unknown[0]!r}: expected one of "
                         f"{', '.join(GROUPS)}")
    out: list[tuple[Any, tuple[Any, ...]]] = []
    seen: set[tuple[int, str]] = set()
    for name in names:
        for dispatcher, sig in GROUPS[name]():
            if (id(dispatcher), str(sig)) not in seen:
                seen.add((id(dispatcher), str(sig)))
                out.append((dispatcher, sig))
    return out


def compile_bytecode(root: str | os.PathLike[str] | None = None) -> bool:
    """Write the bytecode of every module under ``root`` (streamq's package folder by default)
    whose ``__pycache__`` file is missing or out of date with its source, as ``pip install``
    does for a regular install; False if some could not be written (a read-only
    installation: imports then compile in memory, as before). Processes that run it at once
    are safe: each file is replaced atomically."""
    import compileall
    import py_compile

    # stamped with the source's time and size, as imports write them (not by hash, which
    # compileall picks when SOURCE_DATE_EPOCH is set)
    return bool(compileall.compile_dir(root or os.path.dirname(__file__), quiet=2,
                                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP))


def warmup(groups: Iterable[str] | None = None) -> tuple[int, float]:
    """Write streamq's bytecode (:func:`compile_bytecode`), then compile (or load from
    numba's cache) the kernels of ``groups`` (all by default); returns how many kernels this
    call compiled or loaded, and the seconds it took. Processes that run it at the same time
    share the compiling."""
    from streamq.kmeans.precompile import precompile

    t0 = time.perf_counter()
    compile_bytecode()
    n = precompile(kernels(groups))
    return n, time.perf_counter() - t0
