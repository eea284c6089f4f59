"""The collection's colour histogram: every distinct colour and its pixel count, kept in the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from streamq.batches import PixelSource
from streamq.console import progress_bar
from streamq.store import Store, open_array

__all__ = ["histogram"]

PIXELS_PER_HIST_TASK = 32 * 2**20


def _hist_task(args: tuple[PixelSource, int, int]) -> tuple[np.ndarray, np.ndarray]:
    from streamq.kmeans.codes import rgb_to_codes

    source, c0, c1 = args
    arr = open_array(source.store, source.array)
    hist = np.zeros(1 << 24, dtype=np.int64)
    for c in range(c0, c1):
        a, b = source.chunk_runs(c)
        if not len(a):
            continue
        lo = c * source.chunk
        data = np.asarray(arr[lo:lo + int(b[-1])])
        for s, e in zip(a, b, strict=True):
            hist += np.bincount(rgb_to_codes(data[s:e]), minlength=1 << 24)
    codes = np.flatnonzero(hist)
    return codes.astype(np.int64), hist[codes]


def _collection_histogram(run: Any, source: PixelSource,
                          on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    n_blocks = len(source.weights)
    step = max(1, PIXELS_PER_HIST_TASK // source.chunk)
    groups = [(source, c, min(c + step, n_blocks)) for c in range(0, n_blocks, step)]
    futures = {run.submit(_hist_task, g): g for g in groups}
    total = np.zeros(1 << 24, dtype=np.int64)
    for fut in run.as_completed(futures):
        codes, counts = fut.result()
        total[codes] += counts
        if on_progress:
            g = futures[fut]
            on_progress(g[2] - g[1])
    codes = np.flatnonzero(total)
    return codes.astype(np.int64), total[codes]


def histogram(run: Any, st: Store, source: PixelSource, progress: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The collection's distinct colours and counts, computed once and kept in the store."""
    ingest = st.section("ingest")
    data = [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")]
    sec = st.section("colors")
    if sec.get("state") == "complete" and sec.get("data") == data:
        t = st.read_table("colors", ("code", "count"))
        return t["code"].astype(np.int64), t["count"].astype(np.int64)
    with progress_bar(len(source.weights), "histogram", "chunk", progress) as bar:
        codes, counts = _collection_histogram(run, source, bar.update)
    st.write_table("colors", {"code": codes, "count": counts})
    st.set_section("colors", {"state": "complete", "data": data, "n_distinct": len(codes)})
    return codes, counts
