"""Ingest throughput: Pillow decode vs a hand-written Zarr writer vs ``streamq.ingest``.

Builds (once, cached in ``--workdir``) an LFW-shaped collection of real-photo JPEG crops with
:func:`streamq.examples.make_collection` (or, with ``--photoset``, the first ``--images``
tiles of the benchmark photo collection, ``benchmarks/photos.py``), then measures, side by
side and in Mpx/s (median of ``--repeats`` runs):

(a) ``decode``   Pillow decode of every file to a numpy RGB array (discarded), on a process
                 pool with one process per core: the ceiling for any ingest.
(b) ``loop``     a plain hand-written loop on the same number of processes: read every
                 header (sizes give offsets), then one task per shard (``chunk_pixels``) of
                 the flat ``(P, 3)`` Zarr v3 array decodes the images overlapping that shard
                 and writes it whole, so no two processes ever write the same shard. Same
                 layout (shards of ``block_pixels`` inner chunks) and codec as streamq.
(c) ``streamq``  ``streamq.ingest(src, store, ...)`` with the default local Dask cluster,
                 timed as a whole (cluster start included), and ``streamq-warm``: the same call
                 given the address of an already running local cluster, started by streamq's
                 own runner (same shape and worker settings), whose workers have all run
                 tasks of one tiny ingest (imports done). streamq also counts the colours of
                 the pixels it stores (the store's colour histogram); the loop (b) counts
                 nothing, so (c)/(b) is the price of streamq, colour counting included.

Every timed run starts from an absent store; pool/cluster start-up is inside the timing of
``decode``, ``loop`` and ``streamq`` and outside that of ``streamq-warm``. Also reported:
the store size (bytes on disk of the ``pixels`` array over the raw ``P * 3`` bytes), the CPU
seconds used by this process and all its children (pool processes, Dask nannies, workers),
and ``read``: the whole ``pixels`` array read back chunk by chunk in this one process. In
the first repeat the ``loop`` and ``streamq`` arrays are compared element by element.

Meant for a shared machine: before each run the benchmark waits (briefly) for other programs
to go quiet, and a run during which they used more than ``--max-others`` cores is redone,
within ``--extra-time`` seconds in all (see :class:`Results`).

Run from the repository root::

    python benchmarks/ingest.py --json /tmp/streamq-bench/ingest.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_collection, git_commit  # noqa: E402
from photos import build_photo_collection  # noqa: E402

import streamq  # noqa: E402
from streamq.config import IngestConfig  # noqa: E402
from streamq.store import compressors  # noqa: E402

DEFAULT_CODECS = "lz4,zstd:1,zstd:3,none"
FILES_PER_DECODE_TASK = 64
WARM_CHUNK = 8192  # pixels per task of the warm-up ingest (20 images of 64 x 64: 10 tasks)


# -- the collection ------------------------------------------------------------------------
def list_jpegs(root: Path) -> list[str]:
    """Sorted relative paths (the order streamq uses for image ids)."""
    rel = [p.relative_to(root).as_posix() for p in root.rglob("*.jpg")]
    return sorted(rel)


# -- worker functions (run in pool processes) -------------------------------------------------
def _decode(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _decode_batch(paths: list[str]) -> int:
    n = 0
    for p in paths:
        n += _decode(p)[..., 0].size
    return n


def _sizes_batch(paths: list[str]) -> list[tuple[int, int]]:
    out = []
    for p in paths:
        with Image.open(p) as im:
            w, h = im.size
        out.append((h, w))
    return out


def _write_chunk(args: tuple[str, int, int, list[tuple[str, int]]]) -> int:
    """Decode the images overlapping pixels [a, b) and write that (whole) chunk."""
    store, a, b, images = args
    buf = np.empty((b - a, 3), dtype=np.uint8)
    for path, off in images:
        flat = _decode(path).reshape(-1, 3)
        lo, hi = max(off, a), min(off + len(flat), b)
        buf[lo - a: hi - a] = flat[lo - off: hi - off]
    try:
        zarr.open_array(store, mode="r+")[a:b] = buf
    except Exception as exc:  # zarr's exceptions do not all survive pickling back to the parent
        raise RuntimeError(f"writing {store}[{a}:{b}]: {type(exc).__name__}: {exc}") from None
    return b - a


# -- the three contenders --------------------------------------------------------------------
def _batches(items: list[str], n: int) -> list[list[str]]:
    return [items[i:i + n] for i in range(0, len(items), n)]


def run_decode(ctx: Any, paths: list[str], n_procs: int) -> int:
    with cf.ProcessPoolExecutor(n_procs, mp_context=ctx) as pool:
        return sum(pool.map(_decode_batch, _batches(paths, FILES_PER_DECODE_TASK)))


def pixel_layout(n_pixels: int, chunk: int, block: int | None) -> tuple[int, int | None]:
    """``(write unit, inner chunk or None)``, as ``streamq.store.Store.create_pixels`` lays out
    ``pixels``: shards of ``chunk`` pixels (rounded up to whole blocks) of ``block``-pixel
    inner chunks, or plain chunks when there are no blocks (older streamq) or one per shard."""
    if block is None:
        return max(1, min(chunk, n_pixels)), None
    block = max(1, min(block, chunk, n_pixels))
    shard = -(-max(1, min(chunk, n_pixels)) // block) * block
    return (shard, block) if shard > block else (block, None)


def run_loop(ctx: Any, paths: list[str], store: str, n_procs: int, chunk: int,
             block: int | None, codec: str, level: int | None) -> int:
    with cf.ProcessPoolExecutor(n_procs, mp_context=ctx) as pool:
        shapes = [s for b in pool.map(_sizes_batch, _batches(paths, 256)) for s in b]
        sizes = np.asarray([h * w for h, w in shapes], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        ends = offsets + sizes
        n_pixels = int(sizes.sum())
        unit, inner = pixel_layout(n_pixels, chunk, block)
        zarr.create_array(store, shape=(n_pixels, 3), shards=(unit, 3) if inner else None,
                          chunks=(inner or unit, 3), dtype="uint8", fill_value=0,
                          compressors=compressors(codec, level), zarr_format=3, overwrite=True)
        tasks = []
        for a in range(0, n_pixels, unit):  # one task per write unit (shard or chunk)
            b = min(a + unit, n_pixels)
            lo = int(np.searchsorted(ends, a, side="right"))
            hi = int(np.searchsorted(offsets, b, side="left"))
            tasks.append((store, a, b, [(paths[i], int(offsets[i])) for i in range(lo, hi)]))
        written = sum(pool.map(_write_chunk, tasks))
    assert written == n_pixels
    return n_pixels


def run_streamq(src: Path, store: str, chunk: int, block: int | None, codec: str,
                level: int | None, scheduler: str | None) -> streamq.IngestSummary:
    layout = {"chunk_pixels": chunk} | ({} if block is None else {"block_pixels": block})
    summary = streamq.ingest(src, store, codec=codec, level=level, progress=False,
                             scheduler=scheduler, **layout)
    if summary.status != "ingested" or summary.n_skipped:
        raise RuntimeError(f"unexpected ingest result: {summary}")
    return summary


# -- CPU accounting --------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds used by this process and all its descendants during a ``with`` block.

    A thread samples every descendant's CPU times every ``interval`` s (the last sample of a
    process that exits is kept, so short-lived pool processes are counted up to ``interval``
    short). ``machine`` is the busy CPU seconds of the whole machine from ``/proc/stat``, so
    ``machine - ours`` is what other programs took meanwhile (the noise).
    """

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.ours = self.machine = float("nan")
        self._last: dict[tuple[int, float], float] = {}
        self._base: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()

    def _sample(self) -> dict[tuple[int, float], float]:
        me = self._psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    out[(p.pid, p.create_time())] = t.user + t.system
            except self._psutil.Error:
                continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._sample())

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait

    def __enter__(self) -> CpuMeter:
        self._base = self._sample()
        self._last = dict(self._base)
        self._busy0 = self._busy() if os.path.exists("/proc/stat") else float("nan")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._last.update(self._sample())
        self._stop.set()
        self._thread.join()
        self.ours = sum(v - self._base.get(k, 0.0) for k, v in self._last.items())
        if os.path.exists("/proc/stat"):
            self.machine = self._busy() - self._busy0


