"""Per-image palettes (the tutorial at scale) against Pillow's quantizers and pngquant.

On >= 20 real photos (crops of bundled photos, plus scikit-learn's china.jpg whole), for
K = 2, 6, 30, 64, 256: PSNR of the rebuilt image and images per second (both cores) for

- ``streamq``: ``streamq fit --per-image`` + ``quantize`` (k-means++ on a 70% sample);
- Pillow ``quantize`` with MEDIANCUT, MAXCOVERAGE and FASTOCTREE, dither off;
- ``pngquant --nofs`` when it is installed (``apt-get install pngquant``).

And the tutorial's own numbers: china.jpg at k = 2, 6, 30 with KMeans(k-means++) on a 70%
sample, in memory (measured for the tutorial: 17.04 / 23.68 / 29.78 dB).

Run from the repository root::

    python benchmarks/per_image.py --json /tmp/streamq-bench/per_image.json
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
PIL_METHODS = {"MEDIANCUT": Image.Quantize.MEDIANCUT, "MAXCOVERAGE": Image.Quantize.MAXCOVERAGE,
               "FASTOCTREE": Image.Quantize.FASTOCTREE}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 6, 30, 64, 256])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = args.workdir / f"per-image-{args.images}"
    if not root.exists():
        make_collection(root, args.images - 1, seed=7, min_side=200, max_side=480)
        from sklearn.datasets import load_sample_image

        (root / "China").mkdir(exist_ok=True)
        Image.fromarray(load_sample_image("china.jpg")).save(root / "China" / "China_0001.png")
    files = sorted(str(p) for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    n = len(files)
    rows: dict[str, dict[str, float]] = {}
    workers = os.cpu_count() or 2

    # streamq: ingest once, then per-image fit + quantize per K, timed on one warm cluster
    # (Pillow's process pool below is warm too)
    from streamq.config import DaskConfig
    from streamq.scheduler import runner, shared

    store = str(args.workdir / f"per-image-{args.images}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    with runner(DaskConfig()) as run, shared(run):
        streamq.ingest(root, store, progress=False)
        coll = streamq.open_store(store)
        china = coll.paths.index("China/China_0001.png")
        streamq.fit_per_image(store, colors=[2], pixels_per_task=400_000, progress=False)  # warm
        for k in args.k:
            t0 = time.perf_counter()
            streamq.fit_per_image(store, colors=[k], overwrite=True, pixels_per_task=400_000,
                                  progress=False)
            streamq.quantize(store, progress=False)
            t = time.perf_counter() - t0
            p = zarr.open_group(store, mode="r")[f"per_image/k{k}/images/psnr"][:]
            rows[f"streamq k={k}"] = {"psnr_mean": float(np.mean(p)), "images_per_s": n / t,
                                      "china_psnr": float(p[china])}
            print(f"streamq k={k}: {np.mean(p):.2f} dB, {n / t:.1f} images/s", flush=True)

    have_pngquant = shutil.which("pngquant") is not None
    with cf.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_pil, [(files[0], 2, "FASTOCTREE")] * workers))  # warm
        for k in args.k:
            for method in PIL_METHODS:
                t0 = time.perf_counter()
                values = list(pool.map(_pil, [(f, k, method) for f in files]))
                t = time.perf_counter() - t0
                rows[f"Pillow {method} k={k}"] = {"psnr_mean": float(np.mean(values)),
                                                  "images_per_s": n / t,
                                                  "china_psnr": values[files.index(str(root / "China" / "China_0001.png"))]}
            if have_pngquant and k >= 2:
                t0 = time.perf_counter()
                values = list(pool.map(_pngquant, [(f, k) for f in files]))
                t = time.perf_counter() - t0
                rows[f"pngquant k={k}"] = {"psnr_mean": float(np.mean(values)), "images_per_s": n / t,
                                           "china_psnr": values[files.index(str(root / "China" / "China_0001.png"))]}
    tut = tutorial_china()
    print(f"\n{n} photos; both cores; dither off")
    print(f"{'method':<26}{'mean PSNR dB':>14}{'images/s':>10}{'china dB':>10}")
    for name, r in rows.items():
        print(f"{name:<26}{r['psnr_mean']:>14.2f}{r['images_per_s']:>10.1f}{r['china_psnr']:>10.2f}")
    print("\nchina.jpg, tutorial (in memory, KMeans k-means++ on a 70% sample) vs streamq per-image:")
    for k, db in TUTORIAL_DB.items():
        ours = rows.get(f"streamq k={k}", {}).get("china_psnr", float("nan"))
        print(f"  k={k:<3} tutorial {db:.2f} dB, in-memory rerun {tut[k]:.2f} dB, streamq {ours:.2f} dB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n_images": n, "rows": rows, "tutorial_rerun": tut,
                                         "pngquant": have_pngquant}, indent=2))


if __name__ == "__main__":
    main()
