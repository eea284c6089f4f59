"""What the per-image SSIM costs the quantize stage.

On the cached real-photo collection of ``benchmarks/fit.py`` (LFW-shaped 250x250 crops), with
a K-colour palette fitted once:

- ``stage``: ``streamq.quantize(overwrite=True)`` with and without SSIM (``ssim=False`` is
  ``--no-ssim``), alternately, on one running LocalCluster (warm: the first call of each is
  left out), median of ``--repeats``;
- ``kernel``: on one thread, over the first ``--kernel-pixels`` pixels of the store as
  one chunk: the labels (``LabelTable.labels_sse``, warm table) and the SSIM sums
  (:func:`streamq.ssim.chunk_ssim`), each the median of 5 after a first call.

Run from the repository root::

    python benchmarks/ssim_cost.py --images 3200 --k 64 --json /tmp/bench-out/ssim_cost.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_store, markdown_table, median, write_results  # noqa: E402

import streamq  # noqa: E402
from streamq.config import DaskConfig  # noqa: E402
from streamq.scheduler import runner, shared  # noqa: E402


def kernel(store: str, n: int) -> dict[str, float]:
    from streamq.kmeans.table import LabelTable
    from streamq.ssim import chunk_ssim, luma

    res = streamq.load_fit(store)
    coll = streamq.open_store(store)
    images = [im for im in coll.overlapping(0, n) if im[1] + im[2] <= n]  # whole images
    n = images[-1][1] + images[-1][2]
    shapes = [coll.shapes[i] for i, _, _ in images]
    px = np.asarray(zarr.open_array(f"{store}/pixels", mode="r")[:n])
    table = LabelTable(res.centers, res.palette, "rgb")
    ends = np.asarray([n])
    labels = table.labels_sse(px, np.uint8, ends)[0]
    lut = luma(res.palette)
    out = {}
    for name, call in (("labels", lambda: table.labels_sse(px, np.uint8, ends)),
                       ("ssim", lambda: chunk_ssim(px, labels, 0, 0, n, images, shapes,
                                                   lambda _: lut))):
        call()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[f"{name}_1thread_mpx_s"] = n / 1e6 / median(times)
    return out


def stage(store: str, n_pixels: int, repeats: int) -> dict[str, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    with runner(DaskConfig()) as run, shared(run):
        for i in range(repeats + 1):
            for ssim in (True, False) if i % 2 else (False, True):
                t0 = time.perf_counter()
                streamq.quantize(store, ssim=ssim, overwrite=True, progress=False)
                if i:  # the first round loads compiled code and fills the tables
                    times[ssim].append(time.perf_counter() - t0)
    with_ssim, without = median(times[True]), median(times[False])
    return {"quantize_ssim_s": with_ssim, "quantize_no_ssim_s": without,
            "quantize_ssim_mpx_s": n_pixels / 1e6 / with_ssim,
            "quantize_no_ssim_mpx_s": n_pixels / 1e6 / without,
            "ssim_share_of_stage": (with_ssim - without) / with_ssim}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3200)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kernel-pixels", type=int, default=4_194_304)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = build_store(args.workdir, args.images)
    store = str(args.workdir / f"ssim-{args.images}-k{args.k}.zarr")
    if not Path(store).exists():
        shutil.copytree(base, store)
    streamq.fit(store, colors=args.k, progress=False)
    n_pixels = streamq.open_store(store).n_pixels
    row = {"images": args.images, "mpx": n_pixels / 1e6, "k": args.k,
           **kernel(store, min(args.kernel_pixels, n_pixels)),
           **stage(store, n_pixels, args.repeats)}
    print(", ".join(f"{a}={b:.3g}" for a, b in row.items()), flush=True)
    md = markdown_table(
        ["images", "Mpx", "K", "labels 1 thr Mpx/s", "SSIM 1 thr Mpx/s", "stage with SSIM s",
         "without s", "SSIM share of the stage"],
        [[args.images, f"{row['mpx']:.1f}", args.k, f"{row['labels_1thread_mpx_s']:.0f}",
          f"{row['ssim_1thread_mpx_s']:.0f}", f"{row['quantize_ssim_s']:.2f}",
          f"{row['quantize_no_ssim_s']:.2f}", f"{row['ssim_share_of_stage']:.0%}"]])
    print(md)
    write_results(args.json, row, args.md, md)


if __name__ == "__main__":
    main()
