"""The headline run: an LFW-sized folder of JPEGs to 64-colour palette PNGs, end to end.

The collection has LFW's shape: 13,233 JPEGs of 250 x 250 (827 Mpx) in ``<Name>/<Name>_NNNN.jpg``
folders of 5,749 names with LFW-like skewed counts (each name has one image plus a share of the
rest drawn from a Zipf-Mandelbrot law, p(rank) ~ (rank + 2) ** -1.15, seeded: with seed 0,
4,092 names with one image, 110 with 10 or more and a largest name of 525, where LFW has
4,069, 158 and 530). Each image is a random square crop of a photo bundled with installed
packages (scikit-learn, matplotlib, scikit-image), resized to 250 x 250 and saved at JPEG
quality 90; image ``i`` depends only on ``(--seed, i)``. Built once on all cores and cached in
``--workdir``.

Then, timed end to end and per stage, what ``streamq run`` does: one Dask cluster for the whole
pipeline (the default local cluster a user gets, whose fit runs on threads of this process,
or ``--scheduler ADDRESS``), ingest, fit
(K = 64, mini-batch, the defaults), quantize, export to palette PNGs; the store and the PNGs
are deleted afterwards. With ``--repeats N`` every stage is run N times from an empty store and
the medians are reported. Peak RSS of this process and all its children (local cluster: the
scheduler and nannies live in this process, the workers are children) is sampled every
``--interval`` s (with ``--scheduler``, the workers are not our children: only this process).

The palette is checked against exact Lloyd run to convergence on the same store
(``streamq.fit(..., algorithm="lloyd")``, best of ``--lloyd-n-init`` k-means++ starts on the
colour histogram, as ``benchmarks/fit.py`` does): both MSEs over every pixel of the collection
from ``streamq.collection_mse`` (exact), and their ratio. Targets: end to end <= 90 s on a
2-core machine, MSE ratio <= 1.005.

Run from the repository root (smoke run: ``--images 300``)::

    python benchmarks/lfw_scale.py --repeats 3 --out /tmp/streamq-bench/lfw
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TreeSampler,
    du,
    exit_on_signals,
    git_commit,
    kill_descendants,
    markdown_table,
    median,
)

import streamq  # noqa: E402
from streamq.config import parse_config  # noqa: E402
from streamq.examples import source_photos  # noqa: E402
from streamq.scheduler import runner, shared  # noqa: E402

LFW_IMAGES, LFW_NAMES, SIDE = 13_233, 5_749, 250
ZIPF_S, ZIPF_Q = 1.15, 2.0
GENERATOR = "lfw-scale-2"  # change when the images change, so caches are rebuilt
TIME_TARGET, MSE_TARGET = 90.0, 1.005
STAGES = ("cluster start", "ingest", "fit", "quantize", "export", "cluster close")
GiB = 2**30


# -- the collection --------------------------------------------------------------------------
def lfw_counts(n_images: int, n_names: int, seed: int) -> np.ndarray:
    """Images per name: one each, plus the rest drawn from a Zipf-Mandelbrot law (seeded)."""
    if not 1 <= n_names <= n_images:
        raise SystemExit(f"--names must be in 1..{n_images}, got {n_names}")
    rng = np.random.default_rng([seed, 1])
    p = (np.arange(1, n_names + 1) + ZIPF_Q) ** -ZIPF_S
    extra = rng.multinomial(n_images - n_names, p / p.sum())
    return 1 + extra[rng.permutation(n_names)]  # big names anywhere in the alphabet


_PHOTOS: list[np.ndarray] = []


def _load_photos() -> None:
    _PHOTOS[:] = [v for _, v in sorted(source_photos().items())]


def _make_images(args: tuple[str, int, list[tuple[int, str]]]) -> int:
    """Write images ``(i, relative path)``: image i from the generator seeded ``(seed, i)``."""
    root, seed, items = args
    if not _PHOTOS:
        _load_photos()
    for i, rel in items:
        rng = np.random.default_rng([seed, 0, i])
        photo = _PHOTOS[int(rng.integers(len(_PHOTOS)))]
        ph, pw = photo.shape[:2]
        short = min(ph, pw)
        side = int(rng.integers(min(125, short), short + 1))
        y = int(rng.integers(0, ph - side + 1))
        x = int(rng.integers(0, pw - side + 1))
        crop = photo[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop))
        if side != SIDE:
            img = img.resize((SIDE, SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, quality=90)
    return len(items)


def build_lfw(workdir: Path, n_images: int, n_names: int, seed: int,
              procs: int | None = None) -> tuple[Path, dict[str, Any]]:
    """The cached LFW-shaped collection and a description of it."""
    root = workdir / f"lfw-{n_images}-{n_names}-s{seed}"
    marker = root / ".complete"
    counts = lfw_counts(n_images, n_names, seed)
    desc = {"images": n_images, "names": n_names, "seed": seed, "generator": GENERATOR,
            "names_with_one_image": int((counts == 1).sum()), "largest_name": int(counts.max()),
            "names_with_10_or_more": int((counts >= 10).sum())}
    if marker.is_file() and json.loads(marker.read_text()) == desc:
        return root, desc
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    width = len(str(n_names))
    rels = []
    for j, c in enumerate(counts):
        name = f"Person_{j + 1:0{width}d}"
        rels += [f"{name}/{name}_{k + 1:04d}.jpg" for k in range(int(c))]
    items = list(enumerate(rels))
    procs = procs or os.cpu_count() or 1
    step = max(1, -(-len(items) // (8 * procs)))
    tasks = [(str(root), seed, items[a:a + step]) for a in range(0, len(items), step)]
    with cf.ProcessPoolExecutor(procs, mp_context=mp.get_context("fork"),
                                initializer=_load_photos) as pool:
        written = sum(pool.map(_make_images, tasks))
    assert written == n_images
    marker.write_text(json.dumps(desc))
    print(f"built {n_images} JPEGs of {n_names} names in {root} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return root, desc


# -- one end-to-end run ------------------------------------------------------------------------
def run_once(src: Path, store: Path, out: Path, args: argparse.Namespace,
             sampler: TreeSampler, tag: str) -> dict[str, Any]:
    """``streamq run``'s pipeline on one cluster (the fit on threads of this process, as
    ``streamq.scheduler.runner`` gives it), each stage timed (as streamq.pipeline.run)."""
    cfg = parse_config({"store": str(store), "ingest": {"source": str(src)},
                        "fit": {"colors": args.colors, "seed": args.seed},
                        "export": {"out": str(out)},
                        "dask": {"scheduler": args.scheduler}})
    times: dict[str, float] = {}
    summaries: dict[str, Any] = {}
    peaks: dict[str, Any] = {}

    @contextlib.contextmanager
    def stage(name: str):  # type: ignore[no-untyped-def]
        key = f"{tag}/{name}"
        t0 = time.perf_counter()
        with sampler.stage(key):
            yield
        times[name] = time.perf_counter() - t0
        peaks[name] = sampler.result(key)

    t_all = time.perf_counter()
    with contextlib.ExitStack() as stack:
        with stage("cluster start"):
            run = stack.enter_context(runner(cfg.dask))
            stack.enter_context(shared(run))
        try:
            with stage("ingest"):
                summaries["ingest"] = streamq.ingest(None, None, config=cfg, progress=False)
            with stage("fit"):
                summaries["fit"] = streamq.fit(cfg.store, config=cfg, progress=False)
            with stage("quantize"):
                summaries["quantize"] = streamq.quantize(cfg.store, config=cfg, progress=False)
            with stage("export"):
                summaries["export"] = streamq.export(cfg.store, str(out), config=cfg,
                                                     progress=False)
        finally:
            t_close = time.perf_counter()
            with sampler.stage(f"{tag}/cluster close"):
                stack.close()
            times["cluster close"] = time.perf_counter() - t_close
            peaks["cluster close"] = sampler.result(f"{tag}/cluster close")
    times["end to end"] = time.perf_counter() - t_all
    return {"times": times, "summaries": {k: v.to_dict() for k, v in summaries.items()},
            "mse": summaries["quantize"].mse, "png_bytes": du(out),
            "store_bytes": du(store), "peaks": {k: _peaks(v) for k, v in peaks.items()},
            "cpu_s": {k: sum(v["cpu_s"].values()) for k, v in peaks.items()}}


def _peaks(stats: dict[str, Any]) -> dict[str, int]:
    roles = stats["peak_role"]
    children = [v for k, v in roles.items() if k != "client"]
    return {"total": stats["peak_total"], "client": roles.get("client", 0),
            "largest_child": max(children, default=0)}


def reference(store: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Exact Lloyd on the same store, and both palettes' MSE over every pixel."""
    mb = streamq.load_fit(str(store))
    t0 = time.perf_counter()
    ref = streamq.fit(str(store), colors=args.colors, algorithm="lloyd",
                      n_init=args.lloyd_n_init, seed=args.seed, overwrite=True, progress=False,
                      scheduler=args.scheduler)
    lloyd_s = time.perf_counter() - t0
    mse_ref = streamq.collection_mse(str(store), ref.centers, ref.color_space)
    mse_mb = streamq.collection_mse(str(store), mb.centers, mb.color_space)
    return {"lloyd_s": lloyd_s, "lloyd_iterations": ref.steps, "lloyd_stop": ref.stop_reason,
            "lloyd_n_init": args.lloyd_n_init, "mse_lloyd": mse_ref, "mse_minibatch": mse_mb,
            "ratio": mse_mb / mse_ref}


