"""Per-image palettes (the tutorial at scale) against Pillow's quantizers and pngquant.

On >= 20 real photos (crops of bundled photos, plus scikit-learn's china.jpg whole), for
K = 2, 6, 30, 64, 256: PSNR of the rebuilt image and images per second (both cores) for

- ``streamq kmeans``: ``streamq fit --per-image --method kmeans`` + ``quantize``
  (scikit-learn ``KMeans``, k-means++, on a 70% sample: the tutorial's);
- ``streamq histogram``: the same with ``--method histogram`` (the same k-means on the
  sample's distinct colours, compiled);
- Pillow ``quantize`` with MEDIANCUT, MAXCOVERAGE and FASTOCTREE, dither off;
- ``pngquant --nofs`` when it is installed (``apt-get install pngquant``).

PSNR is the mean over the photos of each photo's PSNR; a photo rebuilt exactly (fewer
colours than K) counts as 60 dB. streamq is timed on one warm LocalCluster (fit + quantize
per K and method); Pillow and pngquant on a warm process pool, one image per task.

And the tutorial's own numbers: china.jpg at k = 2, 6, 30 with KMeans(k-means++) on a 70%
sample, in memory (measured for the tutorial: 17.04 / 23.68 / 29.78 dB).

Run from the repository root (and alone: heavy runs must not overlap other measurements)::

    flock /tmp/streamq-bench.lock python benchmarks/per_image.py --json /tmp/streamq-bench/per_image.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import streamq  # noqa: E402
from streamq.examples import make_collection  # noqa: E402

TUTORIAL_DB = {2: 17.04, 6: 23.68, 30: 29.78}
EXACT_DB = 60.0  # PSNR counted for a photo rebuilt exactly
PIL_METHODS = {"MEDIANCUT": Image.Quantize.MEDIANCUT, "MAXCOVERAGE": Image.Quantize.MAXCOVERAGE,
               "FASTOCTREE": Image.Quantize.FASTOCTREE}
METHODS = ("kmeans", "histogram")
CHINA = "China/China_0001.png"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def mean_db(values: list[float] | np.ndarray) -> float:
    return float(np.mean(np.minimum(np.asarray(values, dtype=np.float64), EXACT_DB)))


def _pil(args: tuple[str, int, str]) -> float:
    path, k, method = args
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    q = rgb.quantize(colors=k, method=PIL_METHODS[method], dither=Image.Dither.NONE)
    return psnr(np.asarray(rgb), np.asarray(q.convert("RGB")))


def _pngquant(args: tuple[str, int]) -> float:
    path, k = args
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)
    out = subprocess.run(["pngquant", "--nofs", "--speed", "3", str(k), "-"], input=buf.getvalue(),
                         capture_output=True, check=False)
    if out.returncode not in (0, 98, 99):
        raise RuntimeError(out.stderr.decode())
    with Image.open(io.BytesIO(out.stdout)) as q:
        return psnr(np.asarray(rgb), np.asarray(q.convert("RGB")))


def tutorial_china(seed: int = 0) -> dict[int, float]:
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_sample_image

    img = load_sample_image("china.jpg")
    x = img.reshape(-1, 3).astype(np.float64) / 255
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=int(0.7 * len(x)), replace=False)
    out = {}
    for k in TUTORIAL_DB:
        km = KMeans(n_clusters=k, init="k-means++", random_state=seed).fit(x[idx])
        rebuilt = km.cluster_centers_[km.predict(x)] * 255
        out[k] = psnr(img.reshape(-1, 3), rebuilt)
    return out


def run_streamq(store: str, root: Path, ks: list[int], methods: list[str]) -> dict[str, dict[str, float]]:
    """Fit + quantize per K and method on one warm LocalCluster (both cores)."""
    from streamq.config import DaskConfig
    from streamq.scheduler import runner, shared
    from streamq.store import Store

    rows: dict[str, dict[str, float]] = {}
    shutil.rmtree(store, ignore_errors=True)
    with runner(DaskConfig()) as run, shared(run):
        streamq.ingest(root, store, progress=False)
        coll = streamq.open_store(store)
        n = len(coll)
        china = coll.paths.index(CHINA)
        for method in methods:  # warm: imports and compiled loops in every worker
            streamq.fit_per_image(store, colors=[3], overwrite=True, method=method, progress=False)
            streamq.quantize(store, progress=False)
        for k in ks:
            for method in methods:
                t0 = time.perf_counter()
                streamq.fit_per_image(store, colors=[k], overwrite=True, method=method,
                                      progress=False)
                t1 = time.perf_counter()
                Store.open(store, mode="r+").set_section(f"per_image_quantize_k{k}", {})  # relabel
                t2 = time.perf_counter()
                streamq.quantize(store, progress=False)
                t3 = time.perf_counter()
                t = (t1 - t0) + (t3 - t2)
                p = zarr.open_group(store, mode="r")[f"per_image/k{k}/images/psnr"][:]
                rows[f"streamq {method} k={k}"] = {
                    "psnr_mean": mean_db(p), "images_per_s": n / t, "china_psnr": float(p[china]),
                    "fit_s": t1 - t0, "quantize_s": t3 - t2, "exact": int(np.isinf(p).sum())}
                print(f"streamq {method} k={k}: {mean_db(p):.2f} dB, {n / t:.1f} images/s "
                      f"(fit {t1 - t0:.2f} s, quantize {t3 - t2:.2f} s)", flush=True)
    return rows


def run_others(files: list[str], ks: list[int], china: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    n = len(files)
    have_pngquant = shutil.which("pngquant") is not None
    with cf.ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_pil, [(files[0], 2, "FASTOCTREE")] * 4))  # warm
        if have_pngquant:
            list(pool.map(_pngquant, [(files[0], 2)] * 4))
        for k in ks:
            jobs = {f"Pillow {m}": (_pil, [(f, k, m) for f in files]) for m in PIL_METHODS}
            if have_pngquant:
                jobs["pngquant"] = (_pngquant, [(f, k) for f in files])
            for name, (fn, args) in jobs.items():
                t0 = time.perf_counter()
                values = list(pool.map(fn, args))
                t = time.perf_counter() - t0
                rows[f"{name} k={k}"] = {"psnr_mean": mean_db(values), "images_per_s": n / t,
                                         "china_psnr": values[china],
                                         "exact": int(np.isinf(values).sum())}
                print(f"{name} k={k}: {mean_db(values):.2f} dB, {n / t:.1f} images/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 6, 30, 64, 256])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                    help="streamq per-image methods to run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = args.workdir / f"per-image-{args.images}"
    if not root.exists():
        make_collection(root, args.images - 1, seed=7, min_side=200, max_side=480)
        from sklearn.datasets import load_sample_image

        (root / "China").mkdir(exist_ok=True)
        Image.fromarray(load_sample_image("china.jpg")).save(root / CHINA)
    files = sorted(str(p) for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    n = len(files)
    store = str(args.workdir / f"per-image-{args.images}.zarr")
    rows = run_streamq(store, root, args.k, args.methods)
    rows.update(run_others(files, args.k, files.index(str(root / CHINA))))
    tut = tutorial_china()

    print(f"\n{n} photos; both cores; dither off; mean PSNR (exact = {EXACT_DB:.0f} dB)")
    print(f"{'method':<28}{'mean PSNR dB':>14}{'images/s':>10}{'china dB':>10}")
    for name, r in rows.items():
        print(f"{name:<28}{r['psnr_mean']:>14.2f}{r['images_per_s']:>10.1f}{r['china_psnr']:>10.2f}")

    print("\nratios per K (streamq / pngquant throughput; PSNR differences in dB):")
    for k in args.k:
        pq = rows.get(f"pngquant k={k}")
        best_pil = max(rows[f"Pillow {m} k={k}"]["psnr_mean"] for m in PIL_METHODS)
        for method in args.methods:
            r = rows[f"streamq {method} k={k}"]
            text = f"  k={k:<4}{method:<10} vs best Pillow {r['psnr_mean'] - best_pil:+.2f} dB"
            if pq:
                text += (f", vs pngquant {r['psnr_mean'] - pq['psnr_mean']:+.2f} dB at "
                         f"{r['images_per_s'] / pq['images_per_s']:.2f}x its images/s")
            print(text)
        if set(METHODS) <= set(args.methods):
            h, km = rows[f"streamq histogram k={k}"], rows[f"streamq kmeans k={k}"]
            print(f"  k={k:<4}histogram vs kmeans: {h['images_per_s'] / km['images_per_s']:.1f}x "
                  f"the images/s, {h['psnr_mean'] - km['psnr_mean']:+.3f} dB")

    print("\nchina.jpg, tutorial (in memory, KMeans k-means++ on a 70% sample) vs streamq per-image:")
    for k, db in TUTORIAL_DB.items():
        ours = ", ".join(f"streamq {m} {rows.get(f'streamq {m} k={k}', {}).get('china_psnr', float('nan')):.2f} dB"
                         for m in args.methods)
        print(f"  k={k:<3} tutorial {db:.2f} dB, in-memory rerun {tut.get(k, float('nan')):.2f} dB, {ours}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n_images": n, "rows": rows, "tutorial_rerun": tut,
                                         "pngquant": shutil.which("pngquant") is not None,
                                         "exact_db": EXACT_DB}, indent=2))


if __name__ == "__main__":
    main()
