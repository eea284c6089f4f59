"""Whole local files written atomically: readers see the old file or the new, never a part.

A temporary file is fsynced and renamed over the target, then its folder is fsynced
(:func:`write_atomic`, the one place streamq does this: lock files, palettes, reports and
exported images all go through it); :func:`write_new` creates a file that must not exist yet.
On an object store one object is written by one PUT, which readers see whole or not at all
(:meth:`streamq.fs.Location.write_bytes`).
"""

from __future__ import annotations

import contextlib
import os
import uuid

__all__ = ["write_atomic", "write_new"]


def write_new(path: str, data: bytes, mode: int = 0o666, sync: bool = True) -> None:
    """Create the local file ``path`` (which must not exist) holding ``data``, with permission
    bits ``mode`` (less the umask), fsynced unless ``sync`` is false."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


def write_atomic(path: str, data: bytes, *, mode: int = 0o666, sync: bool = True,
                 tmp_dir: str | None = None) -> None:
    """Write the local file ``path`` whole or not at all: readers see the old file or the new.

    ``data`` goes to a temporary file (in ``path``'s folder, or in ``tmp_dir`` on the same
    filesystem), which is fsynced and renamed over ``path``; then the folder is fsynced, where
    the filesystem allows it, so that the new name survives a power loss too. Missing folders
    of ``path`` are made. ``mode``: the file's permission bits (less the umask). ``sync``
    false skips both fsyncs, for a caller that makes many files durable at once later
    (:func:`streamq.durable.sync_all`). The temporary file is removed when anything fails.
    """
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    stem = os.fsencode(os.path.basename(path))[:100].decode("utf-8", "ignore")  # NAME_MAX
    tmp = os.path.join(tmp_dir or folder, f".{stem}.{uuid.uuid4().hex}.tmp")
    try:
        write_new(tmp, data, mode, sync)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    if sync:
        _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """fsync a folder, so that a rename in it is kept; a filesystem that refuses is fine."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