# -- main --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=LFW_IMAGES, help="images (LFW: 13233)")
    ap.add_argument("--names", type=int, default=None,
                    help="names (folders); default LFW's 5749 names per 13233 images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the collection and of the fit")
    ap.add_argument("--colors", type=int, default=64, help="palette size K")
    ap.add_argument("--repeats", type=int, default=1, help="end-to-end runs; medians reported")
    ap.add_argument("--scheduler", default=None,
                    help="address of a running Dask scheduler (default: a local cluster)")
    ap.add_argument("--lloyd-n-init", type=int, default=3, help="k-means++ starts of the reference")
    ap.add_argument("--no-reference", action="store_true", help="skip the exact Lloyd check")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, s")
    ap.add_argument("--build-procs", type=int, default=None, help="processes building photos")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"),
                    help="photo cache and (temporary) stores")
    ap.add_argument("--out", type=Path, default=None, help="write lfw_scale.json and .md here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    names = args.names or max(1, round(args.images * LFW_NAMES / LFW_IMAGES))
    exit_on_signals()
    os.environ.pop("STREAMQ_SCHEDULER", None)  # no --scheduler must mean the local cluster
    args.workdir.mkdir(parents=True, exist_ok=True)
    src, desc = build_lfw(args.workdir, args.images, names, args.seed, args.build_procs)
    n_pixels = args.images * SIDE * SIDE
    jpeg_bytes = du(src) - du(src / ".complete")
    print(f"collection: {args.images} JPEGs, {names} names ({desc['names_with_one_image']} with "
          f"one image, largest {desc['largest_name']}), {n_pixels / 1e6:.1f} Mpx, "
          f"{jpeg_bytes / 1e6:.0f} MB of JPEG", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="lfw-run-", dir=args.workdir))
    runs: list[dict[str, Any]] = []
    ref: dict[str, Any] | None = None
    t_bench = time.perf_counter()
    try:
        with TreeSampler(args.interval) as sampler:
            for r in range(args.repeats):
                store, out = run_dir / "lfw.zarr", run_dir / "png"
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                res = run_once(src, store, out, args, sampler, f"run {r}")
                runs.append(res)
                t = res["times"]
                print(f"run {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
                      + f"; MSE {res['mse']:.3f}; peak RSS "
                      f"{max(p['total'] for p in res['peaks'].values()) / GiB:.2f} GiB",
                      flush=True)
            if not args.no_reference:
                print("exact Lloyd reference on the same store (untimed) ...", flush=True)
                ref = reference(run_dir / "lfw.zarr", args)
                print(f"Lloyd: {ref['lloyd_s']:.1f} s, {ref['lloyd_iterations']} iterations; "
                      f"MSE mini-batch {ref['mse_minibatch']:.3f} / Lloyd {ref['mse_lloyd']:.3f}"
                      f" = {ref['ratio']:.4f}", flush=True)
    finally:
        left = kill_descendants()
        if left:
            print(f"killed leftover processes {left}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    bench_s = time.perf_counter() - t_bench

    med = {k: median([r["times"][k] for r in runs]) for k in (*STAGES, "end to end")}
    mpx = n_pixels / 1e6
    where = args.scheduler or "the default local cluster"
    head = (f"**LFW-sized collection**: {args.images:,} JPEGs of {SIDE}x{SIDE} in {names:,} name "
            f"folders ({desc['names_with_one_image']:,} with one image, largest "
            f"{desc['largest_name']}), {mpx:,.1f} Mpx, {jpeg_bytes / 1e6:,.0f} MB of JPEG; "
            f"K = {args.colors}; {where}; {os.cpu_count()} cores; median of {args.repeats} "
            f"run(s)" + ("; peak RSS of this process only" if args.scheduler else "") + "\n")
    rows = []
    for k in STAGES:
        peak = max(r["peaks"][k]["total"] for r in runs)
        rate = f"{mpx / med[k]:.1f}" if k in ("ingest", "fit", "quantize", "export") else "—"
        rows.append([k, f"{med[k]:.2f}", rate, f"{peak / GiB:.2f}"])
    peak_all = max(p["total"] for r in runs for p in r["peaks"].values())
    rows.append(["**end to end**", f"**{med['end to end']:.2f}**",
                 f"**{mpx / med['end to end']:.1f}**", f"{peak_all / GiB:.2f}"])
    md = [head, markdown_table(["stage", "wall s", "Mpx/s", "peak RSS GiB (all processes)"],
                               rows), ""]
    e2e = med["end to end"]
    md.append(f"- end to end: {e2e:.1f} s (target <= {TIME_TARGET:.0f} s: "
              f"{'met' if e2e <= TIME_TARGET else 'NOT met'}); runs: "
              + ", ".join(f"{r['times']['end to end']:.1f}" for r in runs) + " s")
    md.append("- collection MSE after quantize (exact, every pixel): "
              + ", ".join(f"{r['mse']:.3f}" for r in runs))
    if ref is not None:
        md.append(f"- palette vs exact Lloyd (best of {ref['lloyd_n_init']} starts, "
                  f"{ref['lloyd_iterations']} iterations, {ref['lloyd_s']:.0f} s): MSE "
                  f"{ref['mse_minibatch']:.3f} vs {ref['mse_lloyd']:.3f}, ratio "
                  f"**{ref['ratio']:.4f}** (target <= {MSE_TARGET}: "
                  f"{'met' if ref['ratio'] <= MSE_TARGET else 'NOT met'}); the same palette's "
                  f"MSE from quantize's labels: {runs[-1]['mse']:.3f} (must equal "
                  f"collection_mse's {ref['mse_minibatch']:.3f})")
    md.append(f"- PNGs: {runs[-1]['png_bytes'] / 1e6:,.0f} MB "
              f"({runs[-1]['png_bytes'] / n_pixels:.3f} bytes/px); store "
              f"{runs[-1]['store_bytes'] / 1e6:,.0f} MB")
    text = "\n".join(md)
    print("\n" + text, flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "streamq": streamq.__version__,
                    "memory_bytes": psutil.virtual_memory().total, "git": git_commit()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "collection": {**desc, "n_pixels": n_pixels, "jpeg_bytes": jpeg_bytes, "path": str(src)},
        "median_s": med, "runs": runs, "reference": ref, "benchmark_s": bench_s,
        "targets": {"end_to_end_s": TIME_TARGET, "mse_ratio": MSE_TARGET,
                    "end_to_end_met": e2e <= TIME_TARGET,
                    "mse_ratio_met": None if ref is None else ref["ratio"] <= MSE_TARGET},
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lfw_scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / "lfw_scale.md").write_text(text + "\n")
        print(f"wrote {args.out / 'lfw_scale.json'} and {args.out / 'lfw_scale.md'}")
    return result


if __name__ == "__main__":
    main()
