"""Looking at a store's lock, and removing by hand the lock of a job that is gone."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamq.errors import StoreLockedError
from streamq.lock.backend import files_for, lock_path, target
from streamq.lock.owner import (
    DEFAULT_STALE_AFTER,
    LockOwner,
    locked_message,
    owner_record,
    parse,
    same_instance,
    stale_reason,
)

if TYPE_CHECKING:
    from streamq.config import LockConfig
    from streamq.fs import Location

__all__ = ["read_lock", "unlock"]


def read_lock(store: str | os.PathLike[str] | Location,
              storage_options: Mapping[str, Any] | None = None) -> LockOwner | None:
    """The owner of the store's lock, or None when it is not locked."""
    store, loc = target(store, storage_options)
    data = files_for(loc).read(lock_path(store))
    return None if data is None else parse(data)


def unlock(store: str | os.PathLike[str] | Location, *, force: bool = False,
           config: LockConfig | None = None,
           storage_options: Mapping[str, Any] | None = None) -> tuple[LockOwner, str] | None:
    """Remove the lock of a job that is gone; returns (owner, why) or None if not locked.

    Refuses (StoreLockedError) while the owner runs on this host, and, without ``force``,
    while the owner on another host still sends heartbeats. This is never needed for
    correctness (the next writer takes a stale lock over); it tidies up, and with ``force``
    frees a store whose owner's host is known to be down before ``stale_after`` has passed.
    On an object store the lock is deleted only if it is still the one judged (a DELETE
    with ``If-Match``, see :mod:`streamq.lock.objects`).
    """
    store, loc = target(store, storage_options)
    files = files_for(loc)
    if loc is not None:
        from streamq.fs import check_access

        check_access(loc)
    path = lock_path(store)
    what = "lock object" if loc is not None else "lock file"
    stale_after = config.stale_after if config else DEFAULT_STALE_AFTER
    record = owner_record(path, None, "unlock", stale_after, stale_after / 2)
    for _ in range(100):
        data = files.read(path)
        if data is None:
            return None
        owner = parse(data)
        reason = stale_reason(owner, files.age(path), stale_after)
        if reason is None and not owner.raw:
            raise StoreLockedError(f"{store}: the {what} {path} is being written (or unreadable "
                                   f"and younger than {stale_after:g} s); try again later")
        if reason is None:
            if same_instance(owner):
                raise StoreLockedError(
                    f"{store}: the job holding the lock is still running on this host: "
                    f"{owner.describe()}; stop it first")
            if not force:
                raise StoreLockedError(
                    locked_message(store, path, owner).split("; wait")[0]
                    + "; if that job is gone, rerun with --force")
            reason = "removed by hand (--force)"
        if files.remove_stale(path, data, owner, reason, record):
            return owner, reason
        time.sleep(0.02)
    raise StoreLockedError(f"{store}: the lock keeps changing; another job is taking it over")
