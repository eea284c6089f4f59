"""The exact phase's finishers with and without the finer grid, from the same raced starts.

For each K and k-means++ start (``--starts``) on a store's colour histogram: the start runs
to a fixed point on the 64-level grid (as the race does), then

- ``direct``: Lloyd on every distinct colour to zero label changes (the finisher before the
  finer grid), and
- ``finer grid``: first to a fixed point on the 128-level grid (``FINE_BITS``), then on every
  colour (what :func:`streamq.fit.lloyd._finish_task` does when that grid holds at most
  ``FINE_SHARE`` of the colours).

Reported per run: the iterations on each grid and on every colour (exact, load-independent),
the CPU seconds of each part (one thread, as one finisher task), and the final inertia of
both. Run from the repository root on the benchmark photo store::

    python benchmarks/finish_grid.py /tmp/streamq-bench/ps.zarr --k 16 64 256 --starts 3
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
from lloyd_bounds import histogram_points  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from streamq.fit.lloyd import FINE_BITS, GRID_BITS
    from streamq.kmeans import converge, initial_centers, rgb_to_codes
    from streamq.kmeans.codes import cell_means
    from streamq.kmeans.plusplus import cell_layout

    x, w = histogram_points(args.store)
    codes = rgb_to_codes(np.round(x * 255).astype(np.uint8))
    gx, gw = cell_means(codes, w, x, GRID_BITS)
    fx, fw = cell_means(codes, w, x, FINE_BITS)
    lg, lf, lx = cell_layout(gx), cell_layout(fx), cell_layout(x)
    print(f"{len(x):,} colours; grids: {len(gx):,} cells ({GRID_BITS} bits), "
          f"{len(fx):,} ({FINE_BITS} bits, {len(fx) / len(x):.2f} of the colours)", flush=True)
    converge(gx, gw, initial_centers(gx, gw, 4, "k-means++", np.random.default_rng(0), lg),
             layout=lg, tol=0, max_iter=2)  # compiled code loaded before timing
    rows, runs = [], []
    for k in args.k:
        for s in range(args.starts):
            init = initial_centers(gx, gw, k, "k-means++", np.random.default_rng([0, 1000 + s]), lg)
            raced = converge(gx, gw, init, layout=lg, tol=0, max_iter=100_000)
            t = time.process_time()
            direct = converge(x, w, raced.centers, layout=lx, tol=0, max_iter=100_000)
            t_direct = time.process_time() - t
            t = time.process_time()
            fine = converge(fx, fw, raced.centers, layout=lf, tol=0, max_iter=100_000)
            t_fine = time.process_time() - t
            t = time.process_time()
            full = converge(x, w, fine.centers, layout=lx, tol=0, max_iter=100_000)
            t_full = time.process_time() - t
            run = {"k": k, "start": s, "direct_iterations": direct.n_iter,
                   "direct_cpu_s": t_direct, "direct_inertia": direct.inertia,
                   "fine_iterations": fine.n_iter, "fine_cpu_s": t_fine,
                   "then_iterations": full.n_iter, "then_cpu_s": t_full,
                   "then_inertia": full.inertia}
            runs.append(run)
            rows.append([k, s, direct.n_iter, f"{t_direct:.2f}", f"{fine.n_iter} + {full.n_iter}",
                         f"{t_fine:.2f} + {t_full:.2f}",
                         f"{(t_fine + t_full) / t_direct:.2f}",
                         f"{full.inertia / direct.inertia:.6f}"])
            print(rows[-1], flush=True)
    print(markdown_table(["K", "start", "direct: iterations", "CPU s",
                          "finer grid: iterations (128-level + every colour)", "CPU s",
                          "CPU ratio", "inertia ratio"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"commit": git_commit(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
