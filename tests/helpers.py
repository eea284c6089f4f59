"""Helpers shared by test modules."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

# The bucket of the moto S3 server (conftest: s3) and the secret that reaches it.
BUCKET = "bucket"
SECRET = "streamq-test-secret"

# The photo collection of the image-group tests (conftest: photo_dir, photo_store).
PHOTOS = ("China_Temple", "Coffee", "Flower", "Rocket")  # distinct colours, by construction
PER_PHOTO = 12


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_content(path) -> dict[str, np.ndarray]:
    """Every array of a store's finished collection, for equality checks."""
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in ("pixels", "images/path", "images/label", "images/mode", "images/offset",
                 "images/height", "images/width", "skipped/path", "skipped/reason"):
        out[name] = np.asarray(g[name][:])
    return out


def assert_same_store(a, b) -> None:
    ca, cb = store_content(a), store_content(b)
    for name in ca:
        np.testing.assert_array_equal(ca[name], cb[name], err_msg=name)


def output_files(out) -> dict[str, str]:
    """{relative path: sha256} of every exported file under ``out`` (the manifest and the
    completion records, ``.streamq-*``, left out)."""
    import hashlib
    from pathlib import Path

    out = Path(out)
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).parts[0].startswith(".streamq-")}


def assert_same_results(store_a, store_b, out_a=None, out_b=None, n_files=None) -> None:
    """Same collection, palette, labels and per-image errors; same exported files."""
    assert_same_store(store_a, store_b)
    ga, gb = zarr.open_group(str(store_a), mode="r"), zarr.open_group(str(store_b), mode="r")
    for name in ("quantize/labels", "fit/palette/r", "fit/palette/g", "fit/palette/b",
                 "fit/palette/centers_0", "quantize/images/sse", "quantize/images/ssim"):
        assert np.array_equal(ga[name][:], gb[name][:]), name
    if out_a is not None:
        fa, fb = output_files(out_a), output_files(out_b)
        assert fa == fb
        if n_files is not None:
            assert len(fa) == n_files


@contextmanager
def console_state() -> Iterator[None]:
    """Run the block with the CLI's logging as a fresh process has it (no ``streamq`` log
    handler yet), then put back the process-wide logging state that
    :func:`streamq.console.set_log_level` changes: the ``streamq`` logger's handler and level
    and the filters of Dask's client-side loggers."""
    from streamq import console

    logger = logging.getLogger("streamq")
    client_logs = [logging.getLogger(name) for name in console._CLIENT_LOGGERS]
    old, level = console._handler, logger.level
    filters = [list(c.filters) for c in client_logs]
    if old is not None:
        logger.removeHandler(old)
    console._handler = None
    try:
        yield
    finally:
        if console._handler is not None:
            logger.removeHandler(console._handler)
        console._handler = old
        if old is not None:
            logger.addHandler(old)
        logger.setLevel(level)
        for c, f in zip(client_logs, filters, strict=True):
            c.filters[:] = f


def streamq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq.cli.main", *args]


# -- where a job has got to, and killing it there -------------------------------------------
#: The stages of a job as :func:`stage_progress` names them, in the order they run.
STAGES = ("ingest", "fit", "fit:minibatch", "fit:lloyd", "quantize", "groups:describe",
          "groups:cluster", "groups:assign", "export")


def _row_chunks(meta: dict) -> bool:
    """A 1-d array of one element per chunk file ``c/<i>`` (zarr.json ``meta``): records and
    checkpoints, as streamq writes them."""
    return (len(meta["shape"]) == 1 and meta["chunk_grid"]["configuration"]["chunk_shape"] == [1]
            and meta["chunk_key_encoding"].get("name") == "default")


