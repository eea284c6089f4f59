"""Faults of the machine are not bad input: real EMFILE, MemoryError and ENOSPC.

Each fault is real: file descriptors exhausted (the kernel answers EMFILE), an address-space
limit (MemoryError), a small tmpfs that fills up (ENOSPC). They are retried, then stop the
stage with one line naming the file and the errno; nothing is recorded as a bad input, and
the same command finishes once the cause is gone, identical to an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from helpers import assert_same_results, assert_same_store
from PIL import Image

import streamq
from streamq.errors import FaultError
from streamq.faults import is_transient, retrying

# Runs the streamq CLI; the opens of one file whose ordinal numbers are listed find no free
# file descriptor: just before them every free descriptor is taken (the kernel then answers
# EMFILE), and the next audited event of any other kind gives them back. The opens that only
# ask the kernel to read the file ahead (streamq.ingest.sources.will_need: os.open with
# O_NONBLOCK) are not reads: not counted, never failed.
FD_SHORTAGE = textwrap.dedent('''
    import os, resource, sys

    target, failing = os.path.abspath(sys.argv[1]), sys.argv[2]
    fail = set(range(int(failing[:-1]), 10**6)) if failing.endswith("+") else \\
        {int(n) for n in failing.split(",")}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    hog, opens = [], [0]

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)) \\
                and os.path.abspath(os.fsdecode(args[0])) == target \\
                and not (args[1] is None and args[2] & os.O_NONBLOCK):  # not read-ahead hints
            opens[0] += 1
            if opens[0] in fail:
                try:
                    while True:
                        hog.append(os.dup(2))
                except OSError:
                    pass
                return
        while hog:
            os.close(hog.pop())

    sys.addaudithook(hook)
    from streamq.cli.main import cli
    cli.main(sys.argv[3:], prog_name="streamq")
''')


@pytest.fixture(scope="module")
def small_src(tmp_path_factory):
    """Six PNGs in two folders, and their reference store (an uninterrupted ingest). With
    chunks of 1024 pixels, an image spans about three: the write tasks hold 8 chunks, 8, 2."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(3)
    for i in range(6):
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (50 + i, 60, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    ref = tmp_path_factory.mktemp("ref") / "ref.zarr"
    streamq.ingest(root, ref, chunk_pixels=1024, scheduler="sync", progress=False)
    return root, ref


def _retry_config(path, attempts: int, wait: float) -> str:
    path.write_text(f"retry:\n  attempts: {attempts}\n  wait: {wait}\n")
    return str(path)


def _ingest_with_fd_shortage(tmp_path, src, store, failing: str, *flags: str):
    script = tmp_path / "fd_shortage.py"
    script.write_text(FD_SHORTAGE)
    target = src / "b" / "4.png"
    cfg = _retry_config(tmp_path / "retry.yaml", 3, 0.05)
    return subprocess.run(
        [sys.executable, str(script), str(target), failing, *flags, "ingest", str(src), str(store),
         "--chunk-pixels", "1024", "--scheduler", "sync", "--config", cfg],
        capture_output=True, text=True, timeout=120), target


def test_emfile_on_first_reads_is_retried_not_recorded(small_src, tmp_path):
    src, ref = small_src
    store = tmp_path / "s.zarr"
    # open 1: the header scan, open 3: the decode (each failing once, then retried)
    res, target = _ingest_with_fd_shortage(tmp_path, src, store, "1,3")
    assert res.returncode == 0, res.stderr
    retries = [line for line in res.stderr.splitlines() if "retrying" in line]
    assert len(retries) == 2, res.stderr
    assert all(str(target) in line and "errno 24 EMFILE" in line for line in retries)
    assert not streamq.open_store(store).skipped
    assert_same_store(ref, store)


@pytest.mark.parametrize("first", ["1+", "2+"], ids=["scan", "decode"])
def test_lasting_emfile_fails_the_stage_in_one_line_then_rerun_finishes(small_src, tmp_path, first):
    src, ref = small_src
    store = tmp_path / "s.zarr"
    res, target = _ingest_with_fd_shortage(tmp_path, src, store, first, "-q")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        f"error: cannot read {target}: Too many open files (errno 24 EMFILE)")
    assert "after 3 attempts" in lines[0]
    g = zarr.open_group(str(store), mode="r")
    assert g.attrs.get("ingest", {}).get("state") != "complete"
    if first == "2+":  # the scan found the file; its write task failed without a record
        assert g.attrs["ingest"]["state"] == "planned"
        records = [json.loads(r) for r in g["ingest/tasks/report"][:] if r]
        assert 0 < len(records) < g["ingest/tasks/report"].shape[0]
        assert not any(r["failed"] for r in records)
        assert not len(g["ingest/scan_skipped/path"][:])

    again = streamq.ingest(src, store, chunk_pixels=1024, scheduler="sync", progress=False)
    assert again.status == ("resumed" if first == "2+" else "ingested")
    assert_same_store(ref, store)


