"""kill -9 at random moments, then the same command: the same store as an uninterrupted run."""

from __future__ import annotations

import random
import subprocess
import time

import pytest
from helpers import assert_same_store, run_and_kill, streamq_cmd

from streamq.examples import make_collection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_src")
    make_collection(root, 160, seed=3, size=200)
    return root


def _ingest_cmd(src, store, sched):
    extra = [] if sched == "local" else ["--scheduler", sched]  # "local": a LocalCluster of processes
    return streamq_cmd("-q", "ingest", str(src), str(store), "--chunk-pixels", "16384", *extra)


@pytest.mark.parametrize("sched", ["threads", "local"])
def test_kill_during_ingest_then_rerun(big_dir, tmp_path, sched):
    sched_arg = sched
    ref = tmp_path / "ref.zarr"
    t0 = time.monotonic()
    subprocess.run(_ingest_cmd(big_dir, ref, sched_arg), check=True)
    duration = time.monotonic() - t0
    rng = random.Random(11 if sched == "threads" else 12)
    store = tmp_path / "killed.zarr"
    kills = 0
    for _ in range(3):  # several kills, each at a random moment, resuming in between
        if run_and_kill(_ingest_cmd(big_dir, store, sched_arg), rng.uniform(0.2, 0.8) * duration) is None:
            kills += 1
    assert kills >= 1
    done = subprocess.run(_ingest_cmd(big_dir, store, sched_arg), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_store(ref, store)


@pytest.fixture(scope="module")
def fit_ready(big_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fit_resume") / "base.zarr"
    subprocess.run(_ingest_cmd(big_dir, path, "threads"), check=True)
    return path


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
def test_kill_during_fit_then_rerun_is_bit_identical(fit_ready, tmp_path, algorithm):
    import shutil

    import numpy as np

    from streamq.fit import load_fit

    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        "dask:\n  scheduler: threads\n"
        f"fit:\n  colors: 24\n  algorithm: {algorithm}\n  tol: 1.0e-9\n  max_steps: 300\n"
        "  batch_size: 16384\n  checkpoint_steps: 7\n  max_iter: 60\n  n_init: 2\n"
        "")
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    shutil.copytree(fit_ready, ref)
    shutil.copytree(fit_ready, killed)
    t0 = time.monotonic()
    subprocess.run(streamq_cmd("-q", "fit", str(ref), "--config", str(cfg)), check=True)
    duration = time.monotonic() - t0
    rng = random.Random(21 if algorithm == "minibatch" else 22)
    kills = 0
    for _ in range(3):
        if run_and_kill(streamq_cmd("-q", "fit", str(killed), "--config", str(cfg)),
                        rng.uniform(0.3, 0.8) * duration) is None:
            kills += 1
    assert kills >= 1
    done = subprocess.run(streamq_cmd("-q", "fit", str(killed), "--config", str(cfg)),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_fit(str(ref)), load_fit(str(killed))
    assert np.array_equal(a.centers, b.centers)  # bit-identical
    assert np.array_equal(a.palette, b.palette)
    assert a.steps == b.steps
    for key in a.history:
        assert np.array_equal(a.history[key], b.history[key])
