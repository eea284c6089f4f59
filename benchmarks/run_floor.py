"""``streamq run`` against the I/O floor: folder of JPEGs -> 64-colour palette PNGs.

In one run, on the same folder and from the same page-cache state, each repeat measures:

- **the I/O floor**: a process pool (``--procs``, default 2) that only decodes every JPEG
  (Pillow, to a numpy RGB array as ingest does) and writes, for each, a palette PNG (mode
  ``P``, a ``--colors``-colour palette) of a trivial label image -- all zeros, the image's
  size -- at the zlib level of streamq's export (``export.png_level``, default read from
  :class:`streamq.config.ExportConfig`), into a tree mirroring the source
  (``Name/Name_0001.jpg`` -> ``OUT/Name/Name_0001.png``), as the export does. Timed as a
  whole (pool start included), and its two parts alone: **decode only** (decode and discard)
  and **write only** (no source read: sizes come from an untimed header scan);
- **streamq run**: the CLI ``streamq -v run CONFIG.yaml --json`` in a subprocess, the way a
  user runs it, from an empty store and an empty output folder. The config is the defaults
  plus ``fit.colors`` and ``export.out`` (palette PNGs). End to end is the subprocess's wall
  time (interpreter start and imports included). Stage walls come from the time this process
  receives each ``-v`` log line: *start* ends at "Started a local Dask cluster", each stage
  (ingest, fit, quantize, export) ends at its last log line, *close* is the rest until the
  process exits. The timings inside the stages are read from the store's sections (ingest,
  fit, quantize: ``timings``) and the run's JSON report (export).

Then the ratios: run / floor end to end; ingest / floor decode-only; export / floor
write-only; fit and quantize have no floor counterpart (their share of the run is shown).

Page cache: by default (``--cache cold``) every source JPEG is evicted from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)`` on each file: only these files, nothing of other
programs) before every timed pass that reads them, so each pass reads the folder from disk
as a user's first run would; ``fincore`` on a sample checks that nothing stayed resident.
``--cache warm`` instead reads every file once before the first pass (all passes then read
from memory). Written files are not synced inside a pass (neither the floor's nor streamq's);
``sync`` runs before every pass; every pass writes into a folder of its own, and all are
deleted at the end (a deletion between passes would overlap the next pass's writes with the
filesystem's discards).

Each pass also records the load average before it and the CPU seconds other programs used
during it (machine busy time from ``/proc/stat`` minus ours), since the machine is shared.
Medians over ``--repeats`` are reported. Output: a Markdown table (``--md``) and JSON
(``--json``: command, git commit, library versions, every pass).

The ``streamq run`` it starts imports the streamq this script imports (its folder first on
the subprocess's ``PYTHONPATH``): ``PYTHONPATH=TREE`` measures that tree, whichever copy of
the script runs.

Run from the repository root (wrap heavy runs in the shared lock)::

    flock /tmp/streamq-bench.lock python benchmarks/run_floor.py --repeats 3 \\
        --json /tmp/streamq-bench/run_floor.json --md /tmp/streamq-bench/run_floor.md
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    du,
    evict,
    exit_on_signals,
    git_commit,
    kill_descendants,
    markdown_table,
    median,
    write_results,
)

import streamq  # noqa: E402
from streamq.config import ExportConfig  # noqa: E402
from streamq.scheduler import library_versions  # noqa: E402

#: The folder that holds the streamq this process imported (a worktree on PYTHONPATH, or the
#: installed one): the ``streamq run`` it starts imports the same
STREAMQ_ROOT = Path(streamq.__file__).resolve().parent.parent
DEFAULT_SRC = Path("/tmp/streamq-bench/photoset-13233-250-s0")
IMAGE_EXTS = (".jpg", ".jpeg")
STAGES = ("start", "ingest", "fit", "quantize", "export", "close")
# Timer names (``streamq.console.timer``, logged by the "streamq" logger) -> stage.
_TIMER_STAGE = {"listing inputs": "ingest", "scanning headers": "ingest", "planning": "ingest",
                "decoding and writing": "ingest", "histogram": "fit", "labelling": "quantize",
                "exporting": "export"}


# -- the folder ---------------------------------------------------------------------------
def list_images(src: Path) -> list[str]:
    """Relative paths of the JPEGs under ``src``, sorted (streamq's order too)."""
    out = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        out += [os.path.relpath(os.path.join(root, f), src) for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTS)]
    return sorted(out)