class _LocalView:
    """What :func:`stage_progress` reads from a local store, from its files: the attributes
    from the root's ``zarr.json``, and the records of a record array counted as its chunk
    files (a record is its own chunk, written by zarr through a temporary file and a rename,
    and never the fill value ``""``, which zarr stores as no file). Kill tests read this
    every few milliseconds with the job stopped: through zarr, one look at a quantize in
    progress took ~12 ms (reading every record), as long as the job ran between two looks."""

    def __init__(self, root) -> None:
        self.root = Path(root)

    def _meta(self, name: str = "") -> dict:
        return json.loads((self.root / name / "zarr.json").read_bytes())

    def attrs(self) -> dict:
        return self._meta()["attributes"]

    def __contains__(self, name: str) -> bool:
        return (self.root / name / "zarr.json").is_file()

    def __getitem__(self, name: str):
        """The strings of a record or checkpoint array (one chunk each, vlen-utf8 then zstd,
        as streamq writes them) decoded from their files: through zarr, reading the 17
        k-means starts' checkpoints took 10 ms. Other arrays: through zarr."""
        meta = self._meta(name)
        codecs = [c["name"] for c in meta["codecs"]]
        if meta["data_type"] != "string" or codecs != ["vlen-utf8", "zstd"] or not _row_chunks(meta):
            return zarr.open_array(str(self.root / name), mode="r")
        from numcodecs import VLenUTF8, Zstd

        out = np.full(meta["shape"][0], meta["fill_value"], dtype=object)
        for e in os.scandir(self.root / name / "c") if (self.root / name / "c").is_dir() else ():
            if e.name.isdigit() and int(e.name) < len(out):
                with open(e.path, "rb") as f:
                    out[int(e.name)] = VLenUTF8().decode(Zstd().decode(f.read()))[0]
        return out

    def done(self, name: str) -> int:
        """Records written in the record array ``name``."""
        if not _row_chunks(self._meta(name)):  # missing: KeyError/FileNotFoundError, as zarr
            return sum(1 for r in self[name][:] if r)
        return self._count_chunks(name)

    def _count_chunks(self, name: str) -> int:
        try:
            return sum(1 for e in os.scandir(self.root / name / "c") if e.name.isdigit())
        except FileNotFoundError:  # no record yet
            return 0


class _BucketView(_LocalView):
    """The same from a store at a URL, by fsspec: one GET for the attributes, one listing for
    the records of an array (through zarr, one GET for every record)."""

    def __init__(self, url: str, storage_options) -> None:
        import fsspec

        self.url, self.options = url.rstrip("/"), storage_options or {}
        self.fs, self.path = fsspec.core.url_to_fs(self.url, **self.options)
        self.fs.invalidate_cache()

    def _key(self, *parts: str) -> str:
        return "/".join([self.path, *(p for p in parts if p)])

    def _meta(self, name: str = "") -> dict:
        return json.loads(self.fs.cat_file(self._key(name, "zarr.json")))

    def __contains__(self, name: str) -> bool:
        return self.fs.exists(self._key(name, "zarr.json"))

    def __getitem__(self, name: str):
        return zarr.open_group(self.url, mode="r", storage_options=self.options)[name]

    def _count_chunks(self, name: str) -> int:
        try:
            keys = self.fs.ls(self._key(name, "c"), detail=False)
        except FileNotFoundError:
            return 0
        return sum(1 for k in keys if k.rsplit("/", 1)[-1].isdigit())


