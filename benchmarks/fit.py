"""Palette fit, K = 64: streamq (mini-batch and exact Lloyd) against scikit-learn in memory.

On a real-photo collection (LFW-shaped 250x250 JPEG crops of photos bundled with installed
packages, built and ingested once, cached in ``--workdir``), in one run and side by side:

- ``streamq minibatch``: ``streamq.fit`` with the defaults (a LocalCluster, streamed batches,
  then exact Lloyd on the colour histogram); timed whole, cluster start included;
- ``streamq lloyd``: ``--algorithm lloyd`` to convergence, best of ``n_init`` k-means++ starts
  on the colour histogram: the exact reference MSE;
- ``sklearn KMeans``: ``KMeans(64, n_init=1)`` on a 10 Mpx uniform in-memory sample;
- ``sklearn MiniBatchKMeans.fit`` on the same sample (slow in scikit-learn 1.9: skip with
  ``--no-mbk``).

For each: wall time (median of ``--repeats``), peak RSS of the whole process tree (client and
workers), and the MSE over every pixel of the collection (exact, from the colour histogram)
as a ratio to streamq Lloyd's. ``--small`` also times the mini-batch fit on a collection 10x
smaller, for the growth of fit time with collection size.

Run from the repository root::

    python benchmarks/fit.py --images 3200 --json /tmp/streamq-bench/fit.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_store, median, timed  # noqa: E402

import streamq  # noqa: E402


def _copy(store: str, workdir: Path, name: str) -> str:
    dst = workdir / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(store, dst)
    return str(dst)


def _mse(store: str, centers: np.ndarray, space: str = "rgb") -> float:
    return streamq.collection_mse(store, np.asarray(centers, dtype=np.float64), space)


def _sample(store: str, n: int, seed: int) -> np.ndarray:
    pixels = zarr.open_array(f"{store}/pixels", mode="r")
    idx = np.sort(np.random.default_rng(seed).choice(pixels.shape[0], size=n, replace=False))
    return np.asarray(pixels[:])[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3200, help="250x250 images (3200 = 200 Mpx)")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample", type=int, default=10_000_000, help="sklearn's in-memory sample")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--no-mbk", action="store_true", help="skip sklearn MiniBatchKMeans.fit")
    ap.add_argument("--small", action="store_true", help="also time a 10x smaller collection")
    ap.add_argument("--lloyd-n-init", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = build_store(args.workdir, args.images)
    n_pixels = streamq.open_store(store).n_pixels
    rows: dict[str, dict[str, float]] = {}

    # exact reference first
    lloyd_store = _copy(store, args.workdir, "fit-lloyd.zarr")
    t, peak, res = timed(lambda: streamq.fit(lloyd_store, colors=args.k, algorithm="lloyd",
                                             n_init=args.lloyd_n_init, progress=False))
    ref = _mse(store, res.centers)
    rows["streamq lloyd"] = {"seconds": t, "peak_gib": peak / 2**30, "mse": ref,
                             "iterations": res.steps}
    print(f"lloyd: {t:.1f} s, MSE {ref:.3f}", flush=True)

    times, peaks, mses = [], [], []
    for r in range(args.repeats):
        s = _copy(store, args.workdir, "fit-mb.zarr")
        t, peak, res = timed(lambda s=s: streamq.fit(s, colors=args.k, progress=False))
        times.append(t)
        peaks.append(peak)
        mses.append(_mse(store, res.centers))
        print(f"minibatch run {r}: {t:.1f} s, {res.steps} steps, MSE {mses[-1]:.3f}, "
              f"{res.stop_reason}", flush=True)
    rows["streamq minibatch"] = {"seconds": median(times), "peak_gib": max(peaks) / 2**30,
                                 "mse": median(mses), "steps": res.steps}

    from sklearn.cluster import KMeans, MiniBatchKMeans

    t0 = time.perf_counter()
    x = _sample(store, min(args.sample, n_pixels), 0).astype(np.float32) / np.float32(255)
    print(f"drew the {len(x)}-pixel in-memory sample in {time.perf_counter() - t0:.1f} s", flush=True)
    t, peak, km = timed(lambda: KMeans(args.k, n_init=1, random_state=0).fit(x))
    rows["sklearn KMeans (sample)"] = {"seconds": t, "peak_gib": peak / 2**30,
                                       "mse": _mse(store, km.cluster_centers_), "iterations": km.n_iter_}
    print(f"KMeans: {t:.1f} s", flush=True)
    if not args.no_mbk:
        t, peak, mbk = timed(lambda: MiniBatchKMeans(args.k, batch_size=65536, n_init=1,
                                                     random_state=0).fit(x))
        rows["sklearn MiniBatchKMeans.fit (sample)"] = {
            "seconds": t, "peak_gib": peak / 2**30, "mse": _mse(store, mbk.cluster_centers_),
            "steps": mbk.n_steps_}
        print(f"MiniBatchKMeans.fit: {t:.1f} s", flush=True)

    if args.small:
        small = build_store(args.workdir, args.images // 10)
        times = []
        for _ in range(args.repeats):
            s = _copy(small, args.workdir, "fit-small.zarr")
            t, _, _ = timed(lambda s=s: streamq.fit(s, colors=args.k, progress=False))
            times.append(t)
        rows["streamq minibatch (10x smaller)"] = {"seconds": median(times)}

    print(f"\ncollection: {args.images} images, {n_pixels / 1e6:.0f} Mpx; K = {args.k}; "
          f"median of {args.repeats} for streamq minibatch")
    print(f"{'method':<40}{'wall s':>8}{'Mpx/s':>9}{'peak GiB':>10}{'MSE':>9}{'vs Lloyd':>10}")
    for name, row in rows.items():
        mpx = n_pixels / 1e6 / row["seconds"] if "sample" not in name else float("nan")
        mse = row.get("mse", float("nan"))
        print(f"{name:<40}{row['seconds']:>8.1f}{mpx:>9.1f}{row.get('peak_gib', float('nan')):>10.2f}"
              f"{mse:>9.3f}{mse / ref:>10.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n_pixels": n_pixels, "k": args.k, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
