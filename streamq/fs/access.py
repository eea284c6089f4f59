"""Problems with a URL, told in one line: an unknown scheme, a missing package, no
credentials, an unreachable endpoint, a missing bucket, access denied each become a
:class:`~streamq.errors.StoreError` that says what to check (:func:`storage_errors` around
every use of a :class:`~streamq.fs.Location`; :func:`streamq.fs.check_access`, in
:mod:`streamq.fs.location`, uses them once per bucket before a
stage starts). Local paths pass through untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from streamq import redact
from streamq.errors import StoreError

__all__ = ["SCHEMES", "Target", "explain_failure", "storage_errors"]

SCHEMES = {"s3": "s3fs"}  # URL scheme -> the package that implements it
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ReadTimeoutError", "ProxyConnectionError", "ClientConnectorError",
                "ServerTimeoutError", "ConnectionRefusedError", "FSTimeoutError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}


class Target(Protocol):
    """What the messages here need of a :class:`~streamq.fs.Location` (which this module
    cannot import: :mod:`streamq.fs.location` uses it)."""

    @property
    def url(self) -> str: ...
    @property
    def is_local(self) -> bool: ...
    @property
    def scheme(self) -> str: ...
    def endpoint(self) -> str: ...


def explain_failure(exc: BaseException, loc: Target, kind: str = "storage") -> str | None:
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
def storage_errors(loc: Target, kind: str = "storage") -> Iterator[None]:
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


