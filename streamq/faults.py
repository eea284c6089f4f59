"""Faults of the machine, not of the input: which errors to retry, and the retry loop.

An operating-system error that can go away by itself -- an I/O error, no free file
descriptors, a full disk or quota, a stale NFS handle, a resource temporarily unavailable,
no memory -- says nothing about the file being read or written. Reading an input, or writing
a store or an export, is tried again after ``wait`` seconds, then twice that, and so on, for
``attempts`` tries in all (config section ``retry``); if it still fails, the stage stops with
a :class:`~streamq.errors.FaultError`: one line naming the file, the error and its errno
name. Such a fault is never recorded as a bad input: a rerun of the same command retries it,
keeping the work already done. Any other OS error on a write stops the stage at once, in the
same form.

Reads and writes over a network (object stores, HTTP sources) fail in more ways, and the
same rule applies: a timeout, a connection refused, reset or closed, and an answer with HTTP
status 408, 429 or 5xx (S3's ``SlowDown``, ``ServiceUnavailable``, ``InternalError``) are
transient; an answer that is about the object itself -- 403 (access denied) or 404 (no such
key) -- is not, and is left to the caller to report in one line (see
:mod:`streamq.ingest.sources`).
"""

from __future__ import annotations

import errno
import gc
import logging
import re
import time
from collections.abc import Callable
from typing import TypeVar

from streamq import redact
from streamq.config import RetryConfig
from streamq.errors import FaultError, StreamQError

__all__ = ["NETWORK_ERRORS", "TRANSIENT_ERRNOS", "TRANSIENT_STATUSES", "http_status",
           "is_transient", "retrying"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errno values that describe the machine's state at that moment, not the file.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EIO", "EMFILE", "ENFILE", "ENOSPC", "EDQUOT", "ESTALE", "EAGAIN", "EWOULDBLOCK",
        "EINTR", "ENOMEM", "ENOBUFS", "EBUSY", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED",
        "EHOSTUNREACH", "ENETDOWN", "ENETUNREACH", "ENOLCK", "EREMOTEIO")
    if hasattr(errno, name)
)
_HINTS = {errno.ENOSPC: "free some space", getattr(errno, "EDQUOT", -1): "free some space",
          errno.EMFILE: "raise the open-files limit (ulimit -n)",
          errno.ENFILE: "close other programs or raise the system's open-files limit",
          errno.ENOMEM: "give the workers more memory"}
#: Exceptions of network clients (botocore, aiohttp, urllib3) that say the connection, not the
#: object, failed; matched by class name so that none of those packages is imported here.
NETWORK_ERRORS = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "HTTPClientError", "ProxyConnectionError", "ClientConnectorError", "ClientOSError",
    "ServerDisconnectedError", "ServerTimeoutError", "ClientPayloadError", "IncompleteRead",
    "ProtocolError", "ResponseParserError", "ConnectionError"})
#: HTTP statuses of an answer that may differ next time: timeout, too many requests, 5xx.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's temporary name of a chunk in flight


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed request (aiohttp's ``status``, botocore's response), if any."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def _is_network_fault(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if {c.__name__ for c in type(exc).__mro__} & NETWORK_ERRORS:
        return True
    return http_status(exc) in TRANSIENT_STATUSES


def _transient_cause(exc: BaseException) -> BaseException | None:
    for e in _chain(exc):
        if isinstance(e, FaultError):
            return None
        if isinstance(e, MemoryError):
            return e
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return e
        if isinstance(e, FileNotFoundError | PermissionError):
            return None  # about the object (404, 403), whatever raised it
        if _is_network_fault(e):
            return e
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a fault of the machine or the
    network that may go away: an OS error with a transient errno, ``MemoryError``, a timeout,
    a failed connection, or an HTTP answer 408, 429 or 5xx."""
    return _transient_cause(exc) is not None


def _describe(exc: BaseException, target: str) -> tuple[str, str, int | None]:
    """``(file, 'what happened (errno N NAME)', errno)`` for a message."""
    if isinstance(exc, MemoryError):
        return target, "out of memory (MemoryError)", None
    if not isinstance(exc, OSError) or (exc.errno is None and not exc.strerror):
        status = http_status(exc)
        detail = redact.text(" ".join(str(exc).split())) or "no detail"
        what = f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + f": {detail}"
        return target, what[:300], None
    name = errno.errorcode.get(exc.errno or -1, "")
    what = exc.strerror or str(exc) or type(exc).__name__
    code = f" (errno {exc.errno} {name})" if exc.errno is not None else ""
    path = exc.filename if isinstance(exc.filename, str) and exc.filename else target
    return _PARTIAL.sub("", path), f"{what}{code}", exc.errno


def retrying(fn: Callable[[], T], action: str, target: str, policy: RetryConfig | None = None,
             *, write: bool = False) -> T:
    """Call ``fn()``; on a transient fault, call it again as ``policy`` says.

    ``action`` and ``target`` name what ``fn`` does for messages (``"read"``, ``"/src/a.jpg"``).
    A fault that outlasts the retries raises :class:`FaultError`. With ``write=True`` any
    other OS error with an errno raises :class:`FaultError` at once too (a write that
    fails is never the input's fault); errors of reads that are not transient propagate
    unchanged (the caller decides whether they make a bad input).
    """
    policy = policy or RetryConfig()
    started = time.monotonic()
    wait = policy.wait
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except StreamQError:
            raise
        except Exception as exc:  # noqa: BLE001  (only transient faults are kept, see below)
            cause = _transient_cause(exc)
            if cause is None:
                if write and isinstance(exc, OSError) and exc.errno is not None:
                    path, what, code = _describe(exc, target)
                    raise FaultError(
                        f"cannot {action} {path}: {what}; fix that and rerun the same command "
                        "(finished work is kept)", code) from exc
                raise
            path, what, code = _describe(cause, target)
            if attempt == policy.attempts:
                spent = time.monotonic() - started
                hint = _HINTS.get(code or 0, "check the device, the (network) filesystem and "
                                  "the system log")
                if not isinstance(cause, OSError) or cause.errno is None:
                    hint = "check the network and the server"
                if isinstance(cause, MemoryError):
                    hint = _HINTS[errno.ENOMEM]
                raise FaultError(
                    f"cannot {action} {path}: {what}, still failing after {attempt} attempts "
                    f"over {spent:.1f} s; {hint}, then rerun the same command (finished work "
                    "is kept)", code) from exc
            log.warning("Cannot %s %s: %s; retrying in %.2g s (attempt %d of %d)",
                        action, path, what, wait, attempt + 1, policy.attempts)
            del exc, cause
            gc.collect()  # frees what a failed attempt held (memory, file descriptors)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")
