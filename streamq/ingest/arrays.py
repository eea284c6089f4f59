"""Arrays in and out: a store from in-memory or lazy arrays, and lazy arrays of a store.

**In** (:func:`ingest_array`): an ``(N, H, W, C)`` array (NumPy, Dask, Zarr, an xarray
``DataArray``, or anything with ``shape``, ``dtype``, slicing and ``__array__``), one
``(H, W, C)`` image, or a sequence of ``(H, W, C)`` images of any sizes, with ``C`` = 3 (RGB)
or 4 (RGBA: alpha kept as ingest keeps a file's, see ``ingest.alpha``), uint8
or uint16 (scaled as ingest scales 16-bit files: ``round(v * 255 / 65535)``). The images are
planned and written as a file ingest writes them -- the same plan, write tasks, colour counts
and completion records (:mod:`~streamq.ingest.plan`, :mod:`~streamq.ingest.task`,
:mod:`~streamq.ingest.finish`) -- so the store is the same as one made from
the same images as files, and a rerun resumes. Each write task gets only the rows of the
images that overlap its shards: a Dask array's rows are read by the task on the worker (the
source is never gathered on the client), a NumPy array's rows are sent with the task, and
those of any other array are read on the client just before their task is submitted, a few
tasks at a time.

**Out** (:func:`read_image`, :func:`dask_images`, also as methods of
:class:`~streamq.store.Collection`): an image's pixels, its palette labels or its quantized
pixels, one at a time or as lazy Dask arrays that read rows of the store when computed. They
live in the store layer (:mod:`streamq.store.images`) and are imported here as before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamq.config import StreamQConfig, fingerprint
from streamq.console import timer
from streamq.decode import composite, premultiply, scale16
from streamq.errors import ConfigError
from streamq.fs import Location, check_access
from streamq.ingest.finish import IngestSummary, finish_ingest, ingest_summary
from streamq.ingest.plan import ingest_config, open_or_create, plan_settings, write_plan
from streamq.ingest.task import _verify_task, put_pixels, store_task_pixels
from streamq.kmeans.histogram import ColorTotals
from streamq.lock import check_writer, guard_task, store_lock
from streamq.names import stored_name
from streamq.scheduler import Runner, runner
from streamq.stage import Task, run_tasks
from streamq.store import ALPHA, PLAN, TASKS, Store, store_location
from streamq.store.images import KINDS, dask_images, read_image

__all__ = ["KINDS", "dask_images", "ingest_array", "read_image"]  # reads: streamq.store.images

log = logging.getLogger(__name__)

_DTYPES = {np.dtype(np.uint8): "", np.dtype(np.uint16): ";16"}
_MODES = {3: "RGB", 4: "RGBA"}


# -- arrays in ---------------------------------------------------------------------------------
@dataclass
class _Source:
    """The images of an array source: how to get rows of image ``i``, and their shapes."""

    images: list[Any]  # one entry per image: an array-like (H, W, C), or None for rows of `stack`
    stack: Any  # an (N, H, W, C) array-like, or None
    kind: str  # "dask", "numpy" or "other": where rows are read (worker / sent / client)
    shapes: list[tuple[int, int, int]]
    dtypes: list[np.dtype]
    description: str

    def rows(self, i: int, r0: int, r1: int) -> Any:
        """Rows ``[r0, r1)`` of image ``i``: lazy for Dask, a view for NumPy, read for others."""
        part = self.stack[i, r0:r1] if self.stack is not None else self.images[i][r0:r1]
        return part if self.kind in ("dask", "numpy") else np.asarray(part)

    def token(self) -> str:
        """What identifies the data: NumPy by content, Dask by graph name, others by
        ``dask.base.tokenize`` (a Zarr array by its store, path and metadata)."""
        from dask.base import tokenize

        return str(tokenize(self.stack if self.stack is not None else self.images))


def _unwrap(a: Any) -> Any:
    """The array inside: an xarray ``DataArray``'s data (NumPy or Dask), a Zarr array as a
    Dask array (its chunks are then read by the tasks, on the workers)."""
    if hasattr(a, "dims") and hasattr(a, "coords") and hasattr(a, "data"):
        a = a.data
    if type(a).__module__.split(".")[0] == "zarr":
        import dask.array as da

        a = da.from_zarr(a)
    return a


def _coordinate_names(a: Any) -> list[str] | None:
    """The image names an xarray ``DataArray`` of shape ``(N, H, W, C)`` carries: the values
    of a coordinate on its first dimension, when it has one."""
    dims = getattr(a, "dims", None)
    coords = getattr(a, "coords", None)
    if not dims or coords is None or len(dims) != 4 or dims[0] not in coords:
        return None
    return [str(v) for v in np.asarray(coords[dims[0]].values).tolist()]


def _kind(a: Any) -> str:
    from dask.base import is_dask_collection

    if is_dask_collection(a):
        return "dask"
    return "numpy" if isinstance(a, np.ndarray) else "other"


def _check_image(what: str, shape: tuple[int, ...], dtype: Any) -> None:
    if len(shape) != 3 or shape[2] not in _MODES:
        raise ConfigError(f"{what} has shape {tuple(shape)}, expected (H, W, 3) or (H, W, 4)")
    if np.dtype(dtype) not in _DTYPES:
        raise ConfigError(f"{what} has dtype {np.dtype(dtype)}, expected uint8 or uint16 "
                          "(16-bit values are scaled to 8 bits as ingest scales 16-bit files)")


def _source(array: Any) -> _Source:
    """Check ``array`` and describe its images (nothing is read)."""
    array = _unwrap(array)
    if hasattr(array, "shape") and hasattr(array, "dtype"):
        shape = tuple(int(n) for n in array.shape)
        if len(shape) == 3:  # one image
            _check_image("the image", shape, array.dtype)
            return _Source([array], None, _kind(array), [shape], [np.dtype(array.dtype)],
                           f"{type(array).__name__} {shape} {np.dtype(array.dtype)}")
        if len(shape) != 4:
            raise ConfigError(f"the array has shape {shape}, expected (N, H, W, 3) or "
                              "(N, H, W, 4), one (H, W, 3) image, or a sequence of images")
        _check_image("each image of the array", shape[1:], array.dtype)
        return _Source([None] * shape[0], array, _kind(array), [shape[1:]] * shape[0],
                       [np.dtype(array.dtype)] * shape[0],
                       f"{type(array).__name__} {shape} {np.dtype(array.dtype)}")
    if isinstance(array, str | bytes | os.PathLike) or not hasattr(array, "__iter__"):
        raise ConfigError(f"expected an array or a sequence of images, got {type(array).__name__} "
                          "(files and folders are ingested by streamq.ingest)")
    images = [_unwrap(a) for a in array]
    kinds = set()
    for i, a in enumerate(images):
        if not (hasattr(a, "shape") and hasattr(a, "dtype")):
            raise ConfigError(f"image {i} is a {type(a).__name__}, expected an (H, W, 3) array")
        _check_image(f"image {i}", tuple(int(n) for n in a.shape), a.dtype)
        kinds.add(_kind(a))
    kind = "dask" if "dask" in kinds else "numpy" if kinds == {"numpy"} else "other"
    return _Source(images, None, kind,
                   [(int(a.shape[0]), int(a.shape[1]), int(a.shape[2])) for a in images],
                   [np.dtype(a.dtype) for a in images], f"sequence of {len(images)} images")


def _rgb8(part: Any, background: Sequence[int], keep_alpha: bool = False
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of an image as RGB uint8 and, with ``keep_alpha``, their alpha, by the rules of
    :mod:`streamq.decode`: colours premultiplied by alpha when it is kept (the plan made the
    alpha array), else composited on ``background``."""
    a = np.asarray(part)
    if a.dtype == np.uint16:
        a = scale16(a)
    alpha = None
    if a.shape[-1] == 4:
        if keep_alpha:
            alpha = np.ascontiguousarray(a[..., 3], dtype=np.uint8)
            a = premultiply(a)
        else:
            r, g, b = background
            a = composite(a, (r, g, b))
    return np.ascontiguousarray(a, dtype=np.uint8), alpha


