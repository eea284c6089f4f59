"""Larger than memory, measured: the whole pipeline on growing collections, every process's memory.

For each size in ``--sizes`` (GB = 10**9 bytes of raw RGB pixels), a collection of real-photo
JPEG crops (``--side`` x ``--side`` crops of photos bundled with installed packages, cut by
:func:`streamq.examples.make_collection` from ``--seed``; cached in parts in ``--workdir`` so a
larger collection reuses a smaller one's images) goes through ingest -> fit (K = ``--colors``)
-> quantize -> export (palette PNGs), each stage one call of streamq's Python API with
``scheduler=ADDRESS``, into a store of its own that is deleted afterwards.

The cluster is started by this script as separate processes on 127.0.0.1 (random free ports):
one ``dask scheduler`` and ``--nworkers`` ``dask worker`` processes (each a nanny with one
worker process of ``--nthreads`` threads and ``--memory-limit``). Workers started this way do
not get the malloc settings streamq gives the workers of the local clusters it starts
(``streamq.scheduler._worker_malloc_settings``), so this script puts the same
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` (64 MiB) in the workers' environment
(an environment variable wins over Dask's ``distributed.nanny.pre-spawn-environ``); the values
the workers really have are checked and reported. ``--no-malloc-env`` leaves Dask's defaults.

Measured, per stage and size:

- wall time, Mpx/s and s/Gpx;
- peak RSS of every process, sampled every ``--interval`` s in a background thread: the
  client (this process), the scheduler, each nanny, each worker, and the largest total;
- CPU seconds and ``/proc/PID/io`` counters of each process, the bytes on disk of the store's
  arrays and of the PNGs (bytes read and written per stage for a cost model);
- tasks, counted by the scheduler (its task stream), by function, with their compute seconds
  per worker;
- whether any worker was paused, spilled or restarted: scheduler events (worker status
  changes, workers removed/added), the workers' own counters (``client.run``: status, spill
  buffer totals), worker pids (a new pid = a restarted worker process) and the workers' and
  scheduler's logs (lines with "Pausing worker", "spill", "memory budget", "Restarting", ...).
  Run with ``--memory-limit 1GiB`` to see whether streamq stays inside a small budget.

Prints Markdown tables (per size, then across sizes with the targets: total peak RSS <= 2 GiB
and flat, largest/smallest <= 1.2; ingest, quantize and export linear in size; fit nearly
flat), and with ``--out DIR`` writes ``scale-w{N}.json`` and ``scale-w{N}.md`` there.

Run from the repository root (the lead's measurement; small smoke run: ``--sizes 0.02 0.05``)::

    python benchmarks/scale.py --sizes 0.5 2 8 --nworkers 2 --out /tmp/streamq-bench/scale
    python benchmarks/scale.py --sizes 0.5 2 8 --nworkers 1 --out /tmp/streamq-bench/scale
    python benchmarks/scale.py --sizes 0.5 2 --memory-limit 1GiB --out /tmp/streamq-bench/scale-1g
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TreeSampler,
    build_sized_collection,
    drop_page_cache,
    du,
    exit_on_signals,
    git_commit,
    kill_descendants,
    markdown_table,
)

import streamq  # noqa: E402
from streamq.scheduler import MMAP_THRESHOLD  # noqa: E402

STAGES = ("ingest", "fit", "quantize", "export")
RSS_TARGET = 2 * 2**30
FLAT_TARGET = 1.2
MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
LOG_PATTERNS = {  # what the workers' (nannies') and scheduler's logs say about memory
    "paused": re.compile(r"Pausing worker", re.I),
    "resumed": re.compile(r"Resuming worker", re.I),
    "spill": re.compile(r"spill", re.I),
    "unmanaged memory high": re.compile(r"Unmanaged memory use is high", re.I),
    "memory budget exceeded": re.compile(r"exceeded \d+% memory budget", re.I),
    "restart": re.compile(r"restart", re.I),
    "worker process died": re.compile(r"was killed by signal|exited with status|died unexpectedly",
                                      re.I),
    "worker removed": re.compile(r"Remove worker", re.I),
}
GiB, MiB = 2**30, 2**20


# -- functions run on the scheduler and the workers (pickled by value) ---------------------
def _stream_index(dask_scheduler: Any) -> int:
    """Install the scheduler's task-stream plugin if needed; the count of tasks recorded."""
    dask_scheduler.get_task_stream(count=0)
    return dask_scheduler.plugins["task-stream"].index


