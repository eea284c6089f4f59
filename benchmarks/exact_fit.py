"""Palette fit against the exact k-means optimum, on the 50-photo benchmark collection.

On the 13,233 LFW-shaped 250x250 tiles of ``benchmarks/photos.py`` (built, ingested and
cached in ``--workdir``), for each K of ``--k``, side by side:

- **exact reference**: the collection's full colour histogram, computed here independently of
  streamq (zarr + numpy, shard by shard, ``np.bincount`` of the 24-bit codes
  ``r<<16 | g<<8 | b`` of every image's pixels), and scikit-learn ``KMeans(K,
  init="k-means++", n_init=3, tol=0, max_iter=100000, random_state=0)`` fitted on the
  distinct colours (value/255, float64) with ``sample_weight=counts``: each of the 3 runs goes
  on until no label changes. Both cores (threadpoolctl). Slow (minutes to hours at K=256): its
  result is cached in ``WORKDIR/exact-ref/`` under the histogram's checksum, K and the seed
  (``--recompute-reference`` forces a new fit);
- **sample script**, what a user would write: ``KMeans(K, random_state=0)`` (defaults
  otherwise) on a uniform random sample of ``--sample`` (10 M) pixels, without replacement,
  as value/255 float64. The sample is drawn from the histogram (the same multiset as the
  pixels) outside the timing; the time is ``KMeans.fit`` alone;
- **streamq default**: ``streamq.fit(store, colors=K, overwrite=True, progress=False)``;
- **streamq lloyd**: the same with ``algorithm="lloyd"`` (its first run on a store also
  computes the colour histogram and keeps it in the store; later runs read it: the JSON
  says which runs did). Both streamq times are the wall time of the call (Dask cluster start included).

**MSE** (every method, computed here from the histogram, not from any report): the mean over
all pixels of the collection of the squared error summed over R, G and B (uint8 units,
0..255; "per pixel, R+G+B"; divide by 3 for the per-channel MSE), each pixel mapped to its
nearest centre in the fit space (value/255) and replaced by that centre rounded to uint8, as
a quantizer does.

``--repeats`` (default 3): the sample script and both streamq fits are run that many times
(interleaved) and their median times reported with every value; the exact reference once.
Writes a markdown table per K and a JSON file with every number, the git commit and the
versions (``--json``, default ``WORKDIR/exact_fit.json``). Run from the repository root::

    flock /tmp/streamq-bench.lock python benchmarks/exact_fit.py --k 16 64 256 --repeats 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import exit_on_signals, git_commit, markdown_table, median  # noqa: E402
from photos import PHOTOS, build_photo_collection  # noqa: E402

import streamq  # noqa: E402

N_CODES = 1 << 24
_STDOUT = sys.stdout  # progress lines go here, also while sklearn's stdout is captured


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=_STDOUT, flush=True)


# -- the store and its histogram -------------------------------------------------------------
def build_photo_store(workdir: Path, n_images: int, size: int, seed: int) -> Path:
    """The ingested store of the photo collection (cached: a finished ingest is a no-op)."""
    src = build_photo_collection(workdir, n_images, size, seed)
    store = workdir / f"photoset-{n_images}-{size}-s{seed}.zarr"
    t0 = time.perf_counter()
    s = streamq.ingest(src, store, progress=False)
    if s.status != "already complete":
        log(f"ingested {s.n_pixels / 1e6:.0f} Mpx into {store} ({time.perf_counter() - t0:.1f} s)")
    return store


def _image_ranges(g: zarr.Group) -> np.ndarray:
    """``(R, 2)`` merged ``[start, stop)`` pixel ranges covered by the images, sorted."""
    off = np.asarray(g["images/offset"][:], dtype=np.int64)
    n = np.asarray(g["images/height"][:], dtype=np.int64) * np.asarray(g["images/width"][:],
                                                                          dtype=np.int64)
    order = np.argsort(off, kind="stable")
    starts, stops = off[order], (off + n)[order]
    merged: list[list[int]] = []
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return np.asarray(merged, dtype=np.int64).reshape(-1, 2)


def _hist_part(pixels: zarr.Array, ranges: np.ndarray, lo: int, hi: int) -> np.ndarray:
    block = np.asarray(pixels[lo:hi])
    parts = []
    for a, b in ranges[(ranges[:, 1] > lo) & (ranges[:, 0] < hi)].tolist():
        px = block[max(a, lo) - lo:min(b, hi) - lo].astype(np.uint32)
        parts.append((px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2])
    if not parts:
        return np.zeros(N_CODES, dtype=np.int64)
    return np.bincount(np.concatenate(parts), minlength=N_CODES).astype(np.int64)


def histogram(store: Path, workdir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``(codes, counts, checksum)``: the distinct 24-bit colours of every image and their
    pixel counts, read shard by shard with zarr (cached under the store's ingest identity)."""
    g = zarr.open_group(str(store), mode="r")
    ing = g.attrs["ingest"]
    # formats 1 and 3 hold the same pixels (3 renamed only centres); no alpha: opaque pixels
    if (g.attrs["streamq"]["format_version"] not in (1, 3) or "alpha" in g
            or ing["state"] != "complete"):
        raise RuntimeError(f"{store}: not a finished streamq store of opaque images (format 1 or 3)")
    ident = hashlib.sha256(json.dumps([ing["source_fingerprint"], ing["settings_fingerprint"],
                                       ing.get("finished")]).encode()).hexdigest()[:16]
    cache = workdir / f"hist-{ident}.npz"
    if cache.is_file():
        z = np.load(cache)
        return z["codes"], z["counts"], str(z["checksum"])
    t0 = time.perf_counter()
    pixels = g["pixels"]
    ranges = _image_ranges(g)
    step = pixels.shards[0] if pixels.shards else pixels.chunks[0]
    total = np.zeros(N_CODES, dtype=np.int64)
    starts = range(0, int(ranges[-1, 1]) if len(ranges) else 0, step)
    with cf.ThreadPoolExecutor(2) as pool:  # zarr decodes outside the GIL
        for h in pool.map(lambda lo: _hist_part(pixels, ranges, lo, lo + step), starts):
            total += h
    codes = np.flatnonzero(total).astype(np.uint32)
    counts = total[codes]
    checksum = hashlib.sha256(codes.tobytes() + counts.tobytes()).hexdigest()
    np.savez(cache, codes=codes, counts=counts, checksum=checksum)
    log(f"histogram: {counts.sum():,} pixels, {len(codes):,} distinct colours "
        f"({time.perf_counter() - t0:.1f} s)")
    return codes, counts, checksum


