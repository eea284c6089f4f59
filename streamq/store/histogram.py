"""The collection's colour histogram, kept in the store as table ``colors``.

An RGB8 collection of any size has at most ``2**24`` distinct colours, so every exact
computation over all its pixels (Lloyd k-means, the exact MSE of a palette) works on its
histogram: the distinct 24-bit codes ``r << 16 | g << 8 | b`` and their counts.

Ingest writes it: every write task counts the colours of the pixels it stores
(:func:`streamq.kmeans.histogram.count_colors`) into its row of ``ingest/colors`` before
its completion record, and the rows are summed into ``colors/{code,count}`` at the
end (:func:`merge_task_colors`, :func:`save_histogram`). For a store ingested before ingest
counted colours, :func:`histogram` makes it once, in one Dask pass over the pixels.

A collection with alpha also has an RGBA histogram, table ``colors_rgba``: every distinct
premultiplied RGBA colour and its count (:func:`rgba_histogram`, made in one pass at its
first fit by the same counting tasks, reading ``alpha`` beside ``pixels``).

Section ``colors`` (and ``colors_rgba``) says whose data the table describes::

    {"state": "complete", "data": [source_fingerprint, settings_fingerprint],
     "n_distinct": 1234567, "n_pixels": 827062500, "computed": "ingest"}
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq.batches import PixelSource
from streamq.errors import StreamQError
from streamq.fs import Location
from streamq.kmeans.histogram import ColorTotals, count_colors
from streamq.rgba import count_rgba, merge_counts
from streamq.stage import Task, run_tasks
from streamq.store.arrays import COLOR_CHUNK, count_compressors, open_array
from streamq.store.images import Collection
from streamq.store.layout import Store
from streamq.store.names import ALPHA, COLORS, COLORS_RGBA, TASK_COLORS

__all__ = ["histogram", "ingest_data", "load_histogram", "merge_task_colors", "rgba_histogram",
           "save_histogram"]

if TYPE_CHECKING:
    from streamq.scheduler import Runner

log = logging.getLogger(__name__)

PIXELS_PER_TASK = 8 * 2**20  # pixels read and counted by one task of a counting pass


def ingest_data(st: Store) -> list[Any]:
    """What the histogram describes: the store's ingest (inputs and settings)."""
    ingest = st.section("ingest")
    return [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")]


def load_histogram(store: Store | Location | str) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored ``(codes, counts)`` (int64, codes sorted), or None when the store has no
    complete histogram of its current ingest."""
    st = store if isinstance(store, Store) else Store.open(store)
    sec = st.section(COLORS)
    if sec.get("state") != "complete" or sec.get("data") != ingest_data(st):
        return None
    t = st.read_table(COLORS, ("code", "count"))
    return t["code"].astype(np.int64), t["count"].astype(np.int64)


def save_histogram(st: Store, codes: np.ndarray, counts: np.ndarray, computed: str) -> None:
    """Store ``(codes, counts)`` as the histogram of the store's ingest; ``computed`` says
    how it was made (``"ingest"`` or ``"pass"``)."""
    st.set_section(COLORS, {})  # a kill while the table is rewritten leaves no complete one
    st.write_table(COLORS, {"code": np.asarray(codes, np.int64), "count": np.asarray(counts, np.int64)},
                   COLOR_CHUNK, count_compressors())
    st.set_section(COLORS, {"state": "complete", "data": ingest_data(st), "n_distinct": len(codes),
                            "n_pixels": int(np.sum(counts)), "computed": computed})


def merge_task_colors(st: Store, totals: ColorTotals | None = None,
                      added: set[int] | frozenset[int] = frozenset()
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Sum the colour counts of every ingest write task (the rows of ``ingest/colors``).

    ``totals`` may already hold the parts of the tasks in ``added``. Returns None when some
    task has no part (it finished before ingest counted colours, or the parts were deleted).
    """
    reports = st.task_reports()
    if any(not r for r in reports):
        raise StreamQError(f"{st.path}: some ingest tasks have no completion record; rerun ingest")
    records = [json.loads(r) for r in reports]
    if not st.has(TASK_COLORS) or any("colors" not in r for r in records):
        return None
    totals = totals if totals is not None else ColorTotals()
    for t, record in enumerate(records):
        if t not in added:
            totals.add(*task_part(st, t, record))
    return totals.result()


def task_part(st: Store, task: int, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Task ``task``'s colour counts, checked against its completion record."""
    expected = record["colors"]
    codes, counts = st.task_colors(task, expected["distinct"])
    if len(codes) != expected["distinct"] or int(counts.sum()) != expected["pixels"]:
        raise StreamQError(
            f"{st.path}: the colour counts of ingest task {task} ({len(codes)} colours, "
            f"{int(counts.sum())} pixels) differ from its completion record ({expected}); "
            "rerun ingest with --overwrite")
    return codes, counts


# -- counting every pixel in one Dask pass --------------------------------------------------------
def _count_task(args: tuple[PixelSource, int, int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Colour counts of the valid pixels of chunks ``[c0, c1)`` of the source: their 24-bit
    RGB codes, or with ``rgba`` their premultiplied RGBA codes (``alpha`` read beside)."""
    source, c0, c1, rgba = args
    a, b = source.chunk_runs(c0, c1)
    if not len(a):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo = c0 * source.chunk
    data = np.asarray(open_array(source.store, source.array)[lo:lo + int(b[-1])])
    if not rgba:
        return count_colors(data, a, b)
    alpha = np.asarray(open_array(source.store, ALPHA)[lo:lo + int(b[-1])])
    keep = np.concatenate([np.arange(s, e) for s, e in zip(a, b, strict=True)])
    return count_rgba(data[keep], alpha[keep])


def _count_tasks(source: PixelSource, rgba: bool) -> list[Task]:
    """The tasks of one counting pass over ``source``: about :data:`PIXELS_PER_TASK` pixels
    each, weighted by their chunks."""
    n_chunks = len(source.weights)
    step = max(1, PIXELS_PER_TASK // source.chunk)
    spans = [(c, min(c + step, n_chunks)) for c in range(0, n_chunks, step)]
    return [Task(_count_task, (source, c0, c1, rgba), c1 - c0) for c0, c1 in spans]


def _one_pass(run: Any, source: PixelSource, progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
    totals = ColorTotals()
    run_tasks(run, _count_tasks(source, rgba=False), "histogram", "chunk", progress,
              on_result=lambda task, counted: totals.add(*counted))
    return totals.result()


def histogram(run: Any, st: Store, source: PixelSource | None = None,
              progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The collection's distinct colours and their counts (int64, codes sorted).

    The stored table when it is complete; else the sum of ingest's per-task counts when
    every task wrote them; else one Dask pass over ``source`` (default:
    :meth:`PixelSource.of_collection`; ``run``: a :class:`streamq.scheduler.Runner`). Whatever was
    computed is stored, so it happens once.
    """
    stored = load_histogram(st)
    if stored is not None:
        return stored
    merged = merge_task_colors(st)
    if merged is not None:
        codes, counts = merged
        computed = "ingest"
    else:
        log.info("%s: counting the colours of every pixel (a store ingested before ingest "
                 "counted them); done once", st.path)
        source = source if source is not None else PixelSource.of_collection(Collection(st))
        codes, counts = _one_pass(run, source, progress)
        computed = "pass"
    save_histogram(st, codes, counts, computed)
    return codes, counts


# -- the RGBA histogram of a collection with alpha -------------------------------------------------
def rgba_histogram(run: Runner, st: Store, coll: Collection,
                   progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct premultiplied RGBA colour of the collection (codes of
    :func:`streamq.rgba.rgba_codes`, sorted) and its pixel count: the stored table
    ``colors_rgba`` when it describes this ingest, else one Dask pass over the pixels and
    their alpha, then stored (the fit of a collection with alpha, :mod:`streamq.fit.alpha`)."""
    sec = st.section(COLORS_RGBA)
    if sec.get("state") == "complete" and sec.get("data") == ingest_data(st):
        t = st.read_table(COLORS_RGBA, ("code", "count"))
        return t["code"].astype(np.int64), t["count"].astype(np.int64)
    parts = run_tasks(run, _count_tasks(PixelSource.of_collection(coll), rgba=True),
                      "RGBA histogram", "chunk", progress)
    codes, counts = merge_counts(parts)
    st.set_section(COLORS_RGBA, {"state": "writing"})
    st.write_table(COLORS_RGBA, {"code": codes, "count": counts}, chunk=COLOR_CHUNK,
                   codecs=count_compressors())
    st.set_section(COLORS_RGBA, {"state": "complete", "data": ingest_data(st),
                                 "n_distinct": len(codes), "n_pixels": int(counts.sum()),
                                 "computed": "pass"})
    return codes, counts
