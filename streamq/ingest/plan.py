"""The plan of an ingest: what identifies it, whether a store keeps it, and writing it.

Images are packed back to back (no padding), the array is cut into chunks, and consecutive
chunks are grouped into write *tasks* (:func:`plan_tasks`). A task owns its chunks outright
and decodes every image that overlaps them, so no chunk ever has two writers; a task
boundary is put where no large image straddles it (an image that does straddle is decoded
by both tasks, each writing its own part). A PNG over ``max_pixels`` can only be read from
its first row on, so one task owns every chunk it touches (neighbours sharing its first and
last chunks included) and writes them in turn as it reads the rows. The plan is saved in the store
(:func:`write_plan`): the image table, the inputs skipped at the scan, the ``pixels`` array
and the task table. When some image may hold transparent pixels (and ``alpha`` is ``keep``),
the plan also makes the ``alpha`` array, laid out like ``pixels`` and written by the same
tasks.

A plan is identified by the fingerprint of its inputs and of its settings
(:func:`plan_settings`): a store holding the same plan is resumed, one holding another is
refused without ``overwrite`` (:func:`open_or_create`). File and array ingests share all of
this.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from streamq.config import IngestConfig, StreamQConfig, parse_config, replaced
from streamq.errors import StoreMismatchError
from streamq.fs import Location, check_access
from streamq.names import stored_name
from streamq.store import (
    ALPHA,
    FORMAT_VERSION,
    PLAN,
    SCAN_SKIPPED,
    UPGRADABLE_VERSIONS,
    Store,
    is_store,
)

__all__ = ["MAX_CHUNKS_PER_TASK", "STREAMED", "ingest_config", "open_or_create", "plan_settings", "plan_tasks",
           "write_plan"]

log = logging.getLogger(__name__)

MAX_CHUNKS_PER_TASK = 8
#: The column of the plan's image table flagging the images read in strips from their first
#: row (PNGs over max_pixels); written only when there is one.
STREAMED = "sequential"


def plan_settings(cfg: IngestConfig) -> dict[str, Any]:
    """The ingest settings that shape a plan (their fingerprint identifies it with the
    inputs'); keys at their default since before they existed are left out."""
    keep = ("chunk_pixels", "block_pixels", "codec", "level", "max_pixels", "background")
    out = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k in keep}
    if cfg.alpha != "keep":  # the default is left out: settings as before alpha was kept
        out["alpha"] = cfg.alpha
    if cfg.large != "bands":  # likewise
        out["large"] = cfg.large
    return out


