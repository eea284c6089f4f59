"""The end of an ingest, once every write task has its record, and what it did.

The colour counts of the tasks are summed into the collection's histogram (table
``colors``); the records are consolidated into the final image table and skipped list (an
image with a transparent pixel flagged in ``images/has_alpha``; a collection without one
loses the ``alpha`` array, and is stored byte for byte as when every image was composited on
the background); the timings are saved; :class:`IngestSummary` says what the run did. File
and array ingests end the same way (:func:`finish_ingest`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.console import timer
from streamq.errors import StreamQError
from streamq.kmeans.histogram import ColorTotals
from streamq.store import ALPHA, IMAGES, PIXELS, PLAN, SCAN_SKIPPED, SKIPPED, Store
from streamq.store.histogram import merge_task_colors, save_histogram

__all__ = ["IngestSummary", "finish_ingest", "ingest_summary"]

log = logging.getLogger(__name__)


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
    summary = ingest_summary(st, status, timings)
    log.info("%s", summary)
    return summary


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


def ingest_summary(st: Store, status: str, timings: dict[str, float]) -> IngestSummary:
    """What :func:`finish_ingest` returns for the store ``st``, with ``status`` and ``timings``."""
    from streamq.store import Collection

    coll = Collection(st)
    return IngestSummary(
        store=st.path, n_images=len(coll), n_pixels=coll.n_pixels, n_labels=len(set(coll.labels)),
        n_skipped=len(coll.skipped), skipped_first=[(s.path, s.reason) for s in coll.skipped[:5]],
        stored_bytes=st.stored_bytes(PIXELS), status=status, timings=timings,
    )
