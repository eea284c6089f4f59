"""Reading local image files evicted from the page cache: one by one, or read ahead.

Ingest reads every input twice on a worker: its header (the scan, in tasks of 512 files) and
then the whole file (the write tasks, ~64 photos each). A file not in the page cache waits
for the disk once per read, one after the other. ``streamq.ingest.sources`` asks the kernel
to read a task's files ahead (``posix_fadvise(POSIX_FADV_WILLNEED)``: the headers' first
block, the next 64 MiB of whole files), so the waits overlap.

Side by side, in one process, on the same files evicted before every pass (and alternating):

- **headers**: ``streamq.decode.read_header`` on each file in turn (what the scan did before)
  against ``SourceRoot.headers`` on batches of 512 (the scan now);
- **decode**: ``streamq.decode.decode_rgb`` on each file in turn against
  ``SourceRoot.pixels`` on groups of 64 (the write task's reads now).

Run::

    flock /tmp/streamq-bench.lock python benchmarks/read_ahead.py \\
        --src /tmp/streamq-bench/photoset-13233-250-s0 --files 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from common import evict, git_commit, median, write_results  # noqa: E402

from streamq.decode import decode_rgb, read_header  # noqa: E402
from streamq.ingest.local import list_sources  # noqa: E402
from streamq.ingest.sources import SourceRoot  # noqa: E402

MAX_PIXELS = 10**9
HEADER_BATCH = 512  # files per scan task (ingest.files_per_scan_task's default)
DECODE_GROUP = 64  # about the photos of one 4 Mi-pixel write task


def passes(src: SourceRoot, rel: list[str], paths: list[str]) -> dict[str, Callable[[], int]]:
    def headers_plain() -> int:
        return sum(not isinstance(read_header(p, MAX_PIXELS), str) for p in paths)

    def headers_ahead() -> int:
        n = 0
        for i in range(0, len(rel), HEADER_BATCH):
            part = rel[i:i + HEADER_BATCH]
            n += sum(not isinstance(h, str)
                     for h in src.headers(part, [None] * len(part), MAX_PIXELS, None))
        return n

    def decode_plain() -> int:
        return sum(not isinstance(decode_rgb(p, MAX_PIXELS, (0, 0, 0)), str) for p in paths)

    def decode_ahead() -> int:
        n = 0
        for i in range(0, len(rel), DECODE_GROUP):
            n += sum(not isinstance(im, str)
                     for im in src.pixels(rel[i:i + DECODE_GROUP], MAX_PIXELS, (0, 0, 0), None))
        return n

    return {"headers one by one": headers_plain, "headers read ahead": headers_ahead,
            "decode one by one": decode_plain, "decode read ahead": decode_ahead}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/tmp/streamq-bench/photoset-13233-250-s0"),
                    help="a folder of images (default: the benchmark photo collection)")
    ap.add_argument("--files", type=int, default=4000, help="first N files (default 4000)")
    ap.add_argument("--repeats", type=int, default=5, help="rounds, passes alternating")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    root, rel, _ = list_sources(args.src)
    rel = rel[:args.files]
    paths = [os.path.join(root, r) for r in rel]
    src = SourceRoot(root)
    runs = passes(src, rel, paths)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            os.sync()
            evict(paths)
            t = time.perf_counter()
            n = fn()
            times[name].append(time.perf_counter() - t)
            assert n == len(paths), f"{name}: {n} of {len(paths)} files read"
    med = {k: median(v) for k, v in times.items()}
    print(f"{len(paths)} files of {args.src} ({sum(os.path.getsize(p) for p in paths) / 1e6:.0f}"
          f" MB), evicted before every pass; median of {args.repeats}")
    print("| pass | s (median) | every round | µs per file |")
    print("|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in v)} | "
              f"{1e6 * med[k] / len(paths):.0f} |")
    ratios = {"headers": med["headers read ahead"] / med["headers one by one"],
              "decode": med["decode read ahead"] / med["decode one by one"]}
    print(f"read ahead ÷ one by one: headers {ratios['headers']:.2f}×, "
          f"decode {ratios['decode']:.2f}×")
    write_results(args.json, {"command": " ".join(sys.argv), "git": git_commit(),
                              "files": len(paths), "times_s": times, "median_s": med,
                              "ratio": ratios})


if __name__ == "__main__":
    main()
