"""What an image-file export keeps under OUT about itself: the manifest and the records.

``OUT/.streamq-export.json`` (:data:`~streamq.export.common.MANIFEST`) records what made the
files; a different export into the same OUT is refused unless ``overwrite``
(:func:`check_manifest`). ``OUT/.streamq-records/`` holds the completion records: each task
names the files it wrote with their CRC-32, size and the labels they were made from
(:func:`write_file_record`); a finished run merges them into one (:func:`merge_records`), and
a rerun skips only files a record of the current labels vouches for (:func:`recorded_files`,
:func:`file_ok`).
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

from streamq.config import RetryConfig
from streamq.durable import sync_files
from streamq.errors import StoreExistsError
from streamq.export.common import MANIFEST
from streamq.faults import retrying
from streamq.fs import Location, location
from streamq.lock import check_writer

__all__ = ["RECORDS_DIR", "RECORDS_INDEX", "check_manifest", "file_crc32", "file_ok",
           "merge_records", "record_key", "recorded_files", "write_file_record"]

RECORDS_DIR = ".streamq-records"  # completion records: files written, their CRC-32, the palette
RECORDS_INDEX = "index.json"  # the records of a finished run, merged


def recorded_files(out: str | Location, fit: str | None = None) -> dict[str, list[int]]:
    """``{file relative to OUT: [crc32, size]}`` of every file the records of the export at
    ``out`` vouch for (only those made with the palette of fingerprint ``fit``, when given:
    labels are a function of it)."""
    out_loc = out if isinstance(out, Location) else location(out)
    files: dict[str, list[int]] = {}
    for rec in _record_files(out_loc):
        try:
            data = json.loads(rec.read_bytes())
        except (OSError, ValueError):
            continue  # torn or gone: its files are written again
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            continue
        if fit is None or data.get("fit") == fit:
            files.update(data["files"])
    return files


def _record_files(out_loc: Location) -> list[Location]:
    folder = out_loc.join(RECORDS_DIR)
    return [folder.join(n) for n in folder.listdir() if n.endswith(".json")]


def merge_records(out_loc: Location, fit: str) -> None:
    """Merge the records of these labels into one file and remove the others (written first,
    so a kill between leaves duplicates, never a file without its record)."""
    files = _record_files(out_loc)
    if [f.url.rsplit("/", 1)[-1] for f in files] in ([], [RECORDS_INDEX]):
        return
    merged = recorded_files(out_loc, fit)
    index = out_loc.join(RECORDS_DIR, RECORDS_INDEX)
    check_writer()
    index.write_bytes(json.dumps({"fit": fit, "files": merged}, sort_keys=True).encode())
    if out_loc.is_local:
        sync_files([index.url], up_to=out_loc.url)
    out_loc.remove_files([f.url for f in files if f.url != index.url])


def check_manifest(out_loc: Location, manifest: dict[str, Any], overwrite: bool,
                   planned: list[str]) -> None:
    """Refuse an export into a folder holding a different one, unless ``overwrite``.

    With ``overwrite``, only the files this export is about to write are removed (never
    anything else in the folder), *before* the new manifest is written: a rerun after a kill
    then skips only files that this export wrote.
    """
    out = out_loc.url
    man = out_loc.join(MANIFEST)
    old: dict[str, Any] | None = None
    if man.exists():
        try:
            old = json.loads(man.read_bytes())
        except (OSError, ValueError):
            old = {}
    elif {n for n in out_loc.listdir() if not n.startswith(".streamq-")} and not overwrite:
        raise StoreExistsError(f"{out} is not empty and holds no streamq export; choose another "
                               "folder or pass --overwrite")
    if old is not None:
        old.setdefault("renamed", [])  # before names were compared case-folded: none listed
    same = old is not None and {k: old.get(k) for k in manifest if k != "streamq"} == \
        {k: v for k, v in manifest.items() if k != "streamq"}
    if old is not None and not same and not overwrite:
        settings = {k: v for k, v in manifest.items() if k not in ("streamq", "renamed")}
        if {k: old.get(k) for k in settings} == settings:
            raise StoreExistsError(
                f"{out} holds this export with other names for the images whose names clash "
                "(made by an older streamq, which compared names otherwise); pass --overwrite "
                "to redo it")
        raise StoreExistsError(
            f"{out} holds an export made differently ({old.get('format')}, palette "
            f"{old.get('fit_fingerprint')}); pass --overwrite to replace it")
    if overwrite:  # the records first: a file without its record is written again
        out_loc.remove_files([f.url for f in _record_files(out_loc)])
        _remove_existing(out_loc, planned)
    if out_loc.is_local:
        os.makedirs(out, exist_ok=True)
    check_writer()
    man.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode())


def _remove_existing(out_loc: Location, planned: list[str]) -> None:
    """Remove those of the ``planned`` files that exist, each by its name (on S3: one listing,
    then DeleteObjects with those keys)."""
    if out_loc.is_local:
        out_loc.remove_files(planned)  # missing ones are skipped
        return
    have = out_loc.object_sizes()
    out_loc.remove_files(p for p in planned if p in have)


def record_key(root: str, path: str) -> str:
    """``path`` relative to the export's root folder, ``/``-separated (its record key)."""
    return path[len(root.rstrip("/" + os.sep)) + 1:].replace(os.sep, "/")


def file_ok(path: str, expect: list[int] | None) -> bool:
    """Whether local file ``path`` is the one its record describes (``[crc32, size]``)."""
    if expect is None:
        return False
    try:
        if os.path.getsize(path) != expect[1]:
            return False
        return file_crc32(path) == expect[0]
    except OSError:
        return False


def file_crc32(path: str, block: int = 1 << 22) -> int:
    """The CRC-32 of local file ``path``, read a block at a time (a tiled BigTIFF may be
    larger than memory)."""
    crc = 0
    with open(path, "rb") as fh:
        while data := fh.read(block):
            crc = zlib.crc32(data, crc)
    return crc


def write_file_record(out: Location, fit: str, written: dict[str, list[int]],
                      retry: RetryConfig | None) -> None:
    """A task's completion record: the files it wrote, their checksums, the palette ``fit``."""
    if not written:
        return
    import uuid

    first = min(written)
    name = f"{zlib.crc32(first.encode()):08x}-{uuid.uuid4().hex[:12]}.json"
    rec = out.join(RECORDS_DIR, name)
    data = json.dumps({"fit": fit, "files": written}, sort_keys=True).encode()
    check_writer()
    retrying(lambda: rec.write_bytes(data), "write", rec.url, retry, write=True)
    if out.is_local:  # its name in the records folder, and that folder's in OUT
        sync_files([rec.url], up_to=out.url)
