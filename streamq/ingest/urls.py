"""Sources at URLs, listed by the client: which images a URL names, and their fingerprint.

- **Listing** (:func:`list_urls`): a prefix is listed recursively (one paginated listing on
  S3) and filtered by image extension, like a local folder, the objects under a ``*.zarr``
  folder making one Zarr image (:mod:`streamq.ingest.zarr_images`); a glob (``s3://b/p/**/*.jpg``)
  by fsspec's glob; one image URL is a collection of one; any other object is read as a list
  of URLs (or of keys relative to it). A local text file listing URLs is read by
  :func:`local_url_list`. Names are relative to the common prefix, so image ids, labels (the
  parent folder) and export paths are those of the same files on a disk.
- **Fingerprint** (:func:`fingerprint`): name, size, ETag and modification time of every
  object, as the listing gives them (for a Zarr image, of every object under its folder); a rerun on changed objects is refused as on a disk. For
  a list of URLs the list itself is fingerprinted (its objects are not looked at by the
  client).

URLs with credentials (``user:password@``), HTTP URLs with a query string (``?...``, often a
signature) and object versions (``?versionId=``) are refused: names are stored in the store,
and none of these may be written there. The workers read the images listed here through
:class:`streamq.ingest.sources.SourceRoot`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamq import redact
from streamq.config import RetryConfig
from streamq.errors import ConfigError, StoreError
from streamq.faults import retrying
from streamq.fs import Location, check_access, looks_like_url
from streamq.ingest.sources import (
    GLOB_CHARS,
    HTTP_SCHEMES,
    SourceRoot,
    explain,
    filesystem,
    image_extensions,
    url_scheme,
)
from streamq.ingest.zarr_images import NODE_META, is_zarr_name

__all__ = ["Listing", "fingerprint", "list_urls", "local_url_list", "url_list_lines"]

log = logging.getLogger(__name__)


def _check_url(url: str, where: str) -> str:
    """``url`` if it may be stored as a name, else a one-line ConfigError."""
    if redact.url(url) != url:
        raise ConfigError(f"{where}: {redact.url(url)!r} has credentials in the URL: give them "
                          "as source options (e.g. 'key' and 'secret') instead")
    if url_scheme(url) in HTTP_SCHEMES and ("?" in url or "#" in url):
        raise ConfigError(f"{where}: {url.split('?', 1)[0].split('#', 1)[0]}?... has a query "
                          "string or fragment, which may hold a signature and would be stored "
                          "as the image's name: list plain URLs and give credentials as source "
                          "options")
    if "?versionId=" in url:
        raise ConfigError(f"{where}: {url!r} names an object version (?versionId=), which "
                          "would be stored as part of the image's name: list plain URLs")
    return url


@dataclass
class Listing:
    """What a URL source holds: ``root`` (a URL prefix), the image names relative to it
    (sorted), their sizes and stamps (size, ETag, modification time) when the listing gave
    them, and the text of a list of URLs when the source was one."""

    root: str
    rel: list[str]
    sizes: dict[str, int] = field(default_factory=dict)
    stamps: dict[str, str] = field(default_factory=dict)
    list_text: str | None = None

    def source(self, options: Mapping[str, Any]) -> SourceRoot:
        return SourceRoot(self.root, dict(options))


def _stamp(info: Mapping[str, Any]) -> str:
    etag = next((info[k] for k in ("ETag", "etag", "md5Hash", "crc32c", "checksum")
                 if info.get(k)), "")
    mtime = next((info[k] for k in ("LastModified", "mtime", "updated", "last_modified",
                                    "modified", "created") if info.get(k)), "")
    return f"{info.get('size')}\0{str(etag).strip(chr(34))}\0{mtime}"


def fingerprint(listing: Listing) -> str:
    """Hash of the root, every name and (where the listing gave them) size, ETag and mtime;
    of the list's text for a list of URLs."""
    h = hashlib.sha256(listing.root.encode())
    if listing.list_text is not None:
        h.update(b"\0list\0" + listing.list_text.encode())
    for r in listing.rel:
        h.update(r.encode("utf-8", "surrogateescape") + b"\0"
                 + listing.stamps.get(r, "").encode() + b"\n")
    return h.hexdigest()[:16]


