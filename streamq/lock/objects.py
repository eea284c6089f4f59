"""The store's write lock on an object store (S3): conditional writes and a lease.

The backend of :mod:`streamq.lock` for stores at URLs (:mod:`streamq.lock.local` is the one for
local paths). The lock is the object ``STORE.lock``
beside the store's prefix (``s3://bucket/faces.zarr`` -> ``s3://bucket/faces.zarr.lock``),
holding the same JSON owner record as a local lock file, and outside the store for the same
reasons (``ingest --overwrite`` replaces every object of the store; a first ingest locks a
store that does not exist yet). An object store has no rename and no ``flock``; every step is
one request that the server applies only if a condition holds, atomically:

* **Take**: PUT with ``If-None-Match: *``, which fails (412) when the object exists.
* **Take over** a stale lock that was read with ETag ``E`` (stale by the rules of
  :func:`streamq.lock.owner.stale_reason`): PUT our record with ``If-Match: E``. Of several jobs
  judging the same stale lock, exactly one succeeds: the first PUT changes the ETag.
* **Heartbeat**: PUT our record with ``If-Match`` on the ETag of our last write. A 412 whose
  object now holds another token means the lock was taken over (or removed: 404); the job
  then stops before its next write (:class:`~streamq.errors.LockLostError`).
* **Release**, and ``streamq unlock``: DELETE with ``If-Match`` on the ETag we wrote (or
  judged), so a lock taken over in between is never deleted. On a server that ignores
  conditions on DELETE (found by the check below) the lock is read, its token compared and
  then deleted: a job taking the lock over between that read and the delete would lose it;
  this needs our own lock to be judged stale in that instant (no heartbeat for
  ``stale_after``) or a ``streamq unlock --force``.

A request that the client retries after the server applied it fails its condition (412); the
object read back then holds our own record, and we go on with its ETag.

Before its first lock on a bucket, a process checks that the endpoint honours these
conditions, on a scratch object ``STORE.lock.probe-<random>`` that it deletes again: a PUT
with ``If-None-Match: *`` and one with a wrong ``If-Match`` must fail, or conditional writes
are not supported and streamq refuses to write the store (``--no-lock`` / ``lock.enabled:
false`` writes it without a lock); a DELETE with a wrong ``If-Match`` must fail too, or
releases use the read-compare-delete above.

**Lease.** Reading the lock object before every write would cost a GET per chunk, record and
task. A take-over needs the lock's heartbeat to be older than ``stale_after``, so a check
trusts the last time it saw the lock hold its token -- a heartbeat written by this job, or a
read -- until ``min(1.5 x heartbeat, stale_after / 2)`` after that heartbeat's time, and
reads the object again after that (Dask tasks keep the same trust per worker process). A job
frozen for longer than that reads before its next write and stops if it lost the lock; a lock
removed by ``streamq unlock --force`` while its owner runs is noticed within that time. As for
every lease, clocks must agree to well within ``stale_after / 2``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamq import redact
from streamq.errors import StoreError
from streamq.lock.owner import LockOwner, parse

if TYPE_CHECKING:
    from streamq.fs import Location

__all__ = ["ObjectFiles", "Support", "check_support", "unsupported_message"]

log = logging.getLogger("streamq.lock")

_NO_ETAG = '"00000000000000000000000000000000"'  # an ETag no object has
_PROBE_BODY = (b"streamq checks here that the endpoint honours conditional writes; "
               b"this object is deleted at once and may be deleted by anyone\n")
_TRIES = 8
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_UNSUPPORTED_STATUS = {400, 405, 501}  # a server that rejects the condition instead of ignoring it


@dataclass(frozen=True)
class Support:
    """What an endpoint honours: conditions on PUT (the lock needs them), on DELETE."""

    conditional_put: bool
    conditional_delete: bool


_SUPPORT: dict[tuple[str, str], Support] = {}  # (endpoint, bucket) -> what it honours


class _ConditionFailed(Exception):
    """The server refused a request because its condition did not hold (412 or 409)."""


def _error_of(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind ``exc`` (s3fs wraps botocore's error)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            return str(error.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
        seen = seen.__cause__ or seen.__context__
    return "", 0


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.split("://", 1)[1].partition("/")
    return bucket, key


def unsupported_message(store: str, endpoint: str) -> str:
    """One line: the endpoint cannot hold the lock; what to do."""
    return (f"{store}: the object store at {endpoint} does not honour conditional writes (a PUT "
            "with If-None-Match: * replaced an existing object), which the store's write lock "
            "needs; to write the store without a lock, pass --no-lock (config key "
            "lock.enabled: false) and make sure no other job writes it meanwhile")


class ObjectFiles:
    """Lock operations on an object store through s3fs, each one conditional request.

    Holds the store's :class:`~streamq.fs.Location` (for its storage options) and the ETags
    this process wrote and read; pickles to the location alone (Dask tasks read the lock).
    """

    local = False

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self._etag: dict[str, str] = {}  # path -> ETag of our last write
        self._seen: dict[str, tuple[bytes, str, float | None]] = {}  # last read: bytes, ETag, mtime

    def __getstate__(self) -> dict[str, Any]:
        return {"loc": self.loc}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["loc"])  # type: ignore[misc]

    # -- requests --------------------------------------------------------------------------
    def _call(self, path: str, make: Callable[[Any, str, str], Coroutine[Any, Any, Any]]) -> Any:
        """Run ``make(fs, bucket, key)`` on the filesystem's loop; a failed condition becomes
        :class:`_ConditionFailed`, a missing object FileNotFoundError, access and network
        failures one-line :class:`~streamq.errors.StoreError` s."""
        from fsspec.asyn import sync

        from streamq.fs import Location, storage_errors

        bucket, key = _split(path)
        with storage_errors(Location(path, self.loc.options)):
            fs = self.loc.filesystem()
            try:
                return sync(fs.loop, make, fs, bucket, key)
            except FileNotFoundError:
                raise
            except Exception as exc:
                code, status = _error_of(exc)
                if code in _CONFLICT_CODES or status in (409, 412):
                    raise _ConditionFailed(code or str(status)) from None
                raise

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async def go(fs: Any, bucket: str, key: str) -> Any:
            return await fs._call_s3(method, Bucket=bucket, Key=key, **kwargs)

        return self._call(path, go)

    def _get(self, path: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag (remembered as the last read), None when it is gone."""
        async def go(fs: Any, bucket: str, key: str) -> tuple[bytes, str, Any]:
            resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                data = await body.read()
            finally:
                body.close()
            return bytes(data), str(resp["ETag"]), resp.get("LastModified")

        try:
            data, etag, modified = self._call(path, go)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return None
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else None
        self._seen[path] = (data, etag, mtime)
        return data, etag

    def _refused(self, method: str, path: str, **kwargs: Any) -> bool:
        """Whether the server refuses this conditional request (whose condition is false)."""
        try:
            self._request(method, path, **kwargs)
        except _ConditionFailed:
            return True
        except FileNotFoundError:
            return True  # If-Match on an object it cannot find: the condition was looked at
        except Exception as exc:
            if _error_of(exc)[1] in _UNSUPPORTED_STATUS:
                log.debug("%s with %s rejected by the server: %s", method, sorted(kwargs),
                          redact.text(str(exc)))
                return False
            raise
        return False

    # -- what the endpoint honours ---------------------------------------------------------
    def support(self, path: str) -> Support:
        """Whether the endpoint honours conditional PUTs and DELETEs (checked once per process
        and bucket, on a scratch object beside ``path``)."""
        key = (self.loc.endpoint(), _split(path)[0])
        found = _SUPPORT.get(key)
        if found is not None:
            return found
        probe = f"{path}.probe-{uuid.uuid4().hex}"
        self._request("put_object", probe, Body=_PROBE_BODY)
        try:
            put = (self._refused("put_object", probe, Body=_PROBE_BODY, IfNoneMatch="*")
                   and self._refused("put_object", probe, Body=_PROBE_BODY, IfMatch=_NO_ETAG))
            delete = self._refused("delete_object", probe, IfMatch=_NO_ETAG)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._request("delete_object", probe)
        found = _SUPPORT[key] = Support(put, delete)
        log.debug("Endpoint %s, bucket %s: conditional PUT %s, conditional DELETE %s", *key,
                  put, delete)
        return found

    # -- the operations :class:`streamq.lock.StoreLock` uses ---------------------------------
    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create the object holding ``data``; False (and no change) if it exists."""
        try:
            out = self._request("put_object", path, Body=data, IfNoneMatch="*")
        except _ConditionFailed:
            got = self._get(path)
            if got is not None and got[0] == data:  # our own PUT, retried by the client
                self._etag[path] = got[1]
                return True
            return False
        self._etag[path] = str(out["ETag"])
        return True

    def read(self, path: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""
        got = self._get(path)
        return None if got is None else got[0]

    def age(self, path: str) -> float | None:
        """Seconds since the object was last written (by the server's clock)."""
        seen = self._seen.get(path)
        if seen is None and self._get(path) is None:
            return None
        seen = self._seen.get(path)
        return None if seen is None or seen[2] is None else time.time() - seen[2]

    def replace_if(self, path: str, token: str, data: bytes) -> bytes | None:
        """Replace our lock with ``data`` only if it still holds ``token``: a PUT with
        ``If-Match`` on the ETag of our last write. Returns None when replaced, else what the
        object holds instead (``b""`` when it is gone)."""
        for _ in range(_TRIES):
            etag = self._etag.get(path)
            if etag is None:
                got = self._get(path)
                if got is None or parse(got[0]).token != token:
                    return b"" if got is None else got[0]
                etag = self._etag[path] = got[1]
            try:
                out = self._request("put_object", path, Body=data, IfMatch=etag)
            except FileNotFoundError:
                return b""
            except _ConditionFailed:
                got = self._get(path)
                if got is None:
                    return b""
                if parse(got[0]).token != token:
                    return got[0]
                self._etag[path] = got[1]  # still ours: our retried PUT, or our record rewritten
                if got[0] == data:
                    return None
                continue
            self._etag[path] = str(out["ETag"])
            return None
        raise OSError(f"the lock {path} kept changing while its heartbeat was written")

    def take_over(self, path: str, data: bytes, owner: LockOwner, reason: str,
                  record: dict[str, Any], mine: bytes) -> str:
        """Replace the stale lock ``data`` (just read) by ``mine`` in one conditional PUT.

        Returns ``"held"`` when the lock is ours now, ``"again"`` to look at the lock again at
        once (it changed or was removed), ``"wait"`` when another job was quicker.
        """
        seen = self._seen.get(path)
        if seen is None or seen[0] != data:
            return "again"
        try:
            out = self._request("put_object", path, Body=mine, IfMatch=seen[1])
        except FileNotFoundError:
            return "again"
        except _ConditionFailed:
            got = self._get(path)
            if got is None or got[0] != mine:
                return "wait"
            self._etag[path] = got[1]  # our own PUT, retried by the client
        else:
            self._etag[path] = str(out["ETag"])
        log.warning("Took over the stale lock %s of %s: %s", path, owner.describe(), reason)
        return "held"

    def remove_if_token(self, path: str, token: str) -> bool:
        """Delete our lock if it still holds ``token`` (release)."""
        if not self.support(path).conditional_delete:
            got = self._get(path)
            if got is None or parse(got[0]).token != token:
                return False
            with contextlib.suppress(FileNotFoundError):
                self._request("delete_object", path)  # read-compare-delete: see the module doc
            return True
        etag = self._etag.get(path)
        for _ in range(_TRIES):
            if etag is None:
                got = self._get(path)
                if got is None or parse(got[0]).token != token:
                    return False
                etag = got[1]
            try:
                self._request("delete_object", path, IfMatch=etag)
                return True
            except FileNotFoundError:
                return False
            except _ConditionFailed:
                etag = None  # read again: still ours (a retried PUT of ours) or not
        return False

    def remove_stale(self, path: str, data: bytes, owner: LockOwner, reason: str,
                     record: dict[str, Any]) -> bool:
        """Delete the lock ``data`` (just read and judged removable) unless it changed since.

        True when it is gone (by us or anyone), False when it changed and must be judged again.
        """
        seen = self._seen.get(path)
        if seen is None or seen[0] != data:
            return False
        try:
            if self.support(path).conditional_delete:
                self._request("delete_object", path, IfMatch=seen[1])
            else:
                got = self._get(path)
                if got is None:
                    return True
                if got[0] != data:
                    return False
                self._request("delete_object", path)
        except FileNotFoundError:
            return True
        except _ConditionFailed:
            return False
        log.warning("Removed the stale lock %s of %s: %s", path, owner.describe(), reason)
        return True


def check_support(files: ObjectFiles, store: str, path: str) -> None:
    """Refuse, in one line, to lock a store on an endpoint without conditional writes."""
    if not files.support(path).conditional_put:
        raise StoreError(unsupported_message(store, files.loc.endpoint()))
