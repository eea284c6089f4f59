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


def _fit_progress(store):
    """``(phase, step)`` of a fit running in ``store``: the largest iteration any exact Lloyd
    start has checkpointed, else the mini-batch step of its checkpoint (("", 0) before)."""
    import zarr

    from streamq.checkpoint import decode_state

    try:
        g = zarr.open_group(str(store), mode="r")
        if "fit/starts" in g and g["fit/starts"].shape[0]:
            its = [decode_state(str(t)).get("iteration", 0) for t in g["fit/starts"][:] if t]
            if its:
                return "lloyd", max(its)
        text = str(g["fit/checkpoint"][0]) if "fit/checkpoint" in g else ""
        if text:
            state = decode_state(text)
            if state.get("phase") == "minibatch":
                return "minibatch", int(state["cursor"])
    except Exception:  # noqa: BLE001  (a store being written: look again)
        pass
    return "", 0


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
def test_kill_during_fit_then_rerun_is_bit_identical(fit_ready, tmp_path, algorithm):
    """kill -9 inside each phase (mini-batch steps, exact Lloyd iterations), at points chosen
    from observed progress, then the same command: the same palette bit for bit."""
    import shutil

    import numpy as np
    from helpers import run_until

    from streamq.fit import load_fit
    from streamq.store import Store

    cfg = tmp_path / "fit.yaml"
    cfg.write_text(
        "dask:\n  scheduler: threads\n"
        f"fit:\n  colors: 24\n  algorithm: {algorithm}\n  tol: 0\n  max_steps: 60\n"
        "  batch_size: 16384\n  checkpoint_steps: 3\n  max_iter: 400\n  n_init: 2\n")
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    shutil.copytree(fit_ready, ref)
    shutil.copytree(fit_ready, killed)
    subprocess.run(streamq_cmd("-q", "fit", str(ref), "--config", str(cfg)), check=True)
    a = load_fit(str(ref))
    n_iter = min(r["iterations"] for r in Store.open(str(ref)).section("fit")["starts"]
                 if "iterations" in r)  # the starts that were finished on every colour
    rng = random.Random(21 if algorithm == "minibatch" else 22)
    points = [("lloyd", rng.randint(3, max(3, n_iter // 3))),
              ("lloyd", rng.randint(n_iter // 2, max(n_iter // 2, n_iter - 3)))]
    if algorithm == "minibatch":
        points.insert(0, ("minibatch", rng.randint(6, 40)))
    for phase, step in points:
        def reached(phase=phase, step=step):
            now, at = _fit_progress(killed)
            return now == phase and at >= step

        code = run_until(streamq_cmd("-q", "fit", str(killed), "--config", str(cfg)), reached)
        assert code is None, f"the fit finished before reaching {phase} step {step}"
    done = subprocess.run(streamq_cmd("-q", "fit", str(killed), "--config", str(cfg)),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    b = load_fit(str(killed))
    assert np.array_equal(a.centers, b.centers)  # bit-identical
    assert np.array_equal(a.palette, b.palette)
    assert a.steps == b.steps
    for key in a.history:
        assert np.array_equal(a.history[key], b.history[key], equal_nan=True)
