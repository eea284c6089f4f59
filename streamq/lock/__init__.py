"""One writer per store: a lock file beside the store, with stale-lock take-over.

Every command that writes a store runs inside :func:`store_lock`; readers (``info``,
``export``, :func:`streamq.open_store`) never look at the lock. The lock is the file
``STORE.lock`` next to the store folder (``faces.zarr`` -> ``faces.zarr.lock``), holding its
owner as JSON (see ``docs/store-format.md``). It lives *beside* the store because
``ingest --overwrite`` replaces the whole store folder, and a first ingest must hold the lock
before the store exists. A store at a URL (``s3://bucket/faces.zarr``) has the same record in
the object ``s3://bucket/faces.zarr.lock``, taken, refreshed, taken over and released with
conditional writes (``If-None-Match: *``, ``If-Match``). The owner record, the staleness
rules and the lost-lock behaviour are the same for both.

The package, one module per part, each importing only those listed before it:

- :mod:`~streamq.lock.owner`: the owner record (who holds a lock), when its job is gone
  (same host, boot and pid namespace: its pid; anywhere else: its heartbeat's age), and the
  one-line messages that name it;
- :mod:`~streamq.lock.local`: the lock file on a filesystem and its race-free take-over
  (and why the ``filelock`` package does not do this job);
- :mod:`~streamq.lock.objects`: the lock object on S3, with conditional writes and a lease;
- :mod:`~streamq.lock.backend`: where a store's lock lives and which of the two moves it;
- :mod:`~streamq.lock.holder`: :class:`StoreLock`, one held lock and its heartbeat thread;
- :mod:`~streamq.lock.holding`: :func:`store_lock` (re-entrant within a thread),
  :func:`check_writer` before every write and :func:`guard_task` for Dask tasks;
- :mod:`~streamq.lock.admin`: :func:`read_lock` and :func:`unlock`.

A job that finds its lock taken over (the heartbeat, or :func:`check_writer` before every
write of a stage: each chunk, record, checkpoint and attribute) stops with
:class:`~streamq.errors.LockLostError` naming the new owner. Dask tasks check too: a task
submitted while the lock was held reads the lock file before it writes.

Nothing secret is recorded: the command line has its ``--storage-option`` values and URL
credentials redacted (:mod:`streamq.redact`), and the file is readable by its owner only.

Locks are re-entrant within one thread (``streamq run`` holds the lock for all stages and
the stages take it again), refused to other threads of the same process.

The limits of a lease across hosts apply: clocks must agree to well within ``stale_after``,
and a holder that stops heartbeating for longer than ``stale_after`` (paused, partitioned)
loses the lock; it notices before its next write and ends with
:class:`~streamq.errors.LockLostError`. Within one host, boot and pid namespace, pids make the
lock exact.
"""

from __future__ import annotations

from streamq.lock.admin import read_lock, unlock
from streamq.lock.backend import lock_path
from streamq.lock.holder import StoreLock
from streamq.lock.holding import check_writer, guard_task, store_lock
from streamq.lock.local import LocalFiles
from streamq.lock.objects import ObjectFiles
from streamq.lock.owner import DEFAULT_HEARTBEAT, DEFAULT_STALE_AFTER, LOCK_SUFFIX, LockOwner

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_STALE_AFTER", "LOCK_SUFFIX", "LocalFiles", "LockOwner",
           "ObjectFiles", "StoreLock", "check_writer", "guard_task", "lock_path", "read_lock",
           "store_lock", "unlock"]