def _stream_summary(dask_scheduler: Any, start_index: int) -> dict[str, Any]:
    """Tasks finished since ``start_index``: counts and compute seconds by function, worker."""
    from dask.utils import key_split

    plugin = dask_scheduler.plugins["task-stream"]
    records = dask_scheduler.get_task_stream(start_index=start_index)
    out: dict[str, Any] = {"n": len(records), "truncated": plugin.index - start_index > len(records),
                           "erred": 0, "by_function": {}, "compute_s_by_function": {},
                           "compute_s_by_worker": {}, "tasks_by_worker": {}}
    for rec in records:
        name = key_split(rec.get("key"))
        worker = str(rec.get("worker"))
        compute = sum(s["stop"] - s["start"] for s in rec.get("startstops", ())
                      if s.get("action") == "compute")
        out["erred"] += rec.get("status") == "error"
        out["by_function"][name] = out["by_function"].get(name, 0) + 1
        out["compute_s_by_function"][name] = out["compute_s_by_function"].get(name, 0.0) + compute
        out["compute_s_by_worker"][worker] = out["compute_s_by_worker"].get(worker, 0.0) + compute
        out["tasks_by_worker"][worker] = out["tasks_by_worker"].get(worker, 0) + 1
    return out


def _scheduler_events(dask_scheduler: Any, since: float) -> dict[str, Any]:
    """Worker pauses, removals and additions the scheduler logged since ``since`` (time())."""
    out: dict[str, Any] = {"paused": 0, "resumed": 0, "removed": 0, "added": 0, "examples": []}
    for topic, events in dask_scheduler.get_events().items():
        for t, msg in list(events):
            if t < since or not isinstance(msg, dict):
                continue
            action = msg.get("action")
            if action == "worker-status-change" and msg.get("status") == "paused":
                out["paused"] += 1
                out["examples"].append(f"{topic}: paused")
            elif action == "worker-status-change" and msg.get("prev-status") == "paused":
                out["resumed"] += 1
            elif topic == "all" and action == "remove-worker":
                out["removed"] += 1
                out["examples"].append(f"removed {msg.get('worker')} "
                                       f"(expected: {msg.get('expected')})")
            elif topic == "all" and action == "add-worker":
                out["added"] += 1
    out["examples"] = out["examples"][:10]
    return out


def _worker_state(dask_worker: Any) -> dict[str, Any]:
    """Status, spill counters, pid, memory limit and malloc environment of one worker."""
    import os

    data = dask_worker.data
    spilled = getattr(data, "spilled_total", None)
    metrics = {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): float(v)
               for k, v in dict(getattr(data, "cumulative_metrics", {})).items()}
    return {"pid": os.getpid(), "status": dask_worker.status.name,
            "memory_limit": dask_worker.memory_manager.memory_limit,
            "nthreads": dask_worker.state.nthreads,
            "spilled_memory_bytes": getattr(spilled, "memory", 0),
            "spilled_disk_bytes": getattr(spilled, "disk", 0),
            "spill_metrics": metrics,
            "env": {k: os.environ.get(k) for k in MALLOC_VARS}}


