"""The on-disk layout of a collection: the only module that knows names and paths.

A store is a Zarr v3 group (see ``docs/store-format.md``)::

    STORE/
      zarr.json                 attributes: "streamq" (format), "ingest" (state, settings, summary)
      pixels/                   (P, 3) uint8, every image's pixels back to back, row-major
      alpha/                    (P,) uint8 alpha of every pixel, laid out like pixels; only in
                                a store with an image that has a transparent pixel
      images/{path,label,mode,offset,height,width}   one row per stored image (id = row)
      images/has_alpha          (N,) bool: the image has a transparent pixel (only with alpha/)
      skipped/{path,reason}     inputs that were not stored, and why
      ingest/plan/...           the ingest plan (every image with a readable header)
      ingest/tasks/{chunk_start,chunk_stop,report}   one row per write task; "report" is
                                the completion record, written after the task's pixels
      ingest/colors             (T, 2, 2**24) int64: row t holds the d_t distinct colours of
                                the pixels task t stored ([t, 0, :d_t]) and their counts
                                ([t, 1, :d_t]), written by the task before its record
      colors/{code,count}       the collection's colour histogram (the rows summed)

Every array is written whole by one writer, or chunk by chunk by the one task that owns
that chunk, so no two writers ever touch the same chunk.

A store lives in a local folder (Zarr's ``LocalStore``) or at a URL such as
``s3://bucket/collection.zarr`` (Zarr's ``FsspecStore``), given as a
:class:`~streamq.fs.Location`; Dask tasks receive the location and open arrays themselves
(:func:`open_array`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec
from zarr.storage import FsspecStore

from streamq import durable
from streamq._version import __version__
from streamq.errors import StoreError, StoreExistsError, StoreLayoutError, StreamQError
from streamq.fs import Location, check_access, delete_keys, location, storage_errors
from streamq.lock import check_writer

__all__ = ["ALPHA", "FORMAT_VERSION", "HAS_ALPHA", "UPGRADABLE_VERSIONS", "Collection", "Store", "labels_dtype", "open_array", "open_store",
           "runs_by_weight"]

#: The version of every store this streamq writes, with or without alpha (``alpha``,
#: ``images/has_alpha`` say whether the images keep theirs): 3 spells centres ``centers`` in
#: every name (``fit/palette/centers_0``, ``per_image/k{K}/centers``), as scikit-learn does.
FORMAT_VERSION = 3
#: Versions ``streamq upgrade`` brings to :data:`FORMAT_VERSION` by renaming arrays (nothing is
#: recomputed): 1, and 2 for a store with alpha (a reader of 1 only refused it), spelled
#: ``center`` (see :mod:`streamq.store.upgrade`).
UPGRADABLE_VERSIONS = (1, 2)
READ_VERSIONS = (FORMAT_VERSION,)
TABLE_CHUNK = 65_536
PIXELS = "pixels"
ALPHA = "alpha"
HAS_ALPHA = "images/has_alpha"
IMAGES = "images"
SKIPPED = "skipped"
PLAN = "ingest/plan"
TASKS = "ingest/tasks"
TASK_COLORS = "ingest/colors"
COLORS = "colors"
COLOR_CHUNK = 1 << 18  # colours per chunk of a colour table (2 MiB of int64 codes)
N_CODES = 1 << 24  # distinct 24-bit colours
IMAGE_COLUMNS = ("path", "label", "mode", "offset", "height", "width")
SKIP_COLUMNS = ("path", "reason")


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


class Store:
    """A streamq store at ``location`` (a local folder or a URL); ``path`` is its text."""

    def __init__(self, loc: Location, group: zarr.Group) -> None:
        self.location = loc
        self.path = loc.url
        self.group = group
        self._root = zarr_root(loc)

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
        return cls(loc, group)

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
        self.group.attrs[name] = _finite(json.loads(json.dumps(value)))
        self.sync("zarr.json")

    def sync(self, name: str = "") -> None:
        """Make array, group or file ``name`` (``""``: the store's own ``zarr.json``) durable
        with everything in it, and its name in each folder up to the store (local stores only:
        an object store keeps a PUT that returned). Every client write ends with it, so no
        attribute -- ``complete`` -- reaches the disk before what it vouches for."""
        if not self.location.is_local:
            return
        root = self.location.url
        target = os.path.join(root, *name.split("/")) if name else os.path.join(root, "zarr.json")
        durable.sync_tree(target, root)

    # -- arrays --------------------------------------------------------------------
    def create_array(self, name: str, **kwargs: Any) -> zarr.Array:
        """``zarr.create_array`` at ``name`` inside this store (``overwrite=True``)."""
        check_writer()
        arr = zarr.create_array(self._root, name=name, overwrite=True, **kwargs)
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
        zarr.create_array(
            self._root,
            name=PIXELS,
            shape=(n_pixels, 3),
            shards=(shard, 3) if shard > block else None,
            chunks=(block, 3),
            dtype="uint8",
            fill_value=0,
            compressors=compressors(codec, level),
            dimension_names=["pixel", "channel"],
            overwrite=True,
        )
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
        arr = zarr.create_array(
            self._root, name=name, shape=(int(self.pixels().shape[0]),),
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
        arr = zarr.create_array(self._root, name=name, shape=shape, dtype=dtype, fill_value=0,
                                chunks=(max(1, min(rows_per_chunk, shape[0])),) + shape[1:],
                                overwrite=True)
        self.sync(name)
        return arr

    def write_array(self, name: str, data: np.ndarray) -> None:
        """Write a whole n-d array at once (one writer), chunked along its first axis."""
        check_writer()
        arr = zarr.create_array(self._root, name=name, shape=data.shape, dtype=data.dtype,
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
        self.sync(name.rpartition("/")[0])

    def write_table(self, prefix: str, columns: Mapping[str, np.ndarray | Sequence[Any]],
                    chunk: int = TABLE_CHUNK, codecs: Any = "auto") -> None:
        """Write equal-length columns as 1-d arrays ``prefix/<name>`` (strings as UTF-8),
        in chunks of ``chunk`` rows, compressed with ``codecs`` (default: Zarr's)."""
        check_writer()
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of {prefix} differ in length: {lengths}")
        for name, values in columns.items():
            data = _as_column(values)
            arr = zarr.create_array(
                self._root,
                name=f"{prefix}/{name}",
                shape=data.shape,
                chunks=(max(1, min(len(data), chunk)),),
                dtype=data.dtype if data.dtype.kind != "U" else str,
                compressors=codecs,
                overwrite=True,
            )
            if len(data):
                arr[:] = data
        self.sync(prefix)

    def read_table(self, prefix: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            data = np.asarray(self.array(f"{prefix}/{name}")[:])
            out[name] = np.asarray(data, dtype=object if data.dtype.kind in "TUO" else data.dtype)
        return out

    def create_records(self, name: str, n: int) -> None:
        """``n`` empty completion records (one chunk each: each task writes only its own)."""
        check_writer()
        zarr.create_array(self._root, name=name, shape=(n,), chunks=(1,), dtype=str, overwrite=True)
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
        self.write_table(TASKS, {"chunk_start": chunk_start, "chunk_stop": chunk_stop})
        self.create_records(f"{TASKS}/report", len(chunk_start))
        check_writer()
        zarr.create_array(self._root, name=TASK_COLORS, shape=(len(chunk_start), 2, N_CODES),
                          chunks=(1, 2, COLOR_CHUNK), dtype="int64", fill_value=0,
                          compressors=count_compressors(), overwrite=True)
        self.sync(TASK_COLORS)

    def task_reports(self) -> np.ndarray:
        return self.records(f"{TASKS}/report")

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


def zarr_root(loc: Location, read_only: bool = False) -> Any:
    """What Zarr opens for ``loc``: the path itself (``LocalStore``) or an ``FsspecStore``."""
    if loc.is_local:
        return loc.url
    options = dict(loc.options)
    if loc.scheme == "s3":
        # Chunks and shards are small objects: one GET each, without the HEAD that s3fs
        # sends first to split large objects into concurrent ranged reads.
        options.setdefault("max_concurrency", 1)
    with storage_errors(loc):
        return _LiteralFsspecStore.from_url(loc.url, storage_options=options, read_only=read_only)


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
            keys = await self.fs._find(root)
            await delete_keys(self.fs, [k for k in keys if k.startswith(root + "/")])

    async def clear(self) -> None:
        await self.delete_dir("")


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
        durable.sync_files(durable.chunk_files(store.url, name, arr, i, i + 1), up_to=store.url)


def sync_written(store: Location, name: str, arr: zarr.Array, lo: int, hi: int) -> None:
    """Make the chunks of rows ``[lo, hi)`` of array ``name`` that a task just wrote durable
    (local stores; a PUT to an object store is): called before the task's record."""
    if store.is_local:
        durable.sync_chunks(store.url, name, arr, lo, hi)


def write_rows(store: Location, name: str, arr: zarr.Array, lo: int, hi: int,
               data: np.ndarray) -> None:
    """``arr[lo:hi] = data`` (rows of whole chunks a task owns), then :func:`sync_written`.

    Zarr reads a shard before writing into it; one torn by a power loss (it no longer
    decodes) is removed and the write done again: the task owns it and rewrites all of it.
    """
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
    write_record(store, f"{TASKS}/report", task, report)


def write_task_colors(store: Location, task: int, codes: np.ndarray, counts: np.ndarray) -> None:
    """The colour counts of the pixels ingest write task ``task`` stores (called by the
    task, before its completion record: the record gives their number and vouches for them).

    One row of one array made at planning: no array to create per task (a quarter of the
    cost of writing two new arrays; measured 4 vs 11-13 ms per task of 90 k colours).
    """
    if len(codes):
        part = open_array(store, TASK_COLORS, mode="r+")
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
            durable.sync_files([os.path.join(store.url, *TASK_COLORS.split("/"), *k.split("/"))
                                for k in keys], up_to=store.url)


# -- reading a finished collection -------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class Collection:
    """A finished collection: ``len()``, ``read(i)``, ``paths``, ``labels``, ``shapes``;
    after quantize ``pixel_labels(i)`` and ``quantized(i)``; ``to_dask()`` for lazy arrays.

    Examples
    --------
    >>> coll = open_store("faces.zarr")            # doctest: +SKIP
    >>> coll.read(0).shape                         # doctest: +SKIP
    (250, 250, 3)
    """

    def __init__(self, store: Store) -> None:
        state = store.section("ingest").get("state")
        if state != "complete":
            raise StoreLayoutError(
                f"{store.path} has no finished ingest (state: {state or 'none'}); "
                "run `streamq ingest` to finish it"
            )
        self.store = store
        t = store.read_table(IMAGES, IMAGE_COLUMNS)
        self.paths: list[str] = [str(p) for p in t["path"]]
        self.labels: list[str] = [str(v) for v in t["label"]]
        self.modes: list[str] = [str(v) for v in t["mode"]]
        self.offsets: np.ndarray = t["offset"].astype(np.int64)
        self.heights: np.ndarray = t["height"].astype(np.int64)
        self.widths: np.ndarray = t["width"].astype(np.int64)
        s = store.read_table(SKIPPED, SKIP_COLUMNS)
        self.skipped: list[Skipped] = [Skipped(str(p), str(r)) for p, r in zip(s["path"], s["reason"], strict=True)]
        self._pixels = store.pixels()
        self._alpha = store.alpha() if store.has(HAS_ALPHA) else None
        #: (N,) bool: which images have a transparent pixel (alpha kept, see read_alpha)
        self.has_alpha: np.ndarray = (np.asarray(store.array(HAS_ALPHA)[:], dtype=bool)
                                      if self._alpha is not None else np.zeros(len(self.paths), bool))

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(h), int(w)) for h, w in zip(self.heights, self.widths, strict=True)]

    @property
    def n_pixels(self) -> int:
        return int((self.heights * self.widths).sum())

    def __len__(self) -> int:
        return len(self.paths)

    def groups_by_pixels(self, ids: Sequence[int], budget: int) -> list[list[int]]:
        """Split ``ids`` (in order) into runs of about ``budget`` pixels: one task each."""
        ids = list(ids)
        sizes = [int(self.heights[i] * self.widths[i]) for i in ids]
        return [[ids[j] for j in run] for run in runs_by_weight(sizes, budget)]

    def overlapping(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(id, offset, n_pixels)`` of every image with pixels in ``[lo, hi)``."""
        sizes = self.heights * self.widths
        i0 = int(np.searchsorted(self.offsets + sizes, lo, side="right"))
        i1 = int(np.searchsorted(self.offsets, hi, side="left"))
        return [(i, int(self.offsets[i]), int(sizes[i])) for i in range(i0, i1) if sizes[i]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    @property
    def n_alpha(self) -> int:
        """Number of images with a transparent pixel (0: an opaque collection)."""
        return int(self.has_alpha.sum())

    def _span(self, i: int) -> tuple[int, int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image id {i} out of range for a collection of {n} images")
        i %= n
        return int(self.offsets[i]), int(self.heights[i]), int(self.widths[i])

    def read(self, i: int) -> np.ndarray:
        """Pixels of image ``i`` as an ``(H, W, 3)`` uint8 array (for an image with alpha:
        its colours premultiplied by alpha, see :meth:`read_alpha`)."""
        start, h, w = self._span(i)
        return np.asarray(self._pixels[start:start + h * w]).reshape(h, w, 3)

    def pixel_labels(self, i: int, per_image: int | None = None) -> np.ndarray:
        """Palette labels of image ``i`` as an ``(H, W)`` array (after ``quantize``; with
        ``per_image`` = K those of the image's own K-colour palette)."""
        from streamq.store.images import read_image

        return read_image(self, i, "labels", per_image)

    def quantized(self, i: int, per_image: int | None = None) -> np.ndarray:
        """Image ``i`` quantized: each pixel its palette colour, ``(H, W, 3)`` uint8."""
        from streamq.store.images import read_image

        return read_image(self, i, "quantized", per_image)

    def to_dask(self, kind: str = "pixels", *, per_image: int | None = None,
                stack: bool = False, chunk_pixels: int | None = None) -> Any:
        """Lazy Dask arrays of every image's ``pixels``, ``labels`` or ``quantized`` pixels:
        a list, or with ``stack`` one ``(N, H, W[, 3])`` array (see
        :func:`streamq.store.images.dask_images`)."""
        from streamq.store.images import dask_images

        return dask_images(self, kind, per_image=per_image, stack=stack, chunk_pixels=chunk_pixels)

    def read_alpha(self, i: int) -> np.ndarray:
        """Alpha of image ``i`` as an ``(H, W)`` uint8 array (255 everywhere for an image
        without transparent pixels)."""
        start, h, w = self._span(i)
        if self._alpha is None or not self.has_alpha[i]:
            return np.full((h, w), 255, np.uint8)
        return np.asarray(self._alpha[start:start + h * w]).reshape(h, w)

    def __repr__(self) -> str:
        alpha = f", {self.n_alpha} with alpha" if self.n_alpha else ""
        return (f"<Collection {self.path}: {len(self)} images{alpha}, {self.n_pixels} pixels, "
                f"{len(set(self.labels))} labels, {len(self.skipped)} skipped>")


def open_store(path: StoreTarget, storage_options: Mapping[str, Any] | None = None) -> Collection:
    """Open a finished store for reading (``storage_options`` for URLs such as ``s3://``)."""
    return Collection(Store.open(path, storage_options=storage_options))


def store_location(store: StoreTarget, storage_options: Mapping[str, Any] | None,
                   config_options: Mapping[str, Any]) -> Location:
    """The location a stage works on: explicit options win, then a Location's own, then the
    configuration's ``storage_options``."""
    if storage_options is None and not isinstance(store, Location):
        storage_options = config_options
    return location(store, storage_options)
