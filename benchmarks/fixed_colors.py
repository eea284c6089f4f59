"""What fixed colours cost: MSE of a K-colour palette with F fixed colours vs the same fit without.

On the 50-photo benchmark collection (``benchmarks/photos.py``: ``--images`` LFW-shaped
250x250 tiles, built, ingested and cached in ``--workdir``), for each ``--algorithms``
(default: ``minibatch``, the default fit, and ``lloyd``), fits side by side:

- **plain K**: ``streamq.fit(store, colors=K)``, no fixed colours;
- **plain K - F**: the same with ``K - F`` colours (what the free colours alone reach);
- **K with F fixed**, for each set of ``--sets``: ``streamq.fit(store, colors=K,
  fixed_colors=FILE)``, the set written to a ``.hex`` file. ``primaries``: white, black and
  the six saturated primaries and secondaries (colours far from most photo pixels: the
  worst case); ``greys``: white, black and six even grey levels (colours photos have).

Every fit is checked to keep its fixed colours exactly (the palette's first ``F`` entries).
Reported per fit: the **MSE** over every pixel (streamq's exact MSE from the colour
histogram: each pixel mapped to its nearest centre, compared with that centre's uint8
colour, mean over pixels and the three channels, uint8 units), the PSNR, the MSE relative to
plain K, the share of the pixels that the fixed colours take, and the fit's wall time (the
median of ``--repeats`` runs; fits of one round interleaved).

``--quick`` checks that the script runs (about a minute): the bundled example collection
(24 crops of 100 px, no apt packages), in-process (``--scheduler threads``), one round. Its
numbers mean little. Writes a markdown table and a JSON file with every number, the git commit and
the versions (``--json``, default ``WORKDIR/fixed_colors.json``). From the repository root::

    python benchmarks/fixed_colors.py --quick
    flock /tmp/streamq-bench.lock python benchmarks/fixed_colors.py --images 13233 --repeats 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    build_collection,
    exit_on_signals,
    git_commit,
    markdown_table,
    median,
    write_results,
)

import streamq  # noqa: E402

SETS = {
    "primaries": ["ffffff", "000000", "ff0000", "00ff00", "0000ff", "00ffff", "ff00ff", "ffff00"],
    "greys": ["ffffff", "000000", "242424", "494949", "6d6d6d", "929292", "b6b6b6", "dbdbdb"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def photo_store(workdir: Path, n_images: int, size: int) -> str:
    """The ingested 50-photo collection (cached: a finished ingest is a no-op)."""
    from photos import build_photo_collection

    src = build_photo_collection(workdir, n_images, size, 0)
    store = workdir / f"photoset-{n_images}-{size}-s0.zarr"
    s = streamq.ingest(src, store, progress=False)
    if s.status != "already complete":
        log(f"ingested {s.n_pixels / 1e6:.0f} Mpx into {store}")
    return str(store)


def one_fit(store: str, k: int, algorithm: str, scheduler: str | None,
            fixed: tuple[str, Path] | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"colors": k, "algorithm": algorithm, "overwrite": True,
                            "progress": False, "scheduler": scheduler}
    if fixed is not None:
        opts["fixed_colors"] = str(fixed[1])
    t0 = time.perf_counter()
    res = streamq.fit(store, **opts)
    seconds = time.perf_counter() - t0
    n_fixed = 0
    if fixed is not None:
        want = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in SETS[fixed[0]]],
                        np.uint8)
        n_fixed = len(want)
        if res.n_fixed != n_fixed or not np.array_equal(res.palette[:n_fixed], want):
            raise SystemExit(f"the {fixed[0]} fit did not keep its fixed colours exactly")
    share = float(res.counts[:n_fixed].sum() / res.counts.sum()) if n_fixed else 0.0
    return {"mse": res.mse, "psnr": res.psnr, "seconds": seconds, "fixed_share": share,
            "n_fixed": n_fixed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=64, help="palette size K (counts the fixed colours)")
    ap.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["primaries", "greys"])
    ap.add_argument("--algorithms", nargs="+", choices=["minibatch", "lloyd"],
                    default=["minibatch", "lloyd"])
    ap.add_argument("--images", type=int, default=13233, help="tiles of the photo collection")
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=1, help="rounds (median times are quoted)")
    ap.add_argument("--scheduler", default=None, help="default: a local cluster per fit")
    ap.add_argument("--quick", action="store_true",
                    help="about a minute on a small bundled collection: checks the script")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    exit_on_signals()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.quick:
        scheduler, repeats = args.scheduler or "threads", 1
        src = build_collection(args.workdir, 24, size=100, seed=0)
        store = str(args.workdir / "fixed-quick.zarr")
        streamq.ingest(src, store, progress=False, scheduler=scheduler)
    else:
        store = photo_store(args.workdir, args.images, args.size)
        scheduler, repeats = args.scheduler, args.repeats
    files = {}
    for name in args.sets:
        files[name] = args.workdir / f"fixed-{name}.hex"
        files[name].write_text("\n".join(SETS[name]) + "\n")
    n_fixed = {len(SETS[s]) for s in args.sets}
    runs: list[tuple[str, int, tuple[str, Path] | None]] = [("plain", args.k, None)]
    runs += [(f"plain K-F={args.k - f}", args.k - f, None) for f in sorted(n_fixed)]
    runs += [(f"{s} ({len(SETS[s])} fixed)", args.k, (s, files[s])) for s in args.sets]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {a: {} for a in args.algorithms}
    for r in range(repeats):
        for algorithm in args.algorithms:
            for label, k, fixed in runs:
                out = one_fit(store, k, algorithm, scheduler, fixed)
                results[algorithm].setdefault(label, []).append(out)
                log(f"round {r + 1}: {algorithm} {label} K={k}: MSE {out['mse']:.3f}, "
                    f"{out['seconds']:.1f} s")
    tables, summary = [], {}
    for algorithm in args.algorithms:
        base = results[algorithm]["plain"][0]["mse"]
        rows = []
        for label, k, _ in runs:
            outs = results[algorithm][label]
            o = outs[0]  # the same seed every round: the same palette
            t = median([x["seconds"] for x in outs])
            rows.append([label, k, f"{o['mse']:.3f}", f"{o['psnr']:.2f}",
                         f"{o['mse'] / base:.3f}x", f"{o['fixed_share']:.1%}" if o["n_fixed"] else "",
                         f"{t:.1f}"])
            summary.setdefault(algorithm, {})[label] = {**o, "k": k, "seconds_median": t,
                                                        "seconds_all": [x["seconds"] for x in outs]}
        tables.append(f"**{algorithm}**, K = {args.k}\n\n" + markdown_table(
            ["fit", "K", "MSE", "PSNR dB", "MSE / plain K", "pixels on fixed", "s"], rows))
    md = "\n\n".join(tables)
    print(md)
    coll = streamq.open_store(store)
    result = {"benchmark": "fixed_colors", "quick": args.quick, "store": store,
              "n_images": len(coll), "n_pixels": coll.n_pixels, "k": args.k,
              "sets": {s: SETS[s] for s in args.sets}, "repeats": repeats, "scheduler": scheduler,
              "results": summary, "git": git_commit(), "python": platform.python_version(),
              "versions": {p: version(p) for p in ("scikit-learn", "numpy", "numba", "dask")},
              "machine": platform.machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_results(args.json or args.workdir / "fixed_colors.json", result, args.md, md)


if __name__ == "__main__":
    main()