MEMORY_LIMIT = textwrap.dedent('''
    import os, resource, sys, tempfile

    from PIL import Image
    import streamq
    from streamq.cli.main import cli

    with tempfile.TemporaryDirectory() as d:  # load and compile all an ingest uses, first
        Image.new("RGB", (8, 8)).save(d + "/w.png")
        streamq.ingest(d, d + "/w.zarr", scheduler="sync", progress=False)
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) for line in fh if line.startswith("VmSize")) * 1024
    # room for the task's 48 MB pixel buffer, not for the 64 MB of the decoded image as well
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (size + 100 * 2**20, hard))
    cli.main(sys.argv[1:], prog_name="streamq")
''')


def test_memory_error_is_not_a_bad_input(tmp_path):
    if not os.path.exists("/proc/self/status"):
        pytest.fail("this test reads the process size from /proc (Linux)")
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(src / "a.png")
    Image.new("RGB", (4000, 4000), (9, 8, 7)).save(src / "big.png")  # a small file
    script = tmp_path / "memory_limit.py"
    script.write_text(MEMORY_LIMIT)
    store = tmp_path / "s.zarr"
    cfg = _retry_config(tmp_path / "retry.yaml", 2, 0.01)
    res = subprocess.run(
        [sys.executable, str(script), "-q", "ingest", str(src), str(store), "--scheduler", "sync",
         "--chunk-pixels", str(2**24), "--config", cfg],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, MALLOC_ARENA_MAX="1", OMP_NUM_THREADS="1"))
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: cannot read {src / 'big.png'}: out of memory (MemoryError)")
    assert "after 2 attempts" in lines[0]
    assert zarr.open_group(str(store), mode="r").attrs["ingest"]["state"] == "planned"


# Inside a new mount namespace: a 64 MiB tmpfs; a reference run of every stage measures what
# each writes; then each stage runs with half of that space free (it must fail in one line),
# the space is freed, and the same command runs again.
NO_SPACE = textwrap.dedent('''
    import json, os, shutil, subprocess, sys

    from click.testing import CliRunner
    from streamq.cli.main import cli

    src, work, disk = sys.argv[1:4]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", disk], check=True)
    cfg = os.path.join(work, "c.yaml")
    with open(cfg, "w") as fh:
        fh.write("dask: {scheduler: threads, n_workers: 2}\\nretry: {attempts: 2, wait: 0.01}\\n")

    def free():
        s = os.statvfs(disk)
        return s.f_bavail * s.f_frsize

    def run(stage, store, out, *flags):
        args = {"ingest": [src, store, "--chunk-pixels", "20000"],
                "fit": [store, "-k", "5", "--algorithm", "lloyd", "--n-init", "2"],
                "quantize": [store], "export": [store, out]}[stage]
        r = CliRunner().invoke(cli, [*flags, stage, *args, "--config", cfg])
        return {"code": r.exit_code, "stderr": r.stderr, "stdout": r.stdout,
                "exception": repr(r.exception) if r.exit_code not in (0, 1) else None}

    stages = ["ingest", "fit", "quantize", "export"]
    need, report = {}, {}
    for stage in stages:  # the reference run, which measures each stage's writes
        before = free()
        report["ref " + stage] = run(stage, f"{disk}/ref.zarr", f"{disk}/ref-out")
        need[stage] = before - free()
    for name in ("ref.zarr", "ref-out"):
        shutil.copytree(f"{disk}/{name}", f"{work}/{name}", symlinks=True)
        shutil.rmtree(f"{disk}/{name}")
    for stage in stages:
        if stage != "fit":
            ballast = os.path.join(disk, "ballast")
            with open(ballast, "wb") as fh:  # leaves half of what the stage writes
                os.posix_fallocate(fh.fileno(), 0, free() - need[stage] // 2)
            report["full " + stage] = run(stage, f"{disk}/s.zarr", f"{disk}/out", "-q")
            os.remove(ballast)
        report[stage] = run(stage, f"{disk}/s.zarr", f"{disk}/out")
    for name in ("s.zarr", "out"):
        shutil.copytree(f"{disk}/{name}", f"{work}/{name}", symlinks=True)
    report["need"] = need
    print(json.dumps(report))
    with open(os.path.join(work, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
''')


