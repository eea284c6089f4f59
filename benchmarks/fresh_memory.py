"""What touching memory costs on this machine, right after it was freed and a while later.

An array of ``--mb`` MB is made and freed, then, after a gap of 0 to a few seconds, a new
one of the same size is made and written once; the time of that write is the cost of
faulting its pages in. A virtual machine that hands the memory its guest frees back to the
host (free page reporting) makes the later writes much slower: the fit's arrays are made
with that in mind (``streamq.kmeans.filtering.CellPoints``). Run::

    flock /tmp/streamq-bench.lock python benchmarks/fresh_memory.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def touch_after(gap: float, n: int) -> float:
    """Seconds to write a new ``n``-byte array ``gap`` seconds after one was freed."""
    a = np.ones(n, np.uint8)
    del a
    time.sleep(gap)
    t = time.perf_counter()
    b = np.empty(n, np.uint8)
    b[::4096] = 1  # one byte a page: the faults, not the writing
    dt = time.perf_counter() - t
    del b
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=56, help="array size in MB (default 56: a "
                    "(2.3 M, 3) float64 array, the photo collection's colours)")
    ap.add_argument("--gaps", type=float, nargs="+", default=[0, 0.5, 1, 2, 4],
                    help="seconds between the free and the next array (default 0 0.5 1 2 4)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, gaps interleaved (default 5)")
    args = ap.parse_args()
    n = args.mb * 10**6
    times: dict[float, list[float]] = {g: [] for g in args.gaps}
    for _ in range(args.rounds):
        for g in args.gaps:
            times[g].append(touch_after(g, n))
    print(f"| gap after the free | {args.mb} MB touched, ms (median) | every round |")
    print("|---|---|---|")
    for g, ts in times.items():
        print(f"| {g:g} s | {1e3 * float(np.median(ts)):.1f} | "
              f"{', '.join(f'{1e3 * t:.1f}' for t in ts)} |")
    print(json.dumps({str(g): ts for g, ts in times.items()}))


if __name__ == "__main__":
    main()
