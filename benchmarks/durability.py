"""Cost of durable records: stage times on a small collection, and the cost of checking records.

Times ingest, quantize, the PNG export and the Zarr export of a small LFW-shaped collection
(``--images`` crops of ``--size`` pixels, in-process threads, median of ``--repeats`` runs), then
what a resume costs when everything was recorded before the interruption (the worst case for
a streamq that reads back and checks every recorded chunk or file).
Run it once with each streamq to compare (``PYTHONPATH=OTHER/CHECKOUT python
benchmarks/durability.py``); prints JSON.

    python benchmarks/durability.py --images 300 --size 250 --repeats 3 --workdir /tmp/dur
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import time

import zarr

import streamq
from streamq.examples import make_collection


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _reopen(store: str, section: str, state: str) -> None:
    """Set a finished stage's state back, as if it had been killed before its last step."""
    g = zarr.open_group(store, mode="r+")
    g.attrs[section] = {**g.attrs[section], "state": state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="durability-bench")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    src = os.path.join(args.workdir, "src")
    if not os.path.isdir(src):
        make_collection(src, args.images, seed=0, size=args.size)
    kw = {"scheduler": "threads", "progress": False}
    times: dict[str, list[float]] = {}
    checks: dict[str, list[float]] = {}
    # a streamq whose records carry checksums (and so checks them on a resume)
    verifies = importlib.util.find_spec("streamq.durable") is not None
    what = "checked" if verifies else "trusted"
    for r in range(args.repeats):
        run = os.path.join(args.workdir, f"run{r}")
        shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run)
        store = os.path.join(run, "s.zarr")
        times.setdefault("ingest", []).append(_timed(lambda s=store: streamq.ingest(src, s, **kw)))
        streamq.fit(store, colors=32, max_steps=20, scheduler="threads")
        times.setdefault("quantize", []).append(_timed(lambda s=store: streamq.quantize(s, **kw)))
        out = os.path.join(run, "png")
        times.setdefault("export png", []).append(
            _timed(lambda s=store, o=out: streamq.export(s, o, **kw)))
        zout = os.path.join(run, "z.zarr")
        times.setdefault("export zarr", []).append(_timed(
            lambda s=store, z=zout: streamq.export(s, z, zarr=True, **kw)))
        _reopen(store, "ingest", "planned")
        checks.setdefault(f"ingest resume, every task recorded ({what})", []).append(
            _timed(lambda s=store: streamq.ingest(src, s, **kw)))
        _reopen(store, "quantize", "running")
        checks.setdefault(f"quantize resume, every chunk recorded ({what})", []).append(
            _timed(lambda s=store: streamq.quantize(s, **kw)))
        checks.setdefault(f"export png rerun, every file done ({what})", []).append(
            _timed(lambda s=store, o=out: streamq.export(s, o, **kw)))
    coll = streamq.open_store(os.path.join(args.workdir, "run0", "s.zarr"))
    result = {"streamq": streamq.__file__, "images": len(coll), "mpx": coll.n_pixels / 1e6,
              "seconds": {k: round(statistics.median(v), 3) for k, v in times.items()},
              "resume with every record written (seconds)": {k: round(statistics.median(v), 3)
                                             for k, v in checks.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
