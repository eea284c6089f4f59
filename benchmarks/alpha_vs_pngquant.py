"""Palettes with alpha on real RGBA images against pngquant: PSNR and images/s.

The images (found on this machine, nothing downloaded):

- ``icons``: RGBA PNGs of installed icon themes and packages with soft edges (at least 1%
  of their pixels semi-transparent), at least 48x48: ``/usr/share/icons/**`` (the largest
  size of each icon name), matplotlib's toolbar icons and sample logos, the logos shipped by
  ``distributed`` and ``playwright``.
- ``cutouts``: photos with soft cut-outs: the MATE wallpapers with an alpha channel
  (``/usr/share/backgrounds/mate/abstract/*.png``, 2-2.6 Mpx) and the photos bundled with
  scikit-learn/scikit-image/matplotlib (``streamq.examples.source_photos``) under a soft
  elliptical mask (opaque inside, a soft edge of every alpha level, transparent corners).

For each set and K (default 16, 64, 256), each image's PSNR is computed the same way for
every method, from the decoded output PNG: over premultiplied RGBA in uint8 units (the mean
over pixels and the four channels of the squared difference, colours premultiplied as
``(c * a + 127) // 255``; an image rebuilt exactly counts as 60 dB). Methods:

- ``pngquant --nofs --speed 3 K`` (no dithering, as streamq), one image per call, on a
  pool of as many processes as cores; times include reading and writing the PNGs.
- ``streamq per image``: :func:`streamq.kmeans.rgba.kmeans_rgba` on each image's own RGBA
  histogram (``n_init`` 4), labels (:class:`streamq.rgba.RgbaLabels`) and the palette PNG
  with its tRNS chunk, one image per task on a pool of as many processes as cores (warmed
  up first: numba compiled and imported); times include reading and writing the PNGs.
- ``streamq collection``: the stages on the whole set, one palette shared by all its
  images: ``fit`` + ``quantize`` + ``export`` timed (``ingest`` timed apart), on a local
  cluster started before the clock.

Also measured (``paths``): the two ways of counting and labelling pixels, on the same
pixels (the bundled photos tiled to ``--path-mpx`` Mpx, a soft mask for RGBA), one thread:
the 24-bit tricks of opaque collections (``count_colors``: a dense table of 2**24 counters;
``LabelTable``: a 2**24 label table) against the RGBA path (``count_rgba``: sorting 32-bit
codes; ``RgbaLabels``: the distinct colours of the chunk, then a nearest-centre search each).

Run alone on a quiet machine (from the repository root)::

    python benchmarks/alpha_vs_pngquant.py --json /tmp/streamq-bench/alpha.json \\
        --markdown /tmp/streamq-bench/alpha.md
    python benchmarks/alpha_vs_pngquant.py --quick     # a few small images, K = 64: a check
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, write_results  # noqa: E402

import streamq  # noqa: E402

CAP_DB = 60.0


# -- the images ----------------------------------------------------------------------------------
def _soft(a: np.ndarray) -> float:
    return float(((a > 0) & (a < 255)).mean())


def _rgba(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            if im.mode not in ("RGBA", "LA", "PA", "P") and "transparency" not in im.info:
                return None
            return np.asarray(im.convert("RGBA"))
    except Exception:  # noqa: BLE001  (not an image Pillow reads: not a candidate)
        return None


def find_icons(limit: int, min_side: int = 48) -> list[str]:
    """The largest PNG of each icon name under /usr/share/icons, and the RGBA images of
    installed Python packages, with soft edges; at most ``limit``, spread over the list."""
    best: dict[str, tuple[int, str]] = {}
    for p in glob.glob("/usr/share/icons/**/*.png", recursive=True):
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001
            continue
        key = os.path.basename(p)
        if w * h > best.get(key, (0, ""))[0]:
            best[key] = (w * h, p)
    site = Path(np.__file__).resolve().parents[1]
    extra = [str(site / "matplotlib/mpl-data/sample_data/logo2.png"),
             str(site / "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
             *glob.glob(str(site / "matplotlib/mpl-data/images/*_large.png")),
             *glob.glob(str(site / "distributed/http/static/images/*.png")),
             *glob.glob(str(site / "playwright/driver/package/lib/server/chromium/*.png"))]
    found = []
    for p in sorted(p for _, p in best.values()) + sorted(extra):
        a = _rgba(p)
        if a is not None and min(a.shape[:2]) >= min_side and a.size <= 4 * 2**20 * 4 \
                and _soft(a[..., 3]) >= 0.01:
            found.append(p)
    if len(found) > limit:
        found = [found[int(i)] for i in np.linspace(0, len(found) - 1, limit)]
    return found


def soft_mask(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2)
    return np.clip(np.round((1.1 - r) / 0.25 * 255), 0, 255).astype(np.uint8)


def make_cutouts(out: Path, quick: bool) -> list[str]:
    """MATE's transparent wallpapers and the bundled photos under a soft mask, as PNGs."""
    from streamq.examples import source_photos

    out.mkdir(parents=True, exist_ok=True)
    paths = [] if quick else sorted(
        p for p in glob.glob("/usr/share/backgrounds/mate/abstract/*.png")
        if (a := _rgba(p)) is not None and _soft(a[..., 3]) >= 0.01)
    photos = source_photos()
    for name in sorted(photos)[:2] if quick else sorted(photos):
        photo = photos[name]
        if quick:
            photo = np.asarray(Image.fromarray(photo).resize((160, 120), Image.Resampling.BOX))
        rgba = np.dstack([photo, soft_mask(*photo.shape[:2])])
        path = out / f"{name}.png"
        Image.fromarray(rgba).save(path)
        paths.append(str(path))
    return paths


