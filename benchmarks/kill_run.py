"""20 kills of ``streamq run`` inside its stages, each followed by a rerun of the same command:
how many finish identical to an uninterrupted run.

The collection: ``--images`` tiles of the benchmark photo collection (real photographs, see
``benchmarks/photos.py``; default 240 tiles of 250 px, 15 Mpx). The configuration
(``config()``): K = 16 with the default fit (mini-batch steps, then exact Lloyd from 17
starts raced on the colour grid, the best 2 finished on every colour), checkpoints every 10
steps or iterations, small pixel shards (many completion records per stage), palette PNGs;
by default on a local Dask cluster, as a user's ``streamq run`` (``--scheduler threads``:
in-process).

1. **Reference**: ``streamq -q run`` once, uninterrupted.
2. **Kill points** (seeded, ``--seed``): ``--kills`` points spread evenly over ingest, fit
   (mini-batch steps and exact Lloyd iterations), quantize and export, each a count that the
   running job has written (``tests/helpers.stage_progress``: completion records of ingest
   and quantize tasks, the step or iteration of the fit's checkpoints, exported files), drawn
   inside the stage's range in the reference; and a signal for each, SIGKILL, SIGTERM and
   SIGINT in turn, shuffled. SIGKILL and SIGINT go to the job's whole process group (kill -9
   of a job, Ctrl-C in a terminal), SIGTERM to its main process (``kill PID``).
3. **Each kill**: in a folder of its own, ``streamq -q run`` starts from the store as it is
   when that stage begins (a snapshot made once by the stage commands ``streamq ingest``,
   ``fit`` and ``quantize`` with the same configuration: ``run`` finds those stages complete
   and goes on, so a kill costs one stage, not the pipeline), is signalled as soon as the
   point is reached (``tests/helpers.kill_when``, which fails unless the job was still
   running), then the same command runs again to the end. It counts as **identical** when the
   rerun exits 0 and every array of its store (pixels, image table, colour counts, palette,
   fit history and starts, labels, per-image errors, every completion record) and every
   exported file (SHA-256) equal the reference's. For SIGTERM and SIGINT it also records
   whether the killed command ended cleanly: status 143 / 130, exactly one line on stderr,
   the store's lock given back.

Output: a line per kill, the count, a Markdown line (``--md``) and JSON (``--json``: command,
commit, settings, every kill). Run from the repository root (heavy runs in the shared lock)::

    flock /tmp/streamq-bench.lock python benchmarks/kill_run.py \\
        --json /tmp/streamq-bench/kill_run.json --md /tmp/streamq-bench/kill_run.md
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' progress reader and kill helper

from common import git_commit, write_results  # noqa: E402
from helpers import kill_when, output_files, reached, stage_progress  # noqa: E402
from photos import build_photo_collection  # noqa: E402

from streamq.scheduler import library_versions  # noqa: E402

STAGES = ("ingest", "fit", "quantize", "export")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
EVERY = 10  # checkpoint every EVERY mini-batch steps and Lloyd iterations


def config(path: Path, src: Path, scheduler: str | None) -> Path:
    sched = "" if scheduler is None else f"dask:\n  scheduler: {scheduler}\n"
    path.write_text(
        f"store: run.zarr\n{sched}"
        f"ingest:\n  source: {src}\n  chunk_pixels: 131072\n"
        f"fit:\n  colors: 16\n  max_steps: 100\n  checkpoint_steps: {EVERY}\n"
        "export:\n  out: run-out\n")
    return path


def streamq(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq.cli.main", *args]


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store, by path."""
    out = {}

    def walk(group: Any, prefix: str) -> None:
        for name, member in group.members():
            path = f"{prefix}{name}"
            if isinstance(member, zarr.Group):
                walk(member, path + "/")
            else:
                out[path] = np.asarray(member[...])

    walk(zarr.open_group(str(store), mode="r"), "")
    return out


