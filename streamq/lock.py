"""One writer per store: a lock file beside the store, with stale-lock take-over.

Every command that writes a store runs inside :func:`store_lock`; readers (``info``,
``export``, :func:`streamq.open_store`) never look at the lock. The lock is the file
``STORE.lock`` next to the store folder (``faces.zarr`` -> ``faces.zarr.lock``), holding its
owner as JSON (see ``docs/store-format.md``). It lives *beside* the store because
``ingest --overwrite`` replaces the whole store folder, and a first ingest must hold the lock
before the store exists. A store at a URL (``s3://bucket/faces.zarr``) has the same record in
the object ``s3://bucket/faces.zarr.lock``, taken, refreshed, taken over and released with
conditional writes (``If-None-Match: *``, ``If-Match``): see :mod:`streamq.objectlock`, which
describes that protocol; the owner record, the staleness rules and the lost-lock behaviour
below are the same for both.

Protocol on a filesystem (every step is one atomic filesystem operation, see
:class:`LocalFiles`):

* **Take**: create ``STORE.lock`` exclusively (hard link of a complete temporary file, so
  nobody ever reads a half-written lock). If it exists, its owner is either alive (refuse
  with :class:`~streamq.errors.StoreLockedError` naming it) or *stale*:

  - same host, same boot (``boot_id``) and same pid namespace (``pid_ns``): its pid is
    gone, a zombie, or now a different process (start time differs);
  - anywhere else (another host, or a container with the same host name but its own pid
    namespace, or a lock that does not say): no heartbeat for ``stale_after`` seconds (the
    holder rewrites the ``heartbeat`` field every ``heartbeat_interval`` seconds from a
    background thread).

* **Take over** a stale lock whose token is ``T``: first create ``STORE.lock.claim-T``
  exclusively. Tokens are never reused, so exactly one process holds the claim for ``T``;
  everyone else backs off and then finds the winner's fresh lock. The claim holder re-reads
  the lock, renames it to ``STORE.lock.broken-T`` (atomic), checks that the moved file is the
  stale one it judged (if its owner refreshed it meanwhile it is put back), deletes it,
  removes the claim, and creates the lock as above. A claim is itself a lock record: one
  left by a ``kill -9`` during a take-over is stale by the same rules and is broken by a
  claim on the claim.
* **Release**: rename the lock to a name of our own, check it is still ours, delete it.
* **Heartbeat**: replace the lock file (temporary file + rename) only if it still holds our
  token; the read and the rename happen under an exclusive ``flock`` of the side file
  ``STORE.lock.guard`` (removed after each use), which take-overs and releases hold too
  around their read-compare-rename, so a heartbeat can never overwrite another job's lock.

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

import contextlib
import contextvars
import errno
import getpass
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamq import redact
from streamq._version import __version__
from streamq.clock import timestamp
from streamq.errors import ConfigError, LockLostError, StoreLayoutError, StoreLockedError

if TYPE_CHECKING:
    from streamq.config import LockConfig
    from streamq.fs import Location
    from streamq.objectlock import ObjectFiles

__all__ = ["LOCK_SUFFIX", "LockOwner", "StoreLock", "check_writer", "guard_task", "lock_path",
           "read_lock", "store_lock", "unlock"]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
LOCK_FORMAT = 1
DEFAULT_STALE_AFTER = 60.0
DEFAULT_HEARTBEAT = 10.0
_PATIENCE = 10.0      # seconds to wait for another process that is taking over a stale lock
_MAX_DEPTH = 3        # claims on claims on claims: deeper means something is badly wrong


# -- the few filesystem operations the lock needs --------------------------------------------
class LocalFiles:
    """Lock-file operations on a local (or NFS) filesystem.

    Everything the protocol needs: an exclusive create, a read, an atomic replace (heartbeat),
    an atomic rename that fails when the source is gone, a remove, and a short exclusive
    section (:meth:`guard`) in which a read and a replace or rename act as one step. An
    fsspec backend would map them to a conditional put (``If-None-Match: *``), get,
    conditional put (``If-Match``), copy + conditional delete, and delete
    (:class:`streamq.objectlock.ObjectFiles` does so, with its own take-over).
    """

    local = True  # checks read the lock file every time (a cheap local read)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data``; False (and no change) if it already exists."""
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        _write_synced(tmp, data)
        try:
            os.link(tmp, path)  # atomic, fails if path exists, and path appears complete
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
            return self._create_excl_fallback(path, data)  # filesystems without hard links
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    @staticmethod
    def _create_excl_fallback(path: str, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:  # readers may see it empty for a moment: see _parse
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if it does not exist."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def age(self, path: str) -> float | None:
        """Seconds since the file was last written, or None if it does not exist."""
        try:
            return time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def replace(self, path: str, data: bytes) -> None:
        """Atomically replace the file's content (readers see the old or the new bytes)."""
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        _write_synced(tmp, data)
        os.replace(tmp, path)

    def replace_if(self, path: str, token: str, data: bytes) -> bytes | None:
        """Replace the file with ``data`` only if it still holds ``token``, as one step.

        Returns None when replaced, else what the file holds instead (``b""`` when it is gone).
        """
        with self.guard(path):
            now = self.read(path)
            if now is None or _parse(now).token != token:
                return now if now is not None else b""
            self.replace(path, data)
            return None

    @contextlib.contextmanager
    def guard(self, path: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` of ``PATH.guard`` (every process that changes ``path``
        takes it around its read-compare-change); the side file is removed on the way out.

        Where ``flock`` is not supported the block runs unguarded: the take-over still
        checks, after renaming a lock away, that it moved the file it judged.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        side = f"{path}.guard"
        while True:
            try:
                fd = os.open(side, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError as exc:
                log.debug("No lock guard %s (%s); going on without it", side, exc)
                yield
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                os.close(fd)
                log.debug("No flock on %s (%s); going on without it", side, exc)
                yield
                return
            try:  # the name may have been removed (and made again) while we waited
                same = os.stat(side).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(side)  # while still held: a waiter then finds the name gone, retries
            os.close(fd)

    def rename(self, src: str, dst: str) -> bool:
        """Atomically move ``src`` to ``dst`` (a name nobody else uses); False if src is gone."""
        try:
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            return False

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

    def parent_exists(self, path: str) -> bool:
        return os.path.isdir(os.path.dirname(path))

    def make_parent(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    # -- the steps of the protocol that differ between backends ----------------------------
    def take_over(self, path: str, data: bytes, owner: LockOwner, reason: str,
                  record: dict[str, Any], mine: bytes) -> str:
        """Remove the stale lock ``data`` through a claim (then the caller creates its own).

        Returns ``"again"`` when it is gone (create at once), ``"wait"`` when another process
        is taking it over or it changed.
        """
        return "again" if _break(self, path, data, owner, reason, record, 0) else "wait"

    def remove_if_token(self, path: str, token: str) -> bool:
        """Remove the lock if it holds ``token`` (release)."""
        return _remove_if_token(self, path, token, f"{path}.release-{token}")

    def remove_stale(self, path: str, data: bytes, owner: LockOwner, reason: str,
                     record: dict[str, Any]) -> bool:
        """Remove the lock ``data`` judged removable (unlock); False if it must be judged again."""
        return _break(self, path, data, owner, reason, record, 0)


def _write_synced(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # readable by its owner only
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _target(store: str | os.PathLike[str] | Location,
            storage_options: Mapping[str, Any] | None = None) -> tuple[str, Location | None]:
    """The store's text and, for a URL, its checked :class:`~streamq.fs.Location`."""
    if hasattr(store, "url") and hasattr(store, "options"):  # a Location
        loc = store if storage_options is None else type(store)(store.url, dict(storage_options))
        return loc.url, (None if loc.is_local else loc)
    text = os.fspath(store)  # type: ignore[arg-type]
    if "://" not in text:
        return text, None
    from streamq.fs import location

    loc = location(text, storage_options)
    return loc.url, (None if loc.is_local else loc)


def _files_for(loc: Location | None) -> LocalFiles | ObjectFiles:
    """The lock backend of a store: its filesystem (local path) or its object store (URL)."""
    if loc is None:
        return LocalFiles()
    from streamq.objectlock import ObjectFiles

    return ObjectFiles(loc)


def lock_path(store: str | os.PathLike[str] | Location) -> str:
    """Where the lock of ``store`` lives: ``STORE.lock`` beside it (local symlinks resolved;
    for a URL the object ``STORE.lock`` beside the store's prefix)."""
    p = store.url if hasattr(store, "url") else os.fspath(store)  # type: ignore[union-attr]
    if "://" in p:
        return p.rstrip("/") + LOCK_SUFFIX
    return os.path.realpath(os.path.expanduser(p)).rstrip(os.sep) + LOCK_SUFFIX


# -- who holds a lock -----------------------------------------------------------------------
@dataclass
class LockOwner:
    """The job named in a lock file (``raw`` keeps every field as read)."""

    token: str
    command: str = "?"
    operation: str = "?"
    host: str = "?"
    pid: int | None = None
    user: str = "?"
    started: str = "?"
    process_start: float | None = None
    heartbeat: float | None = None
    heartbeat_interval: float | None = None
    stale_after: float | None = None
    boot_id: str | None = None
    pid_ns: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        """One line: command, pid, host, user, start time (credentials never shown, even
        from a lock written by an older streamq)."""
        return (f"{redact.command(self.command)!r} ({self.operation}, pid {self.pid} on host "
                f"{self.host}{self._namespace_note()}, user {self.user}, started {self.started})")

    def _namespace_note(self) -> str:
        if self.host != _hostname() or not self.raw or _same_instance(self):
            return ""
        return ", another pid namespace or boot"


def _parse(data: bytes) -> LockOwner:
    """The owner recorded in lock bytes; an unreadable file gets a token from its bytes."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or not isinstance(raw.get("token"), str):
            raise ValueError("no token")
    except (ValueError, UnicodeDecodeError):
        return LockOwner(token="unreadable-" + hashlib.sha256(data).hexdigest()[:16],
                         command="(unreadable lock file)", raw={})

    def num(key: str) -> float | None:
        v = raw.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    def text(key: str) -> str | None:
        v = raw.get(key)
        return v if isinstance(v, str) else None

    pid = raw.get("pid")
    return LockOwner(
        token=raw["token"], command=str(raw.get("command", "?")),
        operation=str(raw.get("operation", "?")), host=str(raw.get("host", "?")),
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        user=str(raw.get("user", "?")), started=str(raw.get("started", "?")),
        process_start=num("process_start"), heartbeat=num("heartbeat"),
        heartbeat_interval=num("heartbeat_interval"), stale_after=num("stale_after"),
        boot_id=text("boot_id"), pid_ns=text("pid_ns"), raw=raw)


def _hostname() -> str:
    return socket.gethostname()


_BOOT_ID: list[str | None] = []


def _boot_id() -> str | None:
    """This machine's boot id (Linux; None elsewhere): another boot means another process."""
    if not _BOOT_ID:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID.append(f.read().strip() or None)
        except OSError:
            _BOOT_ID.append(None)
    return _BOOT_ID[0]


def _pid_ns() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``; None where there is none)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _same_instance(owner: LockOwner) -> bool:
    """Whether the owner's pid means a process we can look at: same host name, same boot,
    same pid namespace (containers sharing a host name each have their own)."""
    return (owner.host == _hostname() and owner.boot_id == _boot_id()
            and owner.pid_ns == _pid_ns())


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _stale_reason(owner: LockOwner, age: float | None, default_stale_after: float) -> str | None:
    """Why the owner of a lock is gone, or None while it may still be running.

    ``age`` is how long ago the lock file was written (used for unreadable files only).
    """
    stale_after = owner.stale_after or default_stale_after
    if not owner.raw:  # unreadable: a create without hard links in progress, or junk
        if age is not None and age > stale_after:
            return f"unreadable lock file last written {age:.0f} s ago"
        return None
    if owner.pid is not None and _same_instance(owner):
        import psutil

        try:
            proc = psutil.Process(owner.pid)
            status = proc.status()
            started = proc.create_time()
        except psutil.NoSuchProcess:
            return f"pid {owner.pid} is not running on this host"
        except (psutil.AccessDenied, OSError):
            return None  # exists, and we may not look at it: assume alive
        if status == psutil.STATUS_ZOMBIE:
            return f"pid {owner.pid} has exited (zombie)"
        if owner.process_start is not None and abs(started - owner.process_start) > 1.0:
            return f"pid {owner.pid} is now another process (started at another time)"
        return None
    beat = owner.heartbeat
    if beat is None:
        return "no heartbeat recorded" if age is None or age > stale_after else None
    silent = time.time() - beat
    if silent > stale_after:
        return (f"no heartbeat from host {owner.host}{owner._namespace_note()} for "
                f"{silent:.0f} s (stale after {stale_after:g} s)")
    return None


def _command_line() -> str:
    """This process's command line, as a user would type it (``streamq fit ...``), with
    storage option values and URL credentials redacted."""
    argv = list(sys.argv)
    first = argv[0] if argv else ""
    if os.path.basename(first) == "streamq" or first.endswith(os.path.join("streamq", "cli", "main.py")):
        parts = ["streamq", *argv[1:]]
    else:
        try:
            import psutil

            parts = psutil.Process().cmdline()
        except Exception:
            parts = [sys.executable, *argv]
    text = " ".join(shlex.join(redact.argv(parts)).split())  # one line, nothing secret
    return text if len(text) <= 300 else text[:297] + "..."


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


# -- the lock ---------------------------------------------------------------------------------
class StoreLock:
    """The write lock of one store, taken by :meth:`acquire` and given back by :meth:`release`.

    ``store`` is a local path, or a URL (or :class:`~streamq.fs.Location`) of a store on an
    object store, whose lock is the object ``STORE.lock`` (:mod:`streamq.objectlock`;
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
        self.store, loc = _target(store, storage_options)
        self.path = lock_path(self.store)
        self.files = files if files is not None else _files_for(loc)
        self.stale_after = float(stale_after)
        self.heartbeat = float(heartbeat)
        self.token = uuid.uuid4().hex
        self.record: dict[str, Any] = {
            "streamq_lock": LOCK_FORMAT, "token": self.token,
            "store": self.path[: -len(LOCK_SUFFIX)],
            "command": redact.command(command) if command else _command_line(),
            "operation": operation, "host": _hostname(), "pid": os.getpid(), "user": _user(),
            "started": timestamp(),
            "process_start": _process_start(os.getpid()),
            "boot_id": _boot_id(), "pid_ns": _pid_ns(),
            "heartbeat": time.time(), "heartbeat_interval": self.heartbeat,
            "stale_after": self.stale_after, "streamq_version": __version__,
        }
        self.held = False
        self.lost: LockOwner | str | None = None  # set by the heartbeat thread
        self._trusted_until = 0.0  # object stores: checks need no read before this (time.time)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> LockOwner:
        return _parse(self._bytes())

    def _bytes(self) -> bytes:
        return json.dumps(self.record, indent=1).encode()

    def _confirmed(self, beat: float) -> None:
        """The lock held our token with heartbeat ``beat``: trust it for a while (leases)."""
        self._trusted_until = _trust_until(beat, self.heartbeat, self.stale_after)

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
            owner = _parse(data)
            reason = _stale_reason(owner, self.files.age(self.path), self.stale_after)
            if reason is None:
                raise StoreLockedError(_locked_message(self.store, self.path, owner))
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
            owner = _new_owner(self.files, self.path, found)
            self.lost = owner if owner is not None else "removed"
            log.debug("The lock %s is no longer this job's: %s", self.path, self.lost_message())

    def lost_message(self) -> str:
        """One line: this job's lock was taken over, by whom, and what to do."""
        return _lost_message(self.store, self.lost)

    def check(self) -> None:
        """Raise :class:`~streamq.errors.LockLostError` if the lock is no longer this job's.

        Reads the lock file (a few hundred bytes): cheap enough before every write. On an
        object store the read is skipped while the lease of the last confirmation lasts (see
        :mod:`streamq.objectlock`). A lock that cannot be read for another reason leaves the
        verdict to the heartbeat.
        """
        if self.lost is None and self.held:
            if not self.files.local and time.time() < self._trusted_until:
                return
            try:
                data = self.files.read(self.path)
            except OSError:
                data = self._bytes()  # unknown: the heartbeat will tell
            owner = _parse(data) if data is not None else None
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


def _trust_until(beat: float, interval: float, stale_after: float) -> float:
    """Until when a lock seen holding our token with heartbeat ``beat`` cannot have been
    taken over by a job that follows the protocol (it needs ``stale_after`` of silence), with
    a margin of half of it for clocks and delays; at most 1.5 heartbeats, so a lock removed by
    hand is noticed soon."""
    return beat + min(1.5 * interval, stale_after / 2)


def _new_owner(files: LocalFiles | ObjectFiles, path: str, found: bytes | None) -> LockOwner | None:
    """Who holds the lock instead of us: ``found``, or, when the file was gone (a take-over
    between its rename and its create), whoever creates it within a second."""
    deadline = time.monotonic() + 1.0
    while not found and time.monotonic() < deadline:
        time.sleep(0.02)
        with contextlib.suppress(OSError):
            found = files.read(path)
    return _parse(found) if found else None


def _lost_message(store: str, owner: LockOwner | str | None) -> str:
    who = owner.describe() if isinstance(owner, LockOwner) else "nobody (its lock file was removed)"
    return (f"{store}: this job's write lock was taken over by {who}; it stopped before writing "
            "more: rerun the same command when that job is done")


def _locked_message(store: str, path: str, owner: LockOwner) -> str:
    if not owner.raw:
        return (f"{store} is locked: the lock file {path} is being written, or is unreadable "
                "and younger than lock.stale_after; try again")
    beat = ""
    if not _same_instance(owner) and owner.heartbeat is not None:
        beat = f", last heartbeat {max(0.0, time.time() - owner.heartbeat):.0f} s ago"
    what = "lock object" if "://" in path else "lock file"
    return (f"{store} is locked by another job: {owner.describe()}{beat}; wait for it to "
            f"finish ({what} {path}; a lock whose job is gone is taken over automatically)")


def _claim_record(record: dict[str, Any], of: str) -> bytes:
    claim = {**record, "token": uuid.uuid4().hex, "claim_of": of, "heartbeat": time.time()}
    return json.dumps(claim, indent=1).encode()


def _break(files: LocalFiles, path: str, data: bytes, owner: LockOwner, reason: str,
           record: dict[str, Any], depth: int) -> bool:
    """Remove the stale lock file ``path`` (read as ``data``) if we win its take-over claim.

    Returns True when the stale file is gone (by us or anyone), False when another process
    holds the claim, or the file changed and must be judged again.
    """
    claim = f"{path}.claim-{owner.token}"
    mine = _claim_record(record, owner.token)
    if not files.create_exclusive(claim, mine):
        if depth >= _MAX_DEPTH:
            return False
        cdata = files.read(claim)
        if cdata is None:
            return False  # just finished by someone: judge the lock again
        cowner = _parse(cdata)
        creason = _stale_reason(cowner, files.age(claim), owner.stale_after or DEFAULT_STALE_AFTER)
        if creason is None:
            return False  # a live process is taking it over
        if not _break(files, claim, cdata, cowner, creason, record, depth + 1):
            return False
        if not files.create_exclusive(claim, mine):
            return False
    my_token = json.loads(mine)["token"]
    try:
        moved = f"{path}.broken-{owner.token}"
        with files.guard(path):  # no heartbeat can replace it between the compare and the move
            now = files.read(path)
            if now is None:
                return True
            if now != data:  # refreshed or replaced since we judged it
                return False
            if not files.rename(path, moved):
                return True
        got = files.read(moved)
        if got != data:  # its owner refreshed it between our read and the rename: put it back
            if got is not None and not files.create_exclusive(path, got):
                log.error("Lock %s was replaced while it was being restored; its owner %s has "
                          "lost it", path, _parse(got).describe())
            files.remove(moved)
            return False
        files.remove(moved)
        kind = "take-over claim" if depth else "stale lock"
        log.warning("Removed the %s %s of %s: %s", kind, path, owner.describe(), reason)
        return True
    finally:
        _remove_if_token(files, claim, my_token, f"{claim}.release-{my_token}")


def _remove_if_token(files: LocalFiles, path: str, token: str, moved: str) -> bool:
    """Remove ``path`` only if it holds ``token``: move it aside, check, delete or put back."""
    with files.guard(path):
        now = files.read(path)
        if now is None or _parse(now).token != token:
            return False  # not ours (any more): leave it alone
        if not files.rename(path, moved):
            return False
    got = files.read(moved)
    if got is not None and _parse(got).token != token:
        if not files.create_exclusive(path, got):
            log.error("Lock %s was replaced while it was being restored", path)
        files.remove(moved)
        return False
    files.remove(moved)
    return True


# -- re-entrant use --------------------------------------------------------------------------
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
        (:mod:`streamq.objectlock`).
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
    store, loc = _target(store, storage_options)
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
        from streamq.objectlock import ObjectFiles, check_support

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
    once per lease, see :mod:`streamq.objectlock`). Elsewhere (readers, a library caller
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
            owner = _parse(data) if data is not None else None
            if owner is None or owner.token != token:
                raise LockLostError(_lost_message(store, _new_owner(files, path, data)))
            if not files.local and owner.heartbeat is not None:
                _task_trust[(path, token)] = _trust_until(
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


# -- looking and unlocking -------------------------------------------------------------------
def read_lock(store: str | os.PathLike[str] | Location,
              storage_options: Mapping[str, Any] | None = None) -> LockOwner | None:
    """The owner of the store's lock, or None when it is not locked."""
    store, loc = _target(store, storage_options)
    data = _files_for(loc).read(lock_path(store))
    return None if data is None else _parse(data)


def unlock(store: str | os.PathLike[str] | Location, *, force: bool = False,
           config: LockConfig | None = None,
           storage_options: Mapping[str, Any] | None = None) -> tuple[LockOwner, str] | None:
    """Remove the lock of a job that is gone; returns (owner, why) or None if not locked.

    Refuses (StoreLockedError) while the owner runs on this host, and, without ``force``,
    while the owner on another host still sends heartbeats. This is never needed for
    correctness (the next writer takes a stale lock over); it tidies up, and with ``force``
    frees a store whose owner's host is known to be down before ``stale_after`` has passed.
    On an object store the lock is deleted only if it is still the one judged (a DELETE
    with ``If-Match``, see :mod:`streamq.objectlock`).
    """
    store, loc = _target(store, storage_options)
    files = _files_for(loc)
    if loc is not None:
        from streamq.fs import check_access

        check_access(loc)
    path = lock_path(store)
    what = "lock object" if loc is not None else "lock file"
    stale_after = config.stale_after if config else DEFAULT_STALE_AFTER
    record = StoreLock(store, command=None, operation="unlock", stale_after=stale_after,
                       heartbeat=stale_after / 2, files=files).record
    for _ in range(100):
        data = files.read(path)
        if data is None:
            return None
        owner = _parse(data)
        reason = _stale_reason(owner, files.age(path), stale_after)
        if reason is None and not owner.raw:
            raise StoreLockedError(f"{store}: the {what} {path} is being written (or unreadable "
                                   f"and younger than {stale_after:g} s); try again later")
        if reason is None:
            if _same_instance(owner):
                raise StoreLockedError(
                    f"{store}: the job holding the lock is still running on this host: "
                    f"{owner.describe()}; stop it first")
            if not force:
                raise StoreLockedError(
                    _locked_message(store, path, owner).split("; wait")[0]
                    + "; if that job is gone, rerun with --force")
            reason = "removed by hand (--force)"
        if files.remove_stale(path, data, owner, reason, record):
            return owner, reason
        time.sleep(0.02)
    raise StoreLockedError(f"{store}: the lock keeps changing; another job is taking it over")
