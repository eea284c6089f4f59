"""Shared pieces of the benchmarks: cached real-photo collections, stores, memory sampling."""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
