"""Where a store's lock lives and which backend moves its bytes: a file beside a local store
(:class:`~streamq.lock.local.LocalFiles`), an object beside a store at a URL
(:class:`~streamq.lock.objects.ObjectFiles`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from streamq.fs import Location, location
from streamq.lock.local import LocalFiles
from streamq.lock.objects import ObjectFiles
from streamq.lock.owner import LOCK_SUFFIX

__all__ = ["files_for", "lock_path", "target"]


def target(store: str | os.PathLike[str] | Location,
           storage_options: Mapping[str, Any] | None = None) -> tuple[str, Location | None]:
    """The store's text and, for a URL, its checked :class:`~streamq.fs.Location`."""
    if isinstance(store, Location):
        loc = store if storage_options is None else Location(store.url, dict(storage_options))
        return loc.url, (None if loc.is_local else loc)
    text = os.fspath(store)
    if "://" not in text:
        return text, None
    loc = location(text, storage_options)
    return loc.url, (None if loc.is_local else loc)


def files_for(loc: Location | None) -> LocalFiles | ObjectFiles:
    """The lock backend of a store: its filesystem (local path) or its object store (URL)."""
    if loc is None:
        return LocalFiles()
    return ObjectFiles(loc)


def lock_path(store: str | os.PathLike[str] | Location) -> str:
    """Where the lock of ``store`` lives: ``STORE.lock`` beside it (local symlinks resolved;
    for a URL the object ``STORE.lock`` beside the store's prefix)."""
    p = store.url if isinstance(store, Location) else os.fspath(store)
    if "://" in p:
        return p.rstrip("/") + LOCK_SUFFIX
    return os.path.realpath(os.path.expanduser(p)).rstrip(os.sep) + LOCK_SUFFIX
