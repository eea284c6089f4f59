"""Ingest: find image files, decode them on Dask, and write their pixels into a store.

The stage runs in four steps, each safe to interrupt:

1. **List** the inputs (a folder, a glob pattern or a text file of paths), sorted by
   relative path, so image ids are stable.
2. **Scan** every file's header in parallel (size, mode, EXIF orientation): cheap, and
   enough to give each image its place in the flat ``pixels`` array, and to tell whether it
   may hold transparent pixels.
3. **Plan**: images are packed back to back (no padding), the array is cut into chunks,
   and consecutive chunks are grouped into write *tasks*. A task owns its chunks outright
   and decodes every image that overlaps them, so no chunk ever has two writers; a task
   boundary is put where no large image straddles it (an image that does straddle is
   decoded by both tasks, each writing its own part). The plan is saved in the store. When
   some image may hold transparent pixels (and ``alpha`` is ``keep``), the plan also makes
   the ``alpha`` array, laid out like ``pixels`` and written by the same tasks.
4. **Write**: pending tasks run on the workers; each writes its pixels, the counts of the
   colours of those pixels, and then its completion record. A rerun runs only tasks without
   a record, then sums the colour counts into the collection's histogram (table ``colors``)
   and consolidates the records into the final image table and skipped list. An image with
   a transparent pixel keeps its alpha (premultiplied colours in ``pixels``, alpha in
   ``alpha``, flagged in ``images/has_alpha``); a collection without one gets neither array,
   and is stored byte for byte as when every image was composited on the background.

File names may be any bytes: the store keeps them in a reversible text form
(:mod:`streamq.names`). A read or write that fails for a reason of the machine (EIO, EMFILE,
ENOSPC, MemoryError...) is retried and, if it lasts, stops the stage in one line; it is
never recorded as a bad input (:mod:`streamq.faults`).
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from streamq import redact
from streamq.clock import timestamp
from streamq.config import IngestConfig, RetryConfig, StreamQConfig, fingerprint, parse_config
from streamq.console import timer
from streamq.decode import Header
from streamq.durable import checksum
from streamq.errors import ConfigError, StoreMismatchError, StreamQError
from streamq.faults import is_transient, retrying
from streamq.fs import Location, check_access
from streamq.ingest import bands, sources
from streamq.ingest.sources import SourceRoot
from streamq.kmeans.histogram import ColorTotals, count_colors
from streamq.lock import store_lock
from streamq.names import source_name, stored_name
from streamq.scheduler import Runner, runner
from streamq.stage import Task, run_tasks
from streamq.store import (
    ALPHA,
    FORMAT_VERSION,
    IMAGES,
    PIXELS,
    PLAN,
    SCAN_SKIPPED,
    SKIPPED,
    TASK_COLORS,
    TASK_REPORTS,
    TASKS,
    UPGRADABLE_VERSIONS,
    Store,
    is_store,
    open_array,
    store_location,
    write_rows,
    write_task_colors,
    write_task_report,
)
from streamq.store.histogram import merge_task_colors, save_histogram

__all__ = ["IngestSummary", "ingest", "list_sources"]

log = logging.getLogger(__name__)

MAX_CHUNKS_PER_TASK = 8
_GLOB_CHARS = set("*?[")


@dataclass
class IngestSummary:
    """What an ingest run did; ``str()`` gives the one-line summary the CLI prints."""

    store: str
    n_images: int
    n_pixels: int
    n_labels: int
    n_skipped: int
    skipped_first: list[tuple[str, str]]
    stored_bytes: int
    status: str  # "ingested", "resumed" or "already complete"
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        raw = self.n_pixels * 3
        ratio = f"{self.stored_bytes / raw:.0%} of raw" if raw else "empty"
        text = (f"{self.status}: {self.n_images} images, {self.n_pixels / 1e6:.2f} Mpx, "
                f"{self.n_labels} labels, {self.n_skipped} skipped; "
                f"stored {self.stored_bytes / 2**20:.1f} MiB ({ratio}) in {self.store}")
        if self.skipped_first:
            text += "\nskipped: " + "; ".join(f"{p} ({r})" for p, r in self.skipped_first)
        return text


# -- 1. listing --------------------------------------------------------------------------
def _image_extensions() -> set[str]:
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def list_sources(src: str | os.PathLike[str]) -> tuple[str, list[str], list[tuple[str, str]]]:
    """Resolve ``src`` to ``(root, sorted relative paths, listed-but-missing skips)``.

    ``src`` is a folder (searched recursively for files with an image extension), a glob
    pattern (``photos/**/*.jpg``), a text file listing one path per line (``#`` starts a
    comment; relative paths are relative to the list file), or one image file. Names are
    as ``os`` gives them (any bytes; see :mod:`streamq.names` for how a store keeps them).
    """
    src = os.fspath(src)
    missing: list[tuple[str, str]] = []
    if os.path.isdir(src):
        root = os.path.abspath(src)
        exts = _image_extensions()
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                if os.path.splitext(name)[1].lower() in exts:
                    files.append(os.path.join(dirpath, name))
    elif os.path.isfile(src) and os.path.splitext(src)[1].lower() in _image_extensions():
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
            if os.path.isfile(p):
                files.append(p)
            else:
                missing.append((line, "listed file does not exist"))
        if not files and not missing:
            raise ConfigError(f"source list {src} names no files")
        inside = all(os.path.commonpath([base, p]) == base for p in files)
        root = base if inside or not files else os.path.commonpath([os.path.dirname(p) for p in files])
    elif _GLOB_CHARS & set(src):
        prefix = src[: min(src.index(c) for c in _GLOB_CHARS if c in src)]
        root = os.path.abspath(os.path.dirname(prefix) or ".")
        files = [os.path.abspath(p) for p in glob.glob(src, recursive=True) if os.path.isfile(p)]
        if not files:
            raise ConfigError(f"source pattern {src!r} matches no files")
    else:
        raise ConfigError(
            f"source {src} does not exist (expected a folder, a glob pattern or a text file of paths)"
        )
    rel = sorted({os.path.relpath(p, root).replace(os.sep, "/") for p in files})
    return root, rel, missing


def _label_of(root: str, rel: str) -> str:
    """The name of the image's parent folder (LFW: the person)."""
    return os.path.basename(os.path.dirname(os.path.join(root, rel)))


