"""Local shard files read and written directly (``streamq.store.shards``) against Zarr.

On an ingested store, in one process, alternating:

- **64 block reads**: 64 random blocks (inner chunks) of ``pixels``, by
  :class:`streamq.store.shards.LocalShards` and by Zarr (``arr[lo:hi]``), the same blocks;
- **one draw**: :func:`streamq.batches.draw_pixels` of 8 batches of 65,536 pixels from 64
  blocks (one sampling task of the default fit), with the direct reader and with Zarr;
- **one shard written**: a shard of the store's pixels written to a new array of the same
  layout in a temporary folder, by :meth:`LocalShards.write` and by Zarr (every chunk
  written, as the tasks' writer does).

Every result is checked equal between the two (the written files byte for byte). Medians of ``--repeats`` (distinct blocks and
draws each round). The store's pixel files are read once first, so both readers find them in
the page cache (as a fit right after ingest, or a second fit, does): from a cold cache the
disk's reads dominate either reader. Run from the repository root::

    flock /tmp/streamq-bench.lock python benchmarks/shard_io.py /tmp/streamq-bench/ps.zarr
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median  # noqa: E402

import streamq  # noqa: E402
from streamq import batches  # noqa: E402
from streamq.batches import PixelSource, draw_pixels  # noqa: E402
from streamq.fs import location  # noqa: E402
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
    reader = LocalShards.of(source.store, source.array, arr)
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
    times.update(_writes(arr, min(args.repeats, int(arr.shape[0]) // int(arr.shards[0]))))
    rows = []
    for what in ("reads", "draw", "write"):
        d, z = median(times[f"{what} direct"]), median(times[f"{what} zarr"])
        label = {"reads": f"{args.reads} block reads",
                 "draw": f"one draw (8 x 65,536 pixels from {args.reads} blocks)",
                 "write": f"one shard written ({int(arr.shards[0]):,} pixels)"}[what]
        rows.append([label, f"{z * 1e3:.1f}", f"{d * 1e3:.1f}", f"{d / z:.2f}x"])
    print(markdown_table(["what", "Zarr ms", "direct ms", "direct / Zarr"], rows))


def _writes(src: Any, n: int) -> dict[str, list[float]]:
    """Time writing shards 0..n-1 of ``src`` to two new arrays of its layout, each way."""
    import tempfile

    import zarr

    from streamq.store.arrays import every_chunk

    shard = int(src.shards[0])
    out: dict[str, list[float]] = {"write direct": [], "write zarr": []}
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        made = {}
        for name in ("direct", "zarr"):
            zarr.create_array(f"{d}/{name}", shape=(n * shard, 3), shards=(shard, 3),
                              chunks=src.chunks, dtype=src.dtype, fill_value=0,
                              compressors=src.compressors)
            made[name] = zarr.open_array(f"{d}/{name}", mode="r+")
        shards = LocalShards.of(location(d), "direct", made["direct"])
        assert shards is not None
        for i in range(n):
            data = np.asarray(src[i * shard:(i + 1) * shard])
            t0 = time.perf_counter()
            assert shards.write(i * shard, (i + 1) * shard, data)
            t1 = time.perf_counter()
            every_chunk(made["zarr"])[i * shard:(i + 1) * shard] = data
            t2 = time.perf_counter()
            out["write direct"].append(t1 - t0)
            out["write zarr"].append(t2 - t1)
            a, b = (Path(d, name, "c", str(i), "0").read_bytes() for name in ("direct", "zarr"))
            assert a == b, f"shard {i}: the files differ"
    return out


if __name__ == "__main__":
    main()