def _fill_task(args: dict[str, Any], *parts: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray, str]:
    """Write task of an array ingest (on a worker): the rows of the images overlapping its
    shards, converted and written as a file ingest task writes decoded files."""
    a, b = args["px_start"], args["px_stop"]
    buf = np.zeros((b - a, 3), dtype=np.uint8)
    keep_alpha = bool(args.get("alpha"))  # the plan made the alpha array
    abuf = np.full(b - a, 255, dtype=np.uint8) if keep_alpha else None
    with_alpha: list[int] = []  # plan rows of the images with a transparent pixel here
    stored = []
    for (_, off, h, w, r0), row, part in zip(args["images"], args["plan_rows"], parts,
                                             strict=True):
        rgb, alpha = _rgb8(part, args["background"], keep_alpha)
        base = off + r0 * w  # the pixel index of the part's first row
        lo, hi = max(off, a), min(off + h * w, b)
        stored.append((lo - a, hi - a))
        if put_pixels(buf, abuf, a, lo, hi, base, rgb, alpha):
            with_alpha.append(int(row))
    status = "redone" if args.get("expect") is not None else "ran"
    return (*store_task_pixels(args, buf, stored, [], abuf, with_alpha), status)


def _computed(fn: Any, args: dict[str, Any], parts: Sequence[Any]) -> Any:
    """``fn(args, *parts)`` with Dask parts computed here (in a thread of this process)."""
    import dask

    return fn(args, *dask.compute(*parts, scheduler="sync"))