def codes_to_rgb(codes: np.ndarray) -> np.ndarray:
    c = codes.astype(np.uint32)
    return np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], axis=1).astype(np.uint8)


# -- exact MSE ---------------------------------------------------------------------------------
def exact_mse(rgb: np.ndarray, counts: np.ndarray, centers: np.ndarray,
              chunk: int = 1 << 20) -> dict[str, float]:
    """Mean over all pixels of the R+G+B squared error (uint8 units) against the centres
    rounded to uint8, each colour mapped to its nearest centre in the fit space (value/255);
    also the same with unrounded centres, and the fit-space inertia."""
    c = np.asarray(centers, dtype=np.float64)
    palette = np.clip(np.rint(c * 255.0), 0, 255)
    c2 = (c * c).sum(1)
    sse = sse_unrounded = inertia = 0.0
    for lo in range(0, len(rgb), chunk):
        x = rgb[lo:lo + chunk].astype(np.float64) / 255.0
        w = counts[lo:lo + chunk].astype(np.float64)
        lab = np.argmin(c2[None, :] - 2.0 * (x @ c.T), axis=1)
        xu = rgb[lo:lo + chunk].astype(np.float64)
        sse += float(w @ ((xu - palette[lab]) ** 2).sum(1))
        d = ((x - c[lab]) ** 2).sum(1)
        inertia += float(w @ d)
        sse_unrounded += float(w @ d) * 255.0 ** 2
    n = float(counts.sum())
    return {"mse": sse / n, "mse_unrounded": sse_unrounded / n, "inertia": inertia}


