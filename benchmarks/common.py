"""Shared pieces of the benchmarks: cached real-photo collections, stores, memory sampling."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import streamq
from streamq.examples import make_collection

_DONE = ".complete"


def build_collection(workdir: Path, n_images: int, size: int | None = 250, seed: int = 0) -> Path:
    """An LFW-shaped folder of JPEG crops of bundled photos, built once and cached."""
    root = workdir / f"photos-{n_images}-{size}-s{seed}"
    marker = root / _DONE
    if marker.is_file() and marker.read_text().strip() == str(n_images):
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    make_collection(root, n_images, seed=seed, size=size)
    marker.write_text(f"{n_images}\n")
    print(f"built {n_images} JPEGs in {root} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return root


def build_store(workdir: Path, n_images: int, size: int | None = 250, seed: int = 0) -> str:
    """The ingested store of :func:`build_collection` (cached; ingest reruns are no-ops)."""
    src = build_collection(workdir, n_images, size, seed)
    store = workdir / f"store-{n_images}-{size}-s{seed}.zarr"
    t0 = time.perf_counter()
    s = streamq.ingest(src, store, progress=False, overwrite=True)  # re-ingest if settings changed
    if s.status != "already complete":
        print(f"ingested {s.n_pixels / 1e6:.0f} Mpx into {store} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
    return str(store)


class PeakRSS:
    """Samples the RSS of this process and all its children; ``peak`` is the largest total."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_by_process: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            try:
                procs = [me, *me.children(recursive=True)]
            except psutil.Error:
                procs = [me]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_by_process[p.pid] = max(self.peak_by_process.get(p.pid, 0), rss)
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], Any]) -> tuple[float, int, Any]:
    """``(seconds, peak RSS bytes of this process tree, result)`` of one call."""
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return seconds, mem.peak, result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- growing collections (benchmarks/scale.py) ---------------------------------------------
PART_IMAGES = 256  # images per cached part of a sized collection


def _build_part(args: tuple[Path, int, int, int]) -> None:
    part, j, side, seed = args
    if (part / _DONE).is_file():
        return
    from PIL import Image

    shutil.rmtree(part, ignore_errors=True)
    paths = make_collection(part, PART_IMAGES, seed=seed * 100_003 + j, size=side)
    entries = []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
        entries.append([p.relative_to(part.parent).as_posix(), h * w])
    (part / "images.json").write_text(json.dumps(entries))
    (part / _DONE).write_text("ok\n")


