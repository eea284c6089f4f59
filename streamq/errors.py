"""Exceptions and warnings raised by streamq.

Every error derives from :class:`StreamQError` and, where callers already catch a
builtin (``ValueError``, ``OSError``, ``FileNotFoundError``), from that builtin too.
Messages are one line: they name the file, key or value and say what was expected.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ImageReadError",
    "LockLostError",
    "StoreError",
    "StoreExistsError",
    "StoreLayoutError",
    "StoreLockedError",
    "StoreMismatchError",
    "StreamQError",
    "StreamQWarning",
]


class StreamQError(Exception):
    """Root of every error streamq raises on purpose."""


class ConfigError(StreamQError, ValueError):
    """A configuration key, value or command-line flag is not valid."""


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


class LockLostError(StoreLockedError):
    """This job's write lock was taken over by another job (the message names it); the job
    stops before its next write."""


class ImageReadError(StreamQError, OSError):
    """An input file could not be read as an image (recorded as a skip, not raised by ingest)."""


class StreamQWarning(UserWarning):
    """Something worth knowing that does not stop the run."""
