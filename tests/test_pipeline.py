"""``streamq run`` end to end, and SIGKILL, SIGTERM or SIGINT inside each of its stages:
identical outputs."""

from __future__ import annotations

import functools
import random
import shutil
import signal

import pytest
import zarr
from click.testing import CliRunner
from helpers import assert_same_results, kill_when, reached, stage_progress, streamq_cmd

import streamq
from streamq.cli.main import cli
from streamq.examples import make_collection

pytestmark = pytest.mark.slow

#: Images of the collection: enough for several tasks in each stage and files to export.
N_IMAGES = 60


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_src")
    make_collection(root, N_IMAGES, seed=5, min_side=60, max_side=240)
    return root


def _config(tmp_path, src, name, sched):
    cfg = tmp_path / f"{name}.yaml"
    sched_line = "" if sched == "local" else f"dask:\n  scheduler: {sched}\n"
    cfg.write_text(
        f"store: {name}.zarr\n{sched_line}"
        f"ingest:\n  source: {src}\n  chunk_pixels: 65536\n"
        # two k-means++ starts (not 16) keep each run's fit short; its phases stay long
        # enough for the kill points (_kill_points asserts so)
        "fit:\n  colors: 16\n  max_steps: 30\n  tol: 1.0e-9\n  batch_size: 16384\n"
        "  checkpoint_steps: 5\n  n_init: 2\n"
        f"export:\n  out: {name}-out\n")
    return cfg


@pytest.fixture(scope="module")
def ref(src, tmp_path_factory):
    """One uninterrupted run on the threaded scheduler through the library API, the reference
    of every kill test (a killed run on a local cluster of processes must also finish
    identical to it); its folder and the run's report."""
    root = tmp_path_factory.mktemp("run_ref")
    return root, streamq.run(_config(root, src, "ref", "threads"), progress=False)


def _kill_points(ref, rng: random.Random, n_files: int) -> list[tuple[str, int]]:
    """A point inside each stage of the reference run ``ref``, chosen by ``rng``: a number of
    ingest tasks done, a mini-batch step or exact Lloyd iteration, quantize tasks done and
    files exported (the stages and counts of :func:`helpers.stage_progress`). Each lies in
    the first part of its stage, after something of it was written: most of the stage is
    still to run when the point is seen, so a loaded machine's slow polls of the store do
    not let the job get past the stage before the signal."""
    g = zarr.open_group(str(ref), mode="r")
    fit = g.attrs["fit"]
    every = fit["config"]["checkpoint_steps"]
    steps = fit["config"]["max_steps"]
    lloyd = min(r["iterations"] for r in fit["starts"] if "iterations" in r)
    assert steps >= 6 * every
    assert lloyd >= 6 * every
    fit_point = rng.choice([("fit:minibatch", every * rng.randint(1, steps // every // 3)),
                            ("fit:lloyd", every * rng.randint(1, lloyd // every // 3))])
    n_ingest, n_quantize = g["ingest/tasks/report"].shape[0], g["quantize/records"].shape[0]
    assert n_ingest >= 3
    assert n_quantize >= 12
    return [("ingest", rng.randint(1, n_ingest // 3)), fit_point,
            ("quantize", rng.randint(1, n_quantize // 4)),
            # export: one of its first files; its 60 small images take ~30 ms in all, which
            # a loaded machine's slow watcher once let the job finish between two looks
            ("export", rng.randint(1, max(1, n_files // 20)))]


#: The stages a run on a local cluster of processes is killed in (one signal each).
LOCAL_STAGES = ("ingest", "fit", "export")


@pytest.mark.parametrize("sched", ["threads", "local"])
def test_kill_run_inside_each_stage(src, ref, tmp_path, sched):
    """Signals at points inside stages, observed in the store; SIGTERM and SIGINT end the run
    with status 143 / 130, one line and the lock given back; the same command then finishes
    identical to an uninterrupted run (on the threaded scheduler: the outputs do not depend
    on it).

    ``threads``: one signal inside each of the four stages (ingest, fit, quantize, export),
    SIGKILL, SIGTERM and SIGINT each at least once, mixed by a seeded RNG: every stage's
    resume after every kind of end. ``local`` (the default local cluster, whose worker
    processes ignore SIGINT and SIGTERM and must end with the command): SIGKILL, SIGTERM and
    SIGINT once each, in ingest, fit and export (order mixed by a seeded RNG), each while the
    workers run the stage's tasks, then the same command on a new local cluster. How a stage
    resumes does not depend on the scheduler, so quantize's kill is left to ``threads``: every
    local run starts a cluster, and three kills instead of four save one start. The last,
    uninterrupted run is the same command in this process (the kills need processes, it does
    not)."""
    cfg = _config(tmp_path, src, "killed", sched)
    store, out = tmp_path / "killed.zarr", tmp_path / "killed-out"
    rng = random.Random(31 if sched == "threads" else 32)
    ref_root = ref[0]
    points = _kill_points(ref_root / "ref.zarr", rng, N_IMAGES)
    sigs = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    if sched == "local":
        points = [p for p in points if p[0].split(":")[0] in LOCAL_STAGES]
        assert [p[0].split(":")[0] for p in points] == list(LOCAL_STAGES)
    else:
        sigs.append(rng.choice(sigs))
    rng.shuffle(sigs)
    for (stage, n), sig in zip(points, sigs, strict=True):
        for _ in range(3):
            kill = kill_when(streamq_cmd("-q", "run", str(cfg)), reached(store, stage, n, out),
                             sig, progress=functools.partial(stage_progress, store, out))
            assert kill.seen[0] == stage, (stage, n, kill.seen)  # killed inside the stage
            if sig == signal.SIGKILL:
                assert kill.returncode == -signal.SIGKILL
            else:
                kill.assert_clean_exit()
                assert not (tmp_path / "killed.zarr.lock").exists()  # cleanup ran
            if stage != "export" or kill.seen[1] < N_IMAGES:
                break
            # The export's 60 small images take ~30 ms in all: a watcher slowed by a loaded
            # machine (2 in ~40 runs) let the job write the last one between two looks. The
            # export starts again from an empty folder (its records are in it), to be killed
            # before its end this time.
            shutil.rmtree(out)
        assert stage != "export" or kill.seen[1] < N_IMAGES, kill.seen  # before its end
    # the same command, in this process (the rerun is not about the process; the kills are)
    done = CliRunner().invoke(cli, ["run", str(cfg)])
    assert done.exit_code == 0, done.output
    assert_same_results(ref_root / "ref.zarr", store, ref_root / "ref-out", out, n_files=N_IMAGES)


def test_run_api_and_rerun_is_noop(ref):
    """The reference run (``streamq.run``) did every stage; the same call again does nothing."""
    root, report = ref
    cfg = root / "ref.yaml"
    assert set(report.stages) == {"ingest", "fit", "quantize", "export"}
    assert report.stages["export"].n_written == N_IMAGES
    again = streamq.run(cfg, progress=False)
    assert again.stages["ingest"].status == "already complete"
    assert again.stages["fit"].status == "already complete"
    assert again.stages["quantize"].status == "already complete"
    assert again.stages["export"].n_written == 0