def _sizes(args: tuple[str, list[str]]) -> list[tuple[int, int]]:
    from PIL import Image

    src, rels = args
    out = []
    for rel in rels:
        with Image.open(os.path.join(src, rel)) as im:
            out.append(im.size)
    return out


def read_all(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            n += len(fh.read())
    return n


def resident_fraction(paths: list[str], sample: int = 400) -> float | None:
    """Share of the bytes of (a spread sample of) ``paths`` in the page cache (``fincore``)."""
    step = max(1, len(paths) // sample)
    some = paths[::step]
    try:
        res = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *some],
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(int(x) for x in res) / max(1, sum(os.path.getsize(p) for p in some))


# -- the floor ----------------------------------------------------------------------------
def _floor_task(args: dict[str, Any]) -> dict[str, float]:
    """Decode and/or write one group of images; CPU-side seconds of each part."""
    from PIL import Image

    mode, src, out, level = args["mode"], args["src"], args["out"], args["level"]
    palette = args["palette"]
    t_dec = t_enc = 0.0
    made: set[str] = set()
    for rel, (w, h) in args["items"]:
        if mode != "write":
            t0 = time.perf_counter()
            with Image.open(os.path.join(src, rel)) as im:
                im.load()
                rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            w, h = rgb.shape[1], rgb.shape[0]
            t_dec += time.perf_counter() - t0
        if mode != "decode":
            t0 = time.perf_counter()
            path = os.path.join(out, os.path.splitext(rel)[0] + ".png")
            folder = os.path.dirname(path)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            img = Image.fromarray(np.zeros((h, w), np.uint8))  # mode L ...
            img.putpalette(palette)  # ... becomes P, as in streamq.export
            img.save(path, format="PNG", compress_level=level)
            t_enc += time.perf_counter() - t0
    return {"decode_s": t_dec, "write_s": t_enc}


def floor_pass(mode: str, src: Path, out: Path, items: list[tuple[str, tuple[int, int]]],
               procs: int, level: int, colors: int, per_task: int) -> dict[str, Any]:
    """One timed pass of the pool (start and shutdown included)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (colors, 3), dtype=np.uint8).reshape(-1).tolist()
    tasks = [{"mode": mode, "src": str(src), "out": str(out), "level": level,
              "palette": palette, "items": items[a:a + per_task]}
             for a in range(0, len(items), per_task)]
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(procs, mp_context=mp.get_context("fork")) as pool:
        parts = list(pool.map(_floor_task, tasks))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "decode_cpu_s": sum(p["decode_s"] for p in parts),
            "write_cpu_s": sum(p["write_s"] for p in parts), "tasks": len(tasks)}


# -- streamq run --------------------------------------------------------------------------
def streamq_command() -> list[str]:
    """The ``streamq`` console script of this interpreter (not a shell shim)."""
    script = Path(sys.executable).parent / "streamq"
    if script.is_file():
        return [str(script)]
    found = shutil.which("streamq")
    if found:
        return [found]
    return [sys.executable, "-c", "from streamq.cli.main import main; main()"]


def write_config(path: Path, src: Path, store: Path, out: Path, colors: int) -> None:
    path.write_text(f"store: {store}\ningest:\n  source: {src}\nfit:\n  colors: {colors}\n"
                    f"export:\n  out: {out}\n")


def _stage_of(line: str, current: str) -> str:
    """Stage a ``-v`` log line belongs to (``current`` when it says nothing new)."""
    if not line.startswith("INFO streamq"):
        return current
    logger, _, msg = line.partition(": ")
    name = logger.split()[-1]
    if name == "streamq.scheduler" and "Started a local Dask cluster" in msg:
        return "start"
    sub = name.split(".")[1] if "." in name else ""  # streamq.ingest.files -> ingest
    if sub in ("ingest", "fit", "quantize", "export"):
        return sub
    if name == "streamq" and msg.startswith("Finished "):
        what = msg[len("Finished "):].rsplit(" in ", 1)[0]
        return _TIMER_STAGE.get(what, current)
    return current


def run_pass(cmd: list[str], cfg: Path, env: dict[str, str], log_path: Path
             ) -> dict[str, Any]:
    """``streamq -v run CFG --json`` in a subprocess; stage walls from its log lines."""
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "-v", "run", str(cfg), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    reader.join()
    log_path.write_text("".join(f"{t:9.3f} {s}\n" for t, s in lines))
    if rc != 0:
        tail = "\n".join(s for _, s in lines[-20:])
        raise SystemExit(f"streamq run failed with status {rc}; log {log_path}:\n{tail}")
    ends: dict[str, float] = {}
    current = "start"
    for t, line in lines:
        stage = _stage_of(line, current)
        if stage != current and STAGES.index(stage) < STAGES.index(current):
            stage = current  # a late line of an earlier stage's logger: stays in order
        current = stage
        if line.startswith("INFO streamq"):
            ends[stage] = t
    missing = [s for s in STAGES[:-1] if s not in ends]
    if missing:
        raise SystemExit(f"no log line of stage(s) {missing} in {log_path}")
    walls, prev = {}, 0.0
    for s in STAGES[:-1]:
        walls[s] = ends[s] - prev
        prev = ends[s]
    walls["close"] = wall - prev
    return {"wall_s": wall, "stages_s": walls, "report": json.loads(stdout)}


def stage_timings(store: Path, report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Timings inside each stage: the store's sections and the run's JSON report."""
    from streamq.store import Store

    st = Store.open(str(store))
    out = {s: dict(st.section(s).get("timings", {})) for s in ("ingest", "fit", "quantize")}
    out["export"] = dict(report.get("export", {}).get("timings", {}))
    return out


# -- CPU accounting -----------------------------------------------------------------------
def _busy_s() -> float:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait


def _ours_s() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime  # children: once reaped


def measured(fn: Any, *args: Any) -> dict[str, Any]:
    load = os.getloadavg()
    busy0, ours0 = _busy_s(), _ours_s()
    res = fn(*args)
    ours = _ours_s() - ours0
    others = max(0.0, _busy_s() - busy0 - ours)
    return {**res, "cpu_s": ours, "others_cpu_s": others, "others_cores": others / res["wall_s"],
            "loadavg_before": load}


# -- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of JPEGs")
    ap.add_argument("--repeats", type=int, default=3, help="passes of each; medians reported")
    ap.add_argument("--procs", type=int, default=2, help="processes of the floor's pool")
    ap.add_argument("--colors", type=int, default=64, help="palette size (fit.colors)")
    ap.add_argument("--png-level", type=int, default=ExportConfig().png_level,
                    help="zlib level of the floor's PNGs (default: streamq's export.png_level)")
    ap.add_argument("--per-task", type=int, default=64, help="images per floor task")
    ap.add_argument("--cache", choices=("cold", "warm"), default="cold",
                    help="cold: evict the JPEGs before every pass; warm: read them all once")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"),
                    help="where the temporary stores and PNG folders go")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown tables here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    exit_on_signals()
    src = args.src.resolve()
    rels = list_images(src)
    if not rels:
        raise SystemExit(f"no JPEGs under {src}")
    paths = [os.path.join(src, r) for r in rels]
    step = -(-len(rels) // (4 * args.procs))
    with cf.ProcessPoolExecutor(args.procs, mp_context=mp.get_context("fork")) as pool:
        sizes = [s for part in pool.map(_sizes, [(str(src), rels[a:a + step])
                                                 for a in range(0, len(rels), step)])
                 for s in part]
    items = list(zip(rels, sizes, strict=True))
    n_pixels = sum(w * h for w, h in sizes)
    jpeg_bytes = sum(os.path.getsize(p) for p in paths)
    print(f"source: {len(rels)} JPEGs under {src}, {n_pixels / 1e6:.1f} Mpx, "
          f"{jpeg_bytes / 1e6:.0f} MB; cache {args.cache}; floor: {args.procs} processes, "
          f"PNG level {args.png_level}, {args.colors} colours", flush=True)

    cmd = streamq_command()
    env = {k: v for k, v in os.environ.items() if k != "STREAMQ_SCHEDULER"}
    env["PYTHONPATH"] = os.pathsep.join([str(STREAMQ_ROOT),
                                         *filter(None, [env.get("PYTHONPATH")])])
    args.workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-floor-", dir=args.workdir))
    passes: dict[str, list[dict[str, Any]]] = {k: [] for k in ("decode", "write", "floor", "run")}
    resident: list[float | None] = []
    checks: dict[str, Any] = {}

    def reset(reads: bool) -> None:
        os.sync()  # outputs are deleted at the end: no deletion (nor discard) runs meanwhile
        if reads and args.cache == "cold":
            evict(paths)
            resident.append(resident_fraction(paths))

    if args.cache == "warm":
        read_all(paths)
    t_bench = time.perf_counter()
    try:
        for r in range(args.repeats):
            tag = f"[{r + 1}/{args.repeats}]"
            for mode in ("decode", "write", "floor"):
                out = run_dir / f"floor-{mode}-{r + 1}"
                reset(mode != "write")
                res = measured(floor_pass, "both" if mode == "floor" else mode, src, out, items,
                               args.procs, args.png_level, args.colors, args.per_task)
                if mode != "decode":
                    res["png_bytes"] = du(out)
                passes[mode].append(res)
                print(f"{tag} floor {mode:<6} {res['wall_s']:6.2f} s (cpu {res['cpu_s']:5.1f} s,"
                      f" others {res['others_cores']:.2f} cores)", flush=True)
            out, store = run_dir / f"run-{r + 1}" / "png", run_dir / f"run-{r + 1}" / "store.zarr"
            cfg = run_dir / f"run-{r + 1}.yaml"
            write_config(cfg, src, store, out, args.colors)
            reset(True)
            res = measured(run_pass, cmd, cfg, env, run_dir / f"run-{r + 1}.log")
            res["inside"] = stage_timings(store, res["report"])
            res["png_bytes"], res["store_bytes"] = du(out), du(store)
            res["n_png"] = sum(1 for _ in out.rglob("*.png"))
            if r == 0:
                from PIL import Image

                first = out / (os.path.splitext(rels[0])[0] + ".png")
                with Image.open(first) as im:
                    checks = {"png_mode": im.mode, "png_palette_colors":
                              len(im.getpalette() or []) // 3, "n_png": res["n_png"]}
                res["report_summary"] = {k: v for k, v in res["report"].items() if k != "fit"}
            res.pop("report")
            passes["run"].append(res)
            st = res["stages_s"]
            print(f"{tag} streamq run {res['wall_s']:6.2f} s (cpu {res['cpu_s']:5.1f} s, others "
                  f"{res['others_cores']:.2f} cores): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in st.items()), flush=True)
    finally:
        left = kill_descendants()
        if left:
            print(f"killed leftover processes {left}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    bench_s = time.perf_counter() - t_bench
    if checks.get("n_png") != len(rels):
        raise SystemExit(f"streamq run wrote {checks.get('n_png')} PNGs for {len(rels)} JPEGs")

    med = {k: median([p["wall_s"] for p in v]) for k, v in passes.items()}
    stage_med = {s: median([p["stages_s"][s] for p in passes["run"]]) for s in STAGES}
    inside_med: dict[str, dict[str, float]] = {}
    for s in ("ingest", "fit", "quantize", "export"):
        keys = passes["run"][0]["inside"][s].keys()
        inside_med[s] = {k: median([p["inside"][s].get(k, float("nan")) for p in passes["run"]])
                         for k in keys}
    floor, run = med["floor"], med["run"]
    mpx = n_pixels / 1e6
    counterpart = {"ingest": ("decode only", med["decode"]),
                   "export": ("write only", med["write"])}
    rows = []
    for s in STAGES:
        part, ref = counterpart.get(s, ("—", None))
        rows.append([s, f"{stage_med[s]:.2f}", f"{100 * stage_med[s] / run:.0f}%",
                     part, "—" if ref is None else f"{ref:.2f}",
                     "—" if ref is None else f"{stage_med[s] / ref:.2f}×",
                     f"{stage_med[s] / floor:.2f}×"])
    rows.append(["**end to end**", f"**{run:.2f}**", "100%", "**floor (decode + write)**",
                 f"**{floor:.2f}**", f"**{run / floor:.2f}×**", f"**{run / floor:.2f}×**"])
    noisy = [p["others_cores"] for v in passes.values() for p in v]
    cold = (f"cold: the JPEGs evicted from the page cache before every pass that reads them "
            f"(resident after eviction: {max((x for x in resident if x is not None), default=0):.1%}"
            f" of a sample)" if args.cache == "cold" else
            "warm: every JPEG read once before the first pass")
    head = (f"**{len(rels):,} JPEGs** ({src.name}), {mpx:,.1f} Mpx, {jpeg_bytes / 1e6:,.0f} MB; "
            f"K = {args.colors}, palette PNGs at zlib level {args.png_level}; {os.cpu_count()} "
            f"cores; floor: {args.procs} processes; page cache {cold}; median of "
            f"{args.repeats}; other programs used {median(noisy):.2f} cores (median of passes, "
            f"max {max(noisy):.2f})\n")
    md = [head, markdown_table(["streamq run stage", "wall s", "share of run",
                                "floor part", "floor part s", "stage ÷ part",
                                "stage ÷ whole floor"], rows), ""]
    md.append(f"- floor: decode + write {floor:.2f} s ({mpx / floor:.0f} Mpx/s); decode only "
              f"{med['decode']:.2f} s; write only {med['write']:.2f} s; runs: "
              + ", ".join(f"{p['wall_s']:.2f}" for p in passes["floor"]) + " s")
    md.append(f"- streamq run: {run:.2f} s ({mpx / run:.1f} Mpx/s), runs: "
              + ", ".join(f"{p['wall_s']:.2f}" for p in passes["run"]) + f" s; **run ÷ floor = "
              f"{run / floor:.2f}×** (target ≤ 1.5×: {'met' if run / floor <= 1.5 else 'NOT met'})")
    md.append("- inside the stages (medians, s; store sections and run report): " + "; ".join(
        f"{s}: " + ", ".join(f"{k} {v:.2f}" for k, v in d.items()) for s, d in inside_med.items()))
    last = passes["run"][-1]
    md.append(f"- PNGs: streamq {last['png_bytes'] / 1e6:,.0f} MB, floor "
              f"{passes['floor'][-1]['png_bytes'] / 1e6:,.1f} MB; store "
              f"{last['store_bytes'] / 1e6:,.0f} MB; CPU-s (all our processes): floor "
              f"{median([p['cpu_s'] for p in passes['floor']]):.1f}, run "
              f"{median([p['cpu_s'] for p in passes['run']]):.1f}")
    text = "\n".join(md)
    print("\n" + text, flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "git": git_commit(),
                    "streamq_file": streamq.__file__, "versions": library_versions(),
                    "loadavg_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "streamq_command": cmd,
        "source": {"path": str(src), "images": len(rels), "n_pixels": n_pixels,
                   "jpeg_bytes": jpeg_bytes},
        "resident_after_evict": resident, "checks": checks,
        "median_s": med, "stage_median_s": stage_med, "inside_median_s": inside_med,
        "ratio": {"run_over_floor": run / floor,
                  "ingest_over_decode": stage_med["ingest"] / med["decode"],
                  "export_over_write": stage_med["export"] / med["write"]},
        "passes": passes, "benchmark_s": bench_s,
    }
    write_results(args.json, result, args.md, text)
    return result


if __name__ == "__main__":
    main()