def differences(ref: dict[str, Any], store: Path, out: Path) -> list[str]:
    """What differs from the reference: array paths, and "files" for the exported files."""
    got = arrays(store)
    diff = sorted(set(ref["arrays"]) ^ set(got))
    diff += [n for n in sorted(set(ref["arrays"]) & set(got))
             if ref["arrays"][n].shape != got[n].shape
             or not np.array_equal(ref["arrays"][n], got[n],
                                   equal_nan=got[n].dtype.kind in "fc")]
    if output_files(out) != ref["files"]:
        diff.append("files")
    return diff


def kill_points(store: Path, n_kills: int, rng: random.Random) -> list[tuple[str, int]]:
    """``n_kills`` (stage, count) points spread over the stages of the reference ``store``."""
    g = zarr.open_group(str(store), mode="r")
    fit = g.attrs["fit"]
    steps = fit["config"]["max_steps"]
    lloyd = min(r["iterations"] for r in fit["starts"] if "iterations" in r)
    if lloyd < 2 * EVERY:
        raise SystemExit(f"the exact Lloyd phase took only {lloyd} iterations: too few to kill "
                         f"inside at checkpoints every {EVERY}")
    n_ingest, n_quantize = g["ingest/tasks/report"].shape[0], g["quantize/records"].shape[0]
    n_files = len(output_files(store.parent / "run-out"))
    draw = {
        "ingest": lambda: ("ingest", rng.randint(1, n_ingest - 2)),
        "fit": lambda: rng.choice([
            ("fit:minibatch", EVERY * rng.randint(1, steps // EVERY - 2)),
            ("fit:lloyd", EVERY * rng.randint(1, lloyd // EVERY - 1))]),
        "quantize": lambda: ("quantize", rng.randint(1, n_quantize * 3 // 4)),
        "export": lambda: ("export", rng.randint(1, n_files * 3 // 4)),
    }
    return [draw[STAGES[i * len(STAGES) // n_kills]]() for i in range(n_kills)]


def snapshots(work: Path, src: Path, scheduler: str | None) -> dict[str, Path | None]:
    """The store as each stage of a run finds it (None: no store yet), made once by the stage
    commands with the run's configuration."""
    snap = work / "snapshots"
    done = snap / ".complete"
    names = {"ingest": None, "fit": "after-ingest", "quantize": "after-fit",
             "export": "after-quantize"}
    if not done.is_file():
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir(parents=True)
        cfg = config(snap / "run.yaml", src, scheduler)
        for command, name in (("ingest", "after-ingest"), ("fit", "after-fit"),
                              ("quantize", "after-quantize")):
            run(streamq("-q", command, "--config", str(cfg)), snap)
            shutil.copytree(snap / "run.zarr", snap / name)
        shutil.rmtree(snap / "run.zarr")
        done.write_text("ok\n")
    return {stage: None if name is None else snap / name for stage, name in names.items()}


def one_kill(i: int, stage: str, n: int, sig: int, start: Path | None, work: Path, src: Path,
             scheduler: str | None, ref: dict[str, Any]) -> dict[str, Any]:
    trial = work / f"kill-{i:02d}"
    shutil.rmtree(trial, ignore_errors=True)
    trial.mkdir(parents=True)
    if start is not None:
        shutil.copytree(start, trial / "run.zarr")
    cmd = streamq("-q", "run", str(config(trial / "run.yaml", src, scheduler)))
    store, out = trial / "run.zarr", trial / "run-out"
    t0 = time.perf_counter()
    row: dict[str, Any] = {"kill": i, "stage": stage, "point": n,
                           "signal": signal.Signals(sig).name}
    try:
        kill = kill_when(cmd, reached(store, stage, n, out), sig, timeout=900,
                         progress=functools.partial(stage_progress, store, out))
    except AssertionError as exc:  # the point was not reached: not a kill inside the stage
        row.update(killed=False, error=str(exc)[:500], identical=False)
        return row
    row.update(killed=kill.seen is not None and kill.seen[0] == stage, seen=list(kill.seen),
               returncode=kill.returncode, stderr=kill.stderr[-500:])
    if sig != signal.SIGKILL:
        one_line = kill.stderr == (f"streamq: interrupted by {signal.Signals(sig).name}; "
                                   "rerun the same command to resume\n")
        row["clean_exit"] = (kill.returncode == 128 + sig and one_line
                             and not (trial / "run.zarr.lock").exists())
    row["killed_after_s"] = round(time.perf_counter() - t0, 2)
    t1 = time.perf_counter()
    rerun = subprocess.run(cmd, cwd=trial, capture_output=True, text=True)
    row["rerun_s"] = round(time.perf_counter() - t1, 2)
    row["rerun_returncode"] = rerun.returncode
    row["differences"] = [] if rerun.returncode else ["rerun failed: " + rerun.stderr[-300:]]
    if rerun.returncode == 0:
        row["differences"] = differences(ref, store, out)
    row["identical"] = rerun.returncode == 0 and not row["differences"]
    if row["identical"]:
        shutil.rmtree(trial)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"))
    ap.add_argument("--images", type=int, default=240, help="photo tiles in the collection")
    ap.add_argument("--size", type=int, default=250, help="tile side, px")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points and signals")
    ap.add_argument("--scheduler", default=None,
                    help="dask.scheduler of the runs (default: a local cluster)")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown line here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    src = build_photo_collection(args.workdir, args.images, args.size)
    work = args.workdir / f"kill-run-{args.images}-{args.size}-{args.scheduler or 'local'}"
    (work / "reference").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "reference" / "run.zarr", ignore_errors=True)
    shutil.rmtree(work / "reference" / "run-out", ignore_errors=True)
    ref_cfg = config(work / "reference" / "run.yaml", src, args.scheduler)
    ref_s = run(streamq("-q", "run", str(ref_cfg)), work / "reference")
    ref_store = work / "reference" / "run.zarr"
    ref = {"arrays": arrays(ref_store), "files": output_files(work / "reference" / "run-out")}
    print(f"reference run: {ref_s:.1f} s, {len(ref['arrays'])} arrays, "
          f"{len(ref['files'])} files", flush=True)
    starts = snapshots(work, src, args.scheduler)
    rng = random.Random(args.seed)
    points = kill_points(ref_store, args.kills, rng)
    sigs = [SIGNALS[i % len(SIGNALS)] for i in range(args.kills)]
    rng.shuffle(sigs)
    rows = []
    for i, ((stage, n), sig) in enumerate(zip(points, sigs, strict=True)):
        row = one_kill(i, stage, n, sig, starts[stage.split(":")[0]], work, src,
                       args.scheduler, ref)
        rows.append(row)
        print(f"kill {i:2d}: {row['signal']:7s} at {stage} {n:4d} (seen {row.get('seen')}) -> "
              f"status {row.get('returncode')}"
              + (f", clean exit {row['clean_exit']}" if "clean_exit" in row else "")
              + f"; rerun {'identical' if row['identical'] else row.get('differences') or row.get('error')}",
              flush=True)
    killed = [r for r in rows if r["killed"]]
    identical = sum(r["identical"] for r in killed)
    clean = [r for r in killed if "clean_exit" in r]
    by = {key: {v: sum(1 for r in killed if r[key].split(":")[0] == v) for v in values}
          for key, values in (("stage", STAGES), ("signal", [s.name for s in SIGNALS]))}
    mix = lambda d: ", ".join(f"{n} {k}" for k, n in d.items())  # noqa: E731
    line = (f"{len(killed)} kills of `streamq run` inside its stages ({mix(by['signal'])}; "
            f"{mix(by['stage'])}) on {args.images} photo tiles of {args.size} px, "
            f"{'local cluster' if args.scheduler is None else args.scheduler}: "
            f"**{identical}/{len(killed)} reruns identical** to the uninterrupted run "
            f"(every store array and exported file); SIGTERM/SIGINT exits clean (143/130, one "
            f"line, lock given back): {sum(r['clean_exit'] for r in clean)}/{len(clean)}")
    print("\n" + line, flush=True)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "git": git_commit(), "versions": library_versions(),
                    "loadavg_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": ref_cfg.read_text(), "reference_s": ref_s,
        "kills": len(killed), "identical": identical,
        "clean_exits": sum(r["clean_exit"] for r in clean), "signalled": len(clean),
        "rows": rows, "markdown": line, "benchmark_s": round(time.perf_counter() - started, 1),
    }
    write_results(args.json, result, args.md, line)
    return result


if __name__ == "__main__":
    main()