def stage_progress(store, out=None, storage_options=None) -> tuple[str, int]:
    """Where a job writing ``store`` (and exporting to the folder or URL ``out``) has got to,
    read from what it has written so far: ``(stage, n)``, the first unfinished stage and

    - ``ingest``: write tasks with a completion record;
    - ``fit``: not started; ``fit:minibatch``: the step of the fit's checkpoint;
      ``fit:lloyd``: the largest iteration an exact Lloyd start has checkpointed (0 while the
      starts race on the colour grid);
    - ``quantize``: tasks with a completion record (of labels for the current palette);
    - ``groups:describe`` / ``groups:assign``: tasks with a record; ``groups:cluster``: the
      step of the grouping's checkpoint;
    - ``export``: image files under ``out`` (its manifest and temporary files left out).

    ``("", 0)`` before ingest has a plan, and while what it reads is half-written (look
    again); ``("done", 0)`` when the store is finished and no ``out`` is given.
    """
    from streamq.store.checkpoint import decode_state

    try:
        if "://" in str(store):
            if storage_options and str(store).startswith("s3://"):
                # one GET a key, without the HEAD s3fs sends first (as streamq opens its stores)
                storage_options = {"max_concurrency": 1, **storage_options}
            view: _LocalView = _BucketView(str(store), storage_options)
        else:
            view = _LocalView(store)
        attrs = view.attrs()
        done = view.done
        sec = attrs.get("ingest", {})
        if sec.get("state") != "complete":
            return ("ingest", done("ingest/tasks/report")) if sec.get("state") == "planned" else ("", 0)
        fit = attrs.get("fit", {})
        if fit.get("state") != "complete":
            if fit.get("state") != "running":
                return "fit", 0
            text = str(view["fit/checkpoint"][0]) if "fit/checkpoint" in view else ""
            state = decode_state(text) if text else {}
            if state.get("phase") == "minibatch":
                return "fit:minibatch", int(state["cursor"])
            if state.get("phase") != "exact" and fit["config"]["algorithm"] == "minibatch":
                return "fit:minibatch", 0
            its = [decode_state(str(t)).get("iteration", 0)
                   for t in (view["fit/starts"][:] if "fit/starts" in view else []) if t]
            return "fit:lloyd", max(its, default=0)
        q = attrs.get("quantize", {})
        if q.get("fit_fingerprint") != fit["fingerprint"] or q.get("state") != "complete":
            running = q.get("fit_fingerprint") == fit["fingerprint"] and q.get("state") == "running"
            return "quantize", done("quantize/records") if running else 0
        groups = attrs.get("groups", {})
        if groups.get("state") in ("planning", "describing"):
            return "groups:describe", 0 if groups["state"] == "planning" else done(
                "groups/describe_records")
        if groups.get("state") == "clustering":
            text = str(view["groups/checkpoint"][0]) if "groups/checkpoint" in view else ""
            return "groups:cluster", int(decode_state(text)["cursor"]) if text else 0
        if groups.get("state") == "assigning":
            return "groups:assign", done("groups/assign_records")
        if out is None:
            return "done", 0
        return "export", _n_exported(out, storage_options)
    except Exception:  # noqa: BLE001  (a store being written: look again)
        return "", 0


def _n_exported(out, storage_options=None) -> int:
    from streamq.export.files import MANIFEST, TMP_DIR

    out = str(out)
    if "://" in out:
        import fsspec

        fs, path = fsspec.core.url_to_fs(out, **(storage_options or {}))
        fs.invalidate_cache()
        try:
            return sum(1 for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith(".streamq"))
        except FileNotFoundError:
            return 0
    n = 0
    for _, dirnames, files in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != TMP_DIR]
        n += sum(1 for f in files if f != MANIFEST)
    return n


#: How far along a job is, by the stage :func:`stage_progress` names (optional stages share
#: a rank with the one before them, so "the rank before" is a stage every job goes through).
_RANK = {"": 0, "ingest": 1, "fit": 2, "fit:minibatch": 2, "fit:lloyd": 2, "quantize": 3,
         "groups:describe": 3, "groups:cluster": 3, "groups:assign": 3, "export": 4, "done": 5}


def reached(store, stage: str, n: int, out=None, storage_options=None):
    """A predicate for :func:`kill_when`: the job is in ``stage`` with at least ``n`` done.

    On a store at a URL, its ``far()`` says the job is still two ranks or more before
    ``stage`` (e.g. fitting, for a kill in the export): :func:`kill_when` then looks again
    without stopping the job, which a stage as long as a whole fit can no longer run past.
    A look at a bucket takes ~50 ms, during which a stopped job waits; a look at a local
    store takes ~1 ms, and there every look stops the job (with looks made while it ran,
    5 of 40 kills in a 60-image export on a loaded machine came after its last file; 0 of
    16 with every look stopping it)."""
    def predicate() -> bool:
        now, at = stage_progress(store, out, storage_options)
        return now == stage and at >= n

    if "://" not in str(store):
        return predicate
    near = [False]

    def far() -> bool:
        # once near, always near: a look that caught a file being written reads as ("", 0)
        if not near[0]:
            now, _ = stage_progress(store, out, storage_options)
            near[0] = _RANK[now] >= _RANK[stage] - 1
        return not near[0]

    predicate.far = far  # type: ignore[attr-defined]
    return predicate


