"""Per-image palettes on real photos of 1-10 Mpx against pngquant (and Pillow), cold and warm.

The photos: every photo of 1 to 10 Mpx among the wallpaper photos of four Debian packages
(``mate-backgrounds``, ``lomiri-wallpapers-16.04``, ``lomiri-wallpapers-20.04``,
``plasma-workspace-wallpapers``: the apt photos of ``benchmarks/photos.py``; 32 photos,
1.3-9.8 Mpx, 137.8 Mpx in all), whole, as shipped. Missing packages are installed when
run as root (else the error names the command). ``--crops`` runs the older set instead
(crops of bundled photos plus scikit-learn's ``china.jpg``, 2.8 Mpx in all).

For each K (default 2, 4, 8, ..., 256) and each of ``--repeats`` rounds, interleaved:

- ``streamq`` (``--methods``, default ``histogram``): ``fit --per-image`` + ``quantize`` from
  an ingested store (ingest excluded), both cores (a LocalCluster of 2 workers).
  **cold**: streamq's numba cache files deleted (``*.nbi``/``*.nbc`` wherever numba keeps
  them: ``__pycache__`` next to the modules, or ``NUMBA_CACHE_DIR``), a new cluster started
  (its start is timed apart, ``cluster_s``), then the first fit + quantize: worker imports
  and every compilation are counted. **warm**: fit + quantize again on that cluster.
  **after warmup** (histogram): the cache deleted again, ``streamq warmup`` run (the
  install-time step; its time is reported apart), a new cluster, the first fit + quantize:
  worker imports and loading the compiled code are counted.
- ``pngquant --nofs --speed 3 K`` on a warm process pool, one photo per task, reading the
  photo as a PNG file (encoded once, untimed) and writing its PNG: pngquant's own work only.
  PSNR is computed afterwards, untimed.
- Pillow ``quantize`` (MEDIANCUT, MAXCOVERAGE, FASTOCTREE, dither off; first round only,
  decode included); ``--no-pillow`` skips it.

PSNR is the mean over the photos of each photo's PSNR (a photo rebuilt exactly counts as
60 dB). Images/s are medians over the rounds. Also printed: the tutorial's own numbers on
``china.jpg`` (k = 2, 6, 30, KMeans k-means++ on a 70% sample, in memory; measured for the
tutorial: 17.04 / 23.68 / 29.78 dB) next to streamq's per-image methods on that photo.

Run from the repository root (and alone: heavy runs must not overlap other measurements)::

    flock /tmp/streamq-bench.lock env NUMBA_CACHE_DIR="$(mktemp -d)" \\
        python benchmarks/per_image.py --repeats 3 --no-pillow --json /tmp/streamq-bench/per_image.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import json
import os
import pkgutil
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photos import PHOTOS, ensure_photos  # noqa: E402

import streamq  # noqa: E402
from streamq.examples import make_collection  # noqa: E402

TUTORIAL_DB = {2: 17.04, 6: 23.68, 30: 29.78}
EXACT_DB = 60.0  # PSNR counted for a photo rebuilt exactly
PIL_METHODS = {"MEDIANCUT": Image.Quantize.MEDIANCUT, "MAXCOVERAGE": Image.Quantize.MAXCOVERAGE,
               "FASTOCTREE": Image.Quantize.FASTOCTREE}
METHODS = ("kmeans", "histogram")
MIN_MPX, MAX_MPX = 1.0, 10.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def mean_db(values: list[float] | np.ndarray) -> float:
    return float(np.mean(np.minimum(np.asarray(values, dtype=np.float64), EXACT_DB)))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- the photos --------------------------------------------------------------------------------

def photo_collection(workdir: Path) -> Path:
    """A folder ``<Name>/<Name>.jpg`` (symlinks) of the apt photos of 1-10 Mpx."""
    apt = tuple(p for p in PHOTOS if p.source == "apt")
    ensure_photos(apt)
    root = workdir / "per-image-photos"
    shutil.rmtree(root, ignore_errors=True)
    for p in apt:
        with Image.open(p.ref) as im:
            mpx = im.size[0] * im.size[1] / 1e6
        if MIN_MPX <= mpx <= MAX_MPX:
            (root / p.name).mkdir(parents=True)
            (root / p.name / f"{p.name}.jpg").symlink_to(p.ref)
    return root


def crops_collection(workdir: Path, n_images: int) -> Path:
    root = workdir / f"per-image-{n_images}"
    if not root.exists():
        make_collection(root, n_images - 1, seed=7, min_side=200, max_side=480)
        from sklearn.datasets import load_sample_image

        (root / "China").mkdir(exist_ok=True)
        Image.fromarray(load_sample_image("china.jpg")).save(root / "China/China_0001.png")
    return root


# --- numba's cache -----------------------------------------------------------------------------

def numba_cache_dirs() -> set[Path]:
    """Where numba keeps the compiled code of streamq's modules (in this environment)."""
    import numba.core.dispatcher

    dirs = {p.parent for p in Path(streamq.__file__).parent.rglob("__pycache__/*.nb[ic]")}
    for mod in pkgutil.walk_packages(streamq.__path__, "streamq."):
        if mod.name.startswith("streamq.cli"):
            continue
        module = importlib.import_module(mod.name)
        for value in vars(module).values():
            cache = getattr(value, "_cache", None)
            if isinstance(value, numba.core.dispatcher.Dispatcher) and hasattr(cache, "_cache_path"):
                dirs.add(Path(cache._cache_path))
    return dirs


