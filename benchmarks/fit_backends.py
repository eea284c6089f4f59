"""`streamq fit` from the command line on the two kinds of local cluster, fresh processes.

Every run is a new `streamq -q fit STORE --colors K [--algorithm lloyd] --overwrite` process
(Python's start and imports, the cluster's start and close, the fit, the stored result: what a
user waits for), with the local cluster's workers as

- **threads**: threads of the command's own process (``STREAMQ_DASK__PROCESSES=false``, the
  fit's default), or
- **processes**: worker processes (``STREAMQ_DASK__PROCESSES=true``, as before 2026-12-05),

alternating (threads, processes, threads, ...) so that both meet the same machine. Reports
the median wall time of ``--repeats`` runs of each, the ratio, and the fit's own phase
timings as stored (mini-batch phase, exact phase). Both give the same palette: the script
checks it (the stored centres, bit for bit).

Run from the repository root, on the ingested photo collection of ``benchmarks/exact_fit.py``::

    flock /tmp/streamq-bench.lock python benchmarks/fit_backends.py \\
        /tmp/streamq-bench/photoset-13233-250-s0.zarr --k 16 64 256 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, median, write_results  # noqa: E402

KINDS = {"threads": "false", "processes": "true"}


def one_run(store: str, k: int, algorithm: str, kind: str) -> dict[str, Any]:
    """One fresh `streamq fit` process; its wall time, stored phase timings and centres."""
    import zarr

    import streamq

    cmd = [shutil.which("streamq") or "streamq", "-q", "fit", store, "--colors", str(k), "--overwrite"]
    if algorithm == "lloyd":
        cmd += ["--algorithm", "lloyd"]
    env = {**os.environ, "STREAMQ_DASK__PROCESSES": KINDS[kind]}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    fit = dict(zarr.open_group(store, mode="r").attrs["fit"])
    assert fit["runtime"]["cluster"].startswith(
        "local cluster in this process" if kind == "threads" else "local cluster ("), fit["runtime"]
    return {"seconds": seconds, "timings": fit.get("timings", {}),
            "centers": streamq.load_fit(store).centers}


def _phases(rs: list[dict[str, Any]]) -> str:
    """Median stored mini-batch / exact phase seconds of runs ``rs``."""
    names = ("mini-batch fit", "exact lloyd")
    return " / ".join(f"{median([r['timings'].get(n, 0.0) for r in rs]):.2f}" for n in names)


def _times(rs: list[dict[str, Any]]) -> str:
    each = ", ".join(f"{r['seconds']:.2f}" for r in rs)
    return f"{median([r['seconds'] for r in rs]):.2f} ({each})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", help="an ingested store (its colour histogram is made once)")
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--algorithms", nargs="+", default=["default", "lloyd"],
                    choices=("default", "lloyd"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    store = str(Path(args.store).resolve())
    rows, out = [], []
    for k in args.k:
        for algorithm in args.algorithms:
            runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
            for i in range(args.repeats):
                for kind in KINDS:
                    r = one_run(store, k, algorithm, kind)
                    runs[kind].append(r)
                    print(f"K={k} {algorithm} {kind} {i + 1}/{args.repeats}: {r['seconds']:.2f} s "
                          f"{r['timings']}", flush=True)
            first = runs["threads"][0]["centers"]
            same = all(np.array_equal(r["centers"], first) for rs in runs.values() for r in rs)
            med = {kind: median([r["seconds"] for r in rs]) for kind, rs in runs.items()}
            rows.append([k, algorithm, _times(runs["processes"]), _times(runs["threads"]),
                         f"{med['threads'] / med['processes']:.2f}x",
                         _phases(runs["processes"]), _phases(runs["threads"]),
                         "yes" if same else "NO"])
            out.append({"k": k, "algorithm": algorithm, "same_palette": same,
                        **{kind: {"seconds": [r["seconds"] for r in rs],
                                  "timings": [r["timings"] for r in rs]}
                           for kind, rs in runs.items()}})
    table = markdown_table(
        ["K", "fit", "worker processes s", "worker threads s", "threads / processes",
         "processes: mini-batch / exact s", "threads: mini-batch / exact s", "same palette"], rows)
    print(table)
    write_results(args.json, {"store": store, "repeats": args.repeats, "results": out}, args.md, table)


if __name__ == "__main__":
    main()