@dataclass
class Kill:
    """How a job ended that :func:`kill_when` signalled."""

    signal: int
    returncode: int
    stderr: str
    seen: tuple[str, int] | None  # stage_progress when the predicate held, if given a store

    def assert_clean_exit(self) -> None:
        """SIGINT/SIGTERM: status 128 + signal and exactly one line on stderr saying so."""
        name = signal.Signals(self.signal).name
        assert self.returncode == 128 + self.signal, (self.returncode, self.stderr)
        assert self.stderr == f"streamq: interrupted by {name}; rerun the same command to resume\n", \
            self.stderr


def _lower_priority(pid: int) -> None:
    """Run a job that a test kills at an observed point (and the processes it starts) at a
    lower CPU priority than the test watching it, so that on a busy machine the watcher's
    polls are not starved while the job runs past the point (the job's work and results do
    not depend on its priority). Set from here, right after the start, not in the child
    before its exec: the test process has threads, with which ``preexec_fn`` is unsafe."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 10)
    except ProcessLookupError:  # already gone: nothing to slow down
        pass


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _frozen_check(proc: subprocess.Popen, predicate) -> bool:
    """``predicate()`` read while the job's whole process group is stopped (SIGSTOP), so the
    job cannot run past the point while a poll is slow or the watcher waits for a core: the
    job runs only between two checks (``interval`` s, at its lower priority), and the state
    a check sees is the state it is killed in. The group stays stopped when the predicate
    holds (the caller signals it, then continues it)."""
    if not _signal_group(proc.pid, signal.SIGSTOP):
        return False
    hit = False
    try:
        hit = bool(predicate())
    finally:
        if not hit:
            _signal_group(proc.pid, signal.SIGCONT)
    return hit


def _watch(proc: subprocess.Popen, predicate, interval: float) -> bool:
    """One :func:`_frozen_check`, then, if the point is not reached, let the job run for
    ``interval`` s (not longer when a check was slow: a slow check on a busy machine gave
    the job 50 ms, in which a short stage ran to its end). While the predicate's ``far()``
    (if it has one) holds, the job is not stopped to look: on a store in a bucket a look
    takes ~50 ms, and stopping the job for each one doubled a killed run's time."""
    far = getattr(predicate, "far", None)
    if far is not None and far():
        time.sleep(interval)
        return False
    if _frozen_check(proc, predicate):
        return True
    time.sleep(interval)
    return False


