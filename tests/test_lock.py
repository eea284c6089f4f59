"""The store's write lock, with real processes: refusal, readers, stale take-over, races."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
import zarr

import streamq
from streamq.errors import ConfigError, LockLostError, StoreLayoutError, StoreLockedError
from streamq.examples import make_collection
from streamq.lock import LocalFiles, StoreLock, lock_path, read_lock, store_lock, unlock
from tests.helpers import streamq_cmd

# Takes the lock through the API, says so, and holds it until its stdin gets a line (or closes).
HOLDER = r"""
import sys
from streamq.lock import store_lock
with store_lock(sys.argv[1], command=sys.argv[2], operation="test-holder"):
    print("locked", flush=True)
    sys.stdin.readline()
"""

# Waits for "go", tries once to take the lock, reports, and a winner holds it until stdin closes.
# Every filesystem operation is delayed by 0-20 ms (see SlowFiles below).
RACER = r"""
import random, sys, time
from streamq.errors import StoreLockedError
from streamq.lock import LocalFiles, StoreLock

class SlowFiles(LocalFiles):
    rng = random.Random(sys.argv[2])
    def _wait(self):
        time.sleep(self.rng.uniform(0, 0.02))
    def read(self, path):
        self._wait()
        return super().read(path)
    def create_exclusive(self, path, data):
        self._wait()
        return super().create_exclusive(path, data)
    def rename(self, src, dst):
        self._wait()
        return super().rename(src, dst)
    def remove(self, path):
        self._wait()
        super().remove(path)

lock = StoreLock(sys.argv[1], command=sys.argv[2], files=SlowFiles())
print("ready", flush=True)
sys.stdin.readline()
try:
    lock.acquire()
except StoreLockedError as exc:
    print("lost " + str(exc), flush=True)
else:
    print("won", flush=True)
    sys.stdin.readline()
    lock.release()
"""


class SlowFiles(LocalFiles):
    """The real local filesystem, each operation delayed by 0-20 ms (a busy NFS server).

    Racers then judge a stale lock and act on it at scattered moments: the interleavings in
    which a take-over without its claim lets two of them win.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _wait(self) -> None:
        time.sleep(self.rng.uniform(0, 0.02))

    def read(self, path: str) -> bytes | None:
        self._wait()
        return super().read(path)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        self._wait()
        return super().create_exclusive(path, data)

    def rename(self, src: str, dst: str) -> bool:
        self._wait()
        return super().rename(src, dst)

    def remove(self, path: str) -> None:
        self._wait()
        super().remove(path)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _close_started():
    """Processes a test started are gone, and their pipes closed, when it ends."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _start(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _STARTED.append(proc)
    return proc


def _hold(store: Path, command: str) -> subprocess.Popen:
    """A real process holding the store's lock (returns once it holds it)."""
    proc = _start(HOLDER, str(store), command)
    line = proc.stdout.readline()
    assert line == "locked\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


