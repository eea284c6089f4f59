"""The exact phase of a fit, part by part, in one process: one core's time of each part.

On an ingested store with a colour histogram (e.g. the photo store of
``benchmarks/exact_fit.py``), the parts that :mod:`streamq.fit.lloyd`'s tasks run: reading
the histogram and building its grids (what each worker does once), the race of ``--starts``
k-means++ starts on the coarse grid until they settle (``RACE_TOL``; k-means++ and Lloyd
timed apart), then the two best finished as the finishers are (to the coarse grid's fixed
point, the finer grid for K <= ``FINE_MAX_K``, then every colour; the fit finishes on every
colour only the one the finer grid ranks first, when it has one; ``--threads N``: on N threads, as the fit's finishing task runs them on every core of
its worker, with the same result). The tasks run the same calls spread over the workers;
this shows what each costs::

    python benchmarks/exact_parts.py /tmp/streamq-bench/ps.zarr --k 16 64 --threads 1 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamq.fit import lloyd
from streamq.kmeans import converge, initial_centers
from streamq.store import store_location


def parts(store: str, k: int, n_starts: int, seed: int, threads: list[int]) -> None:
    loc = store_location(store, None, None)
    t0 = time.perf_counter()
    p = lloyd._worker_points(loc, "bench", "rgb")
    t1 = time.perf_counter()
    layouts = {w: lloyd._layout(p, w) for w in ("gx", "fx", "x") if w in p}
    t2 = time.perf_counter()
    print(f"K={k}: histogram and grids {t1 - t0:.2f} s ({len(p['x']):,} colours, "
          f"{len(p['gx']):,} coarse cells, {len(p.get('fx', [])):,} finer cells); "
          f"layouts {t2 - t1:.2f} s")
    raced, t_pp, t_cv = [], 0.0, 0.0
    for j in range(n_starts):
        a = time.perf_counter()
        init = initial_centers(p["gx"], p["gw"], k, "k-means++",
                               np.random.default_rng([seed, 1000 + j]), layouts["gx"], None)
        b = time.perf_counter()
        r = converge(p["gx"], p["gw"], init, layout=layouts["gx"], tol=lloyd.RACE_TOL,
                     max_iter=1000)
        t_pp, t_cv = t_pp + b - a, t_cv + time.perf_counter() - b
        raced.append((r.inertia, j, r.centers, r.n_iter))
    print(f"  race of {n_starts} starts: k-means++ {t_pp:.2f} s, Lloyd {t_cv:.2f} s "
          f"(iterations {[r[3] for r in raced]})")
    for _, j, start, done in sorted(raced, key=lambda r: (r[0], r[1]))[:lloyd.FINISHERS]:
        for n in threads:
            a = time.perf_counter()
            centers = converge(p["gx"], p["gw"], start, layout=layouts["gx"], tol=0,
                               max_iter=1000, start_iter=done, n_threads=n).centers
            fine = None
            if "fx" in p and k <= lloyd.FINE_MAX_K:
                fine = converge(p["fx"], p["fw"], centers, layout=layouts["fx"], tol=0,
                                max_iter=1000, n_threads=n)
                centers = fine.centers
            b = time.perf_counter()
            full = converge(p["x"], p["w"], centers, layout=layouts["x"], tol=0, max_iter=1000,
                            n_threads=n)
            print(f"  finisher (start {j}, {n} thread{'s' * (n > 1)}): grid fixed point and finer "
                  f"grid {b - a:.2f} s "
                  f"({fine.n_iter if fine else 0} iterations), every colour "
                  f"{time.perf_counter() - b:.2f} s ({full.n_iter} iterations), inertia "
                  f"{full.inertia:.6g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--starts", type=int, default=16, help="k-means++ starts raced (n_init)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1],
                    help="thread counts the finishers are timed with")
    args = ap.parse_args()
    for k in args.k:
        parts(args.store, k, args.starts, args.seed, args.threads)


if __name__ == "__main__":
    main()