def kill_when(cmd: list[str], predicate, sig: int = signal.SIGKILL, timeout: float = 300,
              interval: float = 0.005, env: dict | None = None, progress=None) -> Kill:
    """Start ``cmd`` in its own process group and send ``sig`` as soon as ``predicate()``
    holds (checked every ``interval`` s with the job stopped, see :func:`_frozen_check`): a
    kill at a chosen point of the run, not at a guessed time. SIGKILL goes to the whole group
    (nothing survives, as with ``kill -9`` on a job), SIGTERM to the command's process alone
    (``kill PID``), SIGINT to the whole group (Ctrl-C in a terminal); after SIGTERM and
    SIGINT the command must end by itself within a minute, and leave no process of its group
    behind.

    Fails unless the predicate held while the command was still running (a kill that lands
    after the end proves nothing). ``progress()`` (e.g. a :func:`stage_progress` partial)
    is read with the job still stopped and returned as ``seen``; the failure message of a
    command that ended first shows it too.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, text=True)
        _lower_priority(proc.pid)
        deadline = time.monotonic() + timeout
        try:
            while not _watch(proc, predicate, interval):
                if proc.poll() is not None:
                    err.seek(0)
                    last = progress() if progress is not None else None
                    raise AssertionError(f"the command ended (status {proc.returncode}) before "
                                         f"the kill point (last seen: {last}): "
                                         f"{err.read()[-2000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"kill point not reached in {timeout:g} s")
            seen = progress() if progress is not None else None
            assert proc.poll() is None, "the command ended as the kill point was reached"
            if sig == signal.SIGTERM:
                os.kill(proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)
            _signal_group(proc.pid, signal.SIGCONT)  # a stopped job handles SIGTERM/SIGINT
            returncode = proc.wait(timeout=60)
            if sig != signal.SIGKILL:
                _wait_group_gone(proc.pid)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err.seek(0)
        return Kill(sig, returncode, err.read(), seen)


def _wait_group_gone(pgid: int, timeout: float = 20) -> None:
    """Wait until no live process of group ``pgid`` is left (zombies do not count)."""
    import psutil

    def alive() -> list[int]:
        out = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        return out

    deadline = time.monotonic() + timeout
    while left := alive():
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError(f"processes {left} of the interrupted command outlived it")
        time.sleep(0.05)


class ProcessCluster:
    """A real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1 (random ports).

    Workers get the same malloc settings streamq gives the workers of its local clusters.
    """

    def __init__(self, workdir, n_workers: int = 2, memory_limit: str = "2GiB",
                 worker_prefix: tuple[str, ...] = (), tls: tuple[str, str, str] | None = None
                 ) -> None:
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.memory_limit = memory_limit
        self.scheduler_file = os.path.join(self.workdir, "scheduler.json")
        # (CA file, certificate, key): every process then speaks TLS only
        self._tls = [] if tls is None else ["--tls-ca-file", tls[0], "--tls-cert", tls[1],
                                            "--tls-key", tls[2]]
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._n = 0
        # the workers start beside the scheduler (each waits for its scheduler file): their
        # imports overlap the scheduler's instead of following them
        self.start_scheduler(wait=False)
        try:
            for _ in range(n_workers):
                self.add_worker(worker_prefix)
            self._wait_for_scheduler_file()
            self.wait_for_workers(n_workers)
        except BaseException:
            self.close()  # no process left behind
            raise

    @property
    def address(self) -> str:
        import json

        with open(self.scheduler_file) as f:
            return json.load(f)["address"]

    def _popen(self, args: list[str], log_name: str, env: dict | None = None,
               prefix: tuple[str, ...] = ()) -> subprocess.Popen:
        with open(os.path.join(self.workdir, log_name), "ab") as log:
            return subprocess.Popen([*prefix, sys.executable, "-m", *args], stdout=log,
                                    stderr=log, start_new_session=True, env=env)

    def start_scheduler(self, wait: bool = True) -> None:
        if os.path.exists(self.scheduler_file):
            os.remove(self.scheduler_file)
        self.scheduler = self._popen(
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", ":0", "--scheduler-file", self.scheduler_file,
             "--idle-timeout", "600", *self._tls,
             *(["--protocol", "tls"] if self._tls else [])], "scheduler.log")
        if wait:
            self._wait_for_scheduler_file()

    def _wait_for_scheduler_file(self) -> None:
        assert self.scheduler is not None
        import json

        deadline = time.monotonic() + 30
        while True:  # the scheduler writes its file in place: wait until it is whole
            try:
                with open(self.scheduler_file) as f:
                    if json.load(f).get("address"):
                        return
            except (FileNotFoundError, ValueError):
                pass
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("the dask scheduler did not start; see scheduler.log")
            time.sleep(0.02)

    def add_worker(self, prefix: tuple[str, ...] = ()) -> str:
        """Start one single-threaded worker process (its command after ``prefix``); its name."""
        from streamq.scheduler import MMAP_THRESHOLD

        self._n += 1
        name = f"w{self._n}"
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD),
                   MALLOC_TRIM_THRESHOLD_=str(MMAP_THRESHOLD))
        self.workers[name] = self._popen(
            ["distributed.cli.dask_worker", "--scheduler-file", self.scheduler_file,
             "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--name", name,
             "--memory-limit", self.memory_limit, "--host", "127.0.0.1",
             "--local-directory", self.workdir, *self._tls], f"{name}.log", env=env,
            prefix=prefix)
        return name

    def client(self):
        from distributed import Client
        from distributed.security import Security

        if not self._tls:
            return Client(self.address, timeout="20s")
        ca, cert, key = self._tls[1], self._tls[3], self._tls[5]
        sec = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                       require_encryption=True)
        return Client(self.address, timeout="20s", security=sec)

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()
        self.scheduler = None

    def close(self) -> None:
        for name in list(self.workers):
            self.kill_worker(name)
        if self.scheduler is not None:
            self.kill_scheduler()

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate, timeout: float = 60, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(interval)


def run_until(cmd: list[str], predicate, timeout: float = 120, env: dict | None = None) -> int | None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group as soon as
    ``predicate()`` is true (checked every 5 ms with the job stopped, see
    :func:`_frozen_check`): a kill at a chosen point of the run, not at a guessed time.
    Returns the exit code if it finished first, else None."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    _lower_priority(proc.pid)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if _watch(proc, predicate, 0.005) or time.monotonic() > deadline:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
    return proc.returncode


def store_bincount(path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: ``np.bincount`` of every stored pixel of every image, read
    with zarr from ``pixels`` and the images table."""
    g = zarr.open_group(str(path), mode="r")
    pixels = g["pixels"]
    off, h, w = (g[f"images/{k}"][:] for k in ("offset", "height", "width"))
    parts = [np.asarray(pixels[o:o + n]).astype(np.int64) for o, n in zip(off, h * w, strict=True)]
    rgb = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)
    counts = np.bincount((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], minlength=1 << 24)
    codes = np.flatnonzero(counts)
    return codes, counts[codes]


