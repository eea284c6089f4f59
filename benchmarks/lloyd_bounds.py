"""Weighted Lloyd on a collection's colour histogram: which labelling step wins, K = 16 ... 1024.

From the same weighted k-means++ start on every distinct colour of a store (millions of
weighted 3-d points), ``--iters`` Lloyd iterations (or to zero label changes with
``--iters 0``) with:

- ``streamq bounded``: :func:`streamq.kmeans.lloyd` (exact fixed-point sums, drift-scheduled
  bounds: a point is looked at only when the centres have travelled more than its slack);
- ``streamq plain``: the same with ``bounds=False`` (every point against every centre, each
  iteration; the same centres bit for bit);
- scikit-learn ``KMeans(algorithm="lloyd")`` and ``KMeans(algorithm="elkan")`` (Elkan's K
  lower bounds per point) from the same start, ``sample_weight`` = counts, on both cores.

Ours run on one core (a start is one task; the fit runs starts side by side), scikit-learn on
both. Reported: seconds, iterations, seconds per iteration, final inertia relative to
streamq bounded, and the memory Elkan's bounds need (``n * K`` float64; skipped when that is
over ``--elkan-limit-gib``).

Run from the repository root, alone (``flock``), on the benchmark photo store::

    flock /tmp/streamq-bench.lock python benchmarks/lloyd_bounds.py STORE --k 16 64 256 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_commit, markdown_table  # noqa: E402


def histogram_points(store: str) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct colour of the store (value / 255, float64) and its pixel count."""
    import streamq
    from streamq.kmeans import codes_to_points

    streamq.collection_mse(store, np.zeros((2, 3)), "rgb")  # makes the histogram if missing
    t = streamq.open_store(store).store.read_table("colors", ("code", "count"))
    return codes_to_points(t["code"].astype(np.int64)), t["count"].astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--iters", type=int, default=60, help="iterations (0: to zero label changes)")
    ap.add_argument("--plain-up-to", type=int, default=256, help="largest K for streamq plain")
    ap.add_argument("--elkan-limit-gib", type=float, default=8.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from streamq.kmeans import initial_centers, lloyd

    x, w = histogram_points(args.store)
    print(f"{len(x):,} distinct colours, {w.sum():,.0f} pixels", flush=True)
    max_iter = args.iters or 100_000
    out = {"store": args.store, "n_points": len(x), "iters": args.iters, "git": git_commit(),
           "results": []}
    rows = []
    for k in args.k:
        start = initial_centers(x, w, k, "k-means++", np.random.default_rng([0, k]))
        lloyd(x[:5000], w[:5000], start[: min(k, 8)], max_iter=2)  # compiled before timing
        runs = {}
        t0 = time.perf_counter()
        ref = lloyd(x, w, start, tol=0, max_iter=max_iter)
        runs["streamq bounded"] = (time.perf_counter() - t0, ref.n_iter, ref.inertia)
        if k <= args.plain_up_to:
            t0 = time.perf_counter()
            r = lloyd(x, w, start, tol=0, max_iter=max_iter, bounds=False)
            runs["streamq plain"] = (time.perf_counter() - t0, r.n_iter, r.inertia)
            assert np.array_equal(r.centers, ref.centers)
        for algo in ("lloyd", "elkan"):
            if algo == "elkan" and len(x) * k * 8 / 2**30 > args.elkan_limit_gib:
                runs[f"sklearn {algo}"] = None
                continue
            km = KMeans(k, init=start, n_init=1, tol=0, max_iter=max_iter, algorithm=algo)
            with threadpool_limits(2):
                t0 = time.perf_counter()
                km.fit(x, sample_weight=w)
            runs[f"sklearn {algo}"] = (time.perf_counter() - t0, km.n_iter_, km.inertia_)
        for name, r in runs.items():
            if r is None:
                rows.append([k, name, "skipped (bounds need "
                             f"{len(x) * k * 8 / 2**30:.0f} GiB)", "", "", ""])
                continue
            rows.append([k, name, f"{r[0]:.1f}", r[1], f"{1000 * r[0] / max(r[1], 1):.1f}",
                         f"{r[2] / ref.inertia:.6f}"])
            out["results"].append({"k": k, "method": name, "seconds": r[0], "iterations": r[1],
                                   "inertia": r[2]})
            print(rows[-1], flush=True)
    print(markdown_table(["K", "method", "seconds", "iterations", "ms / iteration",
                          "inertia / streamq bounded"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
