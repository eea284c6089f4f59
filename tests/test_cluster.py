"""Real ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

The same outputs as a local run; a worker killed with SIGKILL mid-stage changes nothing; a
scheduler lost mid-job is a one-line error and the rerun resumes from the store's records;
workers that cannot see the store are named before any task runs.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import (
    ProcessCluster,
    assert_same_results,
    assert_same_store,
    streamq_cmd,
    wait_until,
)

import streamq
from streamq.cli.main import cli
from streamq.examples import make_collection

pytestmark = pytest.mark.distributed

N_IMAGES = 40


def _config(tmp, src, name, scheduler):
    return {
        "store": str(tmp / f"{name}.zarr"),
        "dask": {"scheduler": scheduler},
        "ingest": {"source": str(src), "chunk_pixels": 16384, "block_pixels": 4096},
        "fit": {"colors": 16, "max_steps": 120, "tol": 1e-9, "batch_size": 8192,
                "checkpoint_steps": 10},
        "export": {"out": str(tmp / f"{name}-out")},
    }


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster_src")
    make_collection(root, N_IMAGES, seed=8, min_side=60, max_side=180)
    return root


@pytest.fixture(scope="module")
def ingested(src, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster_ingested")
    cfg = _config(tmp, src, "base", "threads")
    streamq.ingest(None, None, config=cfg, progress=False)
    return tmp / "base.zarr"


@pytest.fixture(scope="module")
def fitted(src, ingested, tmp_path_factory):
    """``ingested``, fitted in this process (threads)."""
    tmp = tmp_path_factory.mktemp("cluster_fitted")
    shutil.copytree(ingested, tmp / "fitted.zarr")
    streamq.fit(str(tmp / "fitted.zarr"), config=_config(tmp, src, "fitted", "threads"),
                progress=False)
    return tmp / "fitted.zarr"


@pytest.fixture(scope="module")
def reference(src, fitted, tmp_path_factory):
    """The whole pipeline in this process (threads): what every cluster run must equal.
    Its ingest and fit are ``fitted``'s (the same settings), copied: the run goes on from
    there."""
    tmp = tmp_path_factory.mktemp("cluster_ref")
    shutil.copytree(fitted, tmp / "ref.zarr")
    report = streamq.run(_config(tmp, src, "ref", "threads"), progress=False)
    assert report.stages["ingest"].status == "already complete"
    assert report.stages["fit"].status == "already complete"
    return tmp


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    with ProcessCluster(tmp_path_factory.mktemp("dask_procs"), n_workers=2) as cluster:
        yield cluster


def test_pipeline_on_scheduler_and_worker_processes_equals_local_run(src, reference, procs, tmp_path):
    report = streamq.run(_config(tmp_path, src, "procs", procs.address), progress=False)
    assert report.stages["export"].n_written == N_IMAGES
    assert_same_results(reference / "ref.zarr", tmp_path / "procs.zarr",
                        reference / "ref-out", tmp_path / "procs-out", n_files=N_IMAGES)
    # progress bars follow the cluster's tasks too (forced on: stderr is not a terminal here)
    res = CliRunner().invoke(cli, ["export", str(tmp_path / "procs.zarr"), str(tmp_path / "again"),
                                   "--progress", "--scheduler", procs.address])
    assert res.exit_code == 0, res.stderr
    assert "exporting: 100%|" in res.stderr or f"{N_IMAGES}/{N_IMAGES}" in res.stderr, res.stderr


def _kill_worker_during(procs, stage, key_prefix):
    """Run ``stage()`` in a thread; SIGKILL a worker while it runs a ``key_prefix`` task."""
    errors = []

    def target():
        try:
            stage()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=target)
    killed = {}
    with procs.client() as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        thread.start()

        def busy_worker():
            for addr, keys in client.processing().items():
                if any(str(k).startswith(key_prefix) for k in keys) and addr in names:
                    killed["name"] = names[addr]
                    return True
            return not thread.is_alive()

        wait_until(busy_worker, timeout=120, interval=0.005)
        assert "name" in killed, f"the stage ended before any {key_prefix} task was seen running"
        procs.kill_worker(killed["name"])  # mid-task
        procs.add_worker()  # a new worker may join
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert not errors, errors
    procs.wait_for_workers(2)


def test_worker_killed_during_fit(src, reference, ingested, procs, tmp_path):
    store = tmp_path / "fit.zarr"
    shutil.copytree(ingested, store)
    cfg = _config(tmp_path, src, "fit", procs.address)
    _kill_worker_during(procs, lambda: streamq.fit(str(store), config=cfg, progress=False),
                        "draw_task")
    ref, got = zarr.open_group(str(reference / "ref.zarr"), mode="r"), zarr.open_group(str(store), mode="r")
    for name in ("fit/palette/centers_0", "fit/palette/centers_1", "fit/palette/centers_2",
                 "fit/palette/r", "fit/palette/g", "fit/palette/b"):
        assert np.array_equal(ref[name][:], got[name][:]), name


def test_worker_killed_during_quantize(src, reference, fitted, procs, tmp_path):
    store = tmp_path / "q.zarr"
    shutil.copytree(fitted, store)
    cfg = _config(tmp_path, src, "q", procs.address)
    _kill_worker_during(procs, lambda: streamq.quantize(str(store), config=cfg, progress=False),
                        "_quantize_task")
    ref, got = zarr.open_group(str(reference / "ref.zarr"), mode="r"), zarr.open_group(str(store), mode="r")
    for name in ("quantize/labels", "quantize/images/sse", "quantize/images/ssim"):
        assert np.array_equal(ref[name][:], got[name][:]), name


def test_scheduler_lost_mid_ingest_then_rerun_resumes(src, reference, procs, tmp_path):
    """The job's scheduler (with one worker) is killed once some write tasks have recorded
    their work: one line; the rerun, on another cluster (the module's), resumes."""
    store = tmp_path / "lost.zarr"
    cmd = ["-q", "ingest", str(src), str(store), "--chunk-pixels", "16384"]
    with ProcessCluster(tmp_path / "dask1", n_workers=1) as cluster:
        proc = subprocess.Popen(streamq_cmd(*cmd, "--scheduler", cluster.address),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def some_tasks_done():
            try:
                reports = zarr.open_array(str(store / "ingest/tasks/report"), mode="r")[:]
            except Exception:  # not planned yet
                return proc.poll() is not None
            return any(reports) or proc.poll() is not None

        wait_until(some_tasks_done, timeout=120, interval=0.005)
        assert proc.poll() is None, "ingest finished before the scheduler could be stopped"
        cluster.kill_scheduler()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "lost the Dask scheduler" in lines[0]
    assert "rerun" in lines[0]
    done = zarr.open_array(str(store / "ingest/tasks/report"), mode="r")[:]
    assert 0 < sum(1 for r in done if r) < len(done)  # stopped part-way

    again = streamq.ingest(src, store, chunk_pixels=16384, scheduler=procs.address,
                           progress=False)
    assert again.status == "resumed"
    assert_same_store(reference / "ref.zarr", store)


def test_workers_that_cannot_see_the_store_are_named(ingested, tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("util-linux 'unshare' is needed to give a worker its own view of the disk")
    hidden = str(ingested.parent)
    # The worker runs in its own mount namespace with an empty tmpfs over the store's folder:
    # like a worker on another machine that does not mount the client's disk.
    prefix = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', hidden)
    with ProcessCluster(tmp_path / "dask", n_workers=1, worker_prefix=prefix) as cluster:
        # the client in this process: what is checked is the workers' view, not the client's
        res = CliRunner().invoke(cli, ["fit", str(ingested), "--scheduler", cluster.address])
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cannot see" in lines[0]
    assert str(ingested) in lines[0]


def test_tls_scheduler_through_dask_configuration(ingested, tmp_path):
    """Dask's own configuration passes through: here TLS settings from DASK_* variables."""
    import os

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    store = tmp_path / "tls.zarr"
    shutil.copytree(ingested, store)
    with ProcessCluster(tmp_path / "dask", n_workers=1, tls=(cert, cert, key)) as cluster:
        assert cluster.address.startswith("tls://")
        cmd = streamq_cmd("fit", str(store), "--colors", "4", "--algorithm", "lloyd", "--max-iter", "5",
                          "--scheduler", cluster.address)
        plain = CliRunner().invoke(cli, cmd[3:])  # this process: no TLS configuration
        env = dict(os.environ, DASK_DISTRIBUTED__COMM__TLS__CA_FILE=cert,
                   DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=cert,
                   DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=key)
        secure = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert plain.exit_code != 0  # no certificate: refused, in one line
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    assert "cannot reach the Dask scheduler" in plain.stderr
    assert secure.returncode == 0, secure.stderr
    assert "4 colours" in secure.stdout or "K=4" in secure.stdout, secure.stdout
