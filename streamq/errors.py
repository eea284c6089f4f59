"""Exceptions raised by streamq.

Every error derives from :class:`StreamQError` and, where callers already catch a
builtin (``ValueError``, ``OSError``, ``FileNotFoundError``), from that builtin too.
Messages are one line: they name the file, key or value and say what was expected.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "FaultError",
    "LabelsChangedError",
    "LockLostError",
    "QualityError",
    "StoreError",
    "StoreExistsError",
    "StoreLayoutError",
    "StoreLockedError",
    "StoreMismatchError",
    "StageNotReadyError",
    "StreamQError",
]


class StreamQError(Exception):
    """Root of every error streamq raises on purpose."""


class ConfigError(StreamQError, ValueError):
    """A configuration key, value or command-line flag is not valid."""


class QualityError(StreamQError):
    """A quality target's MIN was not reached even at the largest K searched: by the shared
    palette (``fit --quality``) or by some images' own palettes (``fit --per-image
    --quality``). Exit status 99, as pngquant's."""

    exit_status = 99


class StoreLayoutError(StreamQError, FileNotFoundError):
    """A path is not a streamq store, or a store of another format version."""


class StoreError(StreamQError, OSError):
    """A store or output location cannot be used: a bad URL, a missing package, no access."""


class StoreExistsError(StreamQError, FileExistsError):
    """A store already holds different work and ``overwrite`` was not given."""


class StoreMismatchError(StreamQError, ValueError):
    """The existing store was made from other inputs or settings than those requested."""


class StoreLockedError(StreamQError):
    """Another job holds the store's write lock (the message names it: command, pid, host)."""


class FaultError(StreamQError, OSError):
    """A read or write failed for a reason of the machine, not of the input (a full disk, no
    free file descriptors, an I/O error, no memory), after retries when the reason may pass;
    the message is one line naming the file, the error and its errno name."""

    def __init__(self, message: str, errno_value: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_value

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (Dask) intact
        return type(self), (str(self), self.errno)


class LockLostError(StoreLockedError):
    """This job's write lock was taken over by another job (the message names it); the job
    stops before its next write."""


class LabelsChangedError(StreamQError):
    """The labels or palette an export was reading changed under it (a quantize, fit or
    ingest ran meanwhile: readers take no lock); nothing made from them is recorded."""


class StageNotReadyError(StreamQError):
    """A stage needs the result of another one that is missing, unfinished or stale; the
    message (one line) ends with the command to run first, kept in ``commands``."""

    def __init__(self, what: str, *commands: str) -> None:
        self.what, self.commands = what, commands
        run = " and ".join(f"`{c}`" for c in commands)
        super().__init__(f"{what}; run {run} first")

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (Dask) intact
        return type(self), (self.what, *self.commands)
