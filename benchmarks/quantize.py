"""Quantize and export throughput, against scikit-learn's predict and the Zarr I/O ceiling.

On the cached real-photo collection of ``benchmarks/fit.py`` (LFW-shaped 250x250 crops), with
a K-colour palette fitted once, in one run:

- ``kernel``: streamq's exact assignment (``LabelTable``: lazily filled 2**24 table) vs
  ``MiniBatchKMeans.predict`` on the same 10 Mpx of collection pixels, on one thread and on
  both cores (predict: its OpenMP threads; streamq: two threads over two halves sharing one
  table); cold table = first pass, warm = median of the next five (predict: median of 3);
  this process gets the malloc settings of streamq's workers for both;
- ``io ceiling``: Dask tasks that read each pixel chunk and write a uint8 array of the same
  chunking and codec, no compute;
- ``quantize``: ``streamq.quantize`` (read, label, write, per-image errors), whole stage:
  a standalone call (starts and stops its LocalCluster), and calls on one running cluster
  (the first on fresh workers, then warm), as inside ``streamq run``; and standalone with
  ``scheduler="threads"`` (in-process threads, the first call in this process pays the JIT
  load, the later ones find the table warm);
- ``export``: ``streamq.export`` to palette PNGs at zlib levels 1 and 6.

Run from the repository root::

    python benchmarks/quantize.py --images 3200 --k 64 256 --json /tmp/streamq-bench/quantize.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_store, median, timed  # noqa: E402

import streamq  # noqa: E402
from streamq.config import DaskConfig  # noqa: E402
from streamq.scheduler import runner, shared  # noqa: E402
from streamq.store import Store  # noqa: E402


def _io_task(args: tuple[str, int, int]) -> int:
    store, c, chunk = args
    px = zarr.open_array(f"{store}/pixels", mode="r")
    out = zarr.open_array(f"{store}/bench_io", mode="r+")
    lo, hi = c * chunk, min((c + 1) * chunk, px.shape[0])
    data = np.asarray(px[lo:hi])
    out[lo:hi] = data[:, 1]  # real bytes (an all-zero chunk would not be written)
    return hi - lo


def io_ceiling(store: str) -> float:
    st = Store.open(store, mode="r+")
    px = st.pixels()
    chunk, _ = st.pixel_layout()
    st.create_labels("bench_io", np.uint8)
    n_chunks = -(-px.shape[0] // chunk)
    with runner(DaskConfig()) as run:
        run.map_ordered(_io_task, [(store, 0, chunk)])  # warm the workers
        t0 = time.perf_counter()
        run.map_ordered(_io_task, [(store, c, chunk) for c in range(n_chunks)])
        return time.perf_counter() - t0


def _worker_malloc() -> None:
    """Give this process the glibc settings of streamq's workers (buffers below 64 MiB stay
    on the heap and are reused rather than mapped and faulted in afresh on every call), so
    that predict and the table are both timed as they run inside a worker."""
    import ctypes

    from streamq.scheduler import MMAP_THRESHOLD

    libc = ctypes.CDLL("libc.so.6")
    for option in (-1, -3):  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
        libc.mallopt(option, MMAP_THRESHOLD)


def kernel(store: str, k: int, n: int) -> dict[str, float]:
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    from streamq.colorspace import to_space
    from streamq.kmeans.table import LabelTable

    res = streamq.load_fit(store)
    px = np.asarray(zarr.open_array(f"{store}/pixels", mode="r")[:n])
    est = MiniBatchKMeans(k)
    est.cluster_centers_ = res.centers.astype(np.float32)
    est.n_features_in_ = 3
    x = to_space(px, "rgb")
    out: dict[str, float] = {}
    est._n_threads = 2
    ref = est.predict(x)
    for name, threads in (("", 2), ("_1thread", 1)):
        est._n_threads = threads  # predict passes this to its OpenMP loop explicitly
        with threadpool_limits(threads):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                est.predict(x)
                times.append(time.perf_counter() - t0)
        out[f"sklearn_predict{name}_mpx_s"] = n / 1e6 / median(times)
    whole = np.asarray([len(px)])  # one segment: the quantize task's path (labels + error sum)
    halves = [px[: n // 2], px[n // 2:]]

    def both_cores(table: LabelTable) -> list[np.ndarray]:
        # Two threads over two halves, sharing one table: what two worker threads do.
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda h: table.labels_sse(h, np.int32, np.asarray([len(h)]))[0],
                                 halves))

    for name, call in (("1thread", lambda t: [t.labels_sse(px, np.int32, whole)[0]]),
                       ("2threads", both_cores)):
        table = LabelTable(res.centers, res.palette, "rgb")
        t0 = time.perf_counter()
        ours = np.concatenate(call(table))
        out[f"streamq_cold_{name}_mpx_s"] = n / 1e6 / (time.perf_counter() - t0)
        warm = []
        for _ in range(5):
            t0 = time.perf_counter()
            call(table)
            warm.append(time.perf_counter() - t0)
        out[f"streamq_warm_{name}_mpx_s"] = n / 1e6 / median(warm)
        out[f"label_agreement_{name}"] = float((ours == ref).mean())
    out["warm_vs_predict"] = out["streamq_warm_2threads_mpx_s"] / out["sklearn_predict_mpx_s"]
    return out


def quantize_runs(store: str, repeats: int, **kwargs: object) -> list[tuple[float, int]]:
    """``(seconds, peak RSS)`` of ``repeats`` full quantize stages (labels dropped before each)."""
    out = []
    for _ in range(repeats):
        Store.open(store, mode="r+").set_section("quantize", {})
        t, peak, _ = timed(lambda: streamq.quantize(store, progress=False, **kwargs))
        out.append((t, peak))
    return out


def on_running_cluster(store: str, n_pixels: int, repeats: int, io_mpx: float) -> dict[str, float]:
    """The stage inside a pipeline (``streamq run`` shares one cluster across stages): the
    first call on freshly started workers (their tables and compiled code cold), then the
    median of ``repeats`` more calls (tables warm)."""
    with runner(DaskConfig()) as run, shared(run):
        times = [t for t, _ in quantize_runs(store, repeats + 1)]
    first, warm = n_pixels / 1e6 / times[0], n_pixels / 1e6 / median(times[1:])
    return {"quantize_running_first_mpx_s": first, "quantize_running_warm_mpx_s": warm,
            "quantize_running_warm_over_io": warm / io_mpx}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3200)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kernel-pixels", type=int, default=10_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    _worker_malloc()
    base = build_store(args.workdir, args.images)
    n_pixels = streamq.open_store(base).n_pixels
    results: dict[str, dict[str, float]] = {}
    io_times = [io_ceiling(base) for _ in range(args.repeats)]
    io_mpx = n_pixels / 1e6 / median(io_times)
    print(f"I/O ceiling (read pixels, write uint8, no compute): {io_mpx:.0f} Mpx/s", flush=True)
    for k in args.k:
        store = str(args.workdir / f"quantize-k{k}.zarr")
        if not Path(store).exists():
            shutil.copytree(base, store)
        streamq.fit(store, colors=k, progress=False)
        row = kernel(store, k, min(args.kernel_pixels, n_pixels))
        runs = quantize_runs(store, args.repeats)
        times, peak = [t for t, _ in runs], max(p for _, p in runs)
        row["quantize_mpx_s"] = n_pixels / 1e6 / median(times)
        row["quantize_over_io"] = row["quantize_mpx_s"] / io_mpx
        row["quantize_peak_gib"] = peak / 2**30
        row.update(on_running_cluster(store, n_pixels, args.repeats, io_mpx))
        # in-process threads: no cluster start, one shared table
        times = [t for t, _ in quantize_runs(store, args.repeats, scheduler="threads")]
        row["quantize_threads_mpx_s"] = n_pixels / 1e6 / median(times)
        for level in (1, 6):
            out = args.workdir / f"export-k{k}-l{level}"
            etimes = []
            for _ in range(args.repeats):
                shutil.rmtree(out, ignore_errors=True)
                t, _, _ = timed(lambda out=out, level=level, store=store: streamq.export(
                    store, out, png_level=level, progress=False))
                etimes.append(t)
            size = sum(p.stat().st_size for p in out.rglob("*.png"))
            row[f"export_png{level}_mpx_s"] = n_pixels / 1e6 / median(etimes)
            row[f"export_png{level}_bytes_per_px"] = size / n_pixels
        results[str(k)] = row
        print(f"K={k}: " + ", ".join(f"{a}={b:.3g}" for a, b in row.items()), flush=True)
    print(f"\ncollection {n_pixels / 1e6:.0f} Mpx, medians of {args.repeats}; I/O ceiling {io_mpx:.0f} Mpx/s")
    print(f"{'K':>4}{'predict 2/1 thr':>16}{'ours cold 2/1 thr':>18}{'warm 2/1 thr':>14}{'x predict':>10}"
          f"{'quantize':>10}{'/io':>6}{'running 1st/warm':>18}{'/io':>6}{'png1':>7}{'png6':>7}")
    for k, r in results.items():
        print(f"{k:>4}{r['sklearn_predict_mpx_s']:>9.1f} /{r['sklearn_predict_1thread_mpx_s']:>5.1f}"
              f"{r['streamq_cold_2threads_mpx_s']:>11.1f} /{r['streamq_cold_1thread_mpx_s']:>5.1f}"
              f"{r['streamq_warm_2threads_mpx_s']:>7.1f} /{r['streamq_warm_1thread_mpx_s']:>5.1f}"
              f"{r['warm_vs_predict']:>10.1f}"
              f"{r['quantize_mpx_s']:>10.1f}{r['quantize_over_io']:>6.2f}"
              f"{r['quantize_running_first_mpx_s']:>11.1f} /{r['quantize_running_warm_mpx_s']:>5.1f}"
              f"{r['quantize_running_warm_over_io']:>6.2f}{r['quantize_threads_mpx_s']:>9.1f}"
              f"{r['export_png1_mpx_s']:>7.1f}{r['export_png6_mpx_s']:>7.1f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n_pixels": n_pixels, "io_mpx_s": io_mpx, "k": results}, indent=2))


if __name__ == "__main__":
    main()