def _source_fingerprint(root: str, rel: Sequence[str]) -> str:
    """Hash of the name (its bytes: any name), size and mtime of every input."""
    h = hashlib.sha256(os.fsencode(root))
    for r in rel:
        try:
            st = os.stat(os.path.join(root, r))
            h.update(os.fsencode(r) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(os.fsencode(r) + b"\0missing\n")
    return h.hexdigest()[:16]


# -- 2. header scan ------------------------------------------------------------------------
def _scan_batch(args: tuple[Any, ...]) -> list[tuple[int, int, str, bool] | str]:
    """Headers of files given by their stored names (see :mod:`streamq.names`), read where
    they live (a folder, or a URL: :mod:`streamq.ingest.sources`). ``args``: source, names,
    max_pixels, retry, sizes and optionally ``ingest.large``: with ``bands``, a TIFF over
    max_pixels gets its header for reading in bands (:mod:`streamq.ingest.bands`)."""
    source, rels, max_pixels, retry, sizes, *rest = args
    found = list(source.headers(rels, sizes, max_pixels, retry))
    if rest and rest[0] == "bands":
        for i, h in enumerate(found):
            if isinstance(h, str) and bands.over_limit(h):
                found[i] = retrying(functools.partial(_band_header, source, rels[i], h),
                                    "read", source.path(rels[i]), retry)
    return [(h.height, h.width, h.mode, h.alpha) if isinstance(h, Header) else h
            for h in found]


def _band_header(source: SourceRoot, rel: str, reason: str) -> Header | str:
    with bands.opened(source, rel) as src:
        return bands.band_header(src, reason)


# -- 3. planning ---------------------------------------------------------------------------
def plan_tasks(offsets: np.ndarray, sizes: np.ndarray, n_pixels: int, chunk: int,
               max_chunks: int = MAX_CHUNKS_PER_TASK) -> tuple[np.ndarray, np.ndarray]:
    """Group chunks into write tasks; return ``(chunk_start, chunk_stop)`` per task.

    A boundary between chunks becomes a task boundary when the image straddling it (if
    any) is at most 1/8 of a chunk, or when the task already has ``max_chunks`` chunks.
    """
    n_chunks = -(-n_pixels // chunk) if n_pixels else 0
    if n_chunks == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bounds = np.arange(1, n_chunks, dtype=np.int64) * chunk
    idx = np.searchsorted(offsets, bounds, side="right") - 1
    ends = offsets + sizes
    straddle = np.where((idx >= 0) & (offsets[np.maximum(idx, 0)] < bounds)
                        & (ends[np.maximum(idx, 0)] > bounds), sizes[np.maximum(idx, 0)], 0)
    starts, stops = [0], []
    for b, cost in zip(range(1, n_chunks), straddle, strict=True):
        if b - starts[-1] >= max_chunks or cost <= chunk // 8:
            stops.append(b)
            starts.append(b)
    stops.append(n_chunks)
    return np.asarray(starts, np.int64), np.asarray(stops, np.int64)


# -- 4. the write task (runs on a worker) ------------------------------------------------------
def _colors_checksum(codes: np.ndarray, counts: np.ndarray) -> int:
    return checksum(np.stack([np.asarray(codes, np.int64), np.asarray(counts, np.int64)]))


def _verify_task(args: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The colour counts of a task recorded by an earlier run when its pixels and counts are
    still what its record says (checksums, plan), else None: the task runs again."""
    record, a, b = args["expect"], args["px_start"], args["px_stop"]
    if record.get("plan") != args.get("plan"):
        return None
    store, retry = args["store"], args.get("retry")
    try:
        if "crc32" in record:
            pixels = retrying(lambda: np.asarray(open_array(store, PIXELS)[a:b]), "read",
                              store.join(PIXELS).url, retry)
            if checksum(pixels) != record["crc32"]:
                return None
        n = int(record.get("colors", {}).get("distinct", 0))
        part = np.zeros((2, 0), np.int64)
        if n:
            part = retrying(lambda: np.asarray(open_array(store, TASK_COLORS)[args["task"], :, :n]),
                            "read", store.join(TASK_COLORS).url, retry)
        if "colors_crc32" in record and _colors_checksum(part[0], part[1]) != record["colors_crc32"]:
            return None
        if args.get("alpha"):  # the alpha rows: as recorded, or all 255 (no transparent pixel)
            alpha = retrying(lambda: np.asarray(open_array(store, ALPHA)[a:b]), "read",
                             store.join(ALPHA).url, retry)
            if checksum(alpha) != record.get("alpha_crc32", checksum(np.full(b - a, 255, np.uint8))):
                return None
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return None
    return part[0], part[1]


def _write_task(args: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray, str]:
    """Decode, write and count one task's pixels; return its record, colour counts and what
    it did (``ran``; for a task recorded by an earlier run, ``verified`` when its data
    matched its record's checksums, else ``redone``).

    Transient faults of reads and writes are retried (:func:`streamq.faults.retrying`); one
    that lasts fails the task, and so the stage, before its record is written."""
    a, b = args["px_start"], args["px_stop"]
    retry = args.get("retry")
    status = "ran"
    if args.get("expect") is not None:
        found = _verify_task(args)
        if found is not None:
            return args["expect"], found[0], found[1], "verified"
        status = "redone"
    buf = np.zeros((b - a, 3), dtype=np.uint8)
    keep_alpha = bool(args.get("alpha"))  # the plan made the alpha array
    abuf = np.full(b - a, 255, dtype=np.uint8) if keep_alpha else None
    with_alpha: list[int] = []  # images with a transparent pixel in this task's rows
    failed: list[list[Any]] = []
    stored: list[tuple[int, int]] = []  # rows of buf holding decoded pixels
    source, background = args["source"], tuple(args["background"])
    max_pixels = args["max_pixels"]
    # an image over max_pixels is in the plan only to be read in bands (streamq.ingest.bands)
    decoded = source.pixels([item[1] for item in args["images"] if item[3] * item[4] <= max_pixels],
                            max_pixels, background, retry, alpha=keep_alpha)
    for image_id, rel, off, h, w in args["images"]:
        if h * w > max_pixels:
            lo, hi = max(off, a), min(off + h * w, b)
            banded = retrying(functools.partial(_fill_bands, args, buf, abuf, rel, off, w, lo, hi),
                              "read", source.path(rel), retry)
            if isinstance(banded, str):  # any task meeting the failure records it
                failed.append([int(image_id), banded])
                continue
            stored.append((lo - a, hi - a))
            if banded:
                with_alpha.append(int(image_id))
            continue
        got = next(decoded)
        rgb, alpha = got if isinstance(got, tuple) else (got, None)
        if isinstance(rgb, np.ndarray) and rgb.shape != (h, w, 3):
            rgb = f"decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from header {w}x{h}"
        if isinstance(rgb, str):
            if a <= off < b:  # the task holding the image's first pixel records it
                failed.append([int(image_id), rgb])
            continue
        flat = rgb.reshape(-1, 3)
        lo, hi = max(off, a), min(off + h * w, b)
        buf[lo - a: hi - a] = flat[lo - off: hi - off]
        stored.append((lo - a, hi - a))
        if alpha is not None and abuf is not None:
            part = alpha.reshape(-1)[lo - off: hi - off]
            abuf[lo - a: hi - a] = part
            if len(part) and int(part.min()) < 255:
                with_alpha.append(int(image_id))
    return (*store_task_pixels(args, buf, stored, failed, abuf, with_alpha), status)


def _fill_bands(args: dict[str, Any], buf: np.ndarray, abuf: np.ndarray | None, rel: str,
                off: int, w: int, lo: int, hi: int) -> bool | str:
    """Pixels ``[lo, hi)`` of an image read in bands (:mod:`streamq.ingest.bands`) into the task's
    buffers; return whether a stored alpha is below 255 there, or the reason it failed."""
    a = args["px_start"]
    transparent = False
    try:
        with bands.opened(args["source"], rel) as src:
            for top, rgb, alpha in bands.read_rows(src, (lo - off) // w, -(-(hi - off) // w),
                                                   abuf is not None, tuple(args["background"])):
                start = off + top * w  # the pixel index of the band's first pixel
                p, q = max(lo, start), min(hi, start + rgb.shape[0] * w)
                buf[p - a: q - a] = rgb.reshape(-1, 3)[p - start: q - start]
                if alpha is not None and abuf is not None:
                    part = alpha.reshape(-1)[p - start: q - start]
                    abuf[p - a: q - a] = part
                    transparent = transparent or (len(part) > 0 and int(part.min()) < 255)
    except StreamQError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"cannot read image in bands: {type(exc).__name__}: {exc}"
    return transparent


def store_task_pixels(args: dict[str, Any], buf: np.ndarray, stored: list[tuple[int, int]],
                      failed: list[list[Any]], abuf: np.ndarray | None = None,
                      with_alpha: list[int] | None = None
                      ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The end of every ingest write task (files or arrays): write the task's pixels ``buf``
    (rows ``[lo, hi)`` of each of ``stored`` hold image pixels) and their alpha ``abuf`` when
    the plan made the alpha array (``with_alpha``: the images with a transparent pixel in
    these rows), then their colour counts, then the completion record naming the ``failed``
    images; return the record and counts."""
    a, b = args["px_start"], args["px_stop"]
    retry, store = args.get("retry"), args["store"]

    def write(fn: Any, name: str) -> None:
        retrying(fn, "write", store.join(name).url, retry, write=True)

    def write_pixels() -> None:
        # on disk before the record that vouches for it
        write_rows(store, PIXELS, open_array(store, PIXELS, mode="r+"), a, b, buf)

    write(write_pixels, PIXELS)
    if abuf is not None:  # chunks of 255 only are not stored (Zarr skips fill values)
        write(lambda: write_rows(store, ALPHA, open_array(store, ALPHA, mode="r+"), a, b, abuf),
              ALPHA)
    runs = np.asarray(stored, dtype=np.int64).reshape(-1, 2)
    codes, counts = count_colors(buf, runs[:, 0], runs[:, 1])
    write(lambda: write_task_colors(store, args["task"], codes, counts), TASK_COLORS)
    report = {"failed": failed, "pixels": int(b - a),
              "colors": {"distinct": len(codes), "pixels": int(counts.sum())},
              "crc32": checksum(buf), "colors_crc32": _colors_checksum(codes, counts)}
    if with_alpha and abuf is not None:  # only then: opaque collections' records are unchanged
        report["alpha"] = sorted(with_alpha)
        report["alpha_crc32"] = checksum(abuf)
    if args.get("plan") is not None:
        report["plan"] = args["plan"]
    # the completion record, after the data
    write(lambda: write_task_report(store, args["task"], report), TASK_REPORTS)
    return report, codes, counts


# -- the stage -------------------------------------------------------------------------------
def _settings(cfg: IngestConfig) -> dict[str, Any]:
    keep = ("chunk_pixels", "block_pixels", "codec", "level", "max_pixels", "background")
    out = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k in keep}
    if cfg.alpha != "keep":  # the default is left out: settings as before alpha was kept
        out["alpha"] = cfg.alpha
    if cfg.large != "bands":  # likewise
        out["large"] = cfg.large
    return out


def ingest(src: str | os.PathLike[str] | None, store: str | os.PathLike[str] | Location | None = None,
           *, config: StreamQConfig | dict[str, Any] | None = None, overwrite: bool = False,
           progress: bool | None = None, storage_options: dict[str, Any] | None = None,
           source_options: dict[str, Any] | None = None, **options: Any) -> IngestSummary:
    """Ingest the images under ``src`` into the store at ``store``.

    Parameters
    ----------
    src : str or path
        A folder, a glob pattern, or a text file listing paths (see :func:`list_sources`);
        or a URL read by the workers themselves: a prefix (``s3://bucket/photos/``), a glob,
        one image, or a text file listing URLs, local or at a URL (see
        :mod:`streamq.ingest.sources`). ``None`` takes ``ingest.source`` from ``config``.
    store : str or path
        Where the Zarr store is written: a local folder or a URL such as
        ``s3://bucket/faces.zarr``; ``None`` takes ``store`` from ``config``.
    config : StreamQConfig or dict, optional
        Full configuration; ``options`` override its ``ingest`` keys
        (``chunk_pixels=...``, ``codec=...``) and ``scheduler=...`` its ``dask.scheduler``.
    overwrite : bool, default=False
        Replace a store made from other inputs or settings instead of refusing.
    progress : bool, optional
        Force the progress bar on or off (default: on when stderr is a terminal).
    storage_options : dict, optional
        Options of the store's filesystem when it is a URL (``endpoint_url``, ``key``,
        ``secret``, ...); default: ``storage_options`` of ``config``.
    source_options : dict, optional
        Options of the source's filesystem when it is a URL; default: ``source_options`` of
        ``config``, else the store's storage options when the store is local or on the same
        kind of URL (see :func:`streamq.ingest.sources.source_options`).

    Returns
    -------
    IngestSummary
    """
    cfg = ingest_config(config, store, options,
                        {"ingest.source": None if src is None else os.fspath(src)})
    if cfg.ingest.source is None:
        raise ConfigError("no source given: pass SRC or set key 'ingest.source'")
    target = store if isinstance(store, Location) else cfg.store  # cfg.store: a path given
    if target is None:
        raise ConfigError("no store given: pass STORE or set key 'store'")
    loc = store_location(target, storage_options, cfg.storage_options)
    if isinstance(source_options, Mapping):
        redact.remember(source_options)
    src_options = sources.source_options(
        cfg.ingest.source, source_options if source_options is not None else cfg.source_options,
        loc.url, storage_options if storage_options is not None else cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="ingest", create=True, config=cfg.lock):
        return _ingest(loc, cfg, overwrite, progress, src_options)


def _list_inputs(src: str, options: dict[str, Any], retry: RetryConfig
                 ) -> tuple[SourceRoot, list[str], list[tuple[str, str]], str, dict[str, int]]:
    """``(where the images are, sorted names, listed-but-missing skips, fingerprint, sizes)``
    of a local source (:func:`list_sources`) or a URL source (:mod:`streamq.ingest.sources`)."""
    src = sources.local_path(src)
    listing = sources.list_urls(src, options, retry) if sources.is_remote(src) \
        else sources.local_url_list(src)
    if listing is not None:
        return (listing.source(options), listing.rel, [], sources.fingerprint(listing),
                listing.sizes)
    root, rel, missing = list_sources(src)
    return SourceRoot(stored_name(root)), rel, missing, _source_fingerprint(root, rel), {}


def _ingest(loc: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None,
            src_options: dict[str, Any] | None = None) -> IngestSummary:
    icfg = cfg.ingest
    assert icfg.source is not None, "ingest() refuses a missing source"
    timings: dict[str, float] = {}
    with timer("listing inputs", timings):
        source, rel, missing, source_fp, sizes = _list_inputs(icfg.source, src_options or {},
                                                                 cfg.retry)
        root = source_name(source.root)
    settings = _settings(icfg)
    settings_fp = fingerprint(settings)

    st = _open_or_create(loc, root, source_fp, settings_fp, overwrite)
    state = st.section("ingest")
    if state.get("state") == "complete":
        log.info("Store %s already holds this ingest; nothing to do", st.path)
        return _summary(st, "already complete", state.get("timings", {}))

    status = "resumed" if state.get("state") == "planned" else "ingested"
    retry = cfg.retry

    def write(fn: Any) -> None:  # a step of the client that writes the store: retried whole
        retrying(fn, "write", st.path, retry, write=True)

    with runner(cfg.dask) as run:
        run.check_paths(root, st.path)
        facts = run.facts()
        if state.get("state") != "planned":
            with timer("scanning headers", timings):
                headers = _scan(run, source, rel, icfg, retry, progress, sizes)
            with timer("planning", timings):
                write(lambda: _write_plan(st, root, rel, headers, missing, icfg, source_fp,
                                          settings_fp, settings))
        with timer("decoding and writing", timings):
            totals, added = _run_tasks(run, st, source, icfg, retry, progress)
    return finish_ingest(st, totals, added, status, timings, facts, write)


def ingest_config(config: StreamQConfig | dict[str, Any] | None,
                  store: str | os.PathLike[str] | Location | None, options: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> StreamQConfig:
    """The configuration of an ingest call (files or arrays): ``config`` with the keyword
    ``options`` as ``ingest`` keys (``scheduler`` as ``dask.scheduler``), ``store`` when it is
    a path or URL, and the ``extra`` keys."""
    options = dict(options)
    sched = options.pop("scheduler", None)
    return parse_config(config).replace(
        **{f"ingest.{k}": v for k, v in options.items()}, **(extra or {}),
        **{"dask.scheduler": sched,
           "store": None if store is None or isinstance(store, Location) else os.fspath(store)})


def finish_ingest(st: Store, totals: ColorTotals, added: set[int], status: str,
                  timings: dict[str, float], facts: dict[str, Any],
                  write: Callable[[Callable[[], None]], None]) -> IngestSummary:
    """The end of every ingest (files or arrays), once each write task has its record: merge
    the colour counts, consolidate the image table from the records, save the timings."""
    with timer("merging colour counts", timings):
        _merge_colors(st, totals, added, write)
    with timer("consolidating", timings):
        write(lambda: _consolidate(st, timings, facts))
    write(lambda: st.set_section("ingest", {**st.section("ingest"), "timings": timings}))
    summary = _summary(st, status, timings)
    log.info("%s", summary)
    return summary


def _open_or_create(p: Location, root: str, source_fp: str, settings_fp: str, overwrite: bool) -> Store:
    check_access(p)
    if p.exists() and is_store(p):
        # a store of an older format: replaced with --overwrite, else `streamq upgrade` first
        older = UPGRADABLE_VERSIONS if overwrite else ()
        st = Store.open(p, mode="r+", versions=(FORMAT_VERSION, *older))
        if st.section("streamq")["format_version"] != FORMAT_VERSION:
            return Store.create(p, overwrite=True)
        state = st.section("ingest")
        if state.get("state") in (None, "planning"):
            pass  # created or interrupted before its plan was saved: nothing to keep
        elif state.get("source_fingerprint") == source_fp and state.get("settings_fingerprint") == settings_fp:
            return st
        elif not overwrite:
            what = ("other inputs" if state.get("source_fingerprint") != source_fp else "other settings")
            before = state.get("root") if what == "other inputs" else state.get("settings")
            raise StoreMismatchError(
                f"{p} was ingested from {what} ({before}); pass --overwrite to replace it, "
                "or choose another store"
            )
        return Store.create(p, overwrite=True)
    return Store.create(p, overwrite=overwrite)


def _scan(run: Runner, source: SourceRoot, rel: list[str], icfg: IngestConfig,
          retry: RetryConfig, progress: bool | None, sizes: dict[str, int]) -> list[Any]:
    n = icfg.files_per_scan_task
    names = [stored_name(r) for r in rel]  # plain text to the workers, whatever the names
    batches = [(source, names[i:i + n], icfg.max_pixels, retry,
                [sizes.get(r) for r in rel[i:i + n]], icfg.large) for i in range(0, len(rel), n)]
    results: list[Any] = [None] * len(batches)

    def keep(task: Task, headers: list[Any]) -> None:
        results[task.key] = headers

    run_tasks(run, [Task(_scan_batch, b, len(b[1]), i) for i, b in enumerate(batches)],
              "scanning", "file", progress, on_result=keep)
    return [h for batch in results for h in batch]


def _write_plan(st: Store, root: str, rel: list[str], headers: list[Any],
                missing: list[tuple[str, str]], icfg: IngestConfig,
                source_fp: str, settings_fp: str, settings: dict[str, Any],
                labels: Sequence[str] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Save the plan: the image table, the skipped inputs, the pixel array and the write tasks.
    ``labels`` (one per input) replace the folder names; ``extra`` adds keys to the section."""
    ok = [i for i, h in enumerate(headers) if not isinstance(h, str)]
    skipped = [(stored_name(p), r) for p, r in missing] \
        + [(stored_name(rel[i]), h) for i, h in enumerate(headers) if isinstance(h, str)]
    heights = np.asarray([headers[i][0] for i in ok], dtype=np.int64)
    maybe_alpha = icfg.alpha == "keep" and any(headers[i][3] for i in ok)
    widths = np.asarray([headers[i][1] for i in ok], dtype=np.int64)
    sizes = heights * widths
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(ok) else np.zeros(0, np.int64)
    n_pixels = int(sizes.sum())
    st.set_section("ingest", {"state": "planning"})
    st.write_table(PLAN, {
        "path": [stored_name(rel[i]) for i in ok],
        "label": [stored_name(_label_of(root, rel[i]) if labels is None else labels[i])
                  for i in ok],
        "mode": [headers[i][2] for i in ok],
        "offset": offsets, "height": heights, "width": widths,
    })
    st.write_table(SCAN_SKIPPED, {"path": [p for p, _ in skipped],
                                            "reason": [r for _, r in skipped]})
    st.create_pixels(n_pixels, icfg.chunk_pixels, icfg.block_pixels, icfg.codec, icfg.level)
    if maybe_alpha:  # some image may be transparent: its alpha, written by the same tasks
        st.create_labels(ALPHA, "uint8", fill_value=255)
    shard, _ = st.pixel_layout()
    starts, stops = plan_tasks(offsets, sizes, n_pixels, shard)
    st.create_task_table(starts, stops)
    st.set_section("ingest", {
        "state": "planned", "root": stored_name(root), "source_fingerprint": source_fp,
        "settings_fingerprint": settings_fp, "settings": settings,
        "n_inputs": len(rel) + len(missing), "n_planned": len(ok), "n_pixels_planned": n_pixels,
        "n_tasks": len(starts), **(extra or {}),
    })
    log.info("Planned %d images (%d pixels) in %d tasks; %d inputs skipped at scan",
             len(ok), n_pixels, len(starts), len(skipped))


def _run_tasks(run: Runner, st: Store, source: SourceRoot, icfg: IngestConfig,
               retry: RetryConfig, progress: bool | None) -> tuple[ColorTotals, set[int]]:
    """Run the pending write tasks, and check those an earlier run recorded (their data
    against their records' checksums; any that differs runs again); return the sum of their
    colour counts and their ids."""
    plan = st.read_table(PLAN, ("path", "offset", "height", "width"))
    tasks = st.read_table(TASKS, ("chunk_start", "chunk_stop"))
    reports = st.task_reports()
    sec = st.section("ingest")
    # in every record: one of another plan (left by a replaced store) is never trusted
    plan_id = fingerprint([sec.get("source_fingerprint"), sec.get("settings_fingerprint")])
    totals: ColorTotals = ColorTotals()
    added: set[int] = set()
    if not len(reports):
        return totals, added
    offsets = plan["offset"]
    sizes = plan["height"] * plan["width"]
    ends = offsets + sizes
    n_pixels = int(sizes.sum())
    chunk, _ = st.pixel_layout()
    keep_alpha = st.has(ALPHA)  # made by the plan (never by a plan of an older streamq)
    log.info("%d of %d write tasks to run, %d to check", sum(1 for r in reports if not r),
             len(reports), sum(1 for r in reports if r))
    todo = []
    for t in range(len(reports)):
        a = int(tasks["chunk_start"][t]) * chunk
        b = min(int(tasks["chunk_stop"][t]) * chunk, n_pixels)
        lo = int(np.searchsorted(ends, a, side="right"))
        hi = int(np.searchsorted(offsets, b, side="left"))
        images = [(i, str(plan["path"][i]), int(offsets[i]), int(plan["height"][i]), int(plan["width"][i]))
                  for i in range(lo, hi) if sizes[i] > 0]
        args = {"store": st.location, "task": t, "source": source, "px_start": a,
                "px_stop": b, "images": images, "max_pixels": icfg.max_pixels,
                "background": list(icfg.background), "retry": retry, "plan": plan_id,
                "alpha": keep_alpha,
                "expect": json.loads(reports[t]) if reports[t] else None}
        todo.append(Task(_write_task, args, b - a, t))

    def add(task: Task, result: tuple[Any, ...]) -> bool:
        _, codes, counts, status = result  # the counts the task stored
        totals.add(codes, counts)  # summed while the other tasks run
        added.add(task.key)
        return status == "redone"

    run_tasks(run, todo, "ingesting", "px", progress, on_result=add, redone="ingest task(s)",
              logger=log)
    return totals, added


def _merge_colors(st: Store, totals: ColorTotals, added: set[int],
                  write: Callable[[Callable[[], None]], None]) -> None:
    """Sum every task's colour counts into the collection's histogram (table ``colors``),
    saved through ``write`` (which may call its function again: the sum is done once)."""
    merged = merge_task_colors(st, totals, added)
    if merged is None:
        log.info("Some ingest tasks ran before ingest counted colours: the colour histogram "
                 "will be computed when first needed")
        return
    write(lambda: save_histogram(st, *merged, computed="ingest"))


def _consolidate(st: Store, timings: dict[str, float], facts: dict[str, Any]) -> None:
    reports = st.task_reports()
    if any(not r for r in reports):
        raise StreamQError(f"{st.path}: some ingest tasks have no completion record; rerun ingest")
    failed: dict[int, str] = {}
    alpha: set[int] = set()
    for r in reports:
        rec = json.loads(r)
        for image_id, reason in rec["failed"]:
            failed[int(image_id)] = reason
        alpha.update(int(i) for i in rec.get("alpha", ()))
    plan = st.read_table(PLAN, ("path", "label", "mode", "offset", "height", "width"))
    keep = np.asarray([i not in failed for i in range(len(plan["path"]))], dtype=bool)
    st.write_table(IMAGES, {k: (v[keep] if len(v) else v) for k, v in plan.items()})
    has_alpha = np.asarray([i in alpha for i in range(len(plan["path"]))], dtype=bool)[keep]
    if has_alpha.any():
        st.write_table(IMAGES, {"has_alpha": has_alpha})  # same format version as opaque
    elif st.has(ALPHA):  # no image is transparent after all: the store of an opaque collection
        st.remove(ALPHA)
    scan = st.read_table(SCAN_SKIPPED, ("path", "reason"))
    skipped = sorted(list(zip(scan["path"], scan["reason"], strict=True))
                     + [(plan["path"][i], reason) for i, reason in failed.items()])
    st.write_table(SKIPPED, {"path": [p for p, _ in skipped], "reason": [r for _, r in skipped]})
    state = st.section("ingest")
    state.update({"state": "complete", "timings": timings, "runtime": facts,
                  "finished": timestamp()})
    st.set_section("ingest", state)


def _summary(st: Store, status: str, timings: dict[str, float]) -> IngestSummary:
    from streamq.store import Collection

    coll = Collection(st)
    return IngestSummary(
        store=st.path, n_images=len(coll), n_pixels=coll.n_pixels, n_labels=len(set(coll.labels)),
        n_skipped=len(coll.skipped), skipped_first=[(s.path, s.reason) for s in coll.skipped[:5]],
        stored_bytes=st.stored_bytes(PIXELS), status=status, timings=timings,
    )
