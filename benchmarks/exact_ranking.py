"""How the exact phase ranks its starts, checked against ranking them after a full run.

On an ingested store with a colour histogram (e.g. the photo store of
``benchmarks/exact_fit.py``), for each K of ``--k`` and each seed of ``--seeds``, as
:mod:`streamq.fit.lloyd` does it but in one process:

1. **The race**: ``--starts`` k-means++ starts on the coarse grid, run to a fixed point
   (``tol=0``) and, from the same starts, until their centres settle (``RACE_TOL``, what the
   fit does): the time of each (one core) and the two starts each keeps (``FINISHERS``);
2. **The finer grid** (K up to ``FINE_MAX_K``, when the histogram has that grid): the two
   starts the fit keeps, taken to a fixed point on the coarse grid, then on the finer grid,
   then on every colour: the start the finer grid ranks first against the one with the
   lower inertia on every colour (the fit finishes only the first).

Run from the repository root, alone (``flock``)::

    python benchmarks/exact_ranking.py /tmp/streamq-bench/ps.zarr --k 16 32 64 256 --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamq.fit import lloyd
from streamq.kmeans import converge, initial_centers
from streamq.store import store_location


def ranking(p: dict, layouts: dict, k: int, seed: int, n_starts: int, threads: int) -> None:
    inits = [initial_centers(p["gx"], p["gw"], k, "k-means++",
                             np.random.default_rng([seed, 1000 + j]), layouts["gx"], None)
             for j in range(n_starts)]
    race = {}
    for tol in (0.0, lloyd.RACE_TOL):
        t = time.perf_counter()
        runs = [converge(p["gx"], p["gw"], s, layout=layouts["gx"], tol=tol, max_iter=1000)
                for s in inits]
        seconds = time.perf_counter() - t
        kept = sorted(range(n_starts), key=lambda j: (runs[j].inertia, j))[:lloyd.FINISHERS]
        race[tol] = (seconds, sum(r.n_iter for r in runs), kept, runs)
    (t0, it0, kept0, _), (t1, it1, kept1, runs) = race[0.0], race[lloyd.RACE_TOL]
    print(f"K={k} seed={seed}: race to a fixed point {t0:.2f} s ({it0} iterations), keeps "
          f"{sorted(kept0)}; until settled {t1:.2f} s ({it1}, {t1 / t0 - 1:+.0%}), keeps "
          f"{sorted(kept1)}{'' if sorted(kept0) == sorted(kept1) else '  (differs)'}",
          flush=True)
    if "fx" not in p or k > lloyd.FINE_MAX_K:
        return
    rows = []
    for j in sorted(kept1):
        grid = converge(p["gx"], p["gw"], runs[j].centers, layout=layouts["gx"], tol=0,
                        max_iter=1000, start_iter=runs[j].n_iter, n_threads=threads)
        fine = converge(p["fx"], p["fw"], grid.centers, layout=layouts["fx"], tol=0,
                        max_iter=1000, n_threads=threads)
        full = converge(p["x"], p["w"], fine.centers, layout=layouts["x"], tol=0, max_iter=1000,
                        n_threads=threads)
        rows.append((j, fine.inertia, full.inertia))
    by_fine = min(rows, key=lambda r: (r[1], r[0]))
    by_full = min(rows, key=lambda r: (r[2], r[0]))
    apart = max(r[2] for r in rows) / min(r[2] for r in rows) - 1
    print(f"  finer grid ranks first start {by_fine[0]}, every colour start {by_full[0]}"
          f"{'' if by_fine[0] == by_full[0] else '  (differs)'}; finished inertias "
          f"{apart:.2%} apart", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--starts", type=int, default=16, help="k-means++ starts raced (n_init)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the finishing runs")
    args = ap.parse_args()
    p = lloyd._worker_points(store_location(args.store, None, None), "bench", "rgb")
    layouts = {w: lloyd._layout(p, w) for w in ("gx", "fx", "x") if w in p}
    for k in args.k:
        for seed in args.seeds:
            ranking(p, layouts, k, seed, args.starts, args.threads)


if __name__ == "__main__":
    main()