def clear_numba_cache() -> int:
    """Delete streamq's numba cache files; returns how many were deleted."""
    n = 0
    for d in numba_cache_dirs():
        for f in list(d.glob("*.nbi")) + list(d.glob("*.nbc")):
            f.unlink(missing_ok=True)
            n += 1
    return n


# --- the runs ----------------------------------------------------------------------------------

def _pil(args: tuple[str, int, str]) -> float:
    path, k, method = args
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    q = rgb.quantize(colors=k, method=PIL_METHODS[method], dither=Image.Dither.NONE)
    return psnr(np.asarray(rgb), np.asarray(q.convert("RGB")))


def _to_png(args: tuple[str, str]) -> None:
    src, dst = args
    with Image.open(src) as im:
        im.convert("RGB").save(dst, format="PNG", compress_level=1)


def _pngquant(args: tuple[str, str, int]) -> None:
    src, dst, k = args
    out = subprocess.run(["pngquant", "--nofs", "--speed", "3", "--force", "--output", dst, str(k),
                          src], capture_output=True, check=False)
    if out.returncode == 99:  # quality below the minimum: never with no --quality
        raise RuntimeError(out.stderr.decode())
    if out.returncode not in (0, 98):
        raise RuntimeError(out.stderr.decode())


def _psnr_files(args: tuple[str, str]) -> float:
    a, b = args
    with Image.open(a) as x, Image.open(b) as y:
        return psnr(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")))


def _fit_and_quantize(store: str, k: int, method: str) -> dict[str, float]:
    from streamq.store import Store

    t0 = time.perf_counter()
    streamq.fit_per_image(store, colors=[k], overwrite=True, method=method, progress=False)
    t1 = time.perf_counter()
    Store.open(store, mode="r+").set_section(f"per_image_quantize_k{k}", {})  # relabel
    t2 = time.perf_counter()
    streamq.quantize(store, progress=False)
    t3 = time.perf_counter()
    return {"fit_s": t1 - t0, "quantize_s": t3 - t2, "s": (t1 - t0) + (t3 - t2)}


def _warmup() -> float:
    """``streamq warmup`` in a process of its own; returns its wall time."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from streamq.cli.main import main; main()", "warmup"],
                   check=True, capture_output=True)
    return time.perf_counter() - t0


def streamq_round(store: str, k: int, methods: list[str], n: int,
                  warmup: bool = True) -> dict[str, dict[str, Any]]:
    """Per method: ``cold`` and ``warm`` fit + quantize on a new cluster after emptying
    numba's cache; then (``warmup``) ``first``: the cache emptied again, ``streamq warmup``
    run (timed apart), a new cluster, one fit + quantize."""
    from streamq.config import DaskConfig
    from streamq.scheduler import runner, shared

    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        deleted = clear_numba_cache()
        t0 = time.perf_counter()
        with runner(DaskConfig()) as run, shared(run):
            r: dict[str, Any] = {"cluster_s": time.perf_counter() - t0, "cache_files_deleted": deleted}
            r["cold"] = _fit_and_quantize(store, k, method)
            r["warm"] = _fit_and_quantize(store, k, method)
            p = zarr.open_group(store, mode="r")[f"per_image/k{k}/images/psnr"][:]
        r["psnr"] = [float(v) for v in p]
        text = (f"  streamq {method} k={k}: {mean_db(p):.2f} dB; cold {n / r['cold']['s']:.2f} "
                f"images/s (fit {r['cold']['fit_s']:.1f} s + quantize {r['cold']['quantize_s']:.1f} s), "
                f"warm {n / r['warm']['s']:.2f} (fit {r['warm']['fit_s']:.1f} + quantize "
                f"{r['warm']['quantize_s']:.1f} s)")
        if warmup and method == "histogram":
            clear_numba_cache()
            r["warmup_s"] = _warmup()
            with runner(DaskConfig()) as run, shared(run):
                r["first"] = _fit_and_quantize(store, k, method)
            text += (f", after warmup ({r['warmup_s']:.1f} s) {n / r['first']['s']:.2f} "
                     f"(fit {r['first']['fit_s']:.1f} + quantize {r['first']['quantize_s']:.1f} s)")
        out[method] = r
        print(text + f"; cluster start {r['cluster_s']:.1f} s", flush=True)
    return out


def pngquant_round(pool: cf.Executor, pngs: list[str], outdir: Path, k: int) -> dict[str, Any]:
    outs = [str(outdir / f"{i:03d}-k{k}.png") for i in range(len(pngs))]
    t0 = time.perf_counter()
    list(pool.map(_pngquant, [(p, o, k) for p, o in zip(pngs, outs, strict=True)]))
    t = time.perf_counter() - t0
    values = list(pool.map(_psnr_files, zip(pngs, outs, strict=True)))
    print(f"  pngquant k={k}: {mean_db(values):.2f} dB, {len(pngs) / t:.2f} images/s", flush=True)
    return {"s": t, "psnr": values}


def pillow_row(pool: cf.Executor, files: list[str], k: int) -> dict[str, dict[str, float]]:
    rows = {}
    for m in PIL_METHODS:
        t0 = time.perf_counter()
        values = list(pool.map(_pil, [(f, k, m) for f in files]))
        rows[m] = {"psnr_mean": mean_db(values), "images_per_s": len(files) / (time.perf_counter() - t0)}
    return rows


def tutorial_china(seed: int = 0) -> dict[str, dict[int, float]]:
    """The tutorial in memory, and streamq's per-image methods on china.jpg alone."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_sample_image

    from streamq.kmeans import label_pixels
    from streamq.per_image import fit_image

    img = load_sample_image("china.jpg")
    rgb = img.reshape(-1, 3)
    x = rgb.astype(np.float64) / 255
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=int(0.7 * len(x)), replace=False)
    out: dict[str, dict[int, float]] = {"in-memory rerun": {}, "kmeans": {}, "histogram": {}}
    for k in TUTORIAL_DB:
        km = KMeans(n_clusters=k, init="k-means++", random_state=seed).fit(x[idx])
        out["in-memory rerun"][k] = psnr(rgb, km.cluster_centers_[km.predict(x)] * 255)
        for method in METHODS:  # as the store does it (seed 0, image id 0; see per_image.py)
            c = fit_image(rgb, k, 0.7, 0, 0, method=method)
            _, sse, _ = label_pixels(rgb, c)
            out[method][k] = float(10 * np.log10(255 ** 2 / (sse / (3 * len(rgb)))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256])
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=["histogram"],
                    help="streamq per-image methods to run (kmeans: slow on big photos)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds per K (medians are quoted)")
    ap.add_argument("--crops", type=int, default=0, metavar="N",
                    help="use N crops of bundled photos (the older set) instead of the photos")
    ap.add_argument("--no-pillow", action="store_true")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the first use after `streamq warmup` (histogram method)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = crops_collection(args.workdir, args.crops) if args.crops else photo_collection(args.workdir)
    files = sorted(str(p) for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    n = len(files)
    store = str(args.workdir / f"per-image-{'photos' if not args.crops else args.crops}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    s = streamq.ingest(root, store, progress=False)
    print(f"{n} photos, {s.n_pixels / 1e6:.1f} Mpx ingested into {store}", flush=True)

    pngdir = args.workdir / "per-image-png"
    shutil.rmtree(pngdir, ignore_errors=True)
    pngdir.mkdir(parents=True)
    pngs = [str(pngdir / f"{i:03d}.png") for i in range(n)]
    have_pngquant = shutil.which("pngquant") is not None
    rounds: dict[int, list[dict[str, Any]]] = {k: [] for k in args.k}
    pillow: dict[int, dict[str, dict[str, float]]] = {}
    with cf.ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_to_png, zip(files, pngs, strict=True)))
        if have_pngquant:
            list(pool.map(_pngquant, [(pngs[0], str(pngdir / f"warm{i}.png"), 2) for i in range(4)]))
        for k in args.k:
            for r in range(args.repeats):
                print(f"K={k}, round {r + 1}/{args.repeats}", flush=True)
                row: dict[str, Any] = {"streamq": streamq_round(store, k, args.methods, n,
                                                                not args.no_warmup)}
                if have_pngquant:
                    row["pngquant"] = pngquant_round(pool, pngs, pngdir, k)
                rounds[k].append(row)
            if not args.no_pillow:
                pillow[k] = pillow_row(pool, files, k)
    tut = tutorial_china()

    mpx = s.n_pixels / 1e6
    print(f"\n{n} photos, {mpx:.1f} Mpx; both cores; dither off; mean PSNR (exact = {EXACT_DB:.0f} dB); "
          f"images/s: median of {args.repeats} round(s)")
    summary: dict[str, Any] = {}
    for k in args.k:
        rs = rounds[k]
        pq_ips = median([n / r["pngquant"]["s"] for r in rs]) if have_pngquant else float("nan")
        pq_db = mean_db(rs[0]["pngquant"]["psnr"]) if have_pngquant else float("nan")
        for method in args.methods:
            ips = {phase: median([n / r["streamq"][method][phase]["s"] for r in rs
                                  if phase in r["streamq"][method]])
                   for phase in ("cold", "first", "warm")}
            db = mean_db(rs[0]["streamq"][method]["psnr"])
            summary[f"{method} k={k}"] = {"psnr": db, **{f"{p}_images_per_s": v for p, v in ips.items()},
                                          "pngquant_images_per_s": pq_ips, "pngquant_psnr": pq_db}
            print(f"  K={k:<4}{method:<10} {db:6.2f} dB  cold {ips['cold']:6.2f}  after warmup "
                  f"{ips['first']:6.2f}  warm {ips['warm']:6.2f} images/s | pngquant {pq_db:6.2f} dB "
                  f"{pq_ips:6.2f} images/s | {ips['cold'] / pq_ips:4.2f}x / {ips['first'] / pq_ips:4.2f}x / "
                  f"{ips['warm'] / pq_ips:4.2f}x, {db - pq_db:+.2f} dB")
        for m, row in pillow.get(k, {}).items():
            print(f"  K={k:<4}Pillow {m:<12}{row['psnr_mean']:6.2f} dB  {row['images_per_s']:6.2f} images/s")
    print("\nchina.jpg: tutorial (KMeans k-means++ on a 70% sample) vs streamq per-image (in memory):")
    for k, db in TUTORIAL_DB.items():
        print(f"  k={k:<3} tutorial {db:.2f} dB, rerun {tut['in-memory rerun'][k]:.2f} dB, "
              f"kmeans {tut['kmeans'][k]:.2f} dB, histogram {tut['histogram'][k]:.2f} dB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n_images": n, "mpx": mpx, "files": files, "rounds": rounds,
                                         "summary": summary, "pillow": pillow, "tutorial": tut,
                                         "exact_db": EXACT_DB}, indent=1))


if __name__ == "__main__":
    main()
