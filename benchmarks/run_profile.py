"""Where ``streamq run``'s time goes: per stage, per task, and inside the tasks.

The companion of ``benchmarks/run_floor.py`` (same folder, same config: the defaults plus
``fit.colors`` and palette-PNG export). Two parts:

1. **The pipeline on one cluster, in this process** (as ``streamq.pipeline.run`` does:
   one default LocalCluster shared by all stages), each stage timed, with Dask's task stream
   recorded: per stage and task function, the number of tasks, their summed compute seconds
   (what the workers were busy with), the median/max task, and the workers' utilisation
   (busy seconds / (workers x stage wall)); the rest of a stage's wall is the client's work
   (planning, model updates, consolidation) and waiting. Plus the fixed costs: cluster start
   and close, and the first task on each fresh worker (imports, compiled code loading).
2. **Inside the tasks** (``--sample-tasks`` of each kind, rerun in this process on the
   finished store under ``cProfile``; the first call is a warm-up): for ingest's write task,
   fit's histogram task, quantize's task and export's task, the functions with the most own
   time (``tottime``), so read / decode / compress / encode / file create are separated.
   Export's sample writes into a scratch folder; ingest's rewrites its shards with the same
   bytes.

Page cache as ``run_floor.py`` (``--cache cold``: the JPEGs are evicted before the run).

Run from the repository root::

    flock /tmp/streamq-bench.lock python benchmarks/run_profile.py --json /tmp/streamq-bench/run_profile.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import exit_on_signals, git_commit, kill_descendants, markdown_table  # noqa: E402
from run_floor import DEFAULT_SRC, evict, list_images, read_all  # noqa: E402

import streamq  # noqa: E402
from streamq.config import parse_config  # noqa: E402
from streamq.scheduler import library_versions, runner, shared  # noqa: E402

STAGES = ("ingest", "fit", "quantize", "export")


def _func_name(key: str) -> str:
    from dask.utils import key_split

    return key_split(key)


def task_stream_summary(records: list[dict[str, Any]], wall: float, n_workers: int
                        ) -> dict[str, Any]:
    """Per task function: count, compute seconds, median and max task; utilisation."""
    by: dict[str, list[float]] = {}
    other: dict[str, float] = {}
    first: dict[str, float] = {}
    t_min = min((s["start"] for r in records for s in r["startstops"]), default=0.0)
    for r in records:
        name = _func_name(str(r["key"]))
        for s in r["startstops"]:
            d = s["stop"] - s["start"]
            if s["action"] == "compute":
                by.setdefault(name, []).append(d)
                w = r.get("worker", "?")
                first[w] = min(first.get(w, float("inf")), s["start"] - t_min)
            else:
                other[s["action"]] = other.get(s["action"], 0.0) + d
    busy = sum(sum(v) for v in by.values())
    return {"functions": {k: {"tasks": len(v), "compute_s": sum(v),
                              "median_s": statistics.median(v), "max_s": max(v)}
                          for k, v in by.items()},
            "other_actions_s": other, "busy_s": busy,
            "utilisation": busy / (n_workers * wall) if wall > 0 else float("nan")}


def profile_calls(fn: Any, calls: list[Any], top: int) -> dict[str, Any]:
    """``fn(*call)`` for each call under cProfile (after one unprofiled warm-up call)."""
    if not calls:
        return {}
    fn(*calls[0])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for c in calls[1:] or calls[:1]:
        fn(*c)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    rows = []
    for (file, _line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{func}"
        rows.append((tt, ct, nc, where))
    rows.sort(reverse=True)
    n = max(1, len(calls[1:] or calls[:1]))
    return {"calls": n, "wall_s_per_call": wall / n,
            "top": [{"function": w, "tottime_s_per_call": tt / n, "cumtime_s_per_call": ct / n,
                     "ncalls_per_call": nc / n} for tt, ct, nc, w in rows[:top]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of JPEGs")
    ap.add_argument("--colors", type=int, default=64, help="palette size (fit.colors)")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold")
    ap.add_argument("--sample-tasks", type=int, default=4, help="tasks of each kind profiled")
    ap.add_argument("--top", type=int, default=15, help="functions listed per task kind")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    exit_on_signals()
    os.environ.pop("STREAMQ_SCHEDULER", None)
    from distributed import get_task_stream

    src = args.src.resolve()
    paths = [os.path.join(src, r) for r in list_images(src)]
    run_dir = Path(tempfile.mkdtemp(prefix="run-profile-", dir=args.workdir))
    store, out = run_dir / "store.zarr", run_dir / "png"
    cfg = parse_config({"store": str(store), "ingest": {"source": str(src)},
                        "fit": {"colors": args.colors}, "export": {"out": str(out)}})
    if args.cache == "cold":
        os.sync()
        evict(paths)
    else:
        read_all(paths)
    walls: dict[str, float] = {}
    streams: dict[str, Any] = {}
    inside: dict[str, Any] = {}
    try:
        t_all = time.perf_counter()
        t0 = time.perf_counter()
        with runner(cfg.dask) as run, shared(run):
            walls["cluster start"] = time.perf_counter() - t0
            n_workers = run.n_workers
            calls = {"ingest": lambda: streamq.ingest(None, None, config=cfg, progress=False),
                     "fit": lambda: streamq.fit(cfg.store, config=cfg, progress=False),
                     "quantize": lambda: streamq.quantize(cfg.store, config=cfg, progress=False),
                     "export": lambda: streamq.export(cfg.store, str(out), config=cfg,
                                                      progress=False)}
            for s in STAGES:
                with get_task_stream(run.client) as ts:
                    t0 = time.perf_counter()
                    summary = calls[s]()
                    walls[s] = time.perf_counter() - t0
                streams[s] = task_stream_summary(ts.data, walls[s], n_workers)
                inside[s] = getattr(summary, "timings", {})
                f = streams[s]["functions"]
                print(f"{s}: {walls[s]:.2f} s, workers busy {streams[s]['busy_s']:.1f} s "
                      f"({streams[s]['utilisation']:.0%}); "
                      + ", ".join(f"{k} x{v['tasks']} {v['compute_s']:.1f} s (median "
                                  f"{v['median_s']:.3f}, max {v['max_s']:.2f})"
                                  for k, v in f.items()), flush=True)
            t0 = time.perf_counter()
        walls["cluster close"] = time.perf_counter() - t0
        walls["end to end"] = time.perf_counter() - t_all
        from streamq.store import Store

        st = Store.open(str(store))
        for s in ("ingest", "fit", "quantize"):
            inside[s] = st.section(s).get("timings", inside.get(s, {}))
        print("walls: " + ", ".join(f"{k} {v:.2f}" for k, v in walls.items()), flush=True)
        prof = profile_tasks(st, cfg, args, run_dir)
    finally:
        left = kill_descendants()
        if left:
            print(f"killed leftover processes {left}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    md = [markdown_table(["stage", "wall s", "task function", "tasks", "compute s (sum)",
                          "median task s", "max task s", "worker utilisation"],
                         [[s, f"{walls[s]:.2f}", k, v["tasks"], f"{v['compute_s']:.1f}",
                           f"{v['median_s']:.3f}", f"{v['max_s']:.2f}",
                           f"{streams[s]['utilisation']:.0%}"]
                          for s in STAGES for k, v in streams[s]["functions"].items()]), ""]
    for kind, p in prof.items():
        if not p:
            continue
        md.append(f"**{kind}** ({p['calls']} calls, {p['wall_s_per_call']:.3f} s each under "
                  "cProfile): " + "; ".join(f"{r['function']} {r['tottime_s_per_call']:.3f}"
                                            for r in p["top"]))
    text = "\n".join(md)
    print("\n" + text, flush=True)
    result = {"command": " ".join(["python", *sys.argv]), "git": git_commit(),
              "versions": library_versions(), "loadavg_end": os.getloadavg(),
              "settings": {k: str(v) for k, v in vars(args).items()}, "walls_s": walls,
              "inside_s": inside, "task_streams": streams, "profiles": prof}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.json}", flush=True)
    return result


def profile_tasks(st: Any, cfg: Any, args: argparse.Namespace, run_dir: Path
                  ) -> dict[str, Any]:
    """cProfile of a few tasks of each stage, run in this process on the finished store."""
    import importlib

    ex = importlib.import_module("streamq.export.files")  # the modules, not the functions the
    ing = importlib.import_module("streamq.ingest.task")  # package re-exports under their names
    qz = importlib.import_module("streamq.quantize.shared")
    from streamq.batches import PixelSource
    from streamq.export import safe_output_path
    from streamq.export.write import export_images
    from streamq.fit import load_fit
    from streamq.fs import location
    from streamq.ingest.sources import SourceRoot
    from streamq.store import PLAN, TASKS, Collection
    from streamq.store.histogram import PIXELS_PER_TASK, _count_task

    n = args.sample_tasks + 1  # the first is the warm-up
    coll = Collection(st)
    out: dict[str, Any] = {}

    # ingest: _write_task rewrites its shard with the same bytes
    plan = st.read_table(PLAN, ("path", "offset", "height", "width"))
    tasks = st.read_table(TASKS, ("chunk_start", "chunk_stop"))
    chunk, _ = st.pixel_layout()
    offsets, sizes = plan["offset"], plan["height"] * plan["width"]
    ends, total = offsets + sizes, int(sizes.sum())
    root = st.section("ingest")["root"]
    ingest_calls = []
    for t in np.linspace(0, len(tasks["chunk_start"]) - 2, n).astype(int):
        a = int(tasks["chunk_start"][t]) * chunk
        b = min(int(tasks["chunk_stop"][t]) * chunk, total)
        lo = int(np.searchsorted(ends, a, side="right"))
        hi = int(np.searchsorted(offsets, b, side="left"))
        images = [(i, str(plan["path"][i]), int(offsets[i]), int(plan["height"][i]),
                   int(plan["width"][i])) for i in range(lo, hi)]
        ingest_calls.append(({"store": st.location, "task": int(t), "source": SourceRoot(root),
                              "px_start": a, "px_stop": b, "images": images,
                              "max_pixels": cfg.ingest.max_pixels,
                              "background": list(cfg.ingest.background)},))
    if args.cache == "cold":
        evict([os.path.join(root, str(p)) for p in plan["path"]])
    out["ingest write task"] = profile_calls(ing._write_task, ingest_calls, args.top)

    source = PixelSource.of_collection(coll)
    step = max(1, PIXELS_PER_TASK // source.chunk)
    nb = len(source.weights)
    starts = np.linspace(0, max(0, nb - step - 1), n).astype(int)
    out["fit histogram task"] = profile_calls(
        _count_task, [((source, int(c), min(int(c) + step, nb), False),) for c in starts],
        args.top)

    fit = load_fit(st.location)
    fit_fp = st.section("fit")["fingerprint"]
    qchunk, _ = st.pixel_layout()
    n_chunks = -(-int(st.pixels().shape[0]) // qchunk)
    common = {"store": st.location, "chunk": qchunk, "fit_fingerprint": fit_fp,
              "space": fit.color_space, "centers": fit.centers.tolist(),
              "palette": fit.palette.tolist(), "ssim": cfg.quantize.ssim}
    q_calls = []
    for c in np.linspace(0, n_chunks - 1, n).astype(int):
        images = coll.overlapping(int(c) * qchunk, (int(c) + 1) * qchunk)
        shapes = [[int(coll.heights[i]), int(coll.widths[i])] for i, _, _ in images]
        q_calls.append(({**common, "chunk_index": int(c), "images": images, "shapes": shapes},))
    out["quantize task"] = profile_calls(qz._quantize_task, q_calls, args.top)

    scratch = run_dir / "png-profile"
    tmp_dir = scratch / ex.TMP_DIR
    tmp_dir.mkdir(parents=True)
    groups = coll.groups_by_pixels(range(len(coll)), ex.PIXELS_PER_TASK)
    e_common = {"store": st.location, "out": location(str(scratch)),
                "palette": fit.palette.tolist(), "per_image": None, "format": "png",
                "dither": False, "options": {"compress_level": cfg.export.png_level},
                "tmp_dir": str(tmp_dir)}
    e_calls = []
    for g in np.linspace(0, len(groups) - 1, n).astype(int):
        items = [(i, safe_output_path(str(scratch), coll.paths[i], ".png", f"{i:08d}"),
                  int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i]))
                 for i in groups[g]]
        e_calls.append(({**e_common, "images": items}, None))
    out["export task"] = profile_calls(export_images, e_calls, args.top)
    return out


if __name__ == "__main__":
    main()
