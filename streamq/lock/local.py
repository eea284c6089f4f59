"""The store's lock on a filesystem: the lock file ``STORE.lock`` and its take-over.

Every step is one atomic filesystem operation (:class:`LocalFiles`); the owner record and the
staleness rules are :mod:`streamq.lock.owner`'s.

* **Take**: create ``STORE.lock`` exclusively (hard link of a complete temporary file, so
  nobody ever reads a half-written lock). If it exists, its owner is either alive (refuse
  with :class:`~streamq.errors.StoreLockedError` naming it) or *stale*
  (:func:`~streamq.lock.owner.stale_reason`).
* **Take over** a stale lock whose token is ``T``: first create ``STORE.lock.claim-T``
  exclusively. Tokens are never reused, so exactly one process holds the claim for ``T``;
  everyone else backs off and then finds the winner's fresh lock. The claim holder re-reads
  the lock, renames it to ``STORE.lock.broken-T`` (atomic), checks that the moved file is the
  stale one it judged (if its owner refreshed it meanwhile it is put back), deletes it,
  removes the claim, and creates the lock as above. A claim is itself a lock record: one
  left by a ``kill -9`` during a take-over is stale by the same rules and is broken by a
  claim on the claim.
* **Release**: rename the lock to a name of our own, check it is still ours, delete it.
* **Heartbeat**: replace the lock file (:func:`streamq.fs.write_atomic`) only if it still
  holds our token; the read and the rename happen under an exclusive ``flock`` of the side
  file ``STORE.lock.guard`` (removed after each use), which take-overs and releases hold too
  around their read-compare-rename, so a heartbeat can never overwrite another job's lock.

The file is readable by its owner only (mode 0600).

**Why not the filelock package.** It was weighed against what this lock has to do, and does
not fit (filelock 4.x):

- Its ``FileLock`` is an ``flock`` on an open file: the kernel frees it when the holder dies,
  but nothing in the file names the holder, and only the holder's own process can tell that
  it still holds it. Here Dask tasks in other processes, on other hosts, check before each
  write that the lock file still holds their job's token (:func:`streamq.lock.check_writer`);
  ``streamq unlock`` and a refused job read who holds it. An owner file beside it would be a
  second file that is written apart from the lock, so what it names could be a job that no
  longer holds it.
- Its marker locks (``SoftFileLease`` and kin) write their own fixed record (protocol line,
  host, pid, start token; at most 1024 bytes), not this JSON record (command line, stage,
  user, start time, boot id, pid namespace, heartbeat time, ``stale_after``), which
  ``docs/store-format.md`` specifies and which the lock object on S3 holds too
  (:mod:`streamq.lock.objects`, the same rules in one place for both backends).
- A lease there expires after a peer has *watched* it unchanged for ``lease_duration`` on its
  own monotonic clock, so every new contender waits that long; here the heartbeat's time is
  in the record, so a lock whose host died long ago is taken over at once, and
  ``streamq unlock`` judges it in one read.
- Its lost-lease notice is a callback in the holding process; here a lost lock must stop
  writes in every worker process of the job (:class:`~streamq.errors.LockLostError`).

What filelock would bring -- ``flock``, pid liveness with start times, pid namespaces -- is
what :class:`LocalFiles` and :mod:`streamq.lock.owner` do in a few lines each, with psutil.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from streamq.fs import write_atomic, write_new
from streamq.lock.owner import DEFAULT_STALE_AFTER, LockOwner, claim_record, parse, stale_reason

__all__ = ["LocalFiles"]

log = logging.getLogger("streamq.lock")

_MAX_DEPTH = 3        # claims on claims on claims: deeper means something is badly wrong
_MODE = 0o600         # lock files are readable by their owner only


class LocalFiles:
    """Lock-file operations on a local (or NFS) filesystem.

    Everything the protocol needs: an exclusive create, a read, an atomic replace (heartbeat),
    an atomic rename that fails when the source is gone, a remove, and a short exclusive
    section (:meth:`guard`) in which a read and a replace or rename act as one step. An
    fsspec backend would map them to a conditional put (``If-None-Match: *``), get,
    conditional put (``If-Match``), copy + conditional delete, and delete
    (:class:`streamq.lock.objects.ObjectFiles` does so, with its own take-over).
    """

    local = True  # checks read the lock file every time (a cheap local read)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` holding ``data``; False (and no change) if it already exists."""
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        write_new(tmp, data, _MODE)
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
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _MODE)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:  # readers may see it empty for a moment: see parse
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
        write_atomic(path, data, mode=_MODE)

    def replace_if(self, path: str, token: str, data: bytes) -> bytes | None:
        """Replace the file with ``data`` only if it still holds ``token``, as one step.

        Returns None when replaced, else what the file holds instead (``b""`` when it is gone).
        """
        with self.guard(path):
            now = self.read(path)
            if now is None or parse(now).token != token:
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
                fd = os.open(side, os.O_CREAT | os.O_RDWR, _MODE)
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



def _break(files: LocalFiles, path: str, data: bytes, owner: LockOwner, reason: str,
           record: dict[str, Any], depth: int) -> bool:
    """Remove the stale lock file ``path`` (read as ``data``) if we win its take-over claim.

    Returns True when the stale file is gone (by us or anyone), False when another process
    holds the claim, or the file changed and must be judged again.
    """
    claim = f"{path}.claim-{owner.token}"
    mine = claim_record(record, owner.token)
    if not files.create_exclusive(claim, mine):
        if depth >= _MAX_DEPTH:
            return False
        cdata = files.read(claim)
        if cdata is None:
            return False  # just finished by someone: judge the lock again
        cowner = parse(cdata)
        creason = stale_reason(cowner, files.age(claim), owner.stale_after or DEFAULT_STALE_AFTER)
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
                          "lost it", path, parse(got).describe())
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
        if now is None or parse(now).token != token:
            return False  # not ours (any more): leave it alone
        if not files.rename(path, moved):
            return False
    got = files.read(moved)
    if got is not None and parse(got).token != token:
        if not files.create_exclusive(path, got):
            log.error("Lock %s was replaced while it was being restored", path)
        files.remove(moved)
        return False
    files.remove(moved)
    return True