def build_sized_collection(workdir: Path, raw_gb: float, side: int = 250, seed: int = 0,
                           procs: int | None = None) -> tuple[Path, int, int]:
    """A collection of real-photo crops holding ``raw_gb`` GB (10**9 bytes) of RGB pixels.

    Crops (``side`` x ``side``, fewer when a photo is smaller) are cut by
    :func:`streamq.examples.make_collection` in cached parts of :data:`PART_IMAGES` images
    (part ``j`` from seed ``seed * 100003 + j``, built on ``procs`` processes), so a larger
    collection reuses the parts of a smaller one: the collection of size S is the first images,
    in part order, whose raw bytes reach S. Returns ``(list file, images, pixels)``; the list
    file names the images (relative paths) and is what ``streamq.ingest`` is given.
    """
    base = workdir / f"sized-{side}-s{seed}"
    base.mkdir(parents=True, exist_ok=True)
    target = raw_gb * 1e9 / 3  # pixels
    n_parts = max(1, int(np.ceil(target / (PART_IMAGES * side * side))))
    while True:
        parts = [base / f"part{j:05d}" for j in range(n_parts)]
        todo = [(p, j, side, seed) for j, p in enumerate(parts) if not (p / _DONE).is_file()]
        if todo:
            t0 = time.perf_counter()
            procs = procs or os.cpu_count() or 1
            if procs > 1 and len(todo) > 1:
                ctx = mp.get_context("fork")
                with cf.ProcessPoolExecutor(min(procs, len(todo)), mp_context=ctx) as pool:
                    list(pool.map(_build_part, todo))
            else:
                for t in todo:
                    _build_part(t)
            print(f"built {len(todo)} parts of {PART_IMAGES} JPEGs in {base} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        entries = [e for p in parts for e in json.loads((p / "images.json").read_text())]
        sizes = np.cumsum([px for _, px in entries])
        if sizes[-1] >= target:
            n = int(np.searchsorted(sizes, target)) + 1
            break
        per_part = sizes[-1] / n_parts  # crops of photos smaller than the side are smaller
        n_parts += max(1, int(np.ceil((target - sizes[-1]) / per_part)))
    listing = base / f"list-{raw_gb:g}GB.txt"
    listing.write_text("".join(f"{rel}\n" for rel, _ in entries[:n]))
    return listing, n, int(sizes[n - 1])


# -- process-tree sampling (RSS, CPU, I/O by role and stage) -------------------------------
_IO_FIELDS = ("read_chars", "write_chars", "read_bytes", "write_bytes")


def own_processes() -> list[tuple[str, psutil.Process]]:
    """This process as ``client`` and each descendant under its own pid (the default roles)."""
    me = psutil.Process()
    try:
        kids = me.children(recursive=True)
    except psutil.Error:
        kids = []
    return [("client", me), *((f"pid {p.pid}", p) for p in kids)]


class TreeSampler:
    """Samples RSS, CPU seconds and I/O counters of a set of processes, by role and stage.

    ``processes()`` lists ``(role, psutil.Process)`` pairs (several processes may share a
    role; their RSS is summed); it is called at every sample, every ``interval`` seconds, in
    a background thread, so new and restarted processes are seen. Inside ``with
    sampler.stage(name):`` samples count for that stage (and for ``"all"``). Per stage:

    - ``peak_total``: the largest sum of RSS over all processes in one sample;
    - ``peak_role[role]``: the largest summed RSS of that role in one sample;
    - ``cpu_s[role]``, ``io[role][field]``: CPU seconds and ``/proc/PID/io`` counters used
      during the stage (``read_chars``/``write_chars``: bytes through read/write system
      calls, page cache included; ``read_bytes``/``write_bytes``: from/to the block device).
      A process that exits is counted up to its last sample;
    - ``pids[role]``: every pid seen (a pid change means the process was restarted).
    """

    def __init__(self, interval: float = 0.2,
                 processes: Callable[[], list[tuple[str, psutil.Process]]] = own_processes) -> None:
        self.interval = interval
        self.processes = processes
        self.stats: dict[str, dict[str, Any]] = {}
        self._current: str | None = None
        self._last: dict[tuple[int, float], tuple[str, float, dict[str, int]]] = {}
        self._base: dict[tuple[int, float], tuple[str, float, dict[str, int]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tree-sampler")

    def _new(self) -> dict[str, Any]:
        return {"peak_total": 0, "peak_role": {}, "cpu_s": {}, "io": {}, "pids": {},
                "samples": 0}

    def sample(self) -> None:
        rss_by_role: dict[str, int] = {}
        seen: dict[str, set[int]] = {}
        for role, p in self.processes():
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    try:
                        io = p.io_counters()
                        counters = {f: getattr(io, f, 0) for f in _IO_FIELDS}
                    except (psutil.Error, AttributeError, NotImplementedError):
                        counters = dict.fromkeys(_IO_FIELDS, 0)
            except psutil.Error:
                continue
            rss_by_role[role] = rss_by_role.get(role, 0) + rss
            seen.setdefault(role, set()).add(p.pid)
            with self._lock:
                self._last[key] = (role, t.user + t.system, counters)
        total = sum(rss_by_role.values())
        with self._lock:
            for name in {"all", self._current} - {None}:
                st = self.stats.setdefault(name, self._new())  # type: ignore[arg-type]
                st["samples"] += 1
                st["peak_total"] = max(st["peak_total"], total)
                for role, rss in rss_by_role.items():
                    st["peak_role"][role] = max(st["peak_role"].get(role, 0), rss)
                    st["pids"].setdefault(role, set()).update(seen[role])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def _usage(self) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
        cpu: dict[str, float] = {}
        io: dict[str, dict[str, int]] = {}
        with self._lock:
            for key, (role, c, counters) in self._last.items():
                _, c0, base = self._base.get(key, (role, 0.0, dict.fromkeys(_IO_FIELDS, 0)))
                cpu[role] = cpu.get(role, 0.0) + c - c0
                acc = io.setdefault(role, dict.fromkeys(_IO_FIELDS, 0))
                for f in _IO_FIELDS:
                    acc[f] += counters[f] - base[f]
        return cpu, io

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.sample()
        with self._lock:
            self._base = dict(self._last)
            self._current = name
            self.stats[name] = self._new()
        try:
            yield
        finally:
            self.sample()
            cpu, io = self._usage()
            with self._lock:
                self._current = None
                self.stats[name]["cpu_s"], self.stats[name]["io"] = cpu, io

    def result(self, name: str) -> dict[str, Any]:
        """The stage's numbers as plain JSON-ready values (pids as sorted lists)."""
        st = self.stats.get(name, self._new())
        return {**st, "pids": {r: sorted(p) for r, p in st["pids"].items()}}

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- processes, disk, tables ---------------------------------------------------------------
def kill_descendants(timeout: float = 5.0) -> list[str]:
    """Terminate (then kill) every remaining descendant of this process.

    Returns ``"pid command"`` of each, leaving out multiprocessing's resource tracker (which
    normally lives as long as this process).
    """
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    names = []
    for p in kids:
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.cmdline())
            if "resource_tracker" not in cmd:
                names.append(f"{p.pid} {cmd[:120]}")
    for p in kids:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(kids, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return names


def exit_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into ``SystemExit`` and SIGINT into ``KeyboardInterrupt``
    (also when a shell started us in the background with SIGINT ignored), so that
    ``finally`` blocks clean up."""
    def handler(signum: int, frame: object) -> None:
        print(f"\nstopping on signal {signum}: cleaning up", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def du(path: str | os.PathLike[str]) -> int:
    """Bytes of all files under ``path`` (0 when absent)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def evict(paths: list[str]) -> None:
    """Drop these files' pages from the page cache (clean pages: nothing is lost)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_page_cache() -> bool:
    """Write back and drop the kernel's page cache (needs root); False when not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def git_commit() -> dict[str, Any]:
    """The commit streamq is imported from, and whether streamq/ has uncommitted edits."""
    import subprocess

    root = Path(streamq.__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "streamq"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "streamq_modified": bool(dirty)}


def write_results(json_path: Path | None, result: dict[str, Any], md_path: Path | None = None,
                  markdown: str = "") -> None:
    """Write a benchmark's ``result`` as JSON and its ``markdown`` summary, where asked."""
    import json

    for path, text in ((json_path, json.dumps(result, indent=2, default=str) + "\n"),
                       (md_path, markdown + "\n")):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}", flush=True)
