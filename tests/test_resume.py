"""kill -9 at points inside a stage, then the same command: the same store as an
uninterrupted run."""

from __future__ import annotations

import functools
import random

import pytest
import zarr
from click.testing import CliRunner
from helpers import (
    assert_histogram,
    assert_same_store,
    kill_when,
    reached,
    stage_progress,
    streamq_cmd,
)

import streamq
from streamq.cli.main import cli
from streamq.examples import make_collection

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_src")
    make_collection(root, 48, seed=3, size=160)
    return root


def _ingest_args(src, store, sched) -> list[str]:
    extra = [] if sched == "local" else ["--scheduler", sched]  # "local": a LocalCluster of processes
    return ["-q", "ingest", str(src), str(store), "--chunk-pixels", "16384", *extra]


@pytest.fixture(scope="module")
def ref_store(big_dir, tmp_path_factory):
    """An uninterrupted ingest on the threaded scheduler (through the library API, with the
    command's settings), the reference of the kill tests."""
    path = tmp_path_factory.mktemp("ingest_ref") / "ref.zarr"
    streamq.ingest(big_dir, path, chunk_pixels=16384, scheduler="threads", progress=False)
    return path


@pytest.mark.parametrize("sched", ["threads", "local"])
def test_kill_during_ingest_then_rerun(big_dir, ref_store, tmp_path, sched):
    """kill -9 after a number of write tasks chosen by a seeded RNG (twice, resuming in
    between, on the threaded scheduler; once on a local cluster), each in the first two thirds
    of the tasks (the rest of the stage outlasts a slow poll), then the same command: the same
    store (as the threaded scheduler's uninterrupted ingest: the store does not depend on it)
    and colour counts: the colour table sums the rows the killed runs' tasks recorded with the
    counts of the rerun's own tasks (each pixel counted once, none lost), equal to the
    bincount of the stored pixels."""
    sched_arg = sched
    ref = ref_store
    n_tasks = zarr.open_group(str(ref), mode="r")["ingest/tasks/report"].shape[0]
    assert n_tasks >= 8
    rng = random.Random(11 if sched == "threads" else 12)
    store = tmp_path / "killed.zarr"
    for n in sorted(rng.sample(range(1, n_tasks * 2 // 3), 2 if sched == "threads" else 1)):
        kill = kill_when(streamq_cmd(*_ingest_args(big_dir, store, sched_arg)),
                         reached(store, "ingest", n), progress=functools.partial(stage_progress, store))
        assert kill.seen[0] == "ingest", kill.seen  # killed inside the stage
    # the same command, in this process (the rerun is not about the process; the kills are)
    done = CliRunner().invoke(cli, _ingest_args(big_dir, store, sched_arg))
    assert done.exit_code == 0, done.output
    assert_same_store(ref, store)
    assert_histogram(store)  # the killed runs' colour counts and the last run's, summed


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd", "minibatch+fixed"])
def test_kill_during_fit_then_rerun_is_bit_identical(ref_store, tmp_path, algorithm):
    """kill -9 inside each phase (mini-batch steps, exact Lloyd iterations; twice in Lloyd,
    early and later, when it is the only phase), at points chosen from observed progress (none
    in the second half of Lloyd: the rest of it outlasts a slow poll), then the same command: the same palette bit for bit (with fixed
    colours too: the mini-batch model's are put back after every step). Lloyd runs on the
    default local cluster, whose workers are threads of the killed process."""
    import shutil

    import numpy as np

    from streamq.fit import load_fit
    from streamq.store import Store

    algorithm, _, fixed = algorithm.partition("+")
    cfg = tmp_path / "fit.yaml"
    (tmp_path / "fixed.hex").write_text("ffffff\n000000\ne30613\n005ca9\n")
    cfg.write_text(  # lloyd: the default local cluster (threads of the command's process)
        ("" if algorithm == "lloyd" else "dask:\n  scheduler: threads\n")
        + f"fit:\n  colors: 24\n  algorithm: {algorithm}\n  tol: 0\n  max_steps: 40\n"
        "  batch_size: 16384\n  checkpoint_steps: 3\n  max_iter: 400\n  n_init: 2\n"
        + ("  fixed_colors: fixed.hex\n" if fixed else ""))
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    shutil.copytree(ref_store, ref)
    shutil.copytree(ref_store, killed)
    ran = CliRunner().invoke(cli, ["-q", "fit", str(ref), "--config", str(cfg)])  # in-process
    assert ran.exit_code == 0, ran.output
    a = load_fit(str(ref))
    n_iter = min(r["iterations"] for r in Store.open(str(ref)).section("fit")["starts"]
                 if "iterations" in r)  # the starts that were finished on every colour
    rng = random.Random(21 if algorithm == "minibatch" else 22)
    assert n_iter >= 12
    # Lloyd on every colour starts from a fixed point on the finer grid (streamq.fit.lloyd), so
    # it is short here: its kill points lie in its first half, where the rest outlasts a poll
    if algorithm == "minibatch":
        points = [("fit:minibatch", rng.randint(4, 16)),  # of 40 steps: the first 40%
                  ("fit:lloyd", rng.randint(3, n_iter // 3))]
    else:
        points = [("fit:lloyd", rng.randint(3, n_iter // 4)),
                  ("fit:lloyd", rng.randint(n_iter // 3, n_iter // 2))]
    for phase, step in points:
        kill = kill_when(streamq_cmd("-q", "fit", str(killed), "--config", str(cfg)),
                         reached(killed, phase, step),
                         progress=functools.partial(stage_progress, killed))
        assert kill.seen[0] == phase, kill.seen  # killed inside the phase
    # the same command, in this process (the rerun is not about the process; the kills are)
    done = CliRunner().invoke(cli, ["-q", "fit", str(killed), "--config", str(cfg)])
    assert done.exit_code == 0, done.output
    b = load_fit(str(killed))
    if fixed:
        assert a.palette[:4].tolist() == [[255, 255, 255], [0, 0, 0], [227, 6, 19], [0, 92, 169]]
    assert np.array_equal(a.centers, b.centers)  # bit-identical
    assert np.array_equal(a.palette, b.palette)
    assert a.steps == b.steps
    for key in a.history:
        assert np.array_equal(a.history[key], b.history[key], equal_nan=True)