def _submit(run: Runner, fn: Any, args: dict[str, Any], parts: Sequence[Any]) -> Any:
    """Run ``fn(args, *parts)`` as a task. Dask parts become the task's inputs on a cluster
    (computed by the workers, where their data is); in this process, computed by the task."""
    from dask.base import is_dask_collection

    if not any(is_dask_collection(p) for p in parts):
        return run.submit(fn, args, *parts)
    if run.client is None:
        return run.submit(_computed, fn, args, list(parts))
    import dask

    check_writer()
    return run.client.compute(dask.delayed(guard_task(fn), pure=False)(args, *parts))


def ingest_array(array: Any, store: str | os.PathLike[str] | Location, *,
                 names: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                 source_id: str | None = None,
                 config: StreamQConfig | dict[str, Any] | None = None, overwrite: bool = False,
                 progress: bool | None = None, storage_options: dict[str, Any] | None = None,
                 **options: Any) -> IngestSummary:
    """Write the images of ``array`` into a new store at ``store``, as :func:`streamq.ingest`
    writes image files (resumable: the same call again continues an interrupted one).

    Parameters
    ----------
    array : array-like or sequence of array-likes
        ``(N, H, W, C)``, one ``(H, W, C)`` image, or a sequence of ``(H, W, C)`` images, with
        ``C`` = 3 or 4 (alpha kept as ingest keeps it, or with ``alpha="flatten"`` composited
        on ``ingest.background``), uint8 or uint16 (scaled to
        8 bits). NumPy, Dask, Zarr, xarray, or anything with ``shape``, ``dtype``, slicing and
        ``__array__``.
    store : str or path
        Where the store is written: a local folder or a URL such as ``s3://bucket/x.zarr``.
    names : sequence of str, optional
        One unique name per image, stored as its path (exports use it: ``"cats/tom"`` is
        exported as ``cats/tom.png``); default: an xarray ``DataArray``'s coordinate on its
        first dimension when it has one, else ``000000``, ``000001``, ...
    labels : sequence of str, optional
        One label per image (default: the folder part of its name, ``""`` without one).
    source_id : str, optional
        Names the data for resuming: a rerun resumes when it is the same. Default: a hash of a
        NumPy array's content, a Dask array's graph name, or ``dask.base.tokenize`` of other
        arrays (a Zarr array: its store, path and metadata, not its content).
    config, overwrite, progress, storage_options, options
        As :func:`streamq.ingest`: ``chunk_pixels``, ``block_pixels``, ``codec``, ``level``,
        ``max_pixels``, ``background`` and ``scheduler`` may be given as keywords.

    Returns
    -------
    IngestSummary
    """
    cfg = ingest_config(config, store, options)
    if names is None:
        names = _coordinate_names(array)
    src = _source(array)
    n = len(src.shapes)
    if names is None:
        width = max(6, len(str(max(n - 1, 0))))
        names = [f"{i:0{width}d}" for i in range(n)]
    names = [str(v) for v in names]
    if len(names) != n or len(set(names)) != n:
        raise ConfigError(f"names: expected {n} distinct names (one per image), got "
                          f"{len(names)} with {len(set(names))} distinct")
    if labels is not None:
        labels = [str(v) for v in labels]
        if len(labels) != n:
            raise ConfigError(f"labels: expected {n} labels (one per image), got {len(labels)}")
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="ingest", create=True, config=cfg.lock):
        return _ingest_array(loc, cfg, src, names, labels, source_id, overwrite, progress)