_DEAD: list[int] = []


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped (made once per session)."""
    if not _DEAD:
        proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        _DEAD.append(int(proc.stdout))
    assert not psutil.pid_exists(_DEAD[0])
    return _DEAD[0]


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _write_lock(store: Path, **fields: object) -> dict:
    """A lock file written by hand, as another job would have left it."""
    record = {"streamq_lock": 1, "token": uuid.uuid4().hex, "store": str(store),
              "command": "streamq fit old.zarr -k 8", "operation": "fit",
              "host": socket.gethostname(), "pid": _dead_pid(), "user": "someone",
              "started": "2026-01-01T00:00:00+0000", "process_start": 1.0e9,
              "heartbeat": time.time(), "heartbeat_interval": 10.0, "stale_after": 60.0,
              "boot_id": _boot_id(), "pid_ns": os.readlink("/proc/self/ns/pid"), **fields}
    Path(lock_path(store)).write_text(json.dumps(record))
    return record


def _siblings(store: Path) -> list[str]:
    return sorted(p.name for p in store.parent.iterdir())


@pytest.fixture
def store_dir(tmp_path) -> Path:
    """An existing folder standing for a store (the lock only needs it to exist)."""
    p = tmp_path / "s.zarr"
    p.mkdir()
    return p


@pytest.fixture
def quantized(tmp_path) -> tuple[Path, Path]:
    """A real, small, fitted and quantized store and its source folder."""
    src = tmp_path / "src"
    make_collection(src, 6, seed=3, min_side=20, max_side=60)
    store = tmp_path / "q.zarr"
    streamq.ingest(src, store, scheduler="sync", progress=False)
    streamq.fit(str(store), colors=4, algorithm="lloyd", scheduler="sync",
                progress=False)
    streamq.quantize(str(store), scheduler="sync", progress=False)
    return store, src


def test_second_writer_refused_readers_work_and_kill9_is_taken_over(quantized, tmp_path):
    store, src = quantized
    holder = _hold(store, "holder-job --long")
    try:
        owner = json.loads(Path(lock_path(store)).read_text())
        assert owner["pid"] == holder.pid
        assert owner["command"] == "holder-job --long"
        assert owner["host"] == socket.gethostname()
        assert owner["user"]

        # A second writer, as a real command: one line naming the holder, exit status 1.
        res = subprocess.run(streamq_cmd("fit", str(store), "-k", "3", "--algorithm", "lloyd",
                                         "--scheduler", "sync"), capture_output=True, text=True)
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1
        assert res.stderr.startswith("error: ")
        assert "is locked by another job" in res.stderr
        assert f"pid {holder.pid}" in res.stderr
        assert "'holder-job --long'" in res.stderr
        assert f"host {socket.gethostname()}" in res.stderr
        assert "started 20" in res.stderr
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({"store": str(store), "ingest": {"source": str(src)},
                                       "dask": {"scheduler": "sync"}}))
        res = subprocess.run(streamq_cmd("run", str(cfg)), capture_output=True, text=True)
        assert res.returncode == 1
        assert f"pid {holder.pid}" in res.stderr, res.stderr

        # Every writer of the API refuses too, before touching the store.
        s = str(store)
        writers = {
            "ingest": lambda: streamq.ingest(src, store, scheduler="sync"),
            "fit": lambda: streamq.fit(s, colors=3, scheduler="sync"),
            "fit_per_image": lambda: streamq.fit_per_image(s, colors=[2], scheduler="sync"),
            "quantize": lambda: streamq.quantize(s, scheduler="sync"),
            "collection_mse": lambda: streamq.collection_mse(s),
            "run": lambda: streamq.run({"store": s, "ingest": {"source": str(src)},
                                        "dask": {"scheduler": "sync"}}),
        }
        for name, call in writers.items():
            with pytest.raises(StoreLockedError, match=f"pid {holder.pid} "):
                call()
            assert read_lock(store).pid == holder.pid, name
        assert streamq.load_fit(s).k == 4  # nothing was changed

        # Readers never need the lock: info (a real command), open_store, export.
        res = subprocess.run(streamq_cmd("info", str(store), "--json"), capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["n_images"] == 6
        coll = streamq.open_store(store)
        assert coll.read(0).shape == (*coll.shapes[0], 3)
        summary = streamq.export(s, str(tmp_path / "out"), scheduler="sync", progress=False)
        assert summary.n_written == 6
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    assert read_lock(store).pid == holder.pid  # left behind by the killed job

    res = subprocess.run(streamq_cmd("fit", str(store), "-k", "3", "--algorithm", "lloyd",
                                     "--overwrite", "--scheduler", "sync", "--json"),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Removed the stale lock" in res.stderr
    assert f"pid {holder.pid} is not running on this host" in res.stderr
    assert "'holder-job --long'" in res.stderr
    assert json.loads(res.stdout)["k"] == 3
    assert streamq.load_fit(str(store)).k == 3
    assert _siblings(store) == ["out", "q.zarr", "run.yaml", "src"]  # lock released, nothing left over


def test_pid_reused_by_another_process_is_stale(store_dir, caplog):
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    _STARTED.append(other)
    try:
        # A live pid of this host, but that process started long after the lock's owner did.
        _write_lock(store_dir, pid=other.pid, process_start=psutil.Process(other.pid).create_time() - 3600)
        with caplog.at_level(logging.WARNING, logger="streamq.lock"), store_lock(store_dir) as lk:
            assert read_lock(store_dir).token == lk.token
        assert "is now another process" in caplog.text
        # The same pid with its true start time is a live owner.
        _write_lock(store_dir, pid=other.pid, process_start=psutil.Process(other.pid).create_time())
        with pytest.raises(StoreLockedError, match=f"pid {other.pid} "):
            StoreLock(store_dir).acquire()
    finally:
        other.kill()
        other.wait()


def test_zombie_owner_is_stale(store_dir):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not reaped
        time.sleep(0.01)
    try:
        _write_lock(store_dir, pid=proc.pid, process_start=psutil.Process(proc.pid).create_time())
        with store_lock(store_dir) as lk:
            assert read_lock(store_dir).token == lk.token
    finally:
        proc.wait()


def test_other_host_is_stale_only_after_its_heartbeat_stops(store_dir, caplog):
    far = "build-node-7.example"
    t0 = time.time()
    _write_lock(store_dir, host=far, pid=4242, heartbeat=t0 - 5)
    with pytest.raises(StoreLockedError) as err:
        StoreLock(store_dir).acquire()
    assert f"pid 4242 on host {far}" in str(err.value)
    # the heartbeat's age as the message was made: 5 s, plus what a loaded machine took since
    age = re.search(r"last heartbeat (\d+) s ago", str(err.value))
    assert age is not None, str(err.value)
    assert 5 <= int(age.group(1)) <= 5 + time.time() - t0 + 1

    # `streamq unlock` refuses a live-looking owner on another host without --force.
    res = subprocess.run(streamq_cmd("unlock", str(store_dir)), capture_output=True, text=True)
    assert res.returncode == 1
    assert "--force" in res.stderr
    assert far in res.stderr

    # The owner's own stale_after (recorded in the lock) decides, not ours.
    _write_lock(store_dir, host=far, pid=4242, heartbeat=time.time() - 90, stale_after=120.0)
    with pytest.raises(StoreLockedError):
        StoreLock(store_dir, stale_after=20, heartbeat=5).acquire()

    old = _write_lock(store_dir, host=far, pid=4242, heartbeat=time.time() - 3600)
    with caplog.at_level(logging.WARNING, logger="streamq.lock"), store_lock(store_dir) as lk:
        now = json.loads(Path(lock_path(store_dir)).read_text())
        assert now["token"] == lk.token != old["token"]
        assert now["host"] == socket.gethostname()
    assert f"no heartbeat from host {far}" in caplog.text
    assert "pid 4242" in caplog.text
    assert _siblings(store_dir) == ["s.zarr"]


def test_unlock_command(store_dir):
    far = "build-node-7.example"
    _write_lock(store_dir, host=far, pid=4242, heartbeat=time.time() - 5)
    res = subprocess.run(streamq_cmd("unlock", str(store_dir), "--force"), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert "removed the lock of 'streamq fit old.zarr -k 8'" in res.stdout
    assert far in res.stdout
    assert read_lock(store_dir) is None
    res = subprocess.run(streamq_cmd("unlock", str(store_dir)), capture_output=True, text=True)
    assert res.returncode == 0
    assert "is not locked" in res.stdout

    # A live owner on this host is never removed, --force or not.
    with store_lock(store_dir, command="me") as lk:
        with pytest.raises(StoreLockedError, match="still running on this host"):
            unlock(store_dir, force=True)
        assert read_lock(store_dir).token == lk.token
    _write_lock(store_dir)  # dead pid on this host
    owner, why = unlock(store_dir)
    assert "is not running on this host" in why
    assert owner.user == "someone"
    assert _siblings(store_dir) == ["s.zarr"]


def test_processes_racing_for_a_stale_lock_one_wins(store_dir):
    stale = _write_lock(store_dir)  # its pid is gone
    racers = [_start(RACER, str(store_dir), f"racer-{i}") for i in range(4)]
    try:
        for r in racers:
            assert r.stdout.readline() == "ready\n"
        for r in racers:  # all at once
            r.stdin.write("go\n")
            r.stdin.flush()
        results = [r.stdout.readline().strip() for r in racers]
        won = [i for i, res in enumerate(results) if res == "won"]
        assert len(won) == 1, results
        winner = racers[won[0]]
        owner = read_lock(store_dir)
        assert owner.pid == winner.pid
        assert owner.command == f"racer-{won[0]}"
        assert owner.token != stale["token"]
        for i, res in enumerate(results):
            if i != won[0]:
                assert res.startswith("lost ")
                assert f"pid {winner.pid} " in res, res
    finally:
        for r in racers:
            r.stdin.close()
            r.wait(timeout=60)
    assert [r.returncode for r in racers] == [0] * len(racers)
    assert _siblings(store_dir) == ["s.zarr"]


def test_threads_racing_for_stale_locks_one_wins_each_time(store_dir):
    n = 6
    for rnd in range(12):
        _write_lock(store_dir)
        locks = [StoreLock(store_dir, command=f"t{i}", files=SlowFiles(rnd * n + i))
                 for i in range(n)]
        results: list[str | None] = [None] * n
        barrier = threading.Barrier(n)

        def go(i: int, locks=locks, results=results, barrier=barrier) -> None:
            barrier.wait()
            try:
                locks[i].acquire()
                results[i] = "won"
            except StoreLockedError as exc:
                results[i] = str(exc)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("won") == 1, results
        w = results.index("won")
        assert read_lock(store_dir).token == locks[w].token
        assert all(f"'t{w}'" in r for r in results if r != "won"), results
        locks[w].release()
        assert _siblings(store_dir) == ["s.zarr"]


def test_a_take_over_killed_midway_is_taken_over_too(store_dir, caplog):
    stale = _write_lock(store_dir)
    # The claim a killed take-over left behind: its pid is gone as well.
    claim = Path(lock_path(store_dir) + ".claim-" + stale["token"])
    claim.write_text(json.dumps({**stale, "token": uuid.uuid4().hex, "pid": _dead_pid(),
                                 "claim_of": stale["token"]}))
    with caplog.at_level(logging.WARNING, logger="streamq.lock"), store_lock(store_dir) as lk:
        assert read_lock(store_dir).token == lk.token
    assert "take-over claim" in caplog.text
    assert "stale lock" in caplog.text
    assert _siblings(store_dir) == ["s.zarr"]


def test_unreadable_lock_file(store_dir):
    path = Path(lock_path(store_dir))
    path.write_bytes(b"")  # as if its writer were between create and write
    with pytest.raises(StoreLockedError, match="being written, or is unreadable"):
        StoreLock(store_dir).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))  # ... an hour ago: junk
    with store_lock(store_dir) as lk:
        assert read_lock(store_dir).token == lk.token


def test_reentrant_in_one_thread_refused_to_others(store_dir):
    with store_lock(store_dir, command="outer") as outer:
        with store_lock(store_dir, operation="inner") as inner:
            assert inner is outer
        assert read_lock(store_dir).token == outer.token  # the inner exit kept it
        errors = []

        def other() -> None:
            try:
                with store_lock(store_dir):
                    pass
            except StoreLockedError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1
        assert "another thread of this process" in errors[0]
        # A separate instance is another holder, like another process.
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} "):
            StoreLock(store_dir).acquire()
    assert read_lock(store_dir) is None


def test_run_takes_the_lock_once_for_every_stage(tmp_path, caplog):
    src = tmp_path / "src"
    make_collection(src, 5, seed=4, min_side=20, max_side=50)
    store = tmp_path / "r.zarr"
    cfg = {"store": str(store), "ingest": {"source": str(src)}, "dask": {"scheduler": "sync"},
           "fit": {"colors": 3, "algorithm": "lloyd"},
           "export": {"out": str(tmp_path / "out")}}
    with caplog.at_level(logging.DEBUG, logger="streamq.lock"):
        report = streamq.run(cfg, progress=False)
    assert set(report.stages) == {"ingest", "fit", "quantize", "export"}
    taken = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("Locked", "Unlocked"))]
    assert taken == [f"Locked {store} ({store}.lock)", f"Unlocked {store}"]
    assert read_lock(store) is None

    # Inside a lock held by the caller, run and its stages re-enter it and leave it held.
    with store_lock(store, command="caller") as lk:
        report = streamq.run({**cfg, "fit": {**cfg["fit"], "colors": 2}}, overwrite=True,
                             progress=False)
        assert read_lock(store).token == lk.token
    assert report.stages["fit"].k == 2
    assert read_lock(store) is None


def test_heartbeat_refreshes_and_a_lost_lock_fails_the_job(store_dir, caplog):
    cfg = streamq.load_config(None).lock
    assert (cfg.stale_after, cfg.heartbeat) == (60.0, 10.0)
    with pytest.raises(ConfigError, match="lock.stale_after"):
        StoreLock(store_dir, stale_after=1.0, heartbeat=1.0)

    def job_that_loses_its_lock() -> None:
        fast = type(cfg)(stale_after=0.2, heartbeat=0.05)
        with store_lock(store_dir, config=fast):
            first = read_lock(store_dir).heartbeat
            deadline = time.monotonic() + 10
            while read_lock(store_dir).heartbeat == first and time.monotonic() < deadline:
                time.sleep(0.01)
            assert read_lock(store_dir).heartbeat > first
            # Another host decides this job is gone and takes the store over.
            _write_lock(store_dir, host="elsewhere.example", pid=7, command="intruder")
            deadline = time.monotonic() + 10
            while "no longer this job's" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)

    with caplog.at_level(logging.DEBUG, logger="streamq.lock"), pytest.raises(
            LockLostError, match="write lock was taken over by 'intruder'"):
        job_that_loses_its_lock()
    assert "no longer this job's" in caplog.text
    assert read_lock(store_dir).command == "intruder"  # left alone: it is not ours


def test_missing_store_and_lock_location(tmp_path):
    with pytest.raises(StoreLayoutError, match="does not exist"):
        streamq.fit(str(tmp_path / "nope.zarr"), colors=4)
    assert list(tmp_path.iterdir()) == []
    # ingest may create the store (and its parent folders); the lock sits beside it
    new = tmp_path / "a" / "b" / "new.zarr"
    with store_lock(new, create=True):
        assert (tmp_path / "a" / "b" / "new.zarr.lock").is_file()
    # a symlink to a store shares the store's lock
    real = tmp_path / "real.zarr"
    real.mkdir()
    (tmp_path / "alias.zarr").symlink_to(real)
    assert lock_path(tmp_path / "alias.zarr") == str(real) + ".lock"
    with store_lock(real), pytest.raises(StoreLockedError):
        StoreLock(tmp_path / "alias.zarr").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "alias.zarr", "real.zarr"]



# -- owner identity across pid namespaces ----------------------------------------------------
def test_owner_identity_and_a_lock_of_another_pid_namespace(store_dir, caplog):
    # Same host name, a pid that is not running here, but another pid namespace (a container
    # sharing the volume) or another boot: its pid says nothing here, its fresh heartbeat
    # says it runs.
    for other in ({"pid_ns": "pid:[4026531999]"}, {"boot_id": str(uuid.uuid4())},
                  {"pid_ns": None, "boot_id": None}):  # a lock that does not say
        _write_lock(store_dir, heartbeat=time.time() - 5, **other)
        with pytest.raises(StoreLockedError, match=f"pid {_dead_pid()} on host "
                                                   f"{socket.gethostname()}, another pid"):
            StoreLock(store_dir).acquire()
        with pytest.raises(StoreLockedError, match="rerun with --force"):
            unlock(store_dir)
    # ... until its heartbeat is older than its stale_after.
    old = _write_lock(store_dir, pid_ns="pid:[4026531999]", heartbeat=time.time() - 120)
    with caplog.at_level(logging.WARNING, logger="streamq.lock"), store_lock(store_dir) as lk:
        assert read_lock(store_dir).token == lk.token != old["token"]
    assert "another pid namespace or boot for 120 s" in caplog.text
    assert _siblings(store_dir) == ["s.zarr"]

    # What the owner's identity is made of, in a file only its user can read.
    with store_lock(store_dir, command="me") as lk:
        assert os.stat(lock_path(store_dir)).st_mode & 0o777 == 0o600
        rec = json.loads(Path(lock_path(store_dir)).read_text())
        assert rec["boot_id"] == _boot_id()
        assert rec["pid_ns"] == os.readlink("/proc/self/ns/pid")
        assert rec["pid"] == os.getpid()
        assert rec["process_start"] == psutil.Process().create_time()
        assert rec["host"] == socket.gethostname()
        assert rec["token"] == lk.token


def test_a_live_holder_in_its_own_pid_namespace_is_not_broken(store_dir):
    """A real process in a new pid namespace (pid 1 there; here pid 1 is another, live
    process started long before) holds the lock: it must not be taken as gone."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:  # no user namespaces here: the field-based test above covers it
        pytest.skip(f"unshare --pid is not permitted here: {probe.stderr.decode().strip()}")
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                               "-c", HOLDER, str(store_dir), "contained-job"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _STARTED.append(holder)
    try:
        assert holder.stdout.readline() == "locked\n", holder.stderr.read()
        owner = read_lock(store_dir)
        assert owner.pid == 1
        with pytest.raises(StoreLockedError, match="'contained-job' .*pid 1 on host .*another pid"):
            StoreLock(store_dir).acquire()
        assert read_lock(store_dir).token == owner.token
        assert owner.raw["pid_ns"] != os.readlink("/proc/self/ns/pid")
        assert owner.raw["boot_id"] == _boot_id()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0, holder.stderr.read()
    assert read_lock(store_dir) is None