def assert_histogram(path, computed: str = "ingest") -> None:
    """The stored table (read with zarr, as fit reads it) equals the bincount."""
    codes, counts = store_bincount(path)
    g = zarr.open_group(str(path), mode="r")
    sec = g.attrs["colors"]
    ingest = g.attrs["ingest"]
    assert sec["state"] == "complete"
    assert sec["data"] == [ingest["source_fingerprint"], ingest["settings_fingerprint"]]
    assert sec["n_distinct"] == len(codes)
    assert sec["computed"] == computed
    np.testing.assert_array_equal(g["colors/code"][:], codes)
    np.testing.assert_array_equal(g["colors/count"][:], counts)
    assert g["colors/count"].dtype == np.int64


def _find_chromium() -> str | None:
    import shutil

    for c in (os.environ.get("STREAMQ_CHROMIUM"), shutil.which("chromium"),
              shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if c and os.path.exists(c):
            return c
    return None


def _can_install_chromium() -> str | None:
    """``apt-get``'s path where this process may install Debian's chromium (root), else None."""
    import shutil

    apt = shutil.which("apt-get")
    return apt if apt is not None and os.geteuid() == 0 else None


_CHROMIUM_LOCK = os.path.join("/tmp", "streamq-tests-chromium.lock")


def install_chromium(apt: str, guard=None) -> str | None:
    """Install Debian's chromium with ``apt``, holding :data:`_CHROMIUM_LOCK` (test processes
    install one at a time: the next finds it installed); returns None, or why it failed.
    ``guard``: the lock file, already locked by the caller (then released here)."""
    import fcntl
    import shutil

    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if guard is None:
        guard = open(_CHROMIUM_LOCK, "w")  # noqa: SIM115  (closed below)
        fcntl.flock(guard, fcntl.LOCK_EX)
    try:
        if _find_chromium() is None:
            print("Installing Debian's chromium for the report tests (apt-get)...",
                  file=sys.stderr)
            # at the lowest priority: it runs beside the first tests, whose kill checks must
            # not be starved (a job killed at an observed point runs at nice 10)
            low = ["nice", "-n", "19", *(["ionice", "-c", "3"] if shutil.which("ionice") else [])]
            for cmd in ([apt, "update", "-qq"],
                        [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
                done = subprocess.run([*low, *cmd], env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
                    return f"`{' '.join(cmd)}` failed ({done.returncode}): {tail[0]}"
        return None
    finally:
        guard.close()  # releases the lock


def start_chromium_install() -> None:
    """On a machine without Chromium where the tests may install it: start installing it now,
    in a thread of this process, so that it is ready by the time the report tests run; they
    wait for the lock it holds (see :func:`chromium`)."""
    import fcntl
    import threading

    apt = _can_install_chromium()
    if _find_chromium() is not None or apt is None:
        return
    guard = open(_CHROMIUM_LOCK, "w")  # noqa: SIM115  (closed by install_chromium)
    fcntl.flock(guard, fcntl.LOCK_EX)  # taken here, before any test process looks
    threading.Thread(target=install_chromium, args=(apt, guard), daemon=True,
                     name="chromium-install").start()


def chromium() -> str:
    """A Chromium binary for the report tests: ``STREAMQ_CHROMIUM``, else one on ``PATH``,
    else Debian's package, installed here and now when this process may (root and
    ``apt-get``: a fresh Debian machine, as CI's) unless the test session's start already
    installs it (:func:`start_chromium_install`). Anything else fails with one line saying
    what to install; the report tests are never skipped."""
    import pytest

    found = _find_chromium()
    if found is not None:
        return found
    apt = _can_install_chromium()
    if apt is None:
        pytest.fail("the report tests need Chromium: install Debian's `chromium` package (or "
                    "set STREAMQ_CHROMIUM to a Chromium binary); the test session installs it "
                    "itself only as root with apt-get")
    failed = install_chromium(apt)  # waits for an install under way, then looks again
    if failed is not None:
        pytest.fail(failed)
    found = _find_chromium()
    if found is None:
        pytest.fail("apt-get installed chromium but no `chromium` binary is on PATH")
    return found

# Image names holding glob characters, and for each a name the glob would match: a file or
# object a user keeps beside the export, which no delete may touch.
GLOB_NAMES = {"photo[1].png": "photo1.png", "star*.png": "starry.png", "what?.png": "whatX.png",
              "set[ab]/x.png": "seta/x.png"}


def write_glob_collection(root) -> list[str]:
    """Small crops of a bundled photo saved under the names of :data:`GLOB_NAMES`."""
    from pathlib import Path

    from PIL import Image
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("flower.jpg")
    root = Path(root)
    for j, name in enumerate(GLOB_NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[60 * j:60 * j + 40, 80 * j:80 * j + 50]).save(root / name)
    return list(GLOB_NAMES)


# -- images with alpha -------------------------------------------------------------------------
def soft_mask(h: int, w: int, seed: int) -> np.ndarray:
    """A cut-out's alpha: opaque inside an ellipse, a soft edge (every level from 1 to 254)
    and fully transparent corners."""
    rng = np.random.default_rng(seed)
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - cy) / (0.42 * h)) ** 2 + ((xx - cx) / (0.42 * w)) ** 2)
    return np.clip(np.round((1.25 - r) / 0.5 * 255), 0, 255).astype(np.uint8)


def write_alpha_collection(root, n: int = 6, seed: int = 3) -> dict[str, str]:
    """Cut-outs of bundled photos (RGBA PNGs with a soft alpha mask, one LA PNG, one palette
    PNG with a transparent entry) beside opaque ones (an RGBA PNG whose alpha is all 255, a
    JPEG); return ``{relative path: kind}`` (``alpha`` or ``opaque``)."""
    from pathlib import Path

    from PIL import Image

    from streamq.examples import source_photos

    root = Path(root)
    photos = source_photos()
    rng = np.random.default_rng(seed)
    kinds = {}
    names = ("Coffee", "Flower", "Chelsea", "Astronaut", "Rocket", "China_Temple")
    (root / "cut").mkdir(parents=True, exist_ok=True)
    (root / "plain").mkdir(exist_ok=True)
    for j in range(n):
        photo = photos[names[j % len(names)]]
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        y, x = int(rng.integers(0, photo.shape[0] - 2 * h)), int(rng.integers(0, photo.shape[1] - 2 * w))
        crop = np.asarray(Image.fromarray(photo[y:y + 2 * h, x:x + 2 * w]).resize(
            (w, h), Image.Resampling.BOX))
        rgba = np.dstack([crop, soft_mask(h, w, seed + j)])
        Image.fromarray(rgba).save(root / "cut" / f"cut_{j:02d}.png")
        kinds[f"cut/cut_{j:02d}.png"] = "alpha"
    grey = np.asarray(Image.fromarray(photos["Coins"][:60, :80]).convert("L"))
    Image.fromarray(np.dstack([grey, soft_mask(60, 80, 99)])).convert("LA").save(root / "cut/la.png")
    kinds["cut/la.png"] = "alpha"
    p = Image.fromarray(photos["Coffee"][100:150, 100:170]).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=32)
    p.save(root / "cut/keyed.png", transparency=0)
    kinds["cut/keyed.png"] = "alpha"
    opaque = photos["Rocket"][50:110, 200:270]
    Image.fromarray(np.dstack([opaque, np.full(opaque.shape[:2], 255, np.uint8)])).save(
        root / "plain/rgba_opaque.png")
    kinds["plain/rgba_opaque.png"] = "opaque"
    Image.fromarray(photos["Chelsea"][100:160, 100:180]).save(root / "plain/cat.jpg", quality=90)
    kinds["plain/cat.jpg"] = "opaque"
    return kinds