def ingest_config(config: StreamQConfig | dict[str, Any] | None,
                  store: str | os.PathLike[str] | Location | None, options: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> StreamQConfig:
    """The configuration of an ingest call (files or arrays): ``config`` with the keyword
    ``options`` as ``ingest`` keys (``scheduler`` as ``dask.scheduler``), ``store`` when it is
    a path or URL, and the ``extra`` keys."""
    options = dict(options)
    sched = options.pop("scheduler", None)
    return replaced(parse_config(config), {
        **{f"ingest.{k}": v for k, v in options.items()}, **(extra or {}),
        "dask.scheduler": sched,
        "store": None if store is None or isinstance(store, Location) else os.fspath(store)})


def open_or_create(p: Location, source_fp: str, settings_fp: str, overwrite: bool) -> Store:
    """The store at ``p`` to ingest into: the one there when it holds this plan (or no plan
    yet), a new one when there is none or ``overwrite`` replaces it (another plan, an older
    format), else a one-line error."""
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


def sequential_spans(offsets: np.ndarray, sizes: np.ndarray, sequential: np.ndarray,
                     chunk: int) -> list[tuple[int, int]]:
    """The chunk ranges ``[first, stop)`` that one task each must own whole: those of the
    ``sequential`` images (a PNG read in strips), overlapping ranges merged."""
    spans: list[tuple[int, int]] = []
    for i in np.flatnonzero(np.asarray(sequential, bool) & (np.asarray(sizes) > 0)):
        lo, hi = int(offsets[i]) // chunk, -(-(int(offsets[i]) + int(sizes[i])) // chunk)
        if spans and lo < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
        else:
            spans.append((lo, hi))
    return spans


def plan_tasks(offsets: np.ndarray, sizes: np.ndarray, n_pixels: int, chunk: int,
               max_chunks: int = MAX_CHUNKS_PER_TASK, sequential: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Group chunks into write tasks; return ``(chunk_start, chunk_stop)`` per task.

    A boundary between chunks becomes a task boundary when the image straddling it (if
    any) is at most 1/8 of a chunk, or when the task already has ``max_chunks`` chunks.
    The chunks an image of ``sequential`` touches (a PNG read in strips: its rows only in
    order, from the first) are one task of their own, whatever their number
    (:func:`sequential_spans`): no boundary inside, one at each end.
    """
    n_chunks = -(-n_pixels // chunk) if n_pixels else 0
    if n_chunks == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    inside = np.zeros(n_chunks + 1, bool)  # chunk boundaries no task may have
    forced = np.zeros(n_chunks + 1, bool)  # and those every plan has
    if sequential is not None:
        for lo, hi in sequential_spans(offsets, sizes, sequential, chunk):
            inside[lo + 1:hi] = True
            forced[[lo, hi]] = True
    bounds = np.arange(1, n_chunks, dtype=np.int64) * chunk
    idx = np.searchsorted(offsets, bounds, side="right") - 1
    ends = offsets + sizes
    straddle = np.where((idx >= 0) & (offsets[np.maximum(idx, 0)] < bounds)
                        & (ends[np.maximum(idx, 0)] > bounds), sizes[np.maximum(idx, 0)], 0)
    starts, stops = [0], []
    for b, cost in zip(range(1, n_chunks), straddle, strict=True):
        if inside[b]:
            continue
        if forced[b] or b - starts[-1] >= max_chunks or cost <= chunk // 8:
            stops.append(b)
            starts.append(b)
    stops.append(n_chunks)
    return np.asarray(starts, np.int64), np.asarray(stops, np.int64)


def _label_of(root: str, rel: str) -> str:
    """The name of the image's parent folder (LFW: the person)."""
    return os.path.basename(os.path.dirname(os.path.join(root, rel)))


def write_plan(st: Store, root: str, rel: list[str], headers: list[Any],
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
    # a PNG read in strips (a fifth element of its header): one task owns all its chunks
    sequential = np.asarray([len(headers[i]) > 4 and bool(headers[i][4]) for i in ok], bool)
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
        # only when some image is read in strips: other plans are as before
        **({STREAMED: sequential.astype(np.uint8)} if sequential.any() else {}),
    })
    st.write_table(SCAN_SKIPPED, {"path": [p for p, _ in skipped],
                                            "reason": [r for _, r in skipped]})
    st.create_pixels(n_pixels, icfg.chunk_pixels, icfg.block_pixels, icfg.codec, icfg.level)
    if maybe_alpha:  # some image may be transparent: its alpha, written by the same tasks
        st.create_labels(ALPHA, "uint8", fill_value=255)
    shard, _ = st.pixel_layout()
    starts, stops = plan_tasks(offsets, sizes, n_pixels, shard, sequential=sequential)
    st.create_task_table(starts, stops)
    st.set_section("ingest", {
        "state": "planned", "root": stored_name(root), "source_fingerprint": source_fp,
        "settings_fingerprint": settings_fp, "settings": settings,
        "n_inputs": len(rel) + len(missing), "n_planned": len(ok), "n_pixels_planned": n_pixels,
        "n_tasks": len(starts), **(extra or {}),
    })
    log.info("Planned %d images (%d pixels) in %d tasks; %d inputs skipped at scan",
             len(ok), n_pixels, len(starts), len(skipped))