# -- the heartbeat cannot overwrite a lock taken over ----------------------------------------
def test_heartbeat_never_overwrites_a_lock_taken_over(store_dir):
    """The heartbeat's check of the token and its replace are one step: a take-over between
    them waits, and then sees a fresh heartbeat instead of the silent lock it judged."""
    entered = threading.Event()

    class SlowReplace(LocalFiles):
        def replace(self, path: str, data: bytes) -> None:
            entered.set()
            time.sleep(0.3)  # between reading our token and replacing the file
            super().replace(path, data)

    a = StoreLock(store_dir, command="a", heartbeat=0.5, stale_after=1.0, files=SlowReplace())
    a.acquire()
    try:
        assert entered.wait(10)
        # While the heartbeat is in the middle of its refresh, the lock looks gone silent
        # (as if its host had been frozen) and another job takes it over.
        path = Path(lock_path(store_dir))
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({**rec, "host": "elsewhere.example",
                                    "heartbeat": time.time() - 3600}))
        b = StoreLock(store_dir, command="b")
        try:
            b.acquire()
            b_won = True
        except StoreLockedError:
            b_won = False
        time.sleep(0.6)  # the heartbeat has finished and beaten once more
        owner = read_lock(store_dir)
        if b_won:  # allowed only if the heartbeat then saw the lock was b's
            assert owner.token == b.token
            assert a.lost is not None
            with pytest.raises(LockLostError, match="taken over by 'b'"):
                a.check()
            b.release()
        else:
            assert owner.token == a.token
            assert a.lost is None
            a.check()
    finally:
        a.release()
    assert _siblings(store_dir) == ["s.zarr"]