# -- the exact reference (cached) --------------------------------------------------------------
class _SklearnLog:
    """A stdout for ``KMeans(verbose=1)``: counts runs and iterations, logs every minute."""

    def __init__(self, label: str) -> None:
        self.label, self.runs, self.iters, self.total = label, 0, 0, 0
        self.converged: list[int] = []
        self.t0 = self.last = time.perf_counter()
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.startswith("Initialization complete"):
                self.runs += 1
                self.iters = 0
            elif line.startswith("Iteration "):
                self.iters += 1
                self.total += 1
                now = time.perf_counter()
                if now - self.last >= 60:
                    self.last = now
                    log(f"{self.label}: run {self.runs}/3, iteration {self.iters} "
                        f"({line.split(', ')[1].rstrip('.')}), {now - self.t0:.0f} s")
            elif line.startswith("Converged at iteration"):
                self.converged.append(self.iters)
        return len(s)

    def flush(self) -> None:
        pass


def exact_reference(rgb: np.ndarray, counts: np.ndarray, checksum: str, k: int, seed: int,
                    workdir: Path, recompute: bool) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info, threadpool_limits

    params = {"n_clusters": k, "init": "k-means++", "n_init": 3, "tol": 0.0,
              "max_iter": 100_000, "random_state": seed}
    cache = workdir / "exact-ref" / f"hist-{checksum[:16]}-k{k}-s{seed}.json"
    if cache.is_file() and not recompute:
        ref = json.loads(cache.read_text())
        if ref.get("histogram_sha256") == checksum and ref.get("params") == params:
            log(f"K={k} exact reference: cached ({cache}; fitted in {ref['seconds']:.1f} s)")
            return ref
    threads = os.cpu_count() or 1
    log(f"K={k} exact reference: KMeans on {len(rgb):,} distinct colours, weighted, "
        f"n_init=3, tol=0 ({threads} threads)")
    x = rgb.astype(np.float64) / 255.0
    w = counts.astype(np.float64)
    out = _SklearnLog(f"K={k} exact reference")
    with threadpool_limits(limits=threads):
        pools = [{k_: p[k_] for k_ in ("user_api", "internal_api", "num_threads")}
                 for p in threadpool_info()]
        km = KMeans(**params, verbose=1)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            km.fit(x, sample_weight=w)
        seconds = time.perf_counter() - t0
    ref = {"params": params, "histogram_sha256": checksum, "seconds": seconds,
           "iterations_total": out.total, "iterations_per_run": out.converged,
           "iterations_best_run": int(km.n_iter_), "runs_converged": len(out.converged),
           "sklearn_inertia": float(km.inertia_), "centers": km.cluster_centers_.tolist(),
           "threadpools": pools, "sklearn": version("scikit-learn"),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           **exact_mse(rgb, counts, km.cluster_centers_)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(ref) + "\n")
    log(f"K={k} exact reference: {seconds:.1f} s, {out.total} iterations {out.converged}, "
        f"MSE {ref['mse']:.3f}")
    return ref


