"""Image files on this machine: which files a source names, and their fingerprint.

A source is a folder (searched recursively for files with an image extension), a glob
pattern, a text file listing one path per line, or one image file (:func:`list_sources`).
A directory named ``*.zarr`` among them is one image, not searched
(:mod:`streamq.ingest.zarr_images`).
The names come out sorted by relative path, so image ids are stable. The fingerprint
(:func:`source_fingerprint`: name, size and mtime of every file) tells a rerun on the same
files, which resumes, from one on changed files, which is refused. Sources at URLs are
listed by :mod:`streamq.ingest.urls`.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence

from streamq.errors import ConfigError
from streamq.ingest.sources import GLOB_CHARS, image_extensions
from streamq.ingest.zarr_images import NODE_META, dir_fingerprint, is_zarr_dir, is_zarr_name

__all__ = ["list_sources", "source_fingerprint"]


def list_sources(src: str | os.PathLike[str]) -> tuple[str, list[str], list[tuple[str, str]]]:
    """Resolve ``src`` to ``(root, sorted relative paths, listed-but-missing skips)``.

    ``src`` is a folder (searched recursively for files with an image extension), a glob
    pattern (``photos/**/*.jpg``), a text file listing one path per line (``#`` starts a
    comment; relative paths are relative to the list file), or one image file. Names are
    as ``os`` gives them (any bytes; see :mod:`streamq.names` for how a store keeps them).
    """
    src = os.fspath(src)
    missing: list[tuple[str, str]] = []
    if is_zarr_dir(src) and _holds_zarr_metadata(src):  # one Zarr image
        root = os.path.dirname(os.path.abspath(src))
        files = [os.path.abspath(src)]
    elif os.path.isdir(src):
        root = os.path.abspath(src)
        exts = image_extensions()
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            # a Zarr image is one input: listed, not searched
            files += [os.path.join(dirpath, d) for d in dirnames if is_zarr_name(d)]
            dirnames[:] = [d for d in dirnames if not is_zarr_name(d)]
            for name in filenames:
                if os.path.splitext(name)[1].lower() in exts:
                    files.append(os.path.join(dirpath, name))
    elif os.path.isfile(src) and os.path.splitext(src)[1].lower() in image_extensions():
        root = os.path.dirname(os.path.abspath(src))
        files = [os.path.abspath(src)]
    elif os.path.isfile(src):
        base = os.path.dirname(os.path.abspath(src))
        files = []
        try:
            with open(src, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"source {src} is neither an image nor a UTF-8 text file listing paths") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = os.path.normpath(os.path.join(base, os.path.expanduser(line)))
            if os.path.isfile(p) or is_zarr_dir(p):
                files.append(p)
            else:
                missing.append((line, "listed file does not exist"))
        if not files and not missing:
            raise ConfigError(f"source list {src} names no files")
        inside = all(os.path.commonpath([base, p]) == base for p in files)
        root = base if inside or not files else os.path.commonpath([os.path.dirname(p) for p in files])
    elif GLOB_CHARS & set(src):
        prefix = src[: min(src.index(c) for c in GLOB_CHARS if c in src)]
        root = os.path.abspath(os.path.dirname(prefix) or ".")
        files = [os.path.abspath(p) for p in glob.glob(src, recursive=True)
                 if os.path.isfile(p) or is_zarr_dir(p)]
        if not files:
            raise ConfigError(f"source pattern {src!r} matches no files")
    else:
        raise ConfigError(
            f"source {src} does not exist (expected a folder, a glob pattern or a text file of paths)"
        )
    rel = sorted({os.path.relpath(p, root).replace(os.sep, "/") for p in files})
    return root, rel, missing


def _holds_zarr_metadata(path: str) -> bool:
    """Whether the folder ``path`` is a Zarr node itself (given as the source: one image),
    not a folder of images that happens to be named ``*.zarr``."""
    return any(os.path.isfile(os.path.join(path, m)) for m in NODE_META)


def source_fingerprint(root: str, rel: Sequence[str]) -> str:
    """Hash of the name (its bytes: any name), size and mtime of every input; for a Zarr
    image (a directory) those of every file in it and its metadata documents' bytes
    (:func:`streamq.ingest.zarr_images.dir_fingerprint`)."""
    h = hashlib.sha256(os.fsencode(root))
    for r in rel:
        try:
            path = os.path.join(root, r)
            if is_zarr_dir(path):
                h.update(os.fsencode(r) + b"\0zarr\0" + dir_fingerprint(path) + b"\n")
                continue
            st = os.stat(path)
            h.update(os.fsencode(r) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(os.fsencode(r) + b"\0missing\n")
    return h.hexdigest()[:16]