# -- a job whose lock was taken over stops writing -------------------------------------------
# Waits for "go", then makes the lock look silent through the public file format (a holder on
# another host whose heartbeat stopped an hour ago: on this host a live pid would decide) and
# takes it over, retrying if the holder's heartbeat refreshed it in between; says when it
# holds it and keeps it until stdin closes.
INTRUDER = r"""
import json, os, sys, time
from streamq.errors import StoreLockedError
from streamq.lock import StoreLock, lock_path

store = sys.argv[1]
path = lock_path(store)
print("ready", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 60
while True:
    with open(path) as f:
        rec = json.load(f)
    rec.update(heartbeat=time.time() - 3600, host="frozen-host.example")
    with open(path + ".forged", "w") as f:
        json.dump(rec, f)
    os.replace(path + ".forged", path)
    lock = StoreLock(store, command="intruder-job --take-over")
    try:
        lock.acquire()
        break
    except StoreLockedError as exc:
        if time.monotonic() > deadline:
            print("gave up: " + str(exc), flush=True)
            sys.exit(1)
print(f"won {time.time()!r}", flush=True)
sys.stdin.readline()
lock.release()
"""


@pytest.fixture
def many_shards(tmp_path) -> Path:
    """A fitted store of 158 small shards: quantize runs one task per shard."""
    src = tmp_path / "src"
    make_collection(src, 20, seed=3, min_side=60, max_side=120)
    store = tmp_path / "m.zarr"
    streamq.ingest(src, store, chunk_pixels=1024, block_pixels=1024, scheduler="sync",
                   progress=False)
    streamq.fit(str(store), colors=4, algorithm="lloyd", scheduler="sync")
    return store


