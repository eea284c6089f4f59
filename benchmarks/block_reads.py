"""The fit's sampler: blocks read straight from local shard files against Zarr's reads.

On an ingested store, in one process, alternating:

- **64 block reads**: 64 random blocks (inner chunks) of ``pixels``, by
  :class:`streamq.store.shards.LocalShards` and by Zarr (``arr[lo:hi]``), the same blocks;
- **one draw**: :func:`streamq.batches.draw_pixels` of 8 batches of 65,536 pixels from 64
  blocks (one sampling task of the default fit), with the direct reader and with Zarr.

Every result is checked equal between the two. Medians of ``--repeats`` (distinct blocks and
draws each round). The store's pixel files are read once first, so both readers find them in
the page cache (as a fit right after ingest, or a second fit, does): from a cold cache the
disk's reads dominate either reader. Run from the repository root::

    flock /tmp/streamq-bench.lock python benchmarks/block_reads.py /tmp/streamq-bench/ps.zarr
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median  # noqa: E402

import streamq  # noqa: E402
from streamq import batches  # noqa: E402
from streamq.batches import PixelSource, draw_pixels  # noqa: E402
from streamq.store import open_array  # noqa: E402
from streamq.store.shards import LocalShards  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--reads", type=int, default=64, help="blocks per round (and per draw)")
    args = ap.parse_args()
    coll = streamq.open_store(str(Path(args.store).resolve()))
    source = PixelSource.of_collection(coll)
    arr = open_array(source.store, source.array)
    reader = LocalShards.of(source.store.url, source.array, arr)
    if reader is None or reader.chunk != source.chunk:
        raise SystemExit(f"{args.store}: not a local sharded pixel array the direct reader reads")
    chunk, n_blocks = source.chunk, len(source.weights)
    for path in sorted((Path(source.store.url) / source.array).rglob("*")):
        if path.is_file():  # into the page cache
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass
    found = batches._block_reader
    times: dict[str, list[float]] = {"reads direct": [], "reads zarr": [], "draw direct": [],
                                     "draw zarr": []}
    rng = np.random.default_rng(0)
    draw_pixels(source, 0, 2, 0, 65536 * 8, args.reads)  # warm: imports, page cache of a few
    for r in range(args.repeats):
        blocks = rng.choice(n_blocks, args.reads, replace=False)
        t0 = time.perf_counter()
        direct = [reader.read(int(c)) for c in blocks]
        t1 = time.perf_counter()
        through = [np.asarray(arr[int(c) * chunk:(int(c) + 1) * chunk]) for c in blocks]
        t2 = time.perf_counter()
        assert all(np.array_equal(a, b) for a, b in zip(direct, through, strict=True))
        times["reads direct"].append(t1 - t0)
        times["reads zarr"].append(t2 - t1)
        index = 1 + r
        t0 = time.perf_counter()
        a = draw_pixels(source, 0, 2, index, 65536 * 8, args.reads)
        t1 = time.perf_counter()
        batches._block_reader = lambda source, arr: None  # type: ignore[assignment]
        try:
            b = draw_pixels(source, 0, 2, index, 65536 * 8, args.reads)
        finally:
            batches._block_reader = found
        t2 = time.perf_counter()
        assert np.array_equal(a, b)
        times["draw direct"].append(t1 - t0)
        times["draw zarr"].append(t2 - t1)
    rows = []
    for what in ("reads", "draw"):
        d, z = median(times[f"{what} direct"]), median(times[f"{what} zarr"])
        label = f"{args.reads} block reads" if what == "reads" else \
            f"one draw (8 x 65,536 pixels from {args.reads} blocks)"
        rows.append([label, f"{z * 1e3:.1f}", f"{d * 1e3:.1f}", f"{d / z:.2f}x"])
    print(markdown_table(["what", "Zarr ms", "direct ms", "direct / Zarr"], rows))


if __name__ == "__main__":
    main()