@pytest.fixture(scope="module")
def disk_src(tmp_path_factory):
    """Sixteen crops of bundled photos (as ``faces_dir``, a third of it): several ingest
    tasks, so a stage stopped by a full disk has some done."""
    from streamq.examples import make_collection

    root = tmp_path_factory.mktemp("disk_src")
    make_collection(root, 16, seed=1, min_side=30, max_side=160)
    return root


def test_full_disk_fails_cleanly_and_the_rerun_is_identical(disk_src, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("util-linux 'unshare' is needed to mount a small tmpfs for this test")
    script = tmp_path / "no_space.py"
    script.write_text(NO_SPACE)
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["unshare", "-rm", sys.executable, str(script), str(disk_src),
                          str(tmp_path), str(disk)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for stage in ("ingest", "fit", "quantize", "export"):
        assert report["ref " + stage]["code"] == 0, report["ref " + stage]
        assert report[stage]["code"] == 0, report[stage]
        if stage == "fit":
            continue
        full = report["full " + stage]
        assert full["code"] == 1, full
        lines = full["stderr"].strip().splitlines()
        assert len(lines) == 1, full
        assert lines[0].startswith("error: cannot write "), lines[0]
        assert "No space left on device (errno 28 ENOSPC)" in lines[0]
        assert "free some space" in lines[0]
    assert "resumed" in report["ingest"]["stdout"]
    ref, store = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    assert_same_results(ref, store, tmp_path / "ref-out", tmp_path / "out", n_files=16)
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(store), mode="r")
    for name in ("ingest/tasks/report", "colors/code", "colors/count", "quantize/records",
                 "quantize/images/mse"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def test_classification_and_messages(tmp_path):
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(MemoryError())
    assert not is_transient(OSError(errno.ENOENT, "No such file or directory"))
    assert not is_transient(OSError("image file is truncated"))  # Pillow's: the file's fault
    wrapped = OSError("decoder error -2")
    wrapped.__cause__ = OSError(errno.ESTALE, "Stale file handle")
    assert is_transient(wrapped)  # a transient cause counts

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable", "/x/y.png")
        return "ok"

    from streamq.config import RetryConfig

    assert retrying(flaky, "read", "/x/y.png", RetryConfig(attempts=3, wait=0)) == "ok"
    with pytest.raises(OSError, match="No such file"):  # not transient, a read: the caller's
        retrying(lambda: open(tmp_path / "missing", "rb"), "read", "m", RetryConfig(3, 0))

    def denied():
        raise PermissionError(errno.EACCES, "Permission denied", "/ro/x.png")

    with pytest.raises(FaultError, match=r"cannot write .*errno 13 EACCES\); fix that") as err:
        retrying(denied, "write", "/ro/x.png", RetryConfig(3, 0), write=True)
    copy = pickle.loads(pickle.dumps(err.value))  # as it comes back from a Dask worker
    assert type(copy) is FaultError
    assert str(copy) == str(err.value)
    assert copy.errno == errno.EACCES
