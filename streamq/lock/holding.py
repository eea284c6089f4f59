"""Which locks this process holds, and the checks before every write.

:func:`store_lock` is the re-entrant way to hold a store's lock: again in the thread that
holds it, refused to other threads and processes. :func:`check_writer` runs before every
write of a stage (each chunk, record, checkpoint and attribute) and stops it with
:class:`~streamq.errors.LockLostError` once the lock it depends on was taken over;
:func:`guard_task` carries the locks of the submitting thread into Dask tasks, which check
the lock file (or object) themselves before they write.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamq.errors import LockLostError, StoreLayoutError, StoreLockedError
from streamq.lock.backend import lock_path, target
from streamq.lock.holder import StoreLock, new_owner
from streamq.lock.local import LocalFiles
from streamq.lock.objects import ObjectFiles, check_support
from streamq.lock.owner import (
    DEFAULT_HEARTBEAT,
    DEFAULT_STALE_AFTER,
    lost_message,
    parse,
    trust_until,
)

if TYPE_CHECKING:
    from streamq.config import LockConfig
    from streamq.fs import Location

__all__ = ["check_writer", "guard_task", "store_lock"]

log = logging.getLogger("streamq.lock")


@dataclass
class _Held:
    lock: StoreLock
    thread: int
    depth: int = 1


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _forget_after_fork() -> None:
    global _held_guard
    _held.clear()  # a forked child is another process: it holds nothing
    _held_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


@contextlib.contextmanager
def store_lock(store: str | os.PathLike[str] | Location, command: str | None = None, *,
               operation: str = "write", create: bool = False,
               config: LockConfig | None = None,
               storage_options: Mapping[str, Any] | None = None) -> Iterator[StoreLock | None]:
    """Hold the write lock of ``store`` for the duration of the ``with`` block.

    Parameters
    ----------
    store : str, path or Location
        The store folder, or its URL (``s3://bucket/faces.zarr``). The lock is
        ``STORE.lock`` beside it: a file, or an object taken with conditional writes
        (:mod:`streamq.lock.objects`).
    command : str, optional
        What to show other jobs; default this process's command line.
    operation : str
        The stage taking the lock (``ingest``, ``fit``, ...), shown to other jobs.
    create : bool, default=False
        The store may not exist yet (ingest): create its parent folder if needed. Otherwise
        a local store that does not exist is a :class:`~streamq.errors.StoreLayoutError`
        (a missing store at a URL is found by the stage that opens it).
    config : LockConfig, optional
        ``stale_after`` and ``heartbeat`` seconds (default 60 and 10); ``enabled`` false
        writes without a lock (yields None).
    storage_options : mapping, optional
        Options of a URL store's filesystem (a :class:`~streamq.fs.Location` brings its own).

    Re-entrant in the thread that holds it; another thread of this process, or another
    process, gets :class:`~streamq.errors.StoreLockedError` naming the holder. Yields the
    :class:`StoreLock`. An object store that does not honour conditional writes is refused
    with a :class:`~streamq.errors.StoreError` (unless ``config.enabled`` is false).
    """
    store, loc = target(store, storage_options)
    if config is not None and not config.enabled:
        if store not in _unlocked_warned:
            _unlocked_warned.add(store)
            log.warning("%s: written without its lock (lock.enabled is false, or --no-lock): "
                        "make sure no other job writes it meanwhile", store)
        yield None
        return
    path = lock_path(store)
    me = threading.get_ident()
    with _held_guard:
        held = _held.get(path)
        if held is not None and held.thread == me:
            held.depth += 1
        elif held is not None:
            raise StoreLockedError(
                f"{store} is locked by another thread of this process: {held.lock.owner.describe()}")
    if held is not None:
        try:
            yield held.lock
        finally:
            with _held_guard:
                held.depth -= 1
        return
    files: LocalFiles | ObjectFiles
    if loc is not None:
        from streamq.fs import check_access

        check_access(loc)  # a missing bucket, no credentials...: one line, before any write
        files = ObjectFiles(loc)
        check_support(files, store, path)
    else:
        files = LocalFiles()
        folder = os.path.abspath(os.path.expanduser(store))
        if not create and not files.exists(folder):
            raise StoreLayoutError(f"{folder} does not exist (expected a streamq store)")
        if create and not files.parent_exists(path):
            files.make_parent(path)
    lock = StoreLock(store, command=command, operation=operation,
                     stale_after=config.stale_after if config else DEFAULT_STALE_AFTER,
                     heartbeat=config.heartbeat if config else DEFAULT_HEARTBEAT, files=files)
    lock.acquire()
    with _held_guard:
        _held[path] = _Held(lock, me)
    failed = True
    try:
        yield lock
        failed = False
    finally:
        with _held_guard:
            _held.pop(path, None)
        lock.release()
        if lock.lost is not None and not failed:
            raise LockLostError(lock.lost_message())


_unlocked_warned: set[str] = set()  # stores this process said it writes without a lock


# -- stopping before a write once the lock is lost -------------------------------------------
#: In a task submitted by a lock holder: (backend, lock path, token, store) of each lock held.
_TaskLock = tuple["LocalFiles | ObjectFiles", str, str, str]
_task_locks: contextvars.ContextVar[tuple[_TaskLock, ...]] = contextvars.ContextVar(
    "streamq_task_locks", default=())
#: In a worker process: until when a lock on an object store was last seen holding a token.
_task_trust: dict[tuple[str, str], float] = {}


def _locks_of_this_thread() -> list[StoreLock]:
    me = threading.get_ident()
    with _held_guard:
        return [h.lock for h in _held.values() if h.thread == me]


def check_writer() -> None:
    """Raise :class:`~streamq.errors.LockLostError` if a write now would be made without the
    lock it depends on; called before every chunk, record, checkpoint and attribute write.

    In the thread that holds store locks: each of them is checked (:meth:`StoreLock.check`).
    In a task submitted while locks were held (:func:`guard_task`, on any worker): their lock
    files are read and must still hold the submitter's tokens (on an object store, at most
    once per lease, see :mod:`streamq.lock.objects`). Elsewhere (readers, a library caller
    without a lock): nothing to check.
    """
    held = _task_locks.get()
    if held:
        for files, path, token, store in held:
            if not files.local and time.time() < _task_trust.get((path, token), 0.0):
                continue
            try:
                data = files.read(path)
            except OSError:
                continue  # cannot tell from here; the job's heartbeat will
            owner = parse(data) if data is not None else None
            if owner is None or owner.token != token:
                raise LockLostError(lost_message(store, new_owner(files, path, data)))
            if not files.local and owner.heartbeat is not None:
                _task_trust[(path, token)] = trust_until(
                    owner.heartbeat, owner.heartbeat_interval or DEFAULT_HEARTBEAT,
                    owner.stale_after or DEFAULT_STALE_AFTER)
        return
    for lock in _locks_of_this_thread():
        lock.check()


class _Guarded:
    """A task function that runs with the submitter's locks to check (see :func:`guard_task`)."""

    def __init__(self, fn: Any, locks: tuple[_TaskLock, ...]) -> None:
        self.fn = fn
        self.locks = locks
        self.__name__ = getattr(fn, "__name__", "task")  # Dask names the task after it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reset = _task_locks.set(self.locks)
        try:
            check_writer()
            return self.fn(*args, **kwargs)
        except LockLostError:
            _quiet_worker_log()
            raise
        finally:
            _task_locks.reset(reset)


class _NoLockLost(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LockLostError" not in record.getMessage()


def _quiet_worker_log() -> None:
    """Keep a Dask worker from logging each task a lost lock stopped ("Compute Failed" with
    a traceback, once per task): the job says it once, in one line."""
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _NoLockLost) for f in worker_log.filters):
        worker_log.addFilter(_NoLockLost())


def guard_task(fn: Any) -> Any:
    """``fn`` as a task that checks, before it starts and before each write, that the locks
    this thread holds now are still this job's (``fn`` itself when it holds none)."""
    locks = tuple((lk.files, lk.path, lk.token, lk.store) for lk in _locks_of_this_thread())
    return _Guarded(fn, locks) if locks else fn

