"""Where each image's file goes under OUT: a path that never leaves OUT, and names that no file
system takes for one file.

An image's file mirrors its stored path (``Person/Person_0001.jpg`` ->
``OUT/Person/Person_0001.png``) with its parts made safe (:func:`safe_output_path`). Names
that some file system would take for one file (``A.jpg`` and ``a.JPG``, ``photo.jpg`` and
``photo.png``, one accented name composed and decomposed) get distinct names, decided over the
whole collection (:func:`output_names`, compared by :func:`name_key`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence

from streamq.fs import join
from streamq.fs.location import VERSION_MARK

__all__ = ["inside", "name_key", "output_names", "safe_output_path"]

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def safe_output_path(out: str, rel: str, ext: str, fallback: str) -> str:
    """``out/rel`` with its extension replaced, guaranteed to stay inside ``out``.

    Absolute paths lose their root, ``..`` and ``.`` components become ``_`` or vanish,
    control characters become ``_``; if the result still escapes (a symlink), ``fallback``
    (a name made from the image id) is used under ``out/_unsafe``. ``out`` may be a URL
    (``s3://bucket/out``): object keys have no symlinks, so the cleaned parts stay under it.
    """
    return inside(out, _clean_parts(rel, ext, fallback), fallback + ext)


def _clean_parts(rel: str, ext: str, fallback: str) -> list[str]:
    """The components of ``rel`` made safe (see :func:`safe_output_path`), extension replaced."""
    parts = []
    for p in re.split(r"[/\\]+", rel):
        if p in ("", "."):
            continue
        p = "_" if p == ".." else _BAD_CHARS.sub("_", p)
        parts.append(p.replace(VERSION_MARK, "_versionId="))
    if not parts:
        parts = [fallback]
    stem, _ = os.path.splitext(parts[-1])
    parts[-1] = (stem or fallback) + ext
    return parts


def inside(out: str, parts: Sequence[str], fallback: str) -> str:
    """``out/parts...``; locally ``out/_unsafe/fallback`` when a symlink would lead outside."""
    if "://" in out:
        return join(out, *parts)
    root = os.path.realpath(out)
    path = os.path.join(root, *parts)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        return os.path.join(root, "_unsafe", fallback)
    return path


def name_key(name: str) -> str:
    """``name`` as file systems may compare it: case-folded and Unicode NFC-normalised. Two
    names with one key are one file on a case-insensitive (Windows, macOS) or normalising
    (macOS) file system."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def output_names(paths: Sequence[str], ext: str | Sequence[str]
                 ) -> tuple[list[str], dict[int, str]]:
    """The file name (relative to OUT, ``/``-separated) of every image of a collection, and
    ``{id: name}`` of those not named after their image.

    An image's name is its stored path made safe (:func:`safe_output_path`) with ``ext``
    (one for all, or one per image: an image over ``max_pixels`` is a ``.tif``).
    Names are compared by :func:`name_key`; where several images share one (``A.jpg``,
    ``a.JPG``; ``photo.jpg``, ``photo.png``), or a name is also a folder of other images,
    the image with the lowest id keeps it and the others get the first free
    ``stem~2``, ``stem~3``, ... in id order (never a name another image has). It is decided
    over the whole collection, so any selection, rerun or resume gives an image one name.
    """
    exts = [ext] * len(paths) if isinstance(ext, str) else list(ext)
    natural = ["/".join(_clean_parts(p, e, f"{i:08d}"))
               for i, (p, e) in enumerate(zip(paths, exts, strict=True))]
    keys = [name_key(n) for n in natural]
    folders = {k[:j] for k in keys for j, c in enumerate(k) if c == "/"}
    taken: set[str] = set()
    clashes = []
    for i, key in enumerate(keys):
        if key in taken or key in folders:
            clashes.append(i)
        else:
            taken.add(key)
    names = list(natural)
    for i in clashes:
        folder, _, base = natural[i].rpartition("/")
        stem, suffix = os.path.splitext(base)
        n = 2
        while True:
            name = f"{folder}/{stem}~{n}{suffix}" if folder else f"{stem}~{n}{suffix}"
            key = name_key(name)
            if key not in taken and key not in folders:
                break
            n += 1
        taken.add(key)
        names[i] = name
    return names, {i: names[i] for i in clashes}
