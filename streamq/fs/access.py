"""Problems with a URL, told in one line: an unknown scheme, a missing package, no
credentials, an unreachable endpoint, a missing bucket, access denied each become a
:class:`~streamq.errors.StoreError` that says what to check (:func:`storage_errors` around
every use of a :class:`~streamq.fs.Location`, :func:`check_access` once per bucket before a
stage starts). Local paths pass through untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from streamq import redact
from streamq.errors import StoreError

if TYPE_CHECKING:
    from streamq.fs.location import Location

__all__ = ["SCHEMES", "check_access", "explain_failure", "storage_errors"]

log = logging.getLogger(__name__)

SCHEMES = {"s3": "s3fs"}  # URL scheme -> the package that implements it
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ReadTimeoutError", "ProxyConnectionError", "ClientConnectorError",
                "ServerTimeoutError", "ConnectionRefusedError", "FSTimeoutError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_CHECKED: set[str] = set()  # buckets found usable by this process (scheme, bucket, options)


def explain_failure(exc: BaseException, loc: Location, kind: str = "storage") -> str | None:
    """A one-line message for a failure to use ``loc``, or None to let ``exc`` through.

    ``kind`` names the options that reach it in the hints: ``storage`` (stores and outputs,
    key ``storage_options``) or ``source`` (ingest's sources, key ``source_options``)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if names & _NO_CREDENTIALS:
        return (f"no credentials for {loc.url}: set {kind} options 'key' and 'secret' (or "
                "'anon: true' for a public bucket), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if names & _UNREACHABLE:
        return (f"cannot reach {loc.endpoint()} for {loc.url} ({type(exc).__name__}): check {kind} "
                "option 'endpoint_url', the network, and that the server is running")
    if isinstance(exc, ValueError) and str(exc).startswith("Invalid endpoint"):
        return (f"{redact.text(str(exc))} for {loc.url}: {kind} option 'endpoint_url' must look "
                "like http://HOST:PORT")
    if isinstance(exc, PermissionError):
        return (f"access to {loc.url} was denied ({redact.text(str(exc))}): check {kind} options "
                "'key'/'secret' and the bucket's permissions")
    if isinstance(exc, ImportError):
        package = SCHEMES.get(loc.scheme, loc.scheme)
        return f"{loc.url} needs the {package} package: pip install 'streamq[{loc.scheme}]'"
    return None


@contextlib.contextmanager
def storage_errors(loc: Location, kind: str = "storage") -> Iterator[None]:
    """Turn credential, network and permission failures on ``loc`` into one-line StoreErrors
    (``kind``: which options the hints name, see :func:`explain_failure`)."""
    if loc.is_local:
        yield
        return
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        message = explain_failure(exc, loc, kind)
        if message is None:
            raise
        raise StoreError(message) from None


def check_access(loc: Location, kind: str = "storage") -> None:
    """Fail early, in one line, when a URL cannot be used (no-op for local paths).

    Looks at the bucket with few retries (a wrong endpoint fails in about a second instead
    of the dozen seconds of the provider's retry schedule), once per process and bucket:
    a missing bucket, missing
    credentials or an unreachable endpoint each give a :class:`StoreError` naming the URL
    and what to check. Being refused the bucket itself is not fatal: access may be granted
    to objects only, and later calls tell. ``kind`` names the options in the hints
    (``storage`` or ``source``, see :func:`explain_failure`).
    """
    if loc.is_local:
        return
    key = json.dumps([loc.scheme, loc.bucket, loc.options], sort_keys=True, default=repr)
    if key in _CHECKED:
        return
    try:
        _probe(loc, kind)
    except (TypeError, ValueError, AttributeError) as exc:  # s3fs/botocore on a bad option
        raise StoreError(
            f"{kind} options for {loc.url} were not accepted by {SCHEMES[loc.scheme]} "
            f"({type(exc).__name__}: {redact.text(str(exc))}); check key '{kind}_options' "
            f"(given: {redact.options(loc.options)})") from None
    _CHECKED.add(key)


def _probe(loc: Location, kind: str = "storage") -> None:
    """Look at the bucket of ``loc``, with few retries (see :func:`check_access`)."""
    extra: dict[str, Any] = {}
    if loc.scheme == "s3":
        config = dict(loc.options.get("config_kwargs") or {})
        config.setdefault("retries", {"max_attempts": 2})
        config.setdefault("connect_timeout", 10)
        extra["config_kwargs"] = config
    probe = dataclasses.replace(loc, options={k: v for k, v in loc.options.items()
                                              if k != "config_kwargs"})
    fs = probe.filesystem(**extra)
    with storage_errors(loc, kind):
        try:
            fs.info(loc.bucket)
        except FileNotFoundError:
            fix = "create it, or check" if kind == "storage" else "check"
            raise StoreError(
                f"bucket {loc.bucket!r} of {loc.url} does not exist at {loc.endpoint()}: {fix} "
                f"the URL and {kind} option 'endpoint_url'") from None
        except PermissionError as exc:
            log.debug("No access to bucket %s itself (%s); going on", loc.bucket, exc)
