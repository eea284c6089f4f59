"""Where ingest's images are, and reading them on a worker: a local folder, or URLs.

A source given as a URL (``s3://bucket/photos/``, ``gs://...``, any protocol of an installed
fsspec filesystem), or a text file listing URLs (local or itself at a URL, such as
``https://host/list.txt``), is **listed by the client** (:mod:`streamq.ingest.urls`) and
**read by the workers** straight from where it lives: a task receives the
:class:`SourceRoot` (the URL prefix and the storage options that reach it) and the names of
its images, and opens each itself. No pixel and no file passes through the client. A local
source (:mod:`streamq.ingest.local`) is a :class:`SourceRoot` too, its folder.

- **Reading** (:meth:`SourceRoot.header`, :meth:`SourceRoot.pixels`): the header scan reads
  through a buffered file (the first block of 256 KiB is usually enough; over HTTP, whose
  servers need not answer range requests, the whole file); the write task fetches the whole
  object in one request and decodes it from memory. Local files are asked for ahead of their
  reads (:func:`will_need`: the scan's headers, a write task's next files up to 64 MiB), so
  that files not in the page cache do not wait for the disk one after the other.
- **Failures**: a timeout, a failed connection or an HTTP 408/429/5xx answer is retried like
  a fault of the machine (:mod:`streamq.faults`), then stops the stage in one line. An object
  that is not there (404) is a skipped input with its reason, as a missing listed file is.
  Access denied (401/403), no credentials or an unreachable endpoint stop the stage in one
  line naming the URL and the options to check (:func:`explain`); so do a missing bucket or
  prefix at listing.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

import numpy as np

from streamq import redact
from streamq.config import RetryConfig
from streamq.decode import Header, decode_rgb, decode_rgba, read_header
from streamq.errors import StoreError, StreamQError
from streamq.faults import http_status, retrying
from streamq.fs import Location, looks_like_url
from streamq.names import source_name

#: What :meth:`SourceRoot.pixels` gives per image: the RGB pixels, ``(rgb, alpha)``, or the
#: reason the image cannot be used
Decoded: TypeAlias = np.ndarray | tuple[np.ndarray, np.ndarray | None] | str

T = TypeVar("T")
A = TypeVar("A")

__all__ = ["GLOB_CHARS", "HTTP_SCHEMES", "SourceRoot", "explain", "filesystem", "image_extensions",
           "is_remote", "local_path", "source_options", "url_scheme", "will_need"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)")
GLOB_CHARS = set("*?[")  # a source holding one of these is a glob pattern
HEADER_BLOCK = 256 * 1024  # bytes per request of the header scan's buffered reads
CONCURRENCY = 8  # requests in flight per task reading a URL source
HTTP_SCHEMES = ("http", "https")  # no listing, no range requests: files are fetched whole
_DENIED = (401, 403)


# -- what a source is ------------------------------------------------------------------------
def url_scheme(text: str) -> str:
    """The scheme of ``text`` in lower case (``s3``, ``https``, ``file``...); ``""`` for a path."""
    m = _SCHEME.match(text)
    return m.group(1).lower() if m else ""


def is_remote(src: str) -> bool:
    """Whether ``src`` is a URL read through fsspec (``file://`` is a local path)."""
    return looks_like_url(src) and url_scheme(src) != "file"


def local_path(src: str) -> str:
    """``file:///abs/path`` as the path ``/abs/path``; anything else unchanged."""
    m = _SCHEME.match(src)
    if m and m.group(1).lower() == "file" and m.group(2):
        return os.path.abspath("/" + src[m.end():])
    return src


def source_options(src: str, given: Mapping[str, Any] | None, store: str | None,
                   storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options that reach the source ``src``: ``given`` (``--source-option``, key
    ``source_options``) when there are any, else the store's storage options if the store
    is local or uses the same scheme as ``src``, else none."""
    if given:
        return dict(given)
    store_scheme = url_scheme(store) if store and looks_like_url(store) else ""
    if storage_options and store_scheme in ("", "file", url_scheme(src)):
        return dict(storage_options)
    return {}


def image_extensions() -> set[str]:
    """The file extensions Pillow reads (lower case, with the dot): the images of a folder."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


# -- reading on the workers ----------------------------------------------------------------
class _Tracked:
    """A file object that remembers the error of its last failed read (Pillow turns any
    error into a decoding failure; this tells a failed request from a bad file)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.size = f.size
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as exc:
            self.error = exc
            raise

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._f.seek(pos, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@dataclass(frozen=True, repr=False)
class SourceRoot:
    """Where a task finds its images: a local folder (``root`` in stored form, see
    :mod:`streamq.names`) or a URL prefix with the options of its filesystem.

    Small and picklable: tasks receive it. ``repr`` never shows the options.
    """

    root: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"SourceRoot({self.root!r})"

    @property
    def is_local(self) -> bool:
        return not is_remote(self.root)

    def path(self, rel: str) -> str:
        """The path or URL of the image stored as ``rel``."""
        return os.path.join(source_name(self.root), source_name(rel))

    def header(self, rel: str, max_pixels: int, retry: RetryConfig | None,
               size: int | None = None) -> Header | str:
        """The image's header, or the reason it cannot be used (see :func:`read_header`)."""
        path = self.path(rel)
        if self.is_local:
            return retrying(lambda: read_header(path, max_pixels), "read", path, retry)

        def attempt() -> Header | str:
            fs, target = filesystem(path, self.options)
            if url_scheme(path) in HTTP_SCHEMES:  # servers need not support ranges: fetch it whole
                return read_header(bytes(fs.cat_file(target)), max_pixels)
            kw = {"size": size} if size is not None else {}
            with fs.open(target, "rb", block_size=HEADER_BLOCK, cache_type="readahead", **kw) as f:
                tracked = _Tracked(f)
                found = read_header(tracked, max_pixels)  # type: ignore[arg-type]
                if tracked.error is not None:
                    raise tracked.error
                return found

        return self._reading(attempt, path, retry)

    def headers(self, rels: Sequence[str], sizes: Sequence[int | None], max_pixels: int,
                retry: RetryConfig | None) -> list[Header | str]:
        """:meth:`header` of each name, in order; :data:`CONCURRENCY` requests in flight
        for a URL source."""
        if self.is_local:  # a header is in the file's first block: the disk reads them all at once
            will_need([self.path(r) for r in rels], HEADER_BLOCK)
        return list(_ordered(lambda item: self.header(item[0], max_pixels, retry, item[1]),
                             list(zip(rels, sizes, strict=True)), not self.is_local))

    def pixels(self, rels: Sequence[str], max_pixels: int, background: tuple[int, int, int],
               retry: RetryConfig | None, alpha: bool = False) -> Iterator[Decoded]:
        """Each image as ``(H, W, 3)`` uint8, or the reason it cannot be (see
        :func:`decode_rgb`), in order; with ``alpha`` as ``(rgb, alpha)`` (see
        :func:`decode_rgba`). A URL is fetched whole in one request, with
        :data:`CONCURRENCY` requests in flight, and decoded here from memory."""
        def decode(src: bytes | str) -> Decoded:
            if alpha:
                return decode_rgba(src, max_pixels)
            return decode_rgb(src, max_pixels, background)

        if self.is_local:
            for path in _read_ahead([self.path(rel) for rel in rels]):
                yield retrying(functools.partial(decode, path), "read", path, retry)
            return
        for data in _ordered(lambda rel: self._fetch(rel, retry), list(rels), True):
            yield data if isinstance(data, str) else decode(data)

    def _fetch(self, rel: str, retry: RetryConfig | None) -> bytes | str:
        path = self.path(rel)

        def attempt() -> bytes:
            fs, target = filesystem(path, self.options)
            return bytes(fs.cat_file(target))

        return self._reading(attempt, path, retry)

    def _reading(self, attempt: Callable[[], T], url: str, retry: RetryConfig | None
                 ) -> T | str:
        """``attempt()`` with transient faults retried; a missing object as a skip reason,
        access problems as one-line StoreErrors."""
        try:
            return retrying(attempt, "read", url, retry)
        except FileNotFoundError:
            return f"object not found (404): {url}"
        except StreamQError:  # a fault that outlasted its retries, an access error
            raise
        except Exception as exc:
            message = explain(exc, url, self.options)
            if message is not None:
                raise StoreError(message) from None
            return f"cannot read object: {type(exc).__name__}: {_detail(exc)}"


def will_need(paths: Sequence[str], length: int = 0) -> list[int]:
    """Ask the kernel to start reading the first ``length`` bytes (0: all) of each local
    regular file now, in the background (``posix_fadvise(POSIX_FADV_WILLNEED)``), so that
    reading them one after the other does not wait for the disk once per file; return their
    sizes (0 for anything else). Linux reads at most its read-ahead window of a file per call.

    A hint, nothing more: a file that cannot be opened is left to the read that follows (which
    reports it), and where the call does not exist nothing is done. Measured on 4,000 JPEGs
    (12 KB, evicted from the page cache): their headers read in 0.40x the time, and decoded
    in 0.75x (``benchmarks/read_ahead.py``).
    """
    sizes = [0] * len(paths)
    if not CAN_ADVISE:
        return sizes
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):  # never open a FIFO or a device
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        except (OSError, ValueError):
            continue
        sizes[i] = st.st_size
        try:
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return sizes


#: Whether this platform takes the hint (:func:`will_need`; Linux and most Unixes do)
CAN_ADVISE = hasattr(os, "posix_fadvise")
#: Bytes of the files after the one being decoded that a write task asks the kernel to read
READ_AHEAD = 64 * 2**20


def _read_ahead(paths: Sequence[str], budget: int = READ_AHEAD) -> Iterator[str]:
    """``paths`` in order, each yielded once the files after it, up to ``budget`` bytes (at
    least the next), are being read in the background (:func:`will_need`; where it does
    nothing, every size is 0 and the paths come as they are)."""
    ahead: deque[int] = deque()  # sizes of the files asked for and not yet yielded
    pending = 0
    j = 0
    for i, path in enumerate(paths):
        while j < len(paths) and (j <= i + 1 or pending < budget):
            size = will_need([paths[j]])[0]
            ahead.append(size)
            pending += size
            j += 1
        yield path
        pending -= ahead.popleft()


def _ordered(fn: Callable[[A], T], items: list[A], threads: bool) -> Iterator[T]:
    """``map(fn, items)``; with ``threads``, at most :data:`CONCURRENCY` calls running ahead
    of the one whose result is next (network reads wait, they do not compute)."""
    if not threads or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        window: deque[Future[T]] = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= CONCURRENCY:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _detail(exc: BaseException) -> str:
    return redact.text(" ".join(str(exc).split()))[:200] or "no detail"


def explain(exc: BaseException, url: str, options: Mapping[str, Any]) -> str | None:
    """A one-line message for an access failure on the source ``url``, or None."""
    status = http_status(exc)
    if isinstance(exc, PermissionError) or status in _DENIED:
        return (f"access to {url} was denied ({_detail(exc)}): check source options "
                "(--source-option, key 'source_options') and the permissions of the source")
    if url_scheme(url) == "s3":
        message = fs_explain(exc, Location(url, dict(options)))
        if message is not None:
            return message
    names = {c.__name__ for c in type(exc).__mro__}
    if "DefaultCredentialsError" in names or "RefreshError" in names:
        return (f"no credentials for {url} ({_detail(exc)}): give them as source options "
                "(--source-option, key 'source_options')")
    if isinstance(exc, ConnectionError | TimeoutError) or "ClientConnectorError" in names:
        return (f"cannot reach the server of {url} ({type(exc).__name__}): check the URL, the "
                "source options, the network, and that the server is running")
    return None


def fs_explain(exc: BaseException, loc: Location) -> str | None:
    from streamq.fs import explain_failure

    return explain_failure(exc, loc, "source")


def filesystem(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` (instances are cached by fsspec) and its path in it."""
    import fsspec

    scheme = url_scheme(url)
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise StoreError(f"unsupported URL scheme {scheme!r} in {url!r}: no installed fsspec "
                         "filesystem reads it (e.g. s3:// needs s3fs, gs:// gcsfs)") from None
    except ImportError as exc:
        raise StoreError(f"{url} needs a package that is not installed: "
                         f"{_detail(exc)}") from None
    try:
        fs = cls(**dict(options))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"source options for {url} were not accepted by {cls.__name__} "
                         f"({_detail(exc)}); check --source-option / key 'source_options' "
                         f"(given: {redact.options(options)})") from None
    return fs, url if scheme in HTTP_SCHEMES else fs._strip_protocol(url)