# -- the timed methods -------------------------------------------------------------------------
def sample_pixels(rgb: np.ndarray, counts: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` pixels drawn uniformly without replacement (in random order) from the multiset
    given by the histogram: pixel ``i`` of the collection sorted by colour is ``rgb[j]`` with
    ``cumsum(counts)[j - 1] <= i < cumsum(counts)[j]``."""
    total = int(counts.sum())
    idx = np.random.default_rng(seed).choice(total, size=min(n, total), replace=False)
    return rgb[np.searchsorted(np.cumsum(counts), idx, side="right")]


def run_sample_script(x: np.ndarray, k: int, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=os.cpu_count() or 1):
        km = KMeans(k, random_state=seed)
        t0 = time.perf_counter()
        km.fit(x)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "iterations": int(km.n_iter_), "centers": km.cluster_centers_}


def run_streamq(store: Path, k: int, algorithm: str | None) -> dict[str, Any]:
    opts = {} if algorithm is None else {"algorithm": algorithm}
    # Lloyd computes the colour histogram once and keeps it in the store (section `colors`)
    cached = zarr.open_group(str(store), mode="r").attrs.get("colors", {}).get("state")
    t0 = time.perf_counter()
    res = streamq.fit(str(store), colors=k, overwrite=True, progress=False, **opts)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "centers": np.asarray(res.centers), "palette": res.palette,
            "algorithm": res.algorithm, "steps": int(res.steps), "stop_reason": res.stop_reason,
            "pixels_seen": int(res.pixels_seen), "reported_mse": float(res.mse),
            "reported_seconds": float(res.seconds), "color_space": res.color_space,
            "store_histogram_cached": cached == "complete"}


# -- report ------------------------------------------------------------------------------------
def _t(values: list[float]) -> str:
    med = median(values)
    s = f"{med:.1f} s" if med < 100 else f"{med:.0f} s"
    return s if len(values) < 2 else f"{s} ({', '.join(f'{v:.1f}' for v in values)})"


def table(res: dict[str, Any]) -> str:
    ref, n_px = res["exact"], res["n_pixels"]
    exact_t = ref["seconds"]
    samp = res["sample_script"]
    rows = [[f"exact reference: `KMeans(n_init=3, tol=0)` on {res['distinct_colors']:,} "
             f"distinct colours, weighted ({ref['iterations_total']} iterations)",
             _t([exact_t]), f"{ref['mse']:.3f}", "1", ""],
            [f"sample script: `KMeans(random_state=0)` on a {res['sample_pixels'] / 1e6:g} Mpx "
             f"sample (iterations {median(samp['iterations']):g})", _t(samp["seconds"]),
             f"{median(samp['mse']):.3f}", f"{median(samp['mse']) / ref['mse']:.4f}", ""]]
    for name, key, ratio, base in (("streamq default", "streamq_default", "sample script",
                                    median(samp["seconds"])),
                                   ("streamq `--algorithm lloyd`", "streamq_lloyd",
                                    "exact reference", exact_t)):
        r = res[key]
        rows.append([f"{name} ({r['algorithm']}, {median(r['steps']):g} steps)",
                     _t(r["seconds"]), f"{median(r['mse']):.3f}",
                     f"{median(r['mse']) / ref['mse']:.4f}",
                     f"{median(r['seconds']) / base:.2f}× {ratio}"])
    head = (f"K = {res['k']} ({n_px:,} pixels; MSE: mean over pixels of the R+G+B squared "
            f"error, uint8 units, palette rounded to uint8)\n\n")
    return head + markdown_table(["what", "time (median)", "MSE", "× exact MSE", "time ratio"],
                                 rows)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("streamq", "numpy", "scikit-learn", "zarr", "dask", "distributed",
                "threadpoolctl", "pillow", "scikit-image"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=13233)
    ap.add_argument("--size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0, help="collection, sample and KMeans seed")
    ap.add_argument("--sample", type=int, default=10_000_000, help="pixels of the sample script")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--recompute-reference", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="default: WORKDIR/exact_fit.json")
    ap.add_argument("--md", type=Path, default=None, help="also write the tables here")
    ap.add_argument("--tables", type=Path, default=None, metavar="JSON",
                    help="print the tables of a saved run and exit")
    args = ap.parse_args()
    if args.tables:
        for res in json.loads(args.tables.read_text())["results"]:
            print(f"{table(res)}\n")
        return
    exit_on_signals()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out_json = args.json or args.workdir / "exact_fit.json"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    store = build_photo_store(args.workdir, args.images, args.size, args.seed)
    codes, counts, checksum = histogram(store, args.workdir)
    rgb = codes_to_rgb(codes)
    n_px = int(counts.sum())
    log(f"store {store}: {args.images} images of {len(PHOTOS)} photos, {n_px:,} pixels, "
        f"{len(codes):,} distinct colours")
    t0 = time.perf_counter()
    x_sample = sample_pixels(rgb, counts, args.sample, args.seed).astype(np.float64) / 255.0
    log(f"drew a {len(x_sample):,}-pixel sample ({time.perf_counter() - t0:.1f} s, untimed)")
    report: dict[str, Any] = {
        "benchmark": "exact_fit", "started": started, "command": " ".join(sys.argv),
        "store": str(store), "images": args.images, "photos": len(PHOTOS),
        "n_pixels": n_px, "distinct_colors": len(codes), "histogram_sha256": checksum,
        "mse_definition": "mean over all pixels of sum over R,G,B of (pixel - palette[nearest])^2,"
                          " uint8 units; nearest centre in value/255 space; palette = centres"
                          " rounded to uint8",
        "git": git_commit(), "versions": versions(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "results": [], "tables": []}
    for k in args.k:
        ref = exact_reference(rgb, counts, checksum, k, args.seed, args.workdir,
                              args.recompute_reference)
        res: dict[str, Any] = {
            "k": k, "n_pixels": n_px, "distinct_colors": len(codes),
            "sample_pixels": len(x_sample),
            "exact": {key: v for key, v in ref.items() if key != "threadpools"},
            "sample_script": {"seconds": [], "iterations": [], "mse": [], "mse_unrounded": []},
            "streamq_default": {"seconds": [], "steps": [], "mse": [], "runs": []},
            "streamq_lloyd": {"seconds": [], "steps": [], "mse": [], "runs": []}}
        for rep in range(args.repeats):
            s = run_sample_script(x_sample, k, args.seed)
            m = exact_mse(rgb, counts, s["centers"])
            for key in ("seconds", "iterations"):
                res["sample_script"][key].append(s[key])
            res["sample_script"]["mse"].append(m["mse"])
            res["sample_script"]["mse_unrounded"].append(m["mse_unrounded"])
            res["sample_script"]["centers"] = s["centers"].tolist()
            log(f"K={k} repeat {rep + 1}/{args.repeats}: sample script {s['seconds']:.1f} s, "
                f"{s['iterations']} iterations, MSE {m['mse']:.3f}")
            for key, algo in (("streamq_default", None), ("streamq_lloyd", "lloyd")):
                r = run_streamq(store, k, algo)
                m = exact_mse(rgb, counts, r["centers"])
                own_palette = np.clip(np.rint(r["centers"] * 255), 0, 255).astype(np.uint8)
                run = {**{key_: v for key_, v in r.items() if key_ not in ("centers", "palette")},
                       **m, "palette_is_rounded_centers": bool(np.array_equal(own_palette,
                                                                                r["palette"])),
                       "centers": r["centers"].tolist()}
                res[key]["runs"].append(run)
                res[key]["seconds"].append(r["seconds"])
                res[key]["steps"].append(r["steps"])
                res[key]["mse"].append(m["mse"])
                res[key]["algorithm"] = r["algorithm"]
                hist = "" if algo is None else (
                    ", store's histogram " + ("reused" if r["store_histogram_cached"]
                                              else "computed in this run"))
                log(f"K={k} repeat {rep + 1}/{args.repeats}: {key} ({r['algorithm']}) "
                    f"{r['seconds']:.1f} s, {r['steps']} steps, MSE {m['mse']:.3f} "
                    f"(streamq's own estimate {r['reported_mse']:.3f}, per channel){hist}")
        md = table(res)
        report["results"].append(res)
        report["tables"].append(md)
        report["loadavg_end"] = os.getloadavg()
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out_json.write_text(json.dumps(report, indent=1) + "\n")  # after every K
        print(f"\n{md}\n", flush=True)
    if args.md:
        args.md.write_text("\n\n".join(report["tables"]) + "\n")
    log(f"wrote {out_json}")


if __name__ == "__main__":
    main()
