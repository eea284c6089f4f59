"""Where stores and outputs live: a :class:`Location`, a local path or an fsspec URL.

A :class:`Location` is an absolute local path or a URL, plus the storage options that reach
it (for S3: ``endpoint_url``, ``key``/``secret``, ``anon``, ``client_kwargs``...). It is
small and picklable: Dask tasks receive it and open the store themselves, so pixels and
labels never pass through the client. Local paths stay plain paths handled by ``os`` (and
Zarr's ``LocalStore``), as fast as before; URLs go through fsspec. :func:`location` checks
and normalises a path or URL into one.

Deletes name their files or keys one by one (:meth:`Location.remove_files`,
:func:`delete_keys`): fsspec's ``rm`` reads ``[``, ``*`` and ``?`` in a path as a glob
pattern, so ``photo[1].png`` would delete ``photo1.png`` and keep itself. streamq never calls
it, and Zarr's stores at URLs delete through :func:`delete_keys` too (``store.zarr_root``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamq import redact
from streamq.errors import StoreError
from streamq.fs.access import SCHEMES, storage_errors
from streamq.fs.atomic import write_atomic

__all__ = ["Location", "check_access", "delete_keys", "join", "location", "looks_like_url"]

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/+)")
_DELETE_BATCH = 1000  # keys per S3 DeleteObjects request (its limit)
_DELETE_CONCURRENCY = 4  # DeleteObjects requests in flight
# s3fs reads this in any path as "the object version ...", silently dropping it from the key
VERSION_MARK = "?versionId="  # s3fs reads it as an object version: never part of a key


def looks_like_url(text: str) -> bool:
    """Whether ``text`` is meant as a URL (``scheme:/...``), well formed or not."""
    return bool(_SCHEME.match(text))


def join(base: str, *names: str) -> str:
    """``base/name/...`` for a local path or a URL."""
    if "://" in base:
        return posixpath.join(base.rstrip("/"), *names)
    return os.path.join(base, *names)


@dataclass(frozen=True, repr=False)
class Location:
    """A local folder or file (absolute path) or a URL, with the storage options to reach it.

    Build one with :func:`location`, which checks the URL. ``repr`` never shows the options
    (they may hold credentials).
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0] if not self.is_local else "file"

    @property
    def bucket(self) -> str:
        """The first component after ``scheme://`` (for S3, the bucket)."""
        return self.url.split("://", 1)[1].split("/", 1)[0] if not self.is_local else ""

    def join(self, *names: str) -> Location:
        return Location(join(self.url, *names), self.options)

    # -- the fsspec filesystem of a URL ---------------------------------------------------
    def filesystem(self, **extra: Any) -> Any:
        """The (synchronous) fsspec filesystem of this URL; instances are cached by fsspec."""
        if self.is_local:
            raise ValueError(f"{self.url} is a local path, not a URL")
        package = SCHEMES[self.scheme]
        try:
            import fsspec

            return fsspec.filesystem(self.scheme, **dict(self.options), **extra)
        except ImportError:
            raise StoreError(f"{self.url} needs the {package} package: pip install "
                             f"'streamq[{self.scheme}]' (or pip install {package})") from None
        except TypeError as exc:
            raise StoreError(f"storage options for {self.url} were not accepted by {package} "
                             f"({redact.text(str(exc))}); check key 'storage_options'") from None

    # -- whole files (local: os; URL: fsspec) ---------------------------------------------
    def exists(self) -> bool:
        """Whether a file, or anything below this prefix, exists."""
        if self.is_local:
            return os.path.exists(self.url)
        with storage_errors(self):
            fs = self.filesystem()
            fs.invalidate_cache(self.url)
            return bool(fs.exists(self.url))

    def listdir(self) -> list[str]:
        """Names directly below this folder or prefix (``[]`` when there is none)."""
        if self.is_local:
            return os.listdir(self.url) if os.path.isdir(self.url) else []
        entries = self._listed(lambda fs: fs.ls(self.url, detail=False)) or []
        own = self.url.split("://", 1)[1].rstrip("/")
        return sorted({posixpath.basename(str(e).rstrip("/")) for e in entries
                       if str(e).rstrip("/") != own})

    def object_sizes(self) -> dict[str, int]:
        """``{URL: size}`` of every object below this prefix of a URL, from one fresh
        (paginated) listing; ``{}`` when there is none."""
        found = self._listed(lambda fs: fs.find(self.url, detail=True)) or {}
        return {f"{self.scheme}://{p}": int(info.get("size") or 0) for p, info in found.items()}

    def _listed(self, call: Callable[[Any], Any]) -> Any:
        """``call(filesystem)`` after dropping fsspec's cached listings of this URL; None when
        there is nothing at it."""
        with storage_errors(self):
            fs = self.filesystem()
            fs.invalidate_cache(self.url)
            try:
                return call(fs)
            except FileNotFoundError:
                return None

    def read_bytes(self) -> bytes:
        if self.is_local:
            with open(self.url, "rb") as fh:
                return fh.read()
        with storage_errors(self):
            return bytes(self.filesystem().cat_file(self.url))

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically: temporary file, fsync, rename (local) or one PUT.
        A caller writing for a stage checks its store lock first (``lock.check_writer``)."""
        if not self.is_local:
            with storage_errors(self):
                self.filesystem().pipe_file(self.url, data)
            return
        write_atomic(self.url, data)

    def remove(self) -> None:
        """Remove one file; a missing one is fine."""
        self.remove_files([self.url])

    def remove_files(self, urls: Iterable[str]) -> None:
        """Remove exactly these files (URLs or paths below this location); missing ones are
        fine. Each is one name: ``[``, ``*`` and ``?`` are characters of it, never a pattern.
        On S3 one DeleteObjects request per 1000 keys."""
        urls = list(urls)
        if self.is_local:
            for path in urls:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return
        if not urls:
            return
        with storage_errors(self):
            from fsspec.asyn import sync

            fs = self.filesystem()
            sync(fs.loop, delete_keys, fs, urls)

    def tree_size(self) -> int:
        """Bytes stored in every file below this folder or prefix."""
        if self.is_local:
            total = 0
            for dirpath, _, files in os.walk(self.url):
                for f in files:
                    with contextlib.suppress(OSError):
                        total += os.path.getsize(os.path.join(dirpath, f))
            return total
        with storage_errors(self):
            fs = self.filesystem()
            fs.invalidate_cache(self.url)
            try:
                return int(fs.du(self.url, total=True))
            except FileNotFoundError:
                return 0

    def endpoint(self) -> str:
        """Where requests go, for messages: the endpoint_url option or the provider default
        (without any ``user:password@``)."""
        client = self.options.get("client_kwargs") or {}
        if not isinstance(client, Mapping):
            client = {}
        return redact.url(str(self.options.get("endpoint_url") or client.get("endpoint_url")
                              or os.environ.get("AWS_ENDPOINT_URL_S3")
                              or os.environ.get("AWS_ENDPOINT_URL")
                              or "the default AWS endpoint"))


def location(target: str | os.PathLike[str] | Location,
             storage_options: Mapping[str, Any] | None = None) -> Location:
    """Check and normalise a store or output path: a local path, ``file://`` or ``s3://``.

    ``storage_options`` go with URLs (local paths ignore them); a :class:`Location` keeps its
    own options unless ``storage_options`` is given. Their credentials are noted so that no
    message shows them (:func:`streamq.redact.remember`).

    Raises
    ------
    StoreError
        For an unsupported scheme (``foo://x``), a malformed URL (``s3:/x``), one without
        a bucket (``s3://``) or with credentials in it (``s3://KEY:SECRET@bucket``).
    """
    if isinstance(storage_options, Mapping):
        redact.remember(storage_options)
    if isinstance(target, Location):
        return target if storage_options is None else Location(target.url, dict(storage_options))
    text = os.fspath(target)
    m = _SCHEME.match(text)
    if m is None:
        return Location(os.path.abspath(os.path.expanduser(text)))
    scheme, slashes = m.group(1).lower(), m.group(2)
    rest = text[m.end():]
    example = "a local path or s3://BUCKET/PATH (e.g. s3://bucket/collection.zarr)"
    if "@" in rest.split("/", 1)[0] and scheme != "file":
        raise StoreError(f"{redact.url(text)!r} has credentials in the URL: give them as storage "
                         "options 'key' and 'secret' (or AWS_* variables) and use " + example)
    if scheme == "file" and len(slashes) >= 2:
        return Location(os.path.abspath("/" + rest))
    if scheme not in SCHEMES:
        raise StoreError(f"unsupported URL scheme {scheme!r} in {text!r}: use {example}")
    if slashes != "//":
        raise StoreError(f"{text!r} is not a valid URL: use {example}")
    rest = rest.strip("/")
    if not rest:
        raise StoreError(f"{text!r} names no bucket: use {example}")
    if VERSION_MARK in rest:
        raise StoreError(f"{text!r} holds {VERSION_MARK!r}, which {SCHEMES[scheme]} reads as an "
                         "object version, not as part of the name: choose another name")
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise StoreError(f"storage options for {text} must be a mapping of option names to "
                         f"values, got a {type(storage_options).__name__}")
    for where, opts in (("", storage_options or {}),
                        ("client_kwargs.", (storage_options or {}).get("client_kwargs"))):
        endpoint = opts.get("endpoint_url") if isinstance(opts, Mapping) else None
        if isinstance(endpoint, str) and redact.url(endpoint) != endpoint:
            raise StoreError(
                f"storage option '{where}endpoint_url' ({redact.url(endpoint)}) has credentials "
                "in it, which S3 clients refuse: give them as storage options 'key' and "
                "'secret' (or AWS_* variables)")
    return Location(f"{scheme}://{rest}", dict(storage_options or {}))


async def delete_keys(fs: Any, paths: Sequence[str]) -> None:
    """Delete exactly the objects ``paths`` (``bucket/key`` or ``scheme://bucket/key``) with
    the asynchronous fsspec filesystem ``fs``; missing ones are fine.

    Every path is one key, taken literally (fsspec's ``rm`` would expand ``[``, ``*`` and
    ``?`` as a glob). On S3: DeleteObjects with the keys themselves, 1000 per request; a key
    the server refused to delete raises (``PermissionError`` when access was denied).
    """
    if not paths:
        return
    if hasattr(fs, "_call_s3"):  # s3fs
        by_bucket: dict[str, list[str]] = {}
        for p in paths:
            bucket, _, key = p.split("://", 1)[-1].partition("/")
            by_bucket.setdefault(bucket, []).append(key)

        async def one(bucket: str, part: list[str]) -> None:
            out = await fs._call_s3("delete_objects", Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in part], "Quiet": True})
            errors = out.get("Errors") or []
            if errors:
                first = errors[0]
                what = (f"could not delete s3://{bucket}/{first.get('Key')} "
                        f"({first.get('Code')}: {first.get('Message')})"
                        + (f" nor {len(errors) - 1} other objects" if len(errors) > 1 else ""))
                if first.get("Code") == "AccessDenied":
                    raise PermissionError(what)
                raise StoreError(what)

        requests = [(bucket, keys[i:i + _DELETE_BATCH]) for bucket, keys in by_bucket.items()
                    for i in range(0, len(keys), _DELETE_BATCH)]
        for i in range(0, len(requests), _DELETE_CONCURRENCY):
            await asyncio.gather(*(one(b, part) for b, part in
                                   requests[i:i + _DELETE_CONCURRENCY]))
    else:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                await fs._rm_file(p)
    for p in paths:
        fs.invalidate_cache(p)


_CHECKED: set[str] = set()  # buckets found usable by this process (scheme, bucket, options)


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