# -- stores of an older format ------------------------------------------------------------------
def as_older_format(store, storage_options=None) -> list[tuple[str, str]]:
    """Rewrite a store of the current format as the streamq before store format 3 wrote it,
    with zarr alone: every array ``streamq.store.upgrade.RENAMES`` renames back under its old name
    (``centers`` -> ``center``), the fit checkpoint's keys likewise, format version 1 (2 with
    alpha). Returns ``(old, new)`` of the arrays renamed."""
    import json
    import re

    from streamq.store.upgrade import CHECKPOINT_RENAMES, RENAMES

    g = zarr.open_group(str(store), mode="r+", storage_options=storage_options)
    folders = ["fit/palette"] + ([f"per_image/{k}" for k in g["per_image"].group_keys()]
                                 if "per_image" in g else [])
    done = []
    for folder in folders:
        for name in sorted(g[folder].array_keys()):
            new = f"{folder}/{name}"
            old = f"{folder}/{name.replace('centers', 'center')}"
            if old != new and any(re.fullmatch(o, old) and re.sub(f"^(?:{o})$", n, old) == new
                                  for o, n in RENAMES.items()):
                zarr.from_array(g.store, data=g[new], name=old)
                del g[new]
                done.append((old, new))
    text = str(g["fit/checkpoint"][0]) if "fit/checkpoint" in g else ""
    if text:
        state = json.loads(text)
        back = {v: k for k, v in CHECKPOINT_RENAMES.items()}
        g["fit/checkpoint"][0] = json.dumps({back.get(k, k): v for k, v in state.items()},
                                            separators=(",", ":"))
    g.attrs["streamq"] = {**g.attrs["streamq"], "format_version": 2 if "alpha" in g else 1}
    return done