# -- helpers ---------------------------------------------------------------------------------
def disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_all(path: str, chunk: int) -> int:
    """Read (decompress) the whole array, one chunk at a time, in this process."""
    a = zarr.open_array(path, mode="r")
    return sum(len(a[i:i + chunk]) for i in range(0, a.shape[0], chunk))


def same_pixels(a_path: str, b_path: str, chunk: int) -> bool:
    """Same shape, chunk layout, codecs and values."""
    a, b = zarr.open_array(a_path, mode="r"), zarr.open_array(b_path, mode="r")
    if (a.shape, a.chunks, a.shards, a.compressors) != (b.shape, b.chunks, b.shards, b.compressors):
        print(f"layouts differ: {a.info} / {b.info}", flush=True)
        return False
    return all(np.array_equal(a[i:i + chunk], b[i:i + chunk]) for i in range(0, a.shape[0], chunk))


def parse_codecs(text: str) -> list[tuple[str, str, int | None]]:
    """``"zstd:1,lz4,none"`` -> ``[(label, codec, level), ...]``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, lvl = item.partition(":")
        if name not in ("zstd", "lz4", "none"):
            raise SystemExit(f"unknown codec {name!r} (expected zstd, lz4 or none)")
        level = int(lvl) if lvl else None
        label = name if name == "none" else f"{name}-{level if level is not None else 'default'}"
        if name == "lz4":
            label = f"blosc-lz4-{level if level is not None else 5}"
        out.append((label, name, level))
    return out


@contextlib.contextmanager
def running_cluster(n_workers: int) -> Iterator[str]:
    """The local cluster ``streamq.ingest`` starts by default (streamq's own runner, so with
    the same worker settings), kept running; yields its scheduler address."""
    from streamq.config import parse_config
    from streamq.scheduler import runner

    with runner(parse_config({"dask": {"n_workers": n_workers}}).dask) as run:
        yield run.client.scheduler.address


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Results:
    """Wall time, our CPU seconds and other programs' CPU seconds of every timed run.

    On a shared machine each run first waits (at most ``max_wait`` s) for other programs to
    use under ``max_others`` cores, and a run during which they used more is redone (after
    ``reset()``), at most ``retries`` times. Waiting and redone runs share a time allowance
    of ``extra`` seconds; once it is spent, runs are neither delayed nor redone. The last
    attempt is kept either way (flagged ``noisy``); rejected attempts go to the JSON output.
    """

    def __init__(self, max_others: float, retries: int, extra: float,
                 max_wait: float = 5.0) -> None:
        self.max_others, self.retries, self.max_wait = max_others, retries, max_wait
        self.extra_left = extra
        self.runs: dict[str, list[dict[str, float]]] = {}
        self.rejected: dict[str, list[dict[str, float]]] = {}

    def _others_now(self, window: float = 0.3) -> float:
        with CpuMeter() as cpu:
            time.sleep(window)
        return (cpu.machine - cpu.ours) / window

    def _wait_quiet(self) -> None:
        t0 = time.perf_counter()
        end = t0 + min(self.max_wait, max(self.extra_left, 0.0))
        while time.perf_counter() < end and self._others_now() > self.max_others:
            pass
        self.extra_left -= time.perf_counter() - t0

    def measure(self, key: str, fn: Any, *args: Any, reset: Any = None,
                retries: int | None = None) -> Any:
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            if reset is not None:
                reset()
            self._wait_quiet()
            with CpuMeter() as cpu:
                t0 = time.perf_counter()
                out = fn(*args)
                wall = time.perf_counter() - t0
            run = {"wall_s": wall, "cpu_s": cpu.ours, "others_cpu_s": cpu.machine - cpu.ours,
                   "attempt": attempt}
            noisy = run["others_cpu_s"] / wall > self.max_others
            if not noisy or attempt == retries or self.extra_left < wall:
                run["noisy"] = noisy
                self.runs.setdefault(key, []).append(run)
                return out
            self.extra_left -= wall  # this attempt is thrown away: its time was extra
            self.rejected.setdefault(key, []).append(run)
        raise AssertionError("unreachable")

    def med(self, key: str, what: str = "wall_s") -> float:
        return _median([r[what] for r in self.runs.get(key, [])])

    def last(self, key: str) -> str:
        r = self.runs[key][-1]
        return (f"{r['wall_s']:6.2f} s (cpu {r['cpu_s']:5.1f} s, others {r['others_cpu_s']:4.1f} s"
                f"{', retried' if r['attempt'] else ''}{', NOISY' if r['noisy'] else ''})")

    def n_noisy(self) -> int:
        return sum(r["noisy"] for runs in self.runs.values() for r in runs)


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000, help="images in the collection")
    ap.add_argument("--size", type=int, default=250, help="side of each square crop (LFW: 250)")
    ap.add_argument("--photoset", action="store_true",
                    help="tiles of the benchmark photo collection (benchmarks/photos.py) instead "
                         "of streamq.examples crops")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    ap.add_argument("--workdir", default="/tmp/streamq-bench", help="collection cache + stores")
    ap.add_argument("--codecs", default=DEFAULT_CODECS,
                    help=f"comma-separated codec[:level] list (default {DEFAULT_CODECS})")
    ap.add_argument("--chunk-pixels", type=int, default=IngestConfig().chunk_pixels,
                    help="pixels per chunk (per shard when the store has inner blocks)")
    ap.add_argument("--block-pixels", type=int,
                    default=getattr(IngestConfig(), "block_pixels", None),
                    help="pixels per inner chunk of a shard (default: streamq's)")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1,
                    help="processes / Dask workers (default: number of cores)")
    ap.add_argument("--json", metavar="OUT", help="also write every timing to this JSON file")
    ap.add_argument("--max-others", type=float, default=0.25,
                    help="redo a run during which other programs used more cores than this")
    ap.add_argument("--retries", type=int, default=2, help="redos per run (0: never)")
    ap.add_argument("--extra-time", type=float, default=60,
                    help="seconds the run may spend waiting for quiet and redoing noisy runs")
    args = ap.parse_args(argv)

    os.environ.pop("STREAMQ_SCHEDULER", None)  # scheduler=None must mean the local cluster
    logging.getLogger("distributed").setLevel(logging.ERROR)
    codecs = parse_codecs(args.codecs)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src = (build_photo_collection(workdir, args.images, args.size) if args.photoset
           else build_collection(workdir, args.images, args.size))
    paths = [str(src / r) for r in list_jpegs(src)]
    n_px = args.images * args.size * args.size  # checked against what is written below
    chunk, block, n = args.chunk_pixels, args.block_pixels, args.procs
    # Stores go to a folder of this run's own: concurrent runs sharing --workdir (and its
    # cached collection) never delete each other's stores.
    run_dir = Path(tempfile.mkdtemp(prefix="ingest-run-", dir=workdir))
    loop_store, sq_store = str(run_dir / "loop.zarr"), str(run_dir / "streamq.zarr")

    # Plain fork (Python 3.11's Linux default): a pool starts in ~20 ms, where forkserver and
    # spawn take ~0.4 s. zarr resets its event loop in a forked child (os.register_at_fork).
    ctx = mp.get_context("fork")

    res = Results(args.max_others, args.retries, args.extra_time)
    stages: dict[str, list[dict[str, float]]] = {}
    stored: dict[str, int] = {}
    checks: dict[str, bool] = {}

    def clean() -> None:
        for s in (loop_store, sq_store):
            shutil.rmtree(s, ignore_errors=True)

    def check_px(got: int, what: str) -> None:
        if got != n_px:
            raise RuntimeError(f"{what}: {got} pixels, expected {n_px}")

    git_at_start = git_commit()
    try:
        t_all = time.perf_counter()
        with ctx.Pool(1) as p:  # read every file once, untimed
            p.map(_decode_batch, _batches(paths, len(paths) // 4 + 1))
        for r in range(args.repeats):
            check_px(res.measure("decode", run_decode, ctx, paths, n), "decode")
            print(f"repeat {r + 1}: (a) decode {' ' * 19}{res.last('decode')}", flush=True)
            for label, codec, level in codecs:
                clean()
                got = res.measure(f"loop/{label}", run_loop, ctx, paths, loop_store, n,
                                  chunk, block, codec, level,
                                  reset=lambda: shutil.rmtree(loop_store, True))
                check_px(got, "hand-written loop")
                print(f"repeat {r + 1}: (b) loop    {label:<14} {res.last(f'loop/{label}')}",
                      flush=True)
                summary = res.measure(f"streamq/{label}", run_streamq, src, sq_store, chunk,
                                      block, codec, level, None,
                                      reset=lambda: shutil.rmtree(sq_store, True))
                check_px(summary.n_pixels, "streamq")
                stages.setdefault(f"streamq/{label}", []).append(summary.timings)
                stored[label] = summary.stored_bytes
                stored[f"loop/{label}"] = disk_bytes(loop_store)
                print(f"repeat {r + 1}: (c) streamq {label:<14} {res.last(f'streamq/{label}')}",
                      flush=True)
                got = res.measure(f"read/{label}", read_all, f"{sq_store}/pixels", chunk)
                check_px(got, "read")
                if r == 0:
                    counted = zarr.open_group(sq_store, mode="r").attrs["colors"]["n_pixels"]
                    check_px(counted, "streamq's colour counts")
                    checks[label] = same_pixels(loop_store, f"{sq_store}/pixels", chunk)
                    if not checks[label]:
                        print(f"WARNING: loop and streamq pixels differ for {label}", flush=True)
            clean()
            # The same ingest on an already running cluster, warmed up by one tiny ingest in
            # small chunks, so that every worker runs write tasks (imports and compiled
            # kernels loaded) before the timed runs.
            cluster = contextlib.ExitStack()
            address = res.measure("cluster-start", cluster.enter_context, running_cluster(n),
                                  retries=0)
            try:
                warm_src = build_collection(workdir, 20, 64)
                run_streamq(warm_src, sq_store, WARM_CHUNK, None, codecs[0][1], codecs[0][2],
                            address)
                for label, codec, level in codecs:
                    summary = res.measure(f"streamq-warm/{label}", run_streamq, src, sq_store,
                                          chunk, block, codec, level,
                                          address, reset=clean)
                    stages.setdefault(f"streamq-warm/{label}", []).append(summary.timings)
                    print(f"repeat {r + 1}: (c) running {label:<14} "
                          f"{res.last(f'streamq-warm/{label}')}", flush=True)
            finally:
                cluster.close()
            clean()
        total = time.perf_counter() - t_all
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    result = _report(args, codecs, n_px, res, stages, stored, checks, total, git_at_start)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


def _report(args: argparse.Namespace, codecs: list[tuple[str, str, int | None]], n_px: int,
            res: Results, stages: dict[str, list[dict[str, float]]], stored: dict[str, int],
            checks: dict[str, bool], total: float,
            git_at_start: dict[str, Any]) -> dict[str, Any]:
    mpx = n_px / 1e6
    dec = mpx / res.med("decode")
    others = [run["others_cpu_s"] / run["wall_s"] for runs in res.runs.values() for run in runs]
    print()
    what = "photo-collection tiles" if args.photoset else "JPEGs"
    print(f"{args.images} {what} {args.size}x{args.size} = {mpx:.1f} Mpx, chunk_pixels "
          f"{args.chunk_pixels}, block_pixels {args.block_pixels}, {args.procs} processes, "
          f"medians of {args.repeats} runs; "
          f"benchmark took {total:.0f} s; other programs used a median "
          f"{_median(others):.2f} cores (max {max(others):.2f}) during the kept runs; "
          f"{sum(map(len, res.rejected.values()))} noisy runs redone, {res.n_noisy()} noisy "
          f"runs kept (over {args.max_others} cores of other load)")
    print(f"(a) Pillow decode only: {dec:.1f} Mpx/s ({res.med('decode'):.2f} s, "
          f"{res.med('decode', 'cpu_s'):.1f} CPU-s); LocalCluster start "
          f"{res.med('cluster-start'):.2f} s")
    print()
    head = ["codec", "stored/raw", "(b) loop Mpx/s", "(c) streamq Mpx/s",
            "(c) running cluster Mpx/s", "(c)/(b)", "(c) running/(b)",
            "(b) CPU-s", "(c) running CPU-s", "read Mpx/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    rows = []
    for label, codec, level in codecs:
        lp, sq, sw = (mpx / res.med(f"{k}/{label}") for k in ("loop", "streamq", "streamq-warm"))
        row = {"codec": label, "name": codec, "level": level,
               "stored_over_raw": stored[label] / (3 * n_px),
               "loop_stored_over_raw": stored[f"loop/{label}"] / (3 * n_px),
               "loop_mpx_s": lp, "streamq_mpx_s": sq, "streamq_running_mpx_s": sw,
               "streamq_over_loop": sq / lp, "streamq_running_over_loop": sw / lp,
               "loop_over_decode": lp / dec,
               "loop_cpu_s": res.med(f"loop/{label}", "cpu_s"),
               "streamq_cpu_s": res.med(f"streamq/{label}", "cpu_s"),
               "streamq_running_cpu_s": res.med(f"streamq-warm/{label}", "cpu_s"),
               "read_mpx_s": mpx / res.med(f"read/{label}"),
               "same_pixels": checks.get(label)}
        rows.append(row)
        print(f"| {label} | {row['stored_over_raw']:.1%} | {lp:.1f} | {sq:.1f} | {sw:.1f} "
              f"| {sq / lp:.2f} | {sw / lp:.2f} | {row['loop_cpu_s']:.1f} "
              f"| {row['streamq_running_cpu_s']:.1f} | {row['read_mpx_s']:.0f} |")
    if checks:
        same = ", ".join(f"{k}: {'identical' if v else 'DIFFERENT'}" for k, v in checks.items())
        print(f"\n(b) vs (c) pixels, first repeat: {same}")
    print()
    print("streamq stage timings, s (median; full run / running cluster):")
    stage_meds: dict[str, dict[str, float]] = {}
    for key, runs in stages.items():
        stage_meds[key] = {s: _median([run.get(s, float("nan")) for run in runs])
                           for s in runs[0]}
        print(f"  {key:<28} " + ", ".join(f"{s} {v:.2f}" for s, v in stage_meds[key].items()))
    return {
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "streamq": streamq.__version__,
                    "zarr": zarr.__version__, "pillow": Image.__version__,
                    "git": {"start": git_at_start, "end": git_commit()}},
        "settings": {"images": args.images, "size": args.size, "photoset": args.photoset,
                     "repeats": args.repeats,
                     "chunk_pixels": args.chunk_pixels, "block_pixels": args.block_pixels,
                     "procs": args.procs, "mpx": mpx, "codecs": args.codecs},
        "decode_mpx_s": dec, "others_cores_median": _median(others),
        "rows": rows, "runs": res.runs, "rejected_runs": res.rejected,
        "stage_medians_s": stage_meds, "stored_bytes": stored, "total_s": total,
    }


if __name__ == "__main__":
    main()
