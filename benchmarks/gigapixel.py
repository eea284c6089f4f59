"""A gigapixel image end to end: ingest in bands, fit, quantize, export, with peak RSS.

Builds (once, cached in ``--workdir``) a tiled BigTIFF mosaic of crops of the bundled photos
(:func:`streamq.examples.write_mosaic`, written one row of tiles at a time), then on one
local Dask cluster (``--workers`` processes, ``--memory-limit`` each) runs and times:

1. ``ingest``: the mosaic is over ``max_pixels``, so every write task reads only its rows
   through tifffile's Zarr interface (:mod:`streamq.ingest.bands`);
2. ``fit``: a ``--colors`` palette (mini-batch then exact Lloyd on the colour histogram);
3. ``quantize``: a label for every pixel (SSIM off);
4. ``export``: ``--zarr``, the labels chunk by chunk;
5. ``export files``: the file export, which writes an image over max_pixels as a tiled
   palette BigTIFF a row of tiles at a time (:mod:`streamq.export.tiff`); its size is printed.

Peak RSS is sampled every 0.2 s for the client and each worker process, per stage.

Run from the repository root::

    python benchmarks/gigapixel.py --json /tmp/streamq-bench/gigapixel.json   # 2.0 Gpx
    python benchmarks/gigapixel.py --quick                                    # 24 Mpx
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TreeSampler, git_commit, markdown_table, write_results  # noqa: E402

import streamq  # noqa: E402
from streamq.examples import write_mosaic  # noqa: E402


def build(workdir: Path, height: int, width: int) -> Path:
    """The mosaic, in a folder of its own, built once per size."""
    root = workdir / f"mosaic-{height}x{width}"
    path = root / "mosaic.tif"
    marker = root / ".complete"
    if not marker.is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        t0 = time.perf_counter()
        write_mosaic(path, height, width, seed=0)
        marker.write_text("done\n")
        print(f"built {width}x{height} mosaic ({path.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--height", type=int, default=40_000)
    ap.add_argument("--width", type=int, default=50_000)
    ap.add_argument("--max-pixels", type=int, default=178_956_970)
    ap.add_argument("--colors", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GiB")
    ap.add_argument("--quick", action="store_true", help="a 4000x6000 mosaic, max_pixels 10 M")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.height, args.width, args.max_pixels = 4000, 6000, 10_000_000
    src = build(args.workdir, args.height, args.width)
    run_dir = args.workdir / "gigapixel-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    store, out = str(run_dir / "mosaic.zarr"), str(run_dir / "out.zarr")
    files = run_dir / "out-files"

    from distributed import LocalCluster

    stages: dict[str, float] = {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit=args.memory_limit) as cluster, \
            TreeSampler() as sampler:
        addr = cluster.scheduler_address
        steps: list[tuple[str, Any]] = [
            ("ingest", lambda: streamq.ingest(src.parent, store, scheduler=addr, progress=False,
                                              max_pixels=args.max_pixels)),
            ("fit", lambda: streamq.fit(store, colors=args.colors, scheduler=addr)),
            ("quantize", lambda: streamq.quantize(store, scheduler=addr, progress=False,
                                                  ssim=False)),
            ("export", lambda: streamq.export(store, out, zarr=True, scheduler=addr,
                                              progress=False)),
            ("export files", lambda: streamq.export(store, files, scheduler=addr,
                                                    progress=False)),
        ]
        for name, fn in steps:
            with sampler.stage(name):
                t0 = time.perf_counter()
                summary = fn()
                stages[name] = time.perf_counter() - t0
            print(f"{name}: {stages[name]:.1f} s  {str(summary).splitlines()[0]}", flush=True)
        results = {name: sampler.result(name) for name in stages}
    tif = files / f"{src.stem}.tif"
    tif_bytes = tif.stat().st_size
    print(f"{tif.name}: {tif_bytes / 2**20:.0f} MiB tiled BigTIFF", flush=True)
    n_px = args.height * args.width
    rows = []
    for name, secs in stages.items():
        peaks = results[name]["peak_role"]
        workers = [v for k, v in peaks.items() if k != "client"]
        rows.append([name, f"{secs:.1f}", f"{n_px / secs / 1e6:.1f}",
                     f"{peaks.get('client', 0) / 2**20:.0f}",
                     f"{max(workers, default=0) / 2**20:.0f}",
                     f"{results[name]['peak_total'] / 2**20:.0f}"])
    table = markdown_table(["stage", "s", "Mpx/s", "client peak MiB",
                            "largest process peak MiB (not client)", "all processes peak MiB"],
                           rows)
    print(f"{args.width}x{args.height} = {n_px / 1e9:.2f} Gpx, {args.workers} workers of "
          f"{args.memory_limit}\n{table}", flush=True)
    write_results(args.json, {"width": args.width, "height": args.height,
                              "max_pixels": args.max_pixels, "workers": args.workers,
                              "memory_limit": args.memory_limit, "colors": args.colors,
                              "tiff_bytes": tif_bytes,
                              "seconds": stages, "memory": results, "git": git_commit()},
                  args.md, table)


if __name__ == "__main__":
    main()