def tree_bytes(root) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under the folder ``root``."""
    from pathlib import Path

    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def ssim_reference(original: np.ndarray, quantized: np.ndarray) -> float:
    """scikit-image's SSIM with the paper's settings on the BT.601 luma of both images."""
    from skimage.metrics import structural_similarity

    y = np.array([0.299, 0.587, 0.114])
    return structural_similarity(original.astype(np.float64) @ y,
                                 quantized.astype(np.float64) @ y, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=255)


def composites(rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Straight uint8 RGBA ``(H, W, 4)`` composited on black and on white, in float64 and
    rounded half up (as ingest premultiplies)."""
    c, a = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64) / 255
    return np.floor(c * a + 0.5), np.floor(c * a + 255 * (1 - a) + 0.5)


def alpha_ssim_reference(original: np.ndarray, quantized: np.ndarray) -> float:
    """The SSIM of two straight RGBA images: scikit-image's on their composites on black and
    on white (:func:`composites`), averaged."""
    (ob, ow), (qb, qw) = composites(original), composites(quantized)
    return (ssim_reference(ob, qb) + ssim_reference(ow, qw)) / 2


def plain_weighted_lloyd(x, w, c, fixed):
    """Independent reference: weighted Lloyd with every point against every centre, the
    first ``fixed`` centres held, an empty free cluster refilled by the point farthest from
    its centre (which leaves its cluster); run to zero label changes. Returns the centres,
    the labels and one ``(changed labels, squared shift)`` row per update."""
    c = np.array(c, dtype=np.float64)
    k = len(c)
    labels = ((x[:, None] - c[None]) ** 2).sum(2).argmin(1)
    rows = []
    while True:
        n = np.bincount(labels, weights=w, minlength=k)
        empty = [j for j in range(fixed, k) if n[j] == 0]
        far = np.argsort(-((x - c[labels]) ** 2).sum(1), kind="stable")
        for j, i in zip(empty, far, strict=False):
            labels[i] = j
        n = np.bincount(labels, weights=w, minlength=k)
        new = c.copy()
        for j in range(fixed, k):
            if n[j] > 0:
                new[j] = (w[labels == j, None] * x[labels == j]).sum(0) / n[j]
        shift = ((new - c) ** 2).sum()
        c = new
        relabelled = ((x[:, None] - c[None]) ** 2).sum(2).argmin(1)
        rows.append((int((relabelled != labels).sum()), shift))
        labels = relabelled
        if rows[-1][0] == 0 and not empty:
            return c, labels, rows
