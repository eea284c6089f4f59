"""One held lock: :class:`StoreLock` takes it (taking over a stale one), keeps its heartbeat
from a background thread, notices when it was taken over, and gives it back.

The backend (:mod:`streamq.lock.local` or :mod:`streamq.lock.objects`) moves the bytes; the
record and the rules are :mod:`streamq.lock.owner`'s. Re-entrant use within a process is
:func:`streamq.lock.store_lock`'s (:mod:`streamq.lock.holding`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from streamq import redact
from streamq.errors import ConfigError, LockLostError, StoreLockedError
from streamq.lock.backend import files_for, lock_path, target
from streamq.lock.local import LocalFiles
from streamq.lock.objects import ObjectFiles
from streamq.lock.owner import (
    DEFAULT_HEARTBEAT,
    DEFAULT_STALE_AFTER,
    LockOwner,
    locked_message,
    lost_message,
    owner_record,
    parse,
    stale_reason,
    trust_until,
)

if TYPE_CHECKING:
    from streamq.fs import Location

__all__ = ["StoreLock", "new_owner"]

log = logging.getLogger("streamq.lock")

_PATIENCE = 10.0      # seconds to wait for another process that is taking over a stale lock


class StoreLock:
    """The write lock of one store, taken by :meth:`acquire` and given back by :meth:`release`.

    ``store`` is a local path, or a URL (or :class:`~streamq.fs.Location`) of a store on an
    object store, whose lock is the object ``STORE.lock`` (:mod:`streamq.lock.objects`;
    ``storage_options`` reach it). Not re-entrant by itself (two instances in one process
    exclude each other like two processes); use :func:`store_lock` for the re-entrant
    context manager.
    """

    def __init__(self, store: str | os.PathLike[str] | Location, *, command: str | None = None,
                 operation: str = "write", stale_after: float = DEFAULT_STALE_AFTER,
                 heartbeat: float = DEFAULT_HEARTBEAT, files: LocalFiles | ObjectFiles | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        if not heartbeat > 0 or stale_after < 2 * heartbeat:
            raise ConfigError(f"key 'lock.stale_after' has value {stale_after!r}, expected at least "
                              f"twice 'lock.heartbeat' ({heartbeat!r})")
        self.store, loc = target(store, storage_options)
        self.path = lock_path(self.store)
        self.files = files if files is not None else files_for(loc)
        self.stale_after = float(stale_after)
        self.heartbeat = float(heartbeat)
        self.record: dict[str, Any] = owner_record(self.path, command, operation,
                                                   self.stale_after, self.heartbeat)
        self.token: str = self.record["token"]
        self.held = False
        self.lost: LockOwner | str | None = None  # set by the heartbeat thread
        self._trusted_until = 0.0  # object stores: checks need no read before this (time.time)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> LockOwner:
        return parse(self._bytes())

    def _bytes(self) -> bytes:
        return json.dumps(self.record, indent=1).encode()

    def _confirmed(self, beat: float) -> None:
        """The lock held our token with heartbeat ``beat``: trust it for a while (leases)."""
        self._trusted_until = trust_until(beat, self.heartbeat, self.stale_after)

    # -- taking ------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise StoreLockedError if a live job holds it."""
        deadline = time.monotonic() + _PATIENCE
        while True:
            self.record["heartbeat"] = time.time()
            if self.files.create_exclusive(self.path, self._bytes()):
                break
            if time.monotonic() > deadline:
                raise StoreLockedError(f"{self.store}: the lock {self.path} kept changing for "
                                       f"{_PATIENCE:g} s; other jobs are taking it; try again")
            try:
                data = self.files.read(self.path)
            except PermissionError:
                if not self.files.local:
                    raise
                raise StoreLockedError(
                    f"{self.store} is locked by a job of another user: its lock file "
                    f"{self.path} is readable by its owner only") from None
            if data is None:
                continue  # released in between: try again
            owner = parse(data)
            reason = stale_reason(owner, self.files.age(self.path), self.stale_after)
            if reason is None:
                raise StoreLockedError(locked_message(self.store, self.path, owner))
            self.record["heartbeat"] = time.time()
            verdict = self.files.take_over(self.path, data, owner, reason, self.record,
                                           self._bytes())
            if verdict == "held":
                break
            if verdict == "wait":
                time.sleep(0.02)  # another process is taking it over: see who wins
        self.held = True
        self._confirmed(self.record["heartbeat"])
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"streamq-lock {self.path}",
                                        daemon=True)
        self._thread.start()
        log.debug("Locked %s (%s)", self.store, self.path)

    def _beat(self) -> None:
        """Refresh the heartbeat until released; notice when the lock is no longer ours."""
        while not self._stop.wait(self.heartbeat):
            try:
                beat = self.record["heartbeat"] = time.time()
                found = self.files.replace_if(self.path, self.token, self._bytes())
            except OSError as exc:
                log.warning("Could not refresh the lock %s: %s", self.path,
                            redact.text(str(exc)))
                continue
            if found is not None:
                self._lose(found)
                return
            self._confirmed(beat)

    def _lose(self, found: bytes) -> None:
        """Note that the lock file now holds ``found`` (``b""``: nothing) instead of ours."""
        if self.lost is None:
            owner = new_owner(self.files, self.path, found)
            self.lost = owner if owner is not None else "removed"
            log.debug("The lock %s is no longer this job's: %s", self.path, self.lost_message())

    def lost_message(self) -> str:
        """One line: this job's lock was taken over, by whom, and what to do."""
        return lost_message(self.store, self.lost)

    def check(self) -> None:
        """Raise :class:`~streamq.errors.LockLostError` if the lock is no longer this job's.

        Reads the lock file (a few hundred bytes): cheap enough before every write. On an
        object store the read is skipped while the lease of the last confirmation lasts (see
        :mod:`streamq.lock.objects`). A lock that cannot be read for another reason leaves the
        verdict to the heartbeat.
        """
        if self.lost is None and self.held:
            if not self.files.local and time.time() < self._trusted_until:
                return
            try:
                data = self.files.read(self.path)
            except OSError:
                data = self._bytes()  # unknown: the heartbeat will tell
            owner = parse(data) if data is not None else None
            if owner is None or owner.token != self.token:
                self._lose(data or b"")
            elif not self.files.local and owner.heartbeat is not None:
                self._confirmed(owner.heartbeat)
        if self.lost is not None:
            raise LockLostError(self.lost_message())

    # -- giving back -----------------------------------------------------------------------
    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.held = False
        if self.lost is None:
            self.files.remove_if_token(self.path, self.token)
        log.debug("Unlocked %s", self.store)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()



def new_owner(files: LocalFiles | ObjectFiles, path: str, found: bytes | None) -> LockOwner | None:
    """Who holds the lock instead of us: ``found``, or, when the file was gone (a take-over
    between its rename and its create), whoever creates it within a second."""
    deadline = time.monotonic() + 1.0
    while not found and time.monotonic() < deadline:
        time.sleep(0.02)
        with contextlib.suppress(OSError):
            found = files.read(path)
    return parse(found) if found else None

