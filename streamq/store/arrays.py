"""Arrays of a store, opened and written by the tasks themselves, on the workers.

Dask tasks receive the store's :class:`~streamq.fs.Location` and open arrays themselves
(:func:`open_array`). Every array is written whole by one writer, or chunk by chunk by the
one task that owns that chunk, so no two writers ever touch the same chunk; a task writes its
data (:func:`write_rows`, :func:`write_task_colors`), makes it durable
(:func:`sync_written`), then its completion record (:func:`write_record`). Also here: the
codecs of the store's arrays and what Zarr opens for a location (:func:`zarr_root`: a local
path, or an fsspec store that deletes named keys only).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec
from zarr.storage import FsspecStore

from streamq import durable
from streamq.errors import StreamQError
from streamq.fs import Location, delete_keys, storage_errors
from streamq.lock import check_writer
from streamq.store.names import ALPHA, TASK_COLORS, TASK_REPORTS

__all__ = ["COLOR_CHUNK", "N_CODES", "SPARSE", "TABLE_CHUNK", "compressors", "count_compressors",
           "creating_root", "every_chunk", "labels_dtype", "open_array", "remove_chunks",
           "runs_by_weight", "sync_written", "write_record", "write_rows", "write_task_colors",
           "write_task_report", "zarr_root"]

TABLE_CHUNK = 65_536
COLOR_CHUNK = 1 << 18  # colours per chunk of a colour table (2 MiB of int64 codes)
N_CODES = 1 << 24  # distinct 24-bit colours


def labels_dtype(k: int) -> np.dtype:
    """uint8 labels for K <= 256 colours, uint16 above."""
    return np.dtype(np.uint8 if k <= 256 else np.uint16)


def count_compressors() -> Any:
    """The codec of colour tables (sorted int64 codes, counts): Blosc-LZ4 over shuffled
    bytes, fast enough for the write tasks and the merge, and compact on these numbers."""
    return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)]


def compressors(codec: str, level: int | None) -> Any:
    """The Zarr compressor list for a codec name from the config."""
    if codec == "zstd":
        return [ZstdCodec(level=1 if level is None else level)]
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5 if level is None else level,
                           shuffle=BloscShuffle.noshuffle, typesize=1)]
    return None


StoreTarget = str | os.PathLike[str] | Location


def zarr_root(loc: Location, read_only: bool = False) -> Any:
    """What Zarr opens for ``loc``: the path itself (``LocalStore``) or an ``FsspecStore``."""
    return _zarr_root(loc, _LiteralFsspecStore, read_only)


def creating_root(loc: Location, absent: Callable[[str], bool] | None = None) -> Any:
    """What Zarr creates arrays in for ``loc``: as :func:`zarr_root`, but at a URL a store
    that remembers the groups it has seen (:class:`_GroupsSeenStore`).

    Take a new one for each batch of arrays one writer creates in one go (the columns of a
    table, the arrays of a plan), and use it for nothing else: each array Zarr creates checks
    every group above it (a GET and a HEAD of each ``zarr.json``, the store's own included),
    and within one batch those answers cannot change.

    ``absent(prefix)``: whether the caller knows that nothing is stored below ``prefix`` (a
    store it has just created, where it has written nothing there yet); Zarr's deletion of
    what an array created with ``overwrite`` replaces is then skipped -- a listing of the
    prefix (a request) that could only come back empty.
    """
    root = _zarr_root(loc, _GroupsSeenStore, False)
    if absent is not None and isinstance(root, _GroupsSeenStore):
        root.__dict__["_absent"] = absent
    return root


def _zarr_root(loc: Location, kind: type[FsspecStore], read_only: bool) -> Any:
    if loc.is_local:
        return loc.url
    options = dict(loc.options)
    if loc.scheme == "s3":
        # Chunks and shards are small objects: one GET each, without the HEAD that s3fs
        # sends first to split large objects into concurrent ranged reads.
        options.setdefault("max_concurrency", 1)
    with storage_errors(loc):
        return kind.from_url(loc.url, storage_options=options, read_only=read_only)


class _LiteralFsspecStore(FsspecStore):
    """Zarr's ``FsspecStore``, deleting named keys only.

    ``FsspecStore`` deletes with fsspec's ``rm``, which reads ``[``, ``*`` and ``?`` in a path
    as a glob: replacing ``s3://b/photos[1].zarr`` (every create with ``overwrite=True``) would
    delete ``s3://b/photos1.zarr`` instead. Here a key is deleted by its name, and a "folder"
    by listing the keys under its prefix (a literal listing) and deleting each of them.
    """

    def _path(self, key: str) -> str:
        return f"{self.path.rstrip('/')}/{key}".rstrip("/") if key else self.path.rstrip("/")

    async def delete(self, key: str) -> None:
        self._check_writable()
        with contextlib.suppress(*self.allowed_exceptions):
            await delete_keys(self.fs, [self._path(key)])

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        root = self._path(prefix)
        with contextlib.suppress(*self.allowed_exceptions):
            if hasattr(self.fs, "_lsdir"):  # s3fs: one (paginated) listing of the keys below
                # (``_find`` follows an empty one with a HEAD and a second listing of ``root``
                # itself: every array Zarr creates with ``overwrite`` paid both)
                found = await self.fs._lsdir(root, delimiter="")
                keys = [str(f["name"]) for f in found if f.get("type") != "directory"]
            else:
                keys = await self.fs._find(root)
            await delete_keys(self.fs, [k for k in keys if k.startswith(root + "/")])

    async def clear(self) -> None:
        await self.delete_dir("")


class _GroupsSeenStore(_LiteralFsspecStore):
    """A store for creating arrays (:func:`creating_root`): the ``zarr.json`` of a group that
    it has read or written is answered from memory until it writes or deletes that key or a
    prefix above it; every other read goes to the bucket.

    Zarr checks the groups above each array it creates (is one of them an array? does its
    ``zarr.json`` exist?); a batch of arrays below the same groups asks that again and again.
    """

    def _seen(self) -> dict[str, bytes]:
        seen: dict[str, bytes] | None = self.__dict__.get("_groups_seen")
        if seen is None:
            seen = self.__dict__["_groups_seen"] = {}
        return seen

    def _remember(self, key: str, value: Any) -> None:
        if key.rpartition("/")[2] != "zarr.json" or value is None:
            return
        data = value.to_bytes()
        try:
            node = json.loads(data).get("node_type")
        except (ValueError, AttributeError):
            return
        if node == "group":
            self._seen()[key] = data

    def _forget(self, prefix: str) -> None:
        seen = self._seen()
        for key in [k for k in seen if not prefix or k == prefix or k.startswith(prefix + "/")]:
            del seen[key]

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        data = self._seen().get(key) if byte_range is None else None
        if data is not None:
            return prototype.buffer.from_bytes(data)
        value = await super().get(key, prototype, byte_range)
        if byte_range is None:
            self._remember(key, value)
        return value

    async def exists(self, key: str) -> bool:
        return key in self._seen() or await super().exists(key)

    async def set(self, key: str, value: Any, byte_range: Any = None) -> None:
        self._forget(key)
        await super().set(key, value, byte_range)
        self._remember(key, value)

    async def delete(self, key: str) -> None:
        self._forget(key)
        await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        self._forget(prefix)
        absent = self.__dict__.get("_absent")
        if absent is not None and absent(prefix):  # known empty (creating_root): no listing
            self._check_writable()
            return
        await super().delete_dir(prefix)


def open_array(loc: Location, name: str, mode: str = "r") -> zarr.Array:
    """Open array ``name`` of the store at ``loc`` (what Dask tasks call, on the workers).

    Opening to write first checks that a job holding the store lock still holds it.
    """
    if mode != "r":
        check_writer()
    if loc.is_local:
        return zarr.open_array(f"{loc.url}/{name}", mode=mode)
    return zarr.open_array(zarr_root(loc, read_only=mode == "r"), path=name, mode=mode,
                           zarr_format=3)


def write_record(store: Location, name: str, i: int, report: Mapping[str, Any]) -> None:
    """Record that task ``i`` finished (called by the task itself, after its data).

    The record is its own chunk: one file locally, one object (one PUT) on an object store.
    """
    arr = open_array(store, name, mode="r+")
    arr[i] = json.dumps(report, sort_keys=True)
    if store.is_local:  # the record's own file: durable before anything trusts it
        durable.sync_chunks(store.url, name, arr, i, i + 1)


def sync_written(store: Location, name: str, arr: zarr.Array, lo: int, hi: int) -> None:
    """Make the chunks of rows ``[lo, hi)`` of array ``name`` that a task just wrote durable
    (local stores; a PUT to an object store is): called before the task's record."""
    if store.is_local:
        durable.sync_chunks(store.url, name, arr, lo, hi)


#: Arrays whose chunks of fill values only are not written: ``alpha`` (255 wherever an
#: image is opaque, so an opaque collection stores no alpha chunk at all)
SPARSE = frozenset({ALPHA})


def every_chunk(arr: zarr.Array) -> zarr.Array:
    """``arr`` writing every chunk, fill values only or not.

    By default Zarr compares each chunk it writes with the fill value, to skip chunks of it
    (one pass over every byte with a temporary array: ~1.5 ns a byte, measured on 4 Mpx
    pixel shards; more than Blosc-LZ4 takes to compress them). A task writes whole chunks
    of data, where that check almost never skips anything, so it is left out. (The option
    must be given this way: ``zarr.open_array(config=...)`` ignores it in Zarr 3.1.)
    """
    return arr.with_config({"write_empty_chunks": True})


def write_rows(store: Location, name: str, arr: zarr.Array, lo: int, hi: int,
               data: np.ndarray) -> None:
    """``arr[lo:hi] = data`` (rows of whole chunks a task owns), then :func:`sync_written`.

    Every chunk is written (:func:`every_chunk`), except in the :data:`SPARSE` arrays. Whole
    shards of a local array are written straight to their files
    (:meth:`streamq.store.shards.LocalShards.write`: the same bytes, in half the time). Zarr
    reads a shard before writing into it; one torn by a power loss (it no longer decodes) is
    removed and the write done again: the task owns it and rewrites all of it.
    """
    if name not in SPARSE:
        from streamq.store.shards import LocalShards

        shards = LocalShards.of(store, name, arr)  # whole shards of a local array: Zarr's files
        if shards is not None and shards.write(lo, hi, data):
            sync_written(store, name, arr, lo, hi)
            return
        arr = every_chunk(arr)
    try:
        arr[lo:hi] = data
    except (OSError, MemoryError, StreamQError):
        raise
    except Exception:  # noqa: BLE001  (a damaged chunk in the way)
        remove_chunks(store, name, durable.chunk_keys(arr, lo, hi))
        arr[lo:hi] = data
    sync_written(store, name, arr, lo, hi)


def remove_chunks(store: Location, name: str, keys: Sequence[str]) -> None:
    """Remove chunk ``keys`` of array ``name`` (a torn chunk, before it is written again)."""
    store.remove_files([store.join(*name.split("/"), *k.split("/")).url for k in keys])


def runs_by_weight(weights: Sequence[int], budget: int) -> list[range]:
    """Split positions ``0..len(weights)-1`` (in order) into runs whose weights add up to
    about ``budget``: each run closes as soon as it reaches ``budget``."""
    runs: list[range] = []
    start, total = 0, 0
    for i, w in enumerate(weights):
        total += int(w)
        if total >= budget:
            runs.append(range(start, i + 1))
            start, total = i + 1, 0
    if start < len(weights):
        runs.append(range(start, len(weights)))
    return runs


def write_task_report(store: Location, task: int, report: Mapping[str, Any]) -> None:
    """Completion record of an ingest write task."""
    write_record(store, TASK_REPORTS, task, report)


def write_task_colors(store: Location, task: int, codes: np.ndarray, counts: np.ndarray) -> None:
    """The colour counts of the pixels ingest write task ``task`` stores (called by the
    task, before its completion record: the record gives their number and vouches for them).

    One row of one array made at planning: no array to create per task (a quarter of the
    cost of writing two new arrays; measured 4 vs 11-13 ms per task of 90 k colours).
    """
    if len(codes):
        part = every_chunk(open_array(store, TASK_COLORS, mode="r+"))
        data = np.stack([np.asarray(codes, np.int64), np.asarray(counts, np.int64)])
        keys = [part.metadata.encode_chunk_key((task, 0, j))
                for j in range(-(-len(codes) // COLOR_CHUNK))]
        try:
            part[task, :, :len(codes)] = data
        except (OSError, MemoryError, StreamQError):
            raise
        except Exception:  # noqa: BLE001  (a torn chunk of the row in the way: rewritten)
            remove_chunks(store, TASK_COLORS, keys)
            part[task, :, :len(codes)] = data
        if store.is_local:
            folder = durable.array_folder(store.url, TASK_COLORS)
            durable.sync_files([os.path.join(folder, *k.split("/")) for k in keys], up_to=folder)
