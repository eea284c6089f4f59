"""``streamq run`` end to end, and kill -9 at random moments of it: identical outputs."""

from __future__ import annotations

import random
import subprocess
import time

import pytest
from helpers import assert_same_results, run_and_kill, streamq_cmd

import streamq
from streamq.examples import make_collection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_src")
    make_collection(root, 120, seed=5, min_side=60, max_side=240)
    return root


def _config(tmp_path, src, name, sched):
    cfg = tmp_path / f"{name}.yaml"
    sched_line = "" if sched == "local" else f"dask:\n  scheduler: {sched}\n"
    cfg.write_text(
        f"store: {name}.zarr\n{sched_line}"
        f"ingest:\n  source: {src}\n  chunk_pixels: 65536\n"
        "fit:\n  colors: 16\n  max_steps: 150\n  tol: 1.0e-9\n  batch_size: 16384\n"
        "  checkpoint_steps: 10\n"
        f"export:\n  out: {name}-out\n")
    return cfg


def _assert_same_outputs(tmp_path, a, b):
    assert_same_results(tmp_path / f"{a}.zarr", tmp_path / f"{b}.zarr",
                        tmp_path / f"{a}-out", tmp_path / f"{b}-out", n_files=120)


@pytest.mark.parametrize("sched", ["threads", "local"])
def test_kill_run_at_random_moments(src, tmp_path, sched):
    ref_cfg = _config(tmp_path, src, "ref", sched)
    t0 = time.monotonic()
    subprocess.run(streamq_cmd("-q", "run", str(ref_cfg)), check=True)
    duration = time.monotonic() - t0
    cfg = _config(tmp_path, src, "killed", sched)
    rng = random.Random(31 if sched == "threads" else 32)
    kills = 0
    for _ in range(4):
        if run_and_kill(streamq_cmd("-q", "run", str(cfg)), rng.uniform(0.2, 0.75) * duration) is None:
            kills += 1
    assert kills >= 2
    done = subprocess.run(streamq_cmd("run", str(cfg)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_outputs(tmp_path, "ref", "killed")


def test_run_api_and_rerun_is_noop(src, tmp_path):
    cfg = _config(tmp_path, src, "api", "threads")
    report = streamq.run(cfg)
    assert set(report.stages) == {"ingest", "fit", "quantize", "export"}
    assert report.stages["export"].n_written == 120
    again = streamq.run(cfg)
    assert again.stages["ingest"].status == "already complete"
    assert again.stages["fit"].status == "already complete"
    assert again.stages["quantize"].status == "already complete"
    assert again.stages["export"].n_written == 0