def _ingest_array(loc: Location, cfg: StreamQConfig, src: _Source, names: list[str],
                  labels: list[str] | None, source_id: str | None, overwrite: bool,
                  progress: bool | None) -> IngestSummary:
    icfg = cfg.ingest
    timings: dict[str, float] = {}
    with timer("identifying the array", timings):
        source_fp = fingerprint({"array": source_id or src.token(), "names": names,
                                 "labels": labels})
    settings = plan_settings(icfg)
    settings_fp = fingerprint(settings)
    st = open_or_create(loc, source_fp, settings_fp, overwrite)
    state = st.section("ingest")
    if state.get("state") == "complete":
        log.info("Store %s already holds this ingest; nothing to do", st.path)
        return ingest_summary(st, "already complete", state.get("timings", {}))
    status = "resumed" if state.get("state") == "planned" else "ingested"

    def write(fn: Any) -> None:
        from streamq.faults import retrying

        retrying(fn, "write", st.path, cfg.retry, write=True)

    if state.get("state") != "planned":
        headers: list[Any] = []
        for (h, w, c), dtype in zip(src.shapes, src.dtypes, strict=True):
            if h * w == 0:
                headers.append(f"image has no pixels ({w}x{h})")
            elif h * w > icfg.max_pixels:
                headers.append(f"image has {h * w} pixels, over the limit "
                               f"max_pixels={icfg.max_pixels}")
            else:
                # RGBA images may carry transparent pixels: alpha kept as ingest keeps it
                headers.append((h, w, _MODES[c] + _DTYPES[dtype], c == 4))
        with timer("planning", timings):
            write(lambda: write_plan(st, "", names, headers, [], icfg, source_fp, settings_fp,
                                     settings, labels=labels, extra={"source": src.description}))
    with runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        with timer("writing", timings):
            totals, added = _run_array_tasks(run, st, src, names, icfg.background, cfg,
                                             progress)
    return finish_ingest(st, totals, added, status, timings, facts, write)


def _task_args(st: Store, cfg: StreamQConfig, background: Sequence[int], names: list[str]
               ) -> Iterator[tuple[dict[str, Any], int]]:
    """Arguments of every write task: its pixel range and, for each image it needs, its
    number in the source, offset, shape and first row."""
    plan = st.read_table(PLAN, ("path", "offset", "height", "width"))
    index = {stored_name(name): i for i, name in enumerate(names)}
    tasks = st.read_table(TASKS, ("chunk_start", "chunk_stop"))
    reports = st.task_reports()
    sec = st.section("ingest")
    plan_id = fingerprint([sec.get("source_fingerprint"), sec.get("settings_fingerprint")])
    offsets, heights, widths = plan["offset"], plan["height"], plan["width"]
    sizes = heights * widths
    ends = offsets + sizes
    n_pixels = int(sizes.sum())
    chunk, _ = st.pixel_layout()
    keep_alpha = st.has(ALPHA)  # made by the plan: some image is RGBA and alpha is kept
    for t in range(len(reports)):
        a = int(tasks["chunk_start"][t]) * chunk
        b = min(int(tasks["chunk_stop"][t]) * chunk, n_pixels)
        lo = int(np.searchsorted(ends, a, side="right"))
        hi = int(np.searchsorted(offsets, b, side="left"))
        images, rows = [], []
        for i in range(lo, hi):
            off, h, w = int(offsets[i]), int(heights[i]), int(widths[i])
            if h * w:
                r0 = (max(off, a) - off) // w
                images.append((index[str(plan["path"][i])], off, h, w, r0))
                rows.append(i)
        args = {"store": st.location, "task": t, "px_start": a, "px_stop": b,
                "images": images, "plan_rows": rows, "alpha": keep_alpha,
                "background": list(background), "retry": cfg.retry,
                "plan": plan_id, "expect": json.loads(reports[t]) if reports[t] else None}
        yield args, b - a


def _parts(src: _Source, args: dict[str, Any]) -> list[Any]:
    b = args["px_stop"]
    out = []
    for i, off, h, w, r0 in args["images"]:
        r1 = min(h, -(-(b - off) // w))
        out.append(src.rows(i, r0, r1))
    return out


def _run_array_tasks(run: Runner, st: Store, src: _Source, names: list[str],
                     background: Sequence[int], cfg: StreamQConfig, progress: bool | None) -> tuple[ColorTotals, set[int]]:
    """Run the write tasks a few at a time (twice the workers): a task recorded by an earlier
    run is checked first and written again only if its data no longer matches its record."""
    totals, added = ColorTotals(), set[int]()
    todo = [Task(_verify_task if args["expect"] is not None else _fill_task, args, n,
                 args["task"]) for args, n in _task_args(st, cfg, background, names)]
    if not todo:
        return totals, added

    def submit(run: Runner, task: Task) -> Any:  # a write's inputs: read only when it starts
        if task.fn is _verify_task:
            return run.submit(_verify_task, task.arg)
        return _submit(run, _fill_task, task.arg, _parts(src, task.arg))

    def add(task: Task, result: Any) -> Task | None:
        if task.fn is _verify_task and result is None:  # no longer what its record says
            return Task(_fill_task, task.arg, task.weight, task.key)
        codes, counts = result if task.fn is _verify_task else result[1:3]
        totals.add(codes, counts)
        added.add(task.key)
        return None

    run_tasks(run, todo, "ingesting", "px", progress, on_result=add,
              window=max(4, 2 * run.n_workers), redone="ingest task(s)", logger=log,
              submit=submit)
    return totals, added