def _zarr_of(p: str) -> str | None:
    """The Zarr image (a ``*.zarr`` folder) holding the object ``p``, or None."""
    parts = p.split("/")
    k = next((n for n, part in enumerate(parts[:-1]) if is_zarr_name(part)), None)
    return None if k is None else "/".join(parts[:k + 1])


def _zarr_info(objects: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """The listing entry of the Zarr image ``folder``: no size, and as its checksum a hash of
    the name and stamp (size, ETag, mtime) of every object under it (the ETags of its
    metadata documents stand for their bytes)."""
    h = hashlib.sha256()
    for p in sorted(objects):
        if p.startswith(folder.rstrip("/") + "/"):
            h.update(p[len(folder):].encode() + b"\0" + _stamp(objects[p]).encode() + b"\n")
    return {"type": "directory", "checksum": "zarr:" + h.hexdigest()}


def _images(objects: Mapping[str, Any], is_image: Any) -> dict[str, Any]:
    """The images of a recursive listing: files with an image extension, and Zarr images
    (the objects under a ``*.zarr`` folder as one entry, :func:`_zarr_info`)."""
    found: dict[str, Any] = {}
    zarrs: dict[str, dict[str, Any]] = {}
    for p, i in objects.items():
        if i.get("type", "file") != "file":
            continue
        folder = _zarr_of(p)
        if folder is not None:
            zarrs.setdefault(folder, {})[p] = i
        elif is_image(p):
            found[p] = i
    for folder, inside in zarrs.items():
        found[folder] = _zarr_info(inside, folder)
    return found


def url_list_lines(text: str, where: str, base: str | None = None) -> list[str] | None:
    """The URLs of a list (one a line, ``#`` comments), or None when its first entry is not
    a URL (a list of local paths). Relative entries are joined to ``base`` (the list's own
    URL folder) when given; a list mixing URLs and paths otherwise is a ConfigError."""
    entries = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#")]
    if not entries or (base is None and not looks_like_url(entries[0][1])):
        return None
    urls = []
    for n, line in entries:
        if not looks_like_url(line):
            if base is None:
                raise ConfigError(f"{where} line {n}: {line!r} is not a URL, but the list starts "
                                  "with URLs: list URLs only, or paths only")
            line = posixpath.join(base, line)
        urls.append(_check_url(line, f"{where} line {n}"))
    schemes = sorted({url_scheme(u) for u in urls})
    if len(schemes) > 1:
        raise ConfigError(f"{where} lists URLs of several schemes ({', '.join(schemes)}): list "
                          "one kind (one set of source options reaches them)")
    if schemes == ["file"]:
        raise ConfigError(f"{where} lists file:// URLs: list plain paths instead")
    return urls


def _from_urls(urls: Sequence[str], text: str) -> Listing:
    """Root = the longest common folder of the URLs; names relative to it."""
    scheme = url_scheme(urls[0])
    bodies = sorted({u.split("://", 1)[1] for u in urls})
    common = posixpath.commonpath([posixpath.dirname(b) or "." for b in bodies]) \
        if len(bodies) > 1 else posixpath.dirname(bodies[0])
    common = "" if common == "." else common
    root = f"{scheme}://{common}"
    rel = [b[len(common):].lstrip("/") if common else b for b in bodies]
    return Listing(root=root, rel=sorted(rel), list_text=text)


def local_url_list(src: str) -> Listing | None:
    """The URLs listed by the local text file ``src``, or None when it is not a list of
    URLs (a folder, an image, a list of paths: :func:`streamq.ingest.list_sources` reads it)."""
    if not os.path.isfile(src) or os.path.splitext(src)[1].lower() in image_extensions():
        return None
    try:
        with open(src, encoding="utf-8") as fh:
            text = fh.read()
    except (UnicodeDecodeError, OSError):
        return None
    urls = url_list_lines(text, f"source list {src}")
    return None if urls is None else _from_urls(urls, text)


def list_urls(src: str, options: Mapping[str, Any], retry: RetryConfig | None = None) -> Listing:
    """List the URL source ``src`` (transient faults retried as ``retry`` says).

    Raises one-line errors: :class:`StoreError` for access problems (missing bucket, access
    denied, no credentials, unreachable endpoint, unknown scheme, missing package),
    :class:`ConfigError` for a source that holds no images or a malformed list.
    """
    _check_url(src, "source")
    scheme = url_scheme(src)
    if scheme == "s3":
        check_access(Location(src.rstrip("/"), dict(options)), "source")
    fs, path = filesystem(src, options)
    try:
        return retrying(lambda: _list(fs, src, path, scheme), "list", src, retry)
    except (StoreError, ConfigError):
        raise
    except Exception as exc:
        message = explain(exc, src, options)
        if message is None:
            raise
        raise StoreError(message) from None


def _list(fs: Any, src: str, path: str, scheme: str) -> Listing:
    exts = image_extensions()

    def is_image(p: str) -> bool:
        return posixpath.splitext(p)[1].lower() in exts

    def url_of(p: str) -> str:
        return p if scheme in HTTP_SCHEMES else f"{scheme}://{p.lstrip('/')}"

    if scheme in HTTP_SCHEMES:  # no listing over HTTP: one image, or a list of URLs
        if is_image(path):
            return _from_urls([src], src)
        try:
            text = bytes(fs.cat_file(path)).decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"source list {src} does not exist (404)") from None
        except UnicodeDecodeError:
            raise ConfigError(f"source {src} is neither an image nor a UTF-8 text file listing "
                              "URLs") from None
        urls = url_list_lines(text, f"source list {src}", base=posixpath.dirname(src))
        if not urls:
            raise ConfigError(f"source list {src} names no images")
        return _from_urls(urls, text)

    if GLOB_CHARS & set(path):
        prefix = path[: min(path.index(c) for c in GLOB_CHARS if c in path)]
        root = posixpath.dirname(prefix).rstrip("/")
        matched = fs.glob(path, detail=True)
        found = {p: i for p, i in matched.items() if i.get("type") == "file"
                 and _zarr_of(p) is None}
        for p, i in matched.items():
            if i.get("type") == "directory" and is_zarr_name(p) and _zarr_of(p) is None:
                found[p.rstrip("/")] = _zarr_info(fs.find(p, detail=True), p)
        if not found:
            raise ConfigError(f"source pattern {src!r} matches no objects")
    else:
        fs.invalidate_cache(path)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise ConfigError(f"source {src} does not exist: no object or prefix of that name "
                              "(check the URL)") from None
        if info.get("type") == "directory":
            root = path.rstrip("/")
            objects = fs.find(root, detail=True)
            if is_zarr_name(root) and any(posixpath.relpath(p, root) in NODE_META
                                          for p in objects):  # one Zarr image
                root, found = posixpath.dirname(root), {root: _zarr_info(objects, root)}
            else:
                found = _images(objects, is_image)
            if not found:
                raise ConfigError(f"source {src} holds no image objects (by extension, as "
                                  "Pillow knows them, or Zarr images)")
        elif is_image(path):
            root, found = posixpath.dirname(path), {path: info}
        else:  # a list of URLs (or of names relative to it)
            try:
                text = bytes(fs.cat_file(path)).decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError(f"source {src} is neither an image nor a UTF-8 text file "
                                  "listing URLs") from None
            urls = url_list_lines(text, f"source list {src}",
                                  base=posixpath.dirname(url_of(path)))
            if not urls:
                raise ConfigError(f"source list {src} names no images")
            return _from_urls(urls, text)
    rel, sizes, stamps = [], {}, {}
    for p, info in found.items():
        r = p[len(root):].lstrip("/")
        rel.append(r)
        if info.get("size") is not None:
            sizes[r] = int(info["size"])
        stamps[r] = _stamp(info)
    log.info("Listed %d image objects under %s", len(rel), url_of(root))
    return Listing(root=url_of(root), rel=sorted(rel), sizes=sizes, stamps=stamps)
