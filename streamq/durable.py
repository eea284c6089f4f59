"""What survives a power loss: fsync where streamq writes local files, and checksums in records.

Zarr's ``LocalStore`` writes a chunk to a temporary file and renames it, without ``fsync``:
after a power loss the renamed file may be empty, shorter or missing, while a completion record
written after it survived. Where streamq writes local files:

- a task fsyncs the chunk files it wrote, and the folders from theirs up to the array's own
  (the client made the folders above durable when it created the array; a task adds nothing
  to them), before it writes its completion record, then fsyncs the record the same way
  (:func:`sync_chunks`, :func:`sync_files`); an export task does the same for its image
  files (:func:`sync_all`);
- the client fsyncs every array it creates and every attribute it writes (``zarr.json``), so a
  state such as ``complete`` is never on disk before what it vouches for;
- every completion record carries a checksum of what it vouches for (:func:`checksum`): a
  resumed stage reads back each recorded chunk or file and redoes the task when they differ.

Objects in an object store (``s3://``) need none of this: a PUT that returned is stored whole.
``docs/store-format.md`` ("What survives power loss") describes the whole protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["array_folder", "checksum", "chunk_files", "chunk_keys", "sync_all", "sync_chunks",
           "sync_files", "sync_tree", "sync_trees"]

_LIBC: Any = None


def checksum(data: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of an array's values as little-endian bytes in C order (0 for no values);
    ``crc``: the running value of the arrays before it, so the checksums of consecutive row
    blocks, each carried into the next, give the checksum of all the rows at once."""
    a = np.asarray(data)
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return zlib.crc32(a.view(np.uint8).reshape(-1).data, crc)


def _fsync(path: str, directory: bool = False) -> None:
    """fsync one file or folder; a missing one is fine (nothing of it to keep)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on a folder: nothing more to do there
        if not directory:
            raise
        del exc
    finally:
        os.close(fd)


def _parents(path: str, up_to: str | None) -> list[str]:
    """The folders from ``path``'s own up to ``up_to`` (included), or just its own."""
    out = []
    folder = os.path.dirname(os.path.abspath(path))
    stop = os.path.abspath(up_to) if up_to else folder
    while True:
        out.append(folder)
        if folder == stop or os.path.dirname(folder) == folder:
            return out
        if os.path.commonpath([folder, stop]) != stop:  # not below up_to: its own folder only
            return out[:1]
        folder = os.path.dirname(folder)


def sync_files(paths: Iterable[str], up_to: str | None = None) -> None:
    """fsync each file of ``paths`` (local paths; missing ones are skipped), then each folder
    from theirs up to ``up_to`` once, so that their names are kept too."""
    folders: dict[str, None] = {}
    for p in paths:
        _fsync(p)
        for f in _parents(p, up_to):
            folders.setdefault(f)
    for f in folders:
        _fsync(f, directory=True)


def sync_tree(root: str, up_to: str | None = None) -> None:
    """fsync every file and folder under ``root`` (a file or a folder), then the folders above
    it up to ``up_to``."""
    sync_trees([root], up_to)


def sync_trees(roots: Iterable[str], up_to: str | None = None) -> None:
    """:func:`sync_tree` of each of ``roots`` at once: each file and each folder -- a folder
    shared by several of them, the store's own -- fsynced once (what one client call, or a
    batch of them, wrote: :meth:`streamq.store.Store.sync`)."""
    files: dict[str, None] = {}
    folders: dict[str, None] = {}
    above: dict[str, None] = {}
    for root in roots:
        if os.path.isdir(root):
            inside: list[str] = []
            for dirpath, _, names in os.walk(root):
                inside.append(dirpath)
                files.update(dict.fromkeys(os.path.join(dirpath, n) for n in names))
            folders.update(dict.fromkeys(reversed(inside)))
        else:
            files.setdefault(root)
        above.update(dict.fromkeys(_parents(root, up_to)))
    for p in files:
        _fsync(p)
    for f in folders:
        _fsync(f, directory=True)
    for f in above:
        if f not in folders:
            _fsync(f, directory=True)


def chunk_keys(arr: Any, lo: int, hi: int) -> list[str]:
    """Keys (relative to the array) of the chunks, or shards, of ``arr`` that hold its rows
    ``[lo, hi)`` (first axis; the other axes in one chunk)."""
    if hi <= lo:
        return []
    grid = int((getattr(arr, "shards", None) or arr.chunks)[0])
    rest = (0,) * (len(arr.shape) - 1)
    return [arr.metadata.encode_chunk_key((i, *rest)) for i in range(lo // grid, (hi - 1) // grid + 1)]


def chunk_files(root: str, name: str, arr: Any, lo: int, hi: int) -> list[str]:
    """Local paths of the chunk files of array ``name`` of the store folder ``root`` that hold
    its rows ``[lo, hi)``."""
    return [os.path.join(root, *name.split("/"), *k.split("/")) for k in chunk_keys(arr, lo, hi)]


def array_folder(root: str, name: str) -> str:
    """The folder of array ``name`` of the local store ``root``."""
    return os.path.join(root, *name.split("/"))


def sync_chunks(root: str, name: str, arr: Any, lo: int, hi: int) -> None:
    """fsync the chunk files holding rows ``[lo, hi)`` of array ``name`` of the local store
    ``root`` and their folders up to the array's own (a chunk of fill values has no file:
    skipped).

    Not the folders above the array: the client made them durable when it created the array
    (:meth:`streamq.store.Store.sync`), and a task adds nothing to them -- only chunk files,
    and the folders of their keys, inside the array's folder."""
    sync_files(chunk_files(root, name, arr, lo, hi), up_to=array_folder(root, name))


def _syncfs(fd: int) -> bool:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            _LIBC = False
    fn = getattr(_LIBC, "syncfs", None) if _LIBC else None
    return bool(fn is not None and fn(fd) == 0)


def sync_all(paths: Iterable[str], up_to: str | None = None) -> None:
    """Make many small files and their folders durable at once: one ``syncfs`` of their
    filesystem where the system has it (Linux; 4x cheaper than an fsync per 6 kB file,
    measured), else :func:`sync_files`."""
    paths = list(paths)
    if not paths:
        return
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(paths[0])), os.O_RDONLY)
        try:
            if _syncfs(fd):
                return
        finally:
            os.close(fd)
    sync_files(paths, up_to)


