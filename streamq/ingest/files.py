"""Ingest of image files: find them, decode them on Dask, write their pixels into a store.

The stage runs in four steps, each safe to interrupt; this module drives them, each step
lives in its own module:

1. **List** the inputs, sorted by relative path, so image ids are stable: a folder, a glob
   pattern or a text file of paths (:mod:`streamq.ingest.local`), or a URL prefix, glob or
   list of URLs (:mod:`streamq.ingest.urls`); with the inputs' fingerprint.
2. **Scan** every file's header in parallel (:mod:`streamq.ingest.scan`: size, mode, EXIF
   orientation): cheap, and enough to give each image its place in the flat ``pixels``
   array, and to tell whether it may hold transparent pixels.
3. **Plan** (:mod:`streamq.ingest.plan`): images are packed back to back, the array is cut
   into chunks, and consecutive chunks are grouped into write *tasks*, each owning its
   chunks outright. The plan is saved in the store.
4. **Write**: pending tasks run on the workers (:mod:`streamq.ingest.task`; the images are
   read where they live, :mod:`streamq.ingest.sources`, an image over ``max_pixels`` or a
   Zarr image in bands, :mod:`streamq.ingest.bands`); each writes its pixels, the counts of the colours of
   those pixels, and then its completion record. A rerun runs only tasks without a record,
   then (:mod:`streamq.ingest.finish`) sums the colour counts into the collection's
   histogram (table ``colors``) and consolidates the records into the final image table and
   skipped list. An image with a transparent pixel keeps its alpha (premultiplied colours in
   ``pixels``, alpha in ``alpha``, flagged in ``images/has_alpha``); a collection without
   one gets neither array, and is stored byte for byte as when every image was composited
   on the background.

File names may be any bytes: the store keeps them in a reversible text form
(:mod:`streamq.names`). A read or write that fails for a reason of the machine (EIO, EMFILE,
ENOSPC, MemoryError...) is retried and, if it lasts, stops the stage in one line; it is
never recorded as a bad input (:mod:`streamq.faults`). Arrays are ingested by
:mod:`streamq.ingest.arrays`, through the same plan, tasks and end.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamq import redact
from streamq.config import IngestConfig, RetryConfig, StreamQConfig, fingerprint
from streamq.console import timer
from streamq.errors import ConfigError
from streamq.faults import retrying
from streamq.fs import Location, check_access
from streamq.ingest import sources, urls
from streamq.ingest.finish import IngestSummary, finish_ingest, ingest_summary
from streamq.ingest.local import list_sources, source_fingerprint
from streamq.ingest.plan import (
    STREAMED,
    ingest_config,
    open_or_create,
    plan_settings,
    write_plan,
)
from streamq.ingest.scan import scan_headers
from streamq.ingest.sources import SourceRoot
from streamq.ingest.task import _write_task
from streamq.kmeans.histogram import ColorTotals
from streamq.lock import store_lock
from streamq.names import source_name, stored_name
from streamq.scheduler import Runner, runner
from streamq.stage import Task, run_tasks
from streamq.store import ALPHA, PLAN, TASKS, Store, store_location

__all__ = ["IngestSummary", "ingest", "list_sources"]

log = logging.getLogger(__name__)


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
    of a local source (:func:`list_sources`) or a URL source (:mod:`streamq.ingest.urls`)."""
    src = sources.local_path(src)
    listing = urls.list_urls(src, options, retry) if sources.is_remote(src) \
        else urls.local_url_list(src)
    if listing is not None:
        return (listing.source(options), listing.rel, [], urls.fingerprint(listing),
                listing.sizes)
    root, rel, missing = list_sources(src)
    return SourceRoot(stored_name(root)), rel, missing, source_fingerprint(root, rel), {}


def _ingest(loc: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None,
            src_options: dict[str, Any] | None = None) -> IngestSummary:
    icfg = cfg.ingest
    assert icfg.source is not None, "ingest() refuses a missing source"
    timings: dict[str, float] = {}
    with timer("listing inputs", timings):
        source, rel, missing, source_fp, sizes = _list_inputs(icfg.source, src_options or {},
                                                                 cfg.retry)
        root = source_name(source.root)
    settings = plan_settings(icfg)
    settings_fp = fingerprint(settings)

    st = open_or_create(loc, source_fp, settings_fp, overwrite)
    state = st.section("ingest")
    if state.get("state") == "complete":
        log.info("Store %s already holds this ingest; nothing to do", st.path)
        return ingest_summary(st, "already complete", state.get("timings", {}))

    status = "resumed" if state.get("state") == "planned" else "ingested"
    retry = cfg.retry

    def write(fn: Any) -> None:  # a step of the client that writes the store: retried whole
        retrying(fn, "write", st.path, retry, write=True)

    with runner(cfg.dask) as run:
        run.check_paths(root, st.path)
        facts = run.facts()
        if state.get("state") != "planned":
            with timer("scanning headers", timings):
                headers = scan_headers(run, source, rel, icfg, retry, progress, sizes)
            with timer("planning", timings):
                write(lambda: write_plan(st, root, rel, headers, missing, icfg, source_fp,
                                         settings_fp, settings))
        with timer("decoding and writing", timings):
            totals, added = _run_tasks(run, st, source, icfg, retry, progress)
    return finish_ingest(st, totals, added, status, timings, facts, write)


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
    # PNGs read in strips: the task holding one streams its shards (plan.STREAMED)
    streamed = st.read_table(PLAN, (STREAMED,))[STREAMED].astype(bool) \
        if st.has(f"{PLAN}/{STREAMED}") else np.zeros(len(offsets), bool)
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
                "alpha": keep_alpha, "shard": chunk,
                "stream": bool(streamed[lo:hi].any()),
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
