"""File names in a store: any source name as valid text, and back.

A file name is a sequence of bytes (POSIX) that need not be UTF-8; Python gives such names
as ``str`` with lone surrogates (``os.fsdecode``), which Zarr string arrays, JSON and UTF-8
files reject. A store therefore keeps every source path (``images/path``, ``images/label``,
``skipped/path``, the ``root`` attribute) in its *stored form* (see ``docs/store-format.md``):

* the name's bytes (``os.fsencode``) read as UTF-8;
* each byte that is not part of valid UTF-8 written as ``\\xHH`` (two lowercase hex digits);
* each backslash written as ``\\\\`` (so the form is reversible).

Names that are valid UTF-8 without a backslash -- nearly all -- are stored unchanged.
:func:`source_name` turns a stored name back into the name the filesystem knows.
:func:`output_name` gives the name of an exported file: valid UTF-8 everywhere (local
folders, object stores), each undecodable byte written ``%HH``.
"""

from __future__ import annotations

import os
import re

__all__ = ["output_name", "source_name", "stored_name"]

_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_UNDECODED = re.compile("[\udc80-\udcff]")


def stored_name(name: str) -> str:
    """The stored form of a file name as ``os`` gives it (valid text, reversible)."""
    if name.isascii() and "\\" not in name:
        return name
    raw = os.fsencode(name).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def source_name(stored: str) -> str:
    """The file name (as ``os`` takes it) of a stored name: the inverse of :func:`stored_name`.

    A backslash that starts neither ``\\\\`` nor ``\\xHH`` is kept as it is.
    """
    if "\\" not in stored:
        return stored
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(stored):
        out += stored[pos:m.start()].encode()
        code = m.group(1)
        out += b"\\" if code == "\\" else bytes([int(code[1:], 16)])
        pos = m.end()
    out += stored[pos:].encode()
    return os.fsdecode(bytes(out))


def output_name(stored: str) -> str:
    """The name an export writes for a stored name: the source name, each byte that is not
    valid UTF-8 written ``%HH`` (uppercase hex)."""
    if "\\" not in stored:
        return stored
    text = os.fsencode(source_name(stored)).decode("utf-8", "surrogateescape")
    return _UNDECODED.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", text)
