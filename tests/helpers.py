"""Helpers shared by test modules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr


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


def streamq_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamq.cli.main", *args]


def run_and_kill(cmd: list[str], after: float, env: dict | None = None) -> int | None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group after ``after`` s.

    Returns the exit code if it finished before the kill, else None.
    """
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + after
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.01)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return None