# -- measuring -----------------------------------------------------------------------------------
def premultiplied(rgba: np.ndarray) -> np.ndarray:
    rgba = rgba.astype(np.int64)
    return np.concatenate([(rgba[..., :3] * rgba[..., 3:] + 127) // 255, rgba[..., 3:]], axis=-1)


def psnr_rgba(src: np.ndarray, out: np.ndarray) -> float:
    mse = float(((premultiplied(src) - premultiplied(out)) ** 2).mean())
    return CAP_DB if mse == 0 else min(CAP_DB, 10 * np.log10(255.0 ** 2 / mse))


def _pngquant(args: tuple[str, str, int]) -> None:
    src, dst, k = args
    subprocess.run(["pngquant", "--nofs", "--speed", "3", "--force", "--output", dst, str(k),
                    src], check=True, capture_output=True)


def _streamq_one(args: tuple[str, str, int]) -> None:
    """One image's own palette with streamq's RGBA k-means, written as a palette PNG."""
    from streamq.decode import premultiply
    from streamq.kmeans.rgba import kmeans_rgba
    from streamq.rgba import RgbaLabels, count_rgba, from_metric

    src, dst, k = args
    with Image.open(src) as im:
        rgba = np.asarray(im.convert("RGBA"))
    h, w = rgba.shape[:2]
    rgb, alpha = premultiply(rgba).reshape(-1, 3), rgba[..., 3].reshape(-1)
    codes, counts = count_rgba(rgb, alpha)
    k = min(k, len(codes))
    res = kmeans_rgba(codes, counts, k, n_init=4)
    table = RgbaLabels(from_metric(res["metric_centers"]), res["palette"], res["alpha"],
                       table=False)  # one image: its distinct colours, no 2**24 table
    labels = table.labels_sse(rgb, alpha, np.uint8, np.zeros(0, np.int64))[0].reshape(h, w)
    img = Image.fromarray(labels)
    img.putpalette(res["palette"].reshape(-1).tolist())
    trns = res["alpha"]
    last = int(np.flatnonzero(trns < 255)[-1]) if (trns < 255).any() else -1
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1,
             **({"transparency": bytes(trns[:last + 1].tolist())} if last >= 0 else {}))
    Path(dst).write_bytes(buf.getvalue())


def per_image_round(pool: cf.Executor, fn: Any, paths: list[str], outdir: Path,
                    k: int) -> dict[str, Any]:
    outdir.mkdir(parents=True, exist_ok=True)
    outs = [str(outdir / f"{i:04d}.png") for i in range(len(paths))]
    t0 = time.perf_counter()
    list(pool.map(fn, [(p, o, k) for p, o in zip(paths, outs, strict=True)]))
    seconds = time.perf_counter() - t0
    return {"s": seconds, "images_per_s": len(paths) / seconds, "psnr": [
        psnr_rgba(_rgba(p), _rgba(o)) for p, o in zip(paths, outs, strict=True)]}


def collection_round(paths: list[str], work: Path, k: int, scheduler: str) -> dict[str, Any]:
    """The set as one collection: ingest, fit, quantize, export; PSNR from the PNGs."""
    src = work / f"src-k{k}"
    src.mkdir(parents=True)
    for i, p in enumerate(paths):  # one folder, names in the order of paths
        os.symlink(p, src / f"{i:04d}.png")
    store, out = work / f"store-k{k}.zarr", work / f"out-k{k}"
    t0 = time.perf_counter()
    streamq.ingest(src, store, scheduler=scheduler, progress=False)
    t1 = time.perf_counter()
    fit = streamq.fit(store, colors=k, n_init=4, scheduler=scheduler)
    streamq.quantize(store, scheduler=scheduler, progress=False)
    streamq.export(store, out, scheduler=scheduler, progress=False)
    t2 = time.perf_counter()
    coll = streamq.open_store(store)
    psnr = [psnr_rgba(_rgba(str(src / name)), _rgba(str((out / name).with_suffix(".png"))))
            for name in coll.paths]
    return {"ingest_s": t1 - t0, "s": t2 - t1, "images_per_s": len(paths) / (t2 - t1),
            "psnr": psnr, "fit_seconds": fit.seconds, "stop_reason": fit.stop_reason}


def measure_paths(mpx: float, k: int = 64, repeats: int = 3) -> dict[str, float]:
    """Mpx/s of counting and labelling the same pixels by the 24-bit and the RGBA paths."""
    from streamq.decode import premultiply
    from streamq.examples import source_photos
    from streamq.kmeans.histogram import count_colors
    from streamq.kmeans.table import LabelTable
    from streamq.rgba import RgbaLabels, count_rgba, palette_of

    photos = [p.reshape(-1, 3) for p in source_photos().values()]
    n = int(mpx * 1e6)
    rgb = np.concatenate(photos * (n // sum(len(p) for p in photos) + 1))[:n]
    side = int(np.sqrt(n)) + 1
    alpha = soft_mask(side, side).reshape(-1)[:n]
    prem = premultiply(np.concatenate([rgb, alpha[:, None]], axis=1))
    rng = np.random.default_rng(0)
    centers = np.concatenate([rgb[rng.choice(n, k, replace=False)] / 255.0, np.ones((k, 1))], 1)
    centers[: k // 4, 3] = rng.random(k // 4)
    centers[:, :3] *= centers[:, 3:]
    pal, a = palette_of(centers)
    ends = np.zeros(0, np.int64)

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return n / 1e6 / min(times)

    table = LabelTable(centers[:, :3], pal, "rgb")
    table.labels_sse(rgb, np.uint8, ends)  # filled: the steady state of a worker
    rgba_table = RgbaLabels(centers, pal, a)
    return {"mpx": n / 1e6, "k": k,
            "count_24bit_mpx_s": best(lambda: count_colors(rgb)),
            "count_rgba_mpx_s": best(lambda: count_rgba(prem, alpha)),
            "label_24bit_mpx_s": best(lambda: table.labels_sse(rgb, np.uint8, ends)),
            "label_rgba_mpx_s": best(lambda: rgba_table.labels_sse(prem, alpha, np.uint8, ends))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a few small images and K = 64: checks the script runs")
    ap.add_argument("--colors", default="16,64,256")
    ap.add_argument("--icons", type=int, default=60, help="at most this many icons")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--path-mpx", type=float, default=4.0,
                    help="pixels of the 24-bit vs RGBA path measurement (a store's shard: 4 Mpx)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    if shutil.which("pngquant") is None:
        sys.exit("pngquant is not installed: apt-get install pngquant")
    ks = [64] if args.quick else [int(k) for k in args.colors.split(",")]
    speeds = measure_paths(0.5 if args.quick else args.path_mpx)
    print("counting / labelling, Mpx/s: " + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()),
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="streamq-alpha-"))
    sets = {"icons": find_icons(4 if args.quick else args.icons),
            "cutouts": make_cutouts(work / "cutouts", args.quick)}
    for name, paths in sets.items():
        mpx = sum(_rgba(p).shape[0] * _rgba(p).shape[1] for p in paths) / 1e6
        print(f"{name}: {len(paths)} images, {mpx:.2f} Mpx", flush=True)
    from distributed import LocalCluster

    result: dict[str, Any] = {"sets": {n: p for n, p in sets.items()}, "rows": [],
                              "paths": speeds}
    rows = []
    with cf.ProcessPoolExecutor(args.workers) as pool, \
            LocalCluster(n_workers=args.workers, threads_per_worker=1,
                         dashboard_address=":0") as cluster:
        warm = sets["icons"][:1] * args.workers  # imports and numba in every process
        for k in sorted({4, max(ks)}):  # (the kernels of large K too: k-means++'s tree)
            per_image_round(pool, _streamq_one, warm, work / "warm", k)
        per_image_round(pool, _pngquant, warm, work / "warm", 4)
        for name, paths in sets.items():
            for k in ks:
                row = {"set": name, "k": k, "n": len(paths)}
                row["pngquant"] = per_image_round(pool, _pngquant, paths, work / f"pq-{name}-{k}", k)
                row["streamq_per_image"] = per_image_round(pool, _streamq_one, paths,
                                                           work / f"sq-{name}-{k}", k)
                row["streamq_collection"] = collection_round(paths, work / f"coll-{name}", k,
                                                             cluster.scheduler_address)
                result["rows"].append(row)
                cells = [name, k, len(paths)]
                for m in ("pngquant", "streamq_per_image", "streamq_collection"):
                    cells += [f"{statistics.mean(row[m]['psnr']):.2f}",
                              f"{row[m]['images_per_s']:.1f}"]
                rows.append(cells)
                print(" | ".join(map(str, cells)), flush=True)
    header = ["set", "K", "images", "pngquant dB", "pngquant img/s", "streamq per-image dB",
              "per-image img/s", "streamq shared dB", "shared img/s"]
    table = markdown_table(header, rows)
    paths_table = markdown_table(
        ["pixels", "count 24-bit", "count RGBA", "label 24-bit", "label RGBA"],
        [[f"{speeds['mpx']:.1f} Mpx, K={speeds['k']}"] + [f"{speeds[k]:.1f} Mpx/s" for k in (
            "count_24bit_mpx_s", "count_rgba_mpx_s", "label_24bit_mpx_s", "label_rgba_mpx_s")]])
    print(table + "\n\n" + paths_table)
    write_results(args.json, result, args.markdown, table + "\n\n" + paths_table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
