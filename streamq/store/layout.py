"""A store as a whole: opening and creating it, its sections (attributes), tables and records.

:class:`Store` is the client's handle on a collection's Zarr v3 group (the names inside it
are :mod:`streamq.store.names`, the layout ``docs/store-format.md``): it creates the store and
checks the format of one it opens, reads and writes the top-level attribute sections, creates
arrays laid out like ``pixels``, and reads and writes tables (columns ``prefix/<name>``) and
completion records. What the tasks do on the workers -- open an array, write the rows they
own, then their record -- is :mod:`streamq.store.arrays`; a finished collection read back is
:class:`streamq.store.images.Collection`.

A store lives in a local folder (Zarr's ``LocalStore``) or at a URL such as
``s3://bucket/collection.zarr`` (Zarr's ``FsspecStore``), given as a
:class:`~streamq.fs.Location`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import zarr

from streamq import durable
from streamq._version import __version__
from streamq.errors import StoreError, StoreExistsError, StoreLayoutError
from streamq.fs import Location, check_access, location, storage_errors
from streamq.lock import check_writer
from streamq.store.arrays import (
    COLOR_CHUNK,
    N_CODES,
    TABLE_CHUNK,
    compressors,
    count_compressors,
    creating_root,
    zarr_root,
)
from streamq.store.names import ALPHA, PIXELS, TASK_COLORS, TASK_REPORTS, TASKS

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "UPGRADABLE_VERSIONS", "Store", "StoreTarget",
           "is_store", "store_location"]

#: The version of every store this streamq writes, with or without alpha (``alpha``,
#: ``images/has_alpha`` say whether the images keep theirs): 3 spells centres ``centers`` in
#: every name (``fit/palette/centers_0``, ``per_image/k{K}/centers``), as scikit-learn does.
FORMAT_VERSION = 3
#: Versions ``streamq upgrade`` brings to :data:`FORMAT_VERSION` by renaming arrays (nothing is
#: recomputed): 1, and 2 for a store with alpha (a reader of 1 only refused it), spelled
#: ``center`` (see :mod:`streamq.store.upgrade`).
UPGRADABLE_VERSIONS = (1, 2)
READ_VERSIONS = (FORMAT_VERSION,)

StoreTarget = str | os.PathLike[str] | Location


class Store:
    """A streamq store at ``location`` (a local folder or a URL); ``path`` is its text."""

    def __init__(self, loc: Location, group: zarr.Group, new: bool = False) -> None:
        self.location = loc
        self.path = loc.url
        self.group = group
        self._batch: Any = None
        # ``new``: this handle created the store where nothing was; then the names of the
        # arrays it has created since (nothing else is stored there: :meth:`_absent`)
        self._created: set[str] | None = set() if new else None
        self._unsynced: dict[str, None] = {}  # what the outermost batch makes durable at its end

    # -- opening -----------------------------------------------------------------
    @classmethod
    def create(cls, target: StoreTarget, overwrite: bool = False,
               storage_options: Mapping[str, Any] | None = None) -> Store:
        """Create an empty store; an existing one is replaced only with ``overwrite``."""
        loc = location(target, storage_options)
        path = loc.url
        check_access(loc)
        exists = loc.exists()
        if exists and not overwrite:
            raise StoreExistsError(f"{path} already exists; pass --overwrite to replace it")
        if exists and not is_store(loc) and _entries(loc):
            raise StoreExistsError(
                f"{path} exists and is not a streamq store; refusing to overwrite it"
            )
        check_writer()
        # One write of zarr.json: a kill can never leave a group without its format record.
        with storage_errors(loc):
            group = zarr.create_group(zarr_root(loc), overwrite=True, zarr_format=3, attributes={
                "streamq": {"format_version": FORMAT_VERSION, "created_with": __version__}})
        if loc.is_local:  # the new store's name in its parent folder too
            durable.sync_tree(os.path.join(path, "zarr.json"), os.path.dirname(path))
        return cls(loc, group, new=not exists)

    @classmethod
    def open(cls, target: StoreTarget, mode: Literal["r", "r+"] = "r",
             storage_options: Mapping[str, Any] | None = None,
             versions: Sequence[int] = READ_VERSIONS) -> Store:
        """Open an existing store, checking that it is one and of a version we read (one of
        ``versions``: :mod:`streamq.store.upgrade` opens older ones too)."""
        loc = location(target, storage_options)
        path = loc.url
        check_access(loc)
        missing = StoreLayoutError(f"{path} does not exist (expected a streamq store)")
        if loc.is_local and not loc.exists():
            raise missing
        try:
            with storage_errors(loc):
                group = zarr.open_group(zarr_root(loc, read_only=mode == "r"), mode=mode,
                                        zarr_format=3)
        except StoreError:
            raise
        except Exception:
            if not loc.is_local and not loc.exists():  # a URL: look only when it failed
                raise missing from None
            raise StoreLayoutError(f"{path} is not a streamq store (no Zarr v3 group there)") from None
        if mode != "r" and loc.is_local:
            _remove_partial_files(path)
        meta = group.attrs.get("streamq")
        if not isinstance(meta, dict) or "format_version" not in meta:
            raise StoreLayoutError(f"{path} is a Zarr group but not a streamq store")
        version = meta["format_version"]
        if version in UPGRADABLE_VERSIONS and version not in versions:
            raise StoreLayoutError(f"{path} uses store format {version}; run `streamq upgrade "
                                   f"{path}` to rename its arrays (nothing is recomputed)")
        if version not in versions:
            raise StoreLayoutError(
                f"{path} has store format_version {meta['format_version']}, this streamq "
                f"{__version__} reads versions {', '.join(map(str, versions))}"
            )
        return cls(loc, group)

    # -- attributes ----------------------------------------------------------------
    def section(self, name: str) -> dict[str, Any]:
        """A top-level attribute dict (``{}`` when absent)."""
        value = self.group.attrs.get(name)
        return dict(value) if isinstance(value, Mapping) else {}

    def set_section(self, name: str, value: Mapping[str, Any]) -> None:
        """Write a top-level attribute; NaN and infinities become null (strict JSON)."""
        check_writer()
        self._sync_unsynced()  # an attribute vouches for what was written before it
        self.group.attrs[name] = _finite(json.loads(json.dumps(value)))
        if self.location.is_local:
            durable.sync_trees([os.path.join(self.location.url, "zarr.json")], self.location.url)

    def sync(self, *names: str) -> None:
        """Make each array, group or file of ``names`` (``""``: the store's own ``zarr.json``)
        durable with everything in it, and its name in each folder up to the store (local
        stores only: an object store keeps a PUT that returned). Every client write ends with
        it, so no attribute -- ``complete`` -- reaches the disk before what it vouches for.

        Inside a batch of writes (:meth:`_creating`) the names are kept and made durable
        together when the outermost batch ends, before the call that opened it returns: a
        folder that several of them share -- the store's own -- is fsynced once, after the
        last write into it."""
        if not self.location.is_local:
            return
        root = self.location.url
        targets = []
        for n in names:
            parts = n.split("/") if n else ["zarr.json"]
            # the groups between the store and ``n``: Zarr writes their zarr.json when it
            # makes them, as parents of an array
            targets += [os.path.join(root, *parts[:i], "zarr.json") for i in range(1, len(parts))]
            targets.append(os.path.join(root, *parts))
        if self._batch is not None:
            self._unsynced.update(dict.fromkeys(targets))
            return
        durable.sync_trees(targets, root)

    # -- arrays --------------------------------------------------------------------
    @contextlib.contextmanager
    def _creating(self) -> Iterator[Any]:
        """The root the arrays created inside the outermost ``with`` share
        (:func:`~streamq.store.arrays.creating_root`)."""
        if self._batch is not None:
            yield self._batch
            return
        self._batch = creating_root(self.location,
                                    self._absent if self._created is not None else None)
        try:
            yield self._batch
        except BaseException:
            self._unsynced = {}  # the call failed: what it wrote vouches for nothing
            raise
        finally:
            self._batch = None
        self._sync_unsynced()  # the batch's writes all done: durable before its call returns

    def _absent(self, prefix: str) -> bool:
        """Whether nothing can be stored below ``prefix`` (a store this handle created where
        nothing was, and no array it created since at, above or below ``prefix``): Zarr's
        deletion before an array created with ``overwrite`` is then skipped
        (:func:`~streamq.store.arrays.creating_root`). Tasks write only inside arrays the
        client created; an existing store replaced (``overwrite``) keeps every deletion."""
        if self._created is None:
            return False
        p = prefix.strip("/")
        return bool(p) and not any(n == p or n.startswith(p + "/") or p.startswith(n + "/")
                                   for n in self._created)

    def _new_array(self, root: Any, name: str, **kwargs: Any) -> zarr.Array:
        """``zarr.create_array(root, name=name, ...)``, remembering ``name`` (:meth:`_absent`)
        once it is created -- or failed half-way, leaving keys there."""
        try:
            return zarr.create_array(root, name=name, **kwargs)
        finally:
            if self._created is not None:
                self._created.add(name)

    def _sync_unsynced(self) -> None:
        unsynced, self._unsynced = list(self._unsynced), {}
        if unsynced:
            durable.sync_trees(unsynced, self.location.url)

    def create_array(self, name: str, **kwargs: Any) -> zarr.Array:
        """``zarr.create_array`` at ``name`` inside this store (``overwrite=True``)."""
        check_writer()
        with self._creating() as root:
            arr = self._new_array(root, name, overwrite=True, **kwargs)
            self.sync(name)
        return arr

    def stored_bytes(self, name: str) -> int:
        """Bytes stored for array or group ``name`` (compressed, as on disk or in the bucket)."""
        return self.location.join(name).tree_size()

    def create_pixels(self, n_pixels: int, chunk_pixels: int, block_pixels: int, codec: str,
                      level: int | None) -> None:
        """The flat pixel array: shards of ``chunk_pixels`` (one writer each) made of inner
        chunks of ``block_pixels`` (the unit a sampler reads)."""
        check_writer()
        block = max(1, min(block_pixels, chunk_pixels, n_pixels))
        shard = -(-max(1, min(chunk_pixels, n_pixels)) // block) * block
        with self._creating() as root:
            self._new_array(root, PIXELS, shape=(n_pixels, 3),
                              shards=(shard, 3) if shard > block else None, chunks=(block, 3),
                              dtype="uint8", fill_value=0, compressors=compressors(codec, level),
                              dimension_names=["pixel", "channel"], overwrite=True)
            self.sync(PIXELS)

    def pixels(self) -> zarr.Array:
        return self.group[PIXELS]  # type: ignore[return-value]

    def pixel_layout(self) -> tuple[int, int]:
        """``(shard, block)`` pixel counts of ``pixels``: the write unit and the read unit."""
        arr = self.pixels()
        block = int(arr.chunks[0])
        shards = getattr(arr, "shards", None)
        return (int(shards[0]) if shards else block), block

    def create_labels(self, name: str, dtype: Any, fill_value: int = 0) -> zarr.Array:
        """A ``(P,)`` label array laid out like ``pixels`` (same shards and blocks, codec)."""
        check_writer()
        shard, block = self.pixel_layout()
        settings = self.section("ingest").get("settings", {})
        with self._creating() as root:
            arr = self._new_array(
                root, name, shape=(int(self.pixels().shape[0]),),
                shards=(shard,) if shard > block else None, chunks=(block,), dtype=dtype,
                fill_value=fill_value, overwrite=True, dimension_names=["pixel"],
                compressors=compressors(settings.get("codec", "lz4"), settings.get("level")))
            self.sync(name)
        return arr

    def alpha(self) -> zarr.Array | None:
        """The ``(P,)`` alpha array, or None in a store without transparent pixels."""
        return self.group[ALPHA] if self.has(ALPHA) else None  # type: ignore[return-value]

    def create_rows(self, name: str, shape: tuple[int, ...], rows_per_chunk: int,
                    dtype: Any) -> zarr.Array:
        """An empty array of one row per image, in chunks of ``rows_per_chunk`` whole rows
        (the unit one task writes)."""
        check_writer()
        with self._creating() as root:
            arr = self._new_array(root, name, shape=shape, dtype=dtype, fill_value=0,
                                    chunks=(max(1, min(rows_per_chunk, shape[0])),) + shape[1:],
                                    overwrite=True)
            self.sync(name)
        return arr

    def write_array(self, name: str, data: np.ndarray) -> None:
        """Write a whole n-d array at once (one writer), chunked along its first axis."""
        check_writer()
        with self._creating() as root:
            arr = self._new_array(root, name, shape=data.shape, dtype=data.dtype,
                                    chunks=(max(1, min(len(data), 4096)),) + data.shape[1:],
                                    overwrite=True)
            if data.size:
                arr[:] = data
            self.sync(name)

    def array(self, name: str) -> zarr.Array:
        """Array ``name`` of the store (a group there is a layout error)."""
        node = self.group[name]
        if not isinstance(node, zarr.Array):
            raise StoreLayoutError(f"{self.path}: {name} is a Zarr group, expected an array")
        return node

    def has(self, name: str) -> bool:
        try:
            self.group[name]
        except KeyError:
            return False
        return True

    def remove(self, name: str) -> None:
        """Remove array or group ``name`` and everything in it (a result that no longer
        holds)."""
        check_writer()
        del self.group[name]
        if self.location.is_local:  # its name gone from its folder (and that folder's zarr.json)
            root = self.location.url
            parent = name.rpartition("/")[0]
            durable.sync_files([os.path.join(root, *parent.split("/"), "zarr.json"),
                                os.path.join(root, *name.split("/"))], up_to=root)

    def write_table(self, prefix: str, columns: Mapping[str, np.ndarray | Sequence[Any]],
                    chunk: int = TABLE_CHUNK, codecs: Any = "auto") -> None:
        """Write equal-length columns as 1-d arrays ``prefix/<name>`` (strings as UTF-8),
        in chunks of ``chunk`` rows, compressed with ``codecs`` (default: Zarr's)."""
        check_writer()
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of {prefix} differ in length: {lengths}")
        with self._creating() as root:
            for name, values in columns.items():
                data = _as_column(values)
                arr = self._new_array(root, f"{prefix}/{name}", shape=data.shape,
                                        chunks=(max(1, min(len(data), chunk)),),
                                        dtype=data.dtype if data.dtype.kind != "U" else str,
                                        compressors=codecs, overwrite=True)
                if len(data):
                    arr[:] = data
            # the columns written and the table's own zarr.json, not the table's other columns
            self.sync(*(f"{prefix}/{name}" for name in columns), f"{prefix}/zarr.json")

    def read_table(self, prefix: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            data = np.asarray(self.array(f"{prefix}/{name}")[:])
            out[name] = np.asarray(data, dtype=object if data.dtype.kind in "TUO" else data.dtype)
        return out

    def create_records(self, name: str, n: int) -> None:
        """``n`` empty completion records (one chunk each: each task writes only its own)."""
        check_writer()
        with self._creating() as root:
            self._new_array(root, name, shape=(n,), chunks=(1,), dtype=str, overwrite=True)
            self.sync(name)

    def records(self, name: str) -> np.ndarray:
        """Completion records as an object array of JSON strings (``""`` while pending).

        A record that cannot be read or is not a JSON object (torn by a power loss on a
        filesystem that did not keep what it was told to) reads as ``""``: its task runs again.
        """
        arr = self.array(name)
        try:
            values = list(np.asarray(arr[:], dtype=object))
        except Exception:  # noqa: BLE001  (a damaged chunk: read them one by one)
            values = []
            for i in range(arr.shape[0]):
                try:
                    values.append(arr[i])
                except Exception:  # noqa: BLE001
                    values.append("")
        out = np.empty(len(values), dtype=object)
        out[:] = [v if _is_record(v) else "" for v in values]
        return out

    def create_task_table(self, chunk_start: np.ndarray, chunk_stop: np.ndarray) -> None:
        with self._creating() as root:
            self.write_table(TASKS, {"chunk_start": chunk_start, "chunk_stop": chunk_stop})
            self.create_records(TASK_REPORTS, len(chunk_start))
            check_writer()
            self._new_array(root, TASK_COLORS, shape=(len(chunk_start), 2, N_CODES),
                              chunks=(1, 2, COLOR_CHUNK), dtype="int64", fill_value=0,
                              compressors=count_compressors(), overwrite=True)
            self.sync(TASK_COLORS)

    def task_reports(self) -> np.ndarray:
        return self.records(TASK_REPORTS)

    def task_colors(self, task: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` colours and counts that write task ``task`` stored (trust them only once
        its completion record exists; it gives ``n``)."""
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        part = np.asarray(self.array(TASK_COLORS)[task, :, :n])
        return part[0], part[1]


def _is_record(value: Any) -> bool:
    """Whether ``value`` is a completion record: the text of a JSON object."""
    if not isinstance(value, str) or not value:
        return False
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _as_column(values: np.ndarray | Sequence[Any]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "OUT" or (arr.size == 0 and not isinstance(values, np.ndarray)):
        return np.asarray([str(v) for v in values], dtype=np.str_) if len(values) else np.zeros(0, "U1")
    return arr


def _remove_partial_files(path: str, min_age: float = 60.0) -> None:
    """Remove the temporary files zarr's atomic writes leave behind when killed.

    Only files older than ``min_age`` seconds: a younger one may belong to a write in flight.
    """
    import time

    now = time.time()
    for dirpath, _, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                p = os.path.join(dirpath, f)
                try:
                    if now - os.path.getmtime(p) > min_age:
                        os.remove(p)
                except OSError:
                    pass


def is_store(loc: Location) -> bool:
    """Whether ``loc`` holds a Zarr group's ``zarr.json``."""
    if loc.is_local:
        return os.path.isfile(os.path.join(loc.url, "zarr.json"))
    return loc.join("zarr.json").exists()


def _entries(loc: Location) -> list[str]:
    return os.listdir(loc.url) if loc.is_local else loc.listdir()



def store_location(store: StoreTarget, storage_options: Mapping[str, Any] | None,
                   config_options: Mapping[str, Any]) -> Location:
    """The location a stage works on: explicit options win, then a Location's own, then the
    configuration's ``storage_options``."""
    if storage_options is None and not isinstance(store, Location):
        storage_options = config_options
    return location(store, storage_options)