# -- the cluster ---------------------------------------------------------------------------
class Cluster:
    """A ``dask scheduler`` and N ``dask worker`` processes, each in its own process group."""

    def __init__(self, run_dir: Path, nworkers: int, nthreads: int, memory_limit: str,
                 malloc_env: bool) -> None:
        self.run_dir, self.nworkers, self.nthreads = run_dir, nworkers, nthreads
        self.memory_limit, self.malloc_env = memory_limit, malloc_env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self._ps: dict[int, psutil.Process] = {}
        self.address = ""

    def _env(self, worker: bool) -> dict[str, str]:
        env = dict(os.environ)
        # the workers import the same streamq as this process (a worktree or the installed one)
        root = str(Path(streamq.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env.pop("STREAMQ_SCHEDULER", None)
        if worker and self.malloc_env:
            env.update({k: str(MMAP_THRESHOLD) for k in MALLOC_VARS})
        return env

    def _spawn(self, role: str, cmd: list[str], worker: bool) -> None:
        log = self.run_dir / f"{role.replace(' ', '-')}.log"
        self.logs[role] = log
        with open(log, "wb") as fh:
            self.procs[role] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                                env=self._env(worker), cwd=self.run_dir,
                                                start_new_session=True)

    def start(self, timeout: float = 60.0) -> str:
        sched_file = self.run_dir / "scheduler.json"
        self._spawn("scheduler", [sys.executable, "-m", "distributed.cli.dask_scheduler",
                                  "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(sched_file)], worker=False)
        deadline = time.monotonic() + timeout
        while not sched_file.is_file() or not sched_file.read_text().strip().endswith("}"):
            if self.procs["scheduler"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the scheduler did not start; see {self.logs['scheduler']}:\n"
                                   + self.logs["scheduler"].read_text()[-2000:])
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        for i in range(self.nworkers):
            self._spawn(f"nanny {i}", [
                sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                "--nworkers", "1", "--nthreads", str(self.nthreads),
                "--memory-limit", self.memory_limit, "--host", "127.0.0.1", "--no-dashboard",
                "--name", f"worker-{i}", "--local-directory", str(self.run_dir / f"worker-{i}"),
            ], worker=True)
        return self.address

    def processes(self) -> list[tuple[str, psutil.Process]]:
        """(role, process) for the sampler: client, scheduler, nanny i, worker i."""
        me = self._proc(os.getpid())
        out: list[tuple[str, psutil.Process]] = [("client", me)] if me else []
        ours: set[int] = set()
        for role, popen in self.procs.items():
            p = self._proc(popen.pid)
            if p is None:
                continue
            out.append((role, p))
            ours.add(p.pid)
            try:
                kids = p.children(recursive=True)
            except psutil.Error:
                continue
            for c in kids:
                ours.add(c.pid)
                try:
                    helper = "resource_tracker" in " ".join(c.cmdline())
                except psutil.Error:
                    continue
                if role.startswith("nanny") and not helper:
                    out.append((role.replace("nanny", "worker"), c))
                else:
                    out.append((role, c))  # multiprocessing's resource tracker: the nanny's
        if me is not None:  # anything else this process started counts as the client's
            try:
                out += [("client", c) for c in me.children(recursive=True) if c.pid not in ours]
            except psutil.Error:
                pass
        return out

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self._ps.get(pid)
        if p is None:
            try:
                p = self._ps[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return p if p.is_running() else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to each process group (workers first), then SIGKILL to what is left."""
        order = [r for r in self.procs if r != "scheduler"] + ["scheduler"]
        for role in order:
            if role in self.procs:
                _signal_group(self.procs[role], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for role in order:
            p = self.procs.get(role)
            if p is None:
                continue
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)  # stragglers of the group (worker, tracker)
            p.wait()


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # started with start_new_session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


# -- per-stage observation -------------------------------------------------------------------
class Observer:
    """What the scheduler, the workers and the logs say about one stage."""

    def __init__(self, client: Any, cluster: Cluster) -> None:
        self.client, self.cluster = client, cluster
        self.workers_before: dict[str, dict[str, Any]] = {}

    def workers(self) -> dict[str, dict[str, Any]]:
        try:
            res = self.client.run(_worker_state, on_error="return")
        except Exception as exc:  # a worker restarting: report it, carry on
            return {"error": {"status": f"client.run failed: {type(exc).__name__}: {exc}"}}
        return {a: (r if isinstance(r, dict) else {"status": f"error: {r!r}"})
                for a, r in res.items()}

    def begin(self) -> None:
        self.wall0 = time.time()
        self.index0 = self.client.run_on_scheduler(_stream_index)
        self.log_offsets = {r: _size(p) for r, p in self.cluster.logs.items()}
        self.workers_before = self.workers()

    def end(self) -> dict[str, Any]:
        tasks = self.client.run_on_scheduler(_stream_summary, start_index=self.index0)
        events = self.client.run_on_scheduler(_scheduler_events, since=self.wall0)
        after = self.workers()
        logs: dict[str, dict[str, int]] = {}
        lines: list[str] = []
        for role, path in self.cluster.logs.items():
            new = _read_from(path, self.log_offsets.get(role, 0))
            for line in new.splitlines():
                hits = [k for k, rx in LOG_PATTERNS.items() if rx.search(line)]
                for k in hits:
                    logs.setdefault(role, {})[k] = logs.setdefault(role, {}).get(k, 0) + 1
                if hits and len(lines) < 12:
                    lines.append(f"{role}: {line.strip()[:200]}")
        spill = {}
        for addr, st in after.items():
            m0 = self.workers_before.get(addr, {}).get("spill_metrics", {})
            m1 = st.get("spill_metrics", {})
            delta = {k: v - m0.get(k, 0.0) for k, v in m1.items() if v - m0.get(k, 0.0)}
            spill[addr] = {"metrics_delta": delta,
                           "spilled_disk_bytes": st.get("spilled_disk_bytes", 0),
                           "spilled_memory_bytes": st.get("spilled_memory_bytes", 0)}
        return {"tasks": tasks, "scheduler_events": events, "log_matches": logs,
                "log_lines": lines, "workers_before": self.workers_before,
                "workers_after": after, "spill": spill}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def memory_flags(obs: dict[str, Any], pids: dict[str, list[int]],
                 known_pids: dict[str, set[int]]) -> dict[str, Any]:
    """paused / spilled / restarted, each with the evidence that says so."""
    ev = obs["scheduler_events"]
    logs = obs["log_matches"]
    log_count = lambda k: sum(m.get(k, 0) for m in logs.values())  # noqa: E731
    paused = []
    if ev["paused"]:
        paused.append(f"scheduler: {ev['paused']} pause event(s)")
    if log_count("paused"):
        paused.append(f"logs: {log_count('paused')} 'Pausing worker' line(s)")
    paused += [f"{a}: status {s['status']} after the stage"
               for a, s in obs["workers_after"].items() if s.get("status") == "paused"]
    spilled = []
    for addr, s in obs["spill"].items():  # memory-read/* is a read from RAM, not a spill
        disk = {k: v for k, v in s["metrics_delta"].items() if k.startswith("disk-")}
        if disk or s["spilled_disk_bytes"]:
            spilled.append(f"{addr}: spill buffer {disk}, {s['spilled_disk_bytes']} B on disk "
                           "after the stage")
    if log_count("spill"):
        spilled.append(f"logs: {log_count('spill')} line(s) about spilling")
    restarted = []
    for role, plist in pids.items():
        if not role.startswith("worker"):
            continue
        seen = known_pids.setdefault(role, set())
        new = sorted(set(plist) - seen)
        if len(plist) > 1 or (seen and new):
            restarted.append(f"{role}: new worker pid(s) {new} (before: {sorted(seen)})")
        seen.update(plist)
    if ev["removed"]:
        restarted.append(f"scheduler: {ev['removed']} worker(s) removed, {ev['added']} added")
    for k in ("memory budget exceeded", "restart", "worker process died"):
        if log_count(k):
            restarted.append(f"logs: {log_count(k)} '{k}' line(s)")
    return {"paused": paused, "spilled": spilled, "restarted": restarted}


# -- one size ----------------------------------------------------------------------------------
def run_size(label: str, listing: Path, n_images: int, n_pixels: int, args: argparse.Namespace,
             cluster: Cluster, observer: Observer, sampler: TreeSampler, run_dir: Path,
             known_pids: dict[str, set[int]]) -> dict[str, Any]:
    store = run_dir / f"store-{label}.zarr"
    out = run_dir / f"png-{label}"
    addr = cluster.address
    calls = {
        "ingest": lambda: streamq.ingest(listing, store, scheduler=addr, progress=False),
        "fit": lambda: streamq.fit(str(store), colors=args.colors, seed=args.seed,
                                   scheduler=addr, progress=False),
        "quantize": lambda: streamq.quantize(str(store), scheduler=addr, progress=False),
        "export": lambda: streamq.export(str(store), str(out), scheduler=addr, progress=False),
    }
    src_root = listing.parent
    jpeg_bytes = sum((src_root / line).stat().st_size
                     for line in listing.read_text().splitlines() if line)
    gpx = n_pixels / 1e9
    result: dict[str, Any] = {"label": label, "n_images": n_images, "n_pixels": n_pixels,
                              "raw_bytes": 3 * n_pixels, "jpeg_bytes": jpeg_bytes, "stages": {}}
    try:
        for name, call in calls.items():
            dropped = drop_page_cache() if args.drop_caches else None
            before = du(store) + du(out)
            observer.begin()
            key = f"{label}/{name}"
            t0 = time.perf_counter()
            with sampler.stage(key):
                try:
                    summary = call()
                    status = "ok"
                except Exception as exc:  # e.g. KilledWorker under a small memory limit
                    summary, status = None, f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            wall = time.perf_counter() - t0
            obs = observer.end()
            mem = sampler.result(key)
            store_parts = {p.name: du(p) for p in sorted(store.iterdir())} if store.is_dir() else {}
            for sub in ("fit", "quantize"):
                if (store / sub).is_dir():
                    store_parts.update({f"{sub}/{p.name}": du(p) for p in (store / sub).iterdir()})
            written = du(store) + du(out) - before
            read_model = {"ingest": jpeg_bytes, "quantize": store_parts.get("pixels"),
                          "export": store_parts.get("quantize/labels")}.get(name)
            tasks = obs["tasks"]
            n_mpx = n_pixels / 1e6
            row = {
                "status": status, "wall_s": wall, "mpx_s": n_mpx / wall, "s_per_gpx": wall / gpx,
                "worker_s_per_mpx": wall * args.nworkers / n_mpx,
                "task_compute_s": sum(tasks["compute_s_by_worker"].values()),
                "task_compute_s_per_mpx": sum(tasks["compute_s_by_worker"].values()) / n_mpx,
                "tasks": tasks["n"], "tasks_per_gpx": tasks["n"] / gpx,
                "tasks_by_function": tasks["by_function"],
                "task_compute_s_by_function": tasks["compute_s_by_function"],
                "task_compute_s_by_worker": tasks["compute_s_by_worker"],
                "tasks_by_worker": tasks["tasks_by_worker"],
                "tasks_erred": tasks["erred"], "task_stream_truncated": tasks["truncated"],
                "peak_rss_total": mem["peak_total"], "peak_rss": mem["peak_role"],
                "cpu_s": mem["cpu_s"], "io": mem["io"], "pids": mem["pids"],
                "bytes_written_on_disk": written, "bytes_read_model": read_model,
                "store_bytes": store_parts, "png_bytes": du(out) if name == "export" else None,
                "page_cache_dropped": dropped,
                "summary": summary.to_dict() if hasattr(summary, "to_dict") else None,
                "memory": memory_flags(obs, mem["pids"], known_pids),
                "observed": obs,
            }
            result["stages"][name] = row
            flags = ", ".join(f"{k}: {'YES' if v else 'no'}" for k, v in row["memory"].items())
            print(f"  {label} {name:<9} {status[:6]:<6} {wall:7.2f} s  {n_mpx / wall:7.1f} Mpx/s  "
                  f"{row['tasks']:5d} tasks  peak total {mem['peak_total'] / GiB:.2f} GiB  {flags}",
                  flush=True)
            if status != "ok":
                print(f"      {status[:240]}", flush=True)
            for what, evidence in row["memory"].items():
                for e in evidence:
                    print(f"      {what}: {e}", flush=True)
            if status != "ok":
                break
    finally:
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    ok = [s for s in result["stages"].values() if s["status"] == "ok"]
    result["complete"] = len(ok) == len(STAGES)
    result["peak_rss_total"] = max((s["peak_rss_total"] for s in result["stages"].values()),
                                   default=0)
    roles: dict[str, int] = {}
    for s in result["stages"].values():
        for r, v in s["peak_rss"].items():
            roles[r] = max(roles.get(r, 0), v)
    result["peak_rss"] = roles
    return result


# -- report ------------------------------------------------------------------------------------
def _roles(results: list[dict[str, Any]]) -> list[str]:
    found = {r for res in results for r in res["peak_rss"]}
    order = ["client", "scheduler"]
    order += sorted((r for r in found if r.startswith("worker")), key=lambda r: int(r.split()[1]))
    order += sorted((r for r in found if r.startswith("nanny")), key=lambda r: int(r.split()[1]))
    return [r for r in order if r in found]


def _stat(stages: dict[str, Any], name: str, key: str) -> float:
    s = stages.get(name)
    return s[key] if s is not None and s["status"] == "ok" else float("nan")


def _yes(flags: dict[str, list[str]]) -> str:
    on = [k for k, v in flags.items() if v]
    return ", ".join(on) if on else "none"


def _linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """``(fixed s, s per Gpx)`` of a least-squares line through (Gpx, seconds)."""
    if len(xs) < 2 or max(xs) == min(xs):
        return None
    import numpy as np

    b, a = np.polyfit(xs, ys, 1)
    return float(a), float(b)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    md: list[str] = []
    roles = _roles(results)
    for res in results:
        md.append(f"\n**{res['label']} raw** — {res['n_images']:,} images, "
                  f"{res['n_pixels'] / 1e6:,.1f} Mpx, {args.nworkers} worker(s) x "
                  f"{args.nthreads} thread(s), memory limit {args.memory_limit}\n")
        header = ["stage", "wall s", "Mpx/s", "s/Gpx", "tasks"] + [f"{r} MiB" for r in roles] \
            + ["total MiB", "paused / spilled / restarted"]
        rows = []
        for name, s in res["stages"].items():
            status = "" if s["status"] == "ok" else " (FAILED)"
            rows.append([f"{name}{status}", f"{s['wall_s']:.2f}", f"{s['mpx_s']:.1f}",
                         f"{s['s_per_gpx']:.1f}", s["tasks"]]
                        + [f"{s['peak_rss'].get(r, 0) / MiB:.0f}" for r in roles]
                        + [f"{s['peak_rss_total'] / MiB:.0f}", _yes(s["memory"])])
        md.append(markdown_table(header, rows))
    # across sizes
    done = [r for r in results if r["complete"]]
    header = ["raw", "Mpx", "ingest s/Gpx", "fit s", "quantize s/Gpx", "export s/Gpx",
              "total s", "peak total GiB", "largest worker GiB", "client GiB", "events"]
    rows = []
    for r in results:
        st = r["stages"]
        workers = [v for k, v in r["peak_rss"].items() if k.startswith("worker")]
        events = sorted({k for s in st.values() for k, v in s["memory"].items() if v})
        rows.append([r["label"], f"{r['n_pixels'] / 1e6:,.0f}", f"{_stat(st, 'ingest', 's_per_gpx'):.1f}",
                     f"{_stat(st, 'fit', 'wall_s'):.1f}", f"{_stat(st, 'quantize', 's_per_gpx'):.1f}",
                     f"{_stat(st, 'export', 's_per_gpx'):.1f}",
                     f"{sum(s['wall_s'] for s in st.values()):.1f}",
                     f"{r['peak_rss_total'] / GiB:.2f}",
                     f"{max(workers, default=0) / GiB:.2f}",
                     f"{r['peak_rss'].get('client', 0) / GiB:.2f}",
                     ", ".join(events) or "none"])
    md.append(f"\n**Across sizes** ({args.nworkers} worker(s), memory limit {args.memory_limit})\n")
    md.append(markdown_table(header, rows))
    summary: dict[str, Any] = {}
    if len(done) >= 1:
        peaks = [r["peak_rss_total"] for r in done]
        summary["peak_rss_total_max_gib"] = max(peaks) / GiB
        summary["peak_rss_within_2gib"] = max(peaks) <= RSS_TARGET
        lines = [f"- total peak RSS: at most {max(peaks) / GiB:.2f} GiB "
                 f"(target <= 2 GiB: {'met' if max(peaks) <= RSS_TARGET else 'NOT met'})"]
        if len(done) >= 2:
            small, large = done[0], done[-1]
            flat = large["peak_rss_total"] / small["peak_rss_total"]
            summary["peak_rss_largest_over_smallest"] = flat
            lines.append(f"- flat memory: largest/smallest size {flat:.2f}x "
                         f"(target <= {FLAT_TARGET}: {'met' if flat <= FLAT_TARGET else 'NOT met'})")
            for name in ("ingest", "quantize", "export"):
                ratio = large["stages"][name]["s_per_gpx"] / small["stages"][name]["s_per_gpx"]
                fit = _linear_fit([r["n_pixels"] / 1e9 for r in done],
                                  [r["stages"][name]["wall_s"] for r in done])
                summary[f"{name}_s_per_gpx_largest_over_smallest"] = ratio
                summary[f"{name}_line"] = fit
                line = f"- {name}: s/Gpx at the largest size / at the smallest = {ratio:.2f}"
                if fit:
                    line += f"; least-squares line {fit[0]:.1f} s + {fit[1]:.1f} s/Gpx"
                lines.append(line)
            fr = large["stages"]["fit"]["wall_s"] / small["stages"]["fit"]["wall_s"]
            summary["fit_s_largest_over_smallest"] = fr
            lines.append(f"- fit: wall time at the largest size / at the smallest = {fr:.2f} "
                         f"for {large['n_pixels'] / small['n_pixels']:.1f}x the pixels")
        md.append("\n" + "\n".join(lines))
    events = [(r["label"], n, k, e) for r in results for n, s in r["stages"].items()
              for k, ev in s["memory"].items() for e in ev]
    md.append("\nWorkers paused, spilled or restarted: "
              + ("none seen (scheduler events, worker counters, worker pids, logs)." if not events
                 else "\n" + "\n".join(f"- {lab} {n}: {k}: {e}" for lab, n, k, e in events)))
    return "\n".join(md), summary


# -- main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2, 8],
                    help="collection sizes in GB (10**9 bytes) of raw RGB pixels")
    ap.add_argument("--side", type=int, default=250, help="side of the square crops")
    ap.add_argument("--seed", type=int, default=0, help="seed of the crops and of the fit")
    ap.add_argument("--colors", type=int, default=64, help="palette size K")
    ap.add_argument("--nworkers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--nthreads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="auto",
                    help="memory limit per worker, as for `dask worker` (e.g. 1GiB)")
    ap.add_argument("--no-malloc-env", action="store_true",
                    help="leave Dask's malloc settings for the workers (streamq's are the default)")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling interval, s")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before every stage (root only)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed pipeline on a tiny collection that loads the workers")
    ap.add_argument("--build-procs", type=int, default=None, help="processes building photos")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/streamq-bench"),
                    help="photo cache and (temporary) stores")
    ap.add_argument("--out", type=Path, default=None, help="write scale-w{N}.json and .md here")
    args = ap.parse_args(argv)
    if args.nworkers < 1 or args.nthreads < 1:
        raise SystemExit("--nworkers and --nthreads must be at least 1")
    exit_on_signals()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.sizes)

    collections = []
    for gb in sizes:
        listing, n, px = build_sized_collection(args.workdir, gb, args.side, args.seed,
                                                args.build_procs)
        collections.append((f"{gb:g} GB", listing, n, px))
        print(f"{gb:g} GB: {n} images, {px / 1e6:.1f} Mpx ({listing})", flush=True)
    free = shutil.disk_usage(args.workdir).free
    need = 1.5 * 3 * collections[-1][3]
    if free < need:
        print(f"WARNING: {free / 1e9:.1f} GB free in {args.workdir}; the largest size needs "
              f"about {need / 1e9:.1f} GB (store + labels + PNGs)", flush=True)

    run_dir = Path(tempfile.mkdtemp(prefix="scale-run-", dir=args.workdir))
    cluster = Cluster(run_dir, args.nworkers, args.nthreads, args.memory_limit,
                      not args.no_malloc_env)
    client = None
    results: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        from distributed import Client

        address = cluster.start()
        client = Client(address, timeout="30s", set_as_default=False)
        client.wait_for_workers(args.nworkers, timeout=120)
        workers = client.run(_worker_state)
        info = {"address": address, "workers": workers, "logs": {r: str(p) for r, p in
                                                                cluster.logs.items()}}
        for addr, st in workers.items():
            print(f"worker {addr}: pid {st['pid']}, {st['nthreads']} thread(s), memory limit "
                  f"{st['memory_limit']}, {', '.join(f'{k}={v}' for k, v in st['env'].items())}",
                  flush=True)
        observer = Observer(client, cluster)
        known_pids: dict[str, set[int]] = {}
        with TreeSampler(args.interval, cluster.processes) as sampler:
            if not args.no_warmup:
                listing, n, px = build_sized_collection(args.workdir, 0.002, args.side, args.seed)
                print("warm-up (untimed):", flush=True)
                info["warmup"] = run_size("warm-up", listing, n, px, args, cluster, observer,
                                          sampler, run_dir, known_pids)["stages"]
            for label, listing, n, px in collections:
                print(f"{label}:", flush=True)
                results.append(run_size(label, listing, n, px, args, cluster, observer, sampler,
                                        run_dir, known_pids))
            info["whole_run"] = sampler.result("all")
    finally:
        if client is not None:
            client.close()
        cluster.stop()
        left = kill_descendants()
        if left:
            print(f"killed leftover processes {left}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    total = time.perf_counter() - t_all

    md, summary = report(results, args)
    head = (f"streamq scale benchmark: sizes {', '.join(c[0] for c in collections)}; "
            f"{args.nworkers} dask worker(s) x {args.nthreads} thread(s), memory limit "
            f"{args.memory_limit}, malloc env {'Dask default' if args.no_malloc_env else '64 MiB'}; "
            f"K = {args.colors}; {os.cpu_count()} cores; took {total:.0f} s")
    print("\n" + head + "\n" + md, flush=True)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "streamq": streamq.__version__,
                    "memory_bytes": psutil.virtual_memory().total, "git": git_commit()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cluster": info, "sizes": results, "summary": summary, "total_s": total,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"scale-w{args.nworkers}"
        Path(f"{stem}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        Path(f"{stem}.md").write_text(head + "\n" + md + "\n")
        print(f"wrote {stem}.json and {stem}.md")
    return out


if __name__ == "__main__":
    main()