def test_a_job_whose_lock_is_taken_over_stops_before_its_next_write(many_shards, tmp_path):
    store = many_shards
    n_shards = -(-zarr.open_array(store / "pixels", mode="r").shape[0] // 1024)
    assert n_shards > 100
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"lock": {"heartbeat": 1, "stale_after": 2},
                                   "dask": {"scheduler": "threads", "n_workers": 1}}))
    intruder = _start(INTRUDER, str(store))
    assert intruder.stdout.readline() == "ready\n"
    job = subprocess.Popen(streamq_cmd("quantize", str(store), "--config", str(cfg)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = store / "quantize" / "records" / "c"
    try:
        deadline = time.monotonic() + 120
        while not (records.is_dir() and len(list(records.iterdir())) >= 2):  # it is writing
            assert job.poll() is None, job.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        intruder.stdin.write("go\n")
        intruder.stdin.flush()
        line = intruder.stdout.readline()
        assert line.startswith("won "), line
        won = float(line.split()[1])
        _, err = job.communicate(timeout=120)
        written = list(records.iterdir())
        assert 2 <= len(written) < n_shards  # it stopped ...
        # ... before its next write: at most the one task past its check when the lock went
        late = [p for p in store.rglob("*") if p.is_file() and p.stat().st_mtime > won]
        assert len(late) <= 2, late  # its label shard and its record
        assert job.returncode == 1
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: {store}: this job's write lock was taken over by "
                              f"'intruder-job --take-over' (write, pid {intruder.pid} on host "
                              f"{socket.gethostname()}"), err
        assert zarr.open_group(store, mode="r").attrs["quantize"]["state"] != "complete"
        assert read_lock(store).command == "intruder-job --take-over"  # left to its owner
    finally:
        job.kill()
        intruder.stdin.close()
        intruder.wait(timeout=60)
    assert intruder.returncode == 0
    assert sorted(p.name for p in store.parent.iterdir()) == ["job.yaml", "m.zarr", "src"]
