"""Palette fit against in-memory references, determinism, resume state, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans, MiniBatchKMeans

import streamq
from streamq.batches import STREAM_TRAIN, PixelSource, draw_pixels
from streamq.colorspace import to_rgb8, to_space
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fit import fit
from streamq.kmeans import codes_to_rgb, initial_centers
from streamq.store.checkpoint import CheckpointMismatchError


@pytest.fixture(scope="module")
def fit_store(faces_dir, tmp_path_factory):
    """The faces collection with chunks of several images each (sampling draws from chunks)."""
    path = tmp_path_factory.mktemp("fit") / "faces64k.zarr"
    streamq.ingest(faces_dir, path, chunk_pixels=65_536, scheduler="threads", progress=False)
    return str(path)


@pytest.fixture(scope="module")
def all_pixels(fit_store):
    coll = streamq.open_store(fit_store)
    return np.concatenate([coll.read(i).reshape(-1, 3) for i in range(len(coll))])


@pytest.fixture
def store_copy(fit_store, tmp_path):
    import shutil

    dst = tmp_path / "copy.zarr"
    shutil.copytree(fit_store, dst)
    return str(dst)


def full_mse(pixels, palette, centers, space="rgb"):
    from streamq.kmeans import assign

    labels, _ = assign(to_space(pixels, space), centers)
    return float(((pixels.astype(float) - palette[labels].astype(float)) ** 2).mean())


def test_lloyd_matches_sklearn_kmeans_from_same_start(store_copy, all_pixels):
    k = 6
    res = fit(store_copy, colors=k, algorithm="lloyd", n_init=1, seed=3, tol=0,
              max_iter=500, scheduler="threads")
    # the same k-means++ start, computed from the same histogram, handed to scikit-learn,
    # which runs on every pixel (not on the histogram)
    codes, counts = np.unique((all_pixels.astype(np.int64) << [16, 8, 0]).sum(1), return_counts=True)
    x = to_space(codes_to_rgb(codes), "rgb").astype(np.float64)
    start = initial_centers(x, counts, k, "k-means++", np.random.default_rng([3, 1000]))
    ref = KMeans(n_clusters=k, init=start, n_init=1, tol=0, max_iter=500, algorithm="lloyd")
    ref.fit(to_space(all_pixels, "rgb").astype(np.float64))
    order_a, order_b = np.lexsort(res.centers.T), np.lexsort(ref.cluster_centers_.T)
    np.testing.assert_allclose(res.centers[order_a], ref.cluster_centers_[order_b], atol=1e-9)
    assert "converged (no label changed)" in res.stop_reason
    assert res.mse == pytest.approx(full_mse(all_pixels, res.palette, res.centers), rel=1e-12)


def _exact_reference(pixels, k, n_init=3):
    """scikit-learn KMeans on every pixel's colour weighted by its count, best of ``n_init``
    k-means++ starts, run to zero label changes: the exact reference."""
    codes, counts = np.unique((pixels.astype(np.int64) << [16, 8, 0]).sum(1), return_counts=True)
    x = to_space(codes_to_rgb(codes), "rgb").astype(np.float64)
    km = KMeans(n_clusters=k, n_init=n_init, tol=0, max_iter=10_000, random_state=0)
    return km.fit(x, sample_weight=counts).cluster_centers_


@pytest.mark.parametrize("k", [8, 24])
def test_default_fit_reaches_the_exact_reference(store_copy, all_pixels, k):
    mb = fit(store_copy, colors=k, seed=0, max_steps=100, scheduler="threads", overwrite=True)
    mse_mb = full_mse(all_pixels, mb.palette, mb.centers)
    ref = _exact_reference(all_pixels, k)
    mse_ref = full_mse(all_pixels, to_rgb8(ref, "rgb"), ref)
    assert mse_mb <= mse_ref * 1.0005, (mse_mb, mse_ref)
    assert mb.mse == pytest.approx(mse_mb, rel=1e-12)  # the summary's MSE is exact
    assert "exact Lloyd on every pixel, best of 17 starts" in mb.stop_reason
    assert mb.stop_reason.endswith("iterations")
    assert "converged (no label changed)" in mb.stop_reason
    lloyd = fit(store_copy, colors=k, algorithm="lloyd", seed=0, scheduler="threads",
                overwrite=True)
    mse_ll = full_mse(all_pixels, lloyd.palette, lloyd.centers)
    # the histogram-based exact MSE agrees with a plain pass over every pixel
    assert streamq.collection_mse(store_copy) == pytest.approx(mse_ll, rel=1e-12)
    assert streamq.collection_mse(store_copy, mb.centers, "rgb") == pytest.approx(mse_mb, rel=1e-12)
    # the default's starts are lloyd's k-means++ starts plus the mini-batch centres
    assert mse_mb <= mse_ll
    assert len({tuple(c) for c in mb.palette}) == k  # K distinct colours
    counts = np.bincount(streamq.kmeans.assign(to_space(all_pixels, "rgb"), lloyd.centers)[0],
                         minlength=k)
    np.testing.assert_array_equal(lloyd.counts, counts)  # pixels per colour, exact


def test_finishers_converge_on_the_finer_grid_first(store_copy, all_pixels, monkeypatch):
    """On a histogram whose 128-level grid is much smaller than its colours, each finisher goes
    to a fixed point there before every colour: the result is still a fixed point of Lloyd on
    every pixel, as good as the exact reference. (The faces' grid holds 75.1% of their
    colours, just above FINE_SHARE; the threaded scheduler lets the test lower the bar.)"""
    from streamq.fit import lloyd as exact_phase
    from streamq.kmeans import converge

    monkeypatch.setattr(exact_phase, "FINE_SHARE", 1.0)
    k = 16
    res = fit(store_copy, colors=k, algorithm="lloyd", seed=0, scheduler="threads")
    assert f"on the {2 ** exact_phase.FINE_BITS}-level grid" in res.stop_reason
    from streamq.store import Store

    starts = Store.open(store_copy).section("fit")["starts"]
    assert sum(1 for s in starts if s.get("fine_iterations")) == exact_phase.FINISHERS
    codes, counts = np.unique((all_pixels.astype(np.int64) << [16, 8, 0]).sum(1),
                              return_counts=True)
    x = to_space(codes_to_rgb(codes), "rgb").astype(np.float64)
    again = converge(x, counts.astype(np.float64), res.centers, tol=0, max_iter=1)
    assert again.stop == "labels"  # a fixed point: no label changes, the same centres
    assert np.array_equal(again.centers, res.centers)
    ref = _exact_reference(all_pixels, k)
    mse_ref = full_mse(all_pixels, to_rgb8(ref, "rgb"), ref)
    assert full_mse(all_pixels, res.palette, res.centers) <= mse_ref * 1.0005


def test_streamed_fit_equals_plain_partial_fit_loop(store_copy):
    """The streamed fit is exactly a plain loop of partial_fit over the seeded batches."""
    res = fit(store_copy, colors=8, seed=5, tol=1e-12, max_steps=12, batch_size=4096,
              batches_per_task=3, scheduler="threads")
    assert res.stop_reason.startswith("mini-batch: max_steps; exact Lloyd")
    coll = streamq.open_store(store_copy)
    source = PixelSource.of_collection(coll)
    from streamq.config import FitConfig
    from streamq.fit.minibatch import initial_centers
    from streamq.scheduler import Runner, _SyncPool
    from streamq.store.histogram import histogram

    fcfg = FitConfig(colors=8, seed=5, batch_size=4096, batches_per_task=3)
    run = Runner(None, _SyncPool(), "sync")
    codes, counts = histogram(run, coll.store, source)
    x = to_space(codes_to_rgb(codes), "rgb").astype(np.float64)
    init = initial_centers(run, source, fcfg, x, counts)
    ref = MiniBatchKMeans(8, init=init, n_init=1, batch_size=4096, compute_labels=False, random_state=5)
    for t in range(4):
        data = draw_pixels(source, 5, STREAM_TRAIN, t, 3 * 4096, fcfg.blocks_per_task)
        for j in range(3):
            ref.partial_fit(to_space(data[j * 4096:(j + 1) * 4096], "rgb"))
    mb = np.asarray(coll.store.section("fit")["minibatch_centers"])
    assert np.array_equal(ref.cluster_centers_.astype(np.float64), mb)


def test_same_seed_same_palette_on_any_scheduler(store_copy, fit_store, cluster_address, tmp_path):
    import shutil

    from distributed import LocalCluster

    # a short fit (few steps, two exact starts): what differs between schedulers is how
    # the tasks run, not how many there are
    kw = dict(colors=12, seed=9, max_steps=16, batches_per_task=4, batch_size=8192, n_init=2)
    results = [fit(store_copy, scheduler="threads", **kw).centers]
    for name, sched in (("sync", "sync"), ("procs2", cluster_address)):
        p = tmp_path / f"{name}.zarr"
        shutil.copytree(fit_store, p)
        results.append(fit(str(p), scheduler=sched, **kw).centers)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as one:
        p = tmp_path / "procs1.zarr"
        shutil.copytree(fit_store, p)
        results.append(fit(str(p), scheduler=one.scheduler_address, **kw).centers)
    p = tmp_path / "default.zarr"  # no scheduler: a local cluster of threads of this process
    shutil.copytree(fit_store, p)
    results.append(fit(str(p), **kw).centers)
    runtime = streamq.open_store(str(p)).store.section("fit")["runtime"]
    assert runtime["cluster"] == f"local cluster in this process ({runtime['workers']} workers)"
    for r in results[1:]:
        assert np.array_equal(r, results[0])


def test_workers_get_ready_for_the_exact_phase_in_the_background(store_copy, cluster_address):
    """``prepare_exact`` (called as the mini-batch phase starts) leaves every worker of a Dask
    cluster holding the points, grids, cell layouts and points arranged by cell its exact
    tasks would compute: the same arrays as computed here."""
    import time

    from distributed import Client

    from streamq.config import FitConfig
    from streamq.fit import lloyd
    from streamq.scheduler import Runner
    from streamq.store import Store

    st = Store.open(store_copy)
    key = lloyd._histogram_key(st)
    mine = dict(lloyd._worker_points(st.location, key, "rgb"))
    cells = lloyd._cells(mine, "x")
    mine.update({"cells_x.xs": cells.xs, "cells_x.Ws": cells.Ws})

    def held(url: str) -> dict | None:
        from streamq.fit import lloyd as worker_lloyd

        p = worker_lloyd._POINTS.get((url, key, "rgb"))
        if p is None or not all("cells_" + worker_lloyd._same_as_x(p, w) in p for w in ("gx", "x")):
            return None
        return {**{name: p[name] for name in ("x", "w", "gx", "gw")},
                "cells_x.xs": p["cells_x"].xs, "cells_x.Ws": p["cells_x"].Ws}

    with Client(cluster_address) as client:
        lloyd.prepare_exact(Runner(client, None, "test"), st, FitConfig(colors=12))
        deadline = time.monotonic() + 120
        got = client.run(held, st.location.url)
        while not all(got.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
            got = client.run(held, st.location.url)
    assert len(got) == 2
    for arrays in got.values():
        assert arrays is not None, "a worker did not prepare"
        for name, a in arrays.items():
            np.testing.assert_array_equal(a, mine[name])


def test_the_drivers_histogram_is_handed_to_tasks_of_its_process(store_copy):
    """What ``share_points`` gives is what the exact tasks of this process use (not a copy
    read again), until ``release_points``; another colour space reads its own."""
    from streamq.fit import lloyd
    from streamq.store import Store
    from streamq.store.histogram import load_histogram

    st = Store.open(store_copy)
    stored = load_histogram(st)
    assert stored is not None, "the ingest counted the colours"
    codes, counts = stored
    x = lloyd.points(codes, "rgb")
    key = lloyd._histogram_key(st)
    lloyd.release_points()
    try:
        lloyd.share_points(st, codes, counts, x, "rgb")
        assert lloyd._worker_points(st.location, key, "rgb")["x"] is x
        assert lloyd._worker_points(st.location, key, "oklab")["x"] is not x
    finally:
        lloyd.release_points()
    assert lloyd._worker_points(st.location, key, "rgb")["x"] is not x
    lloyd.release_points()


def test_rerun_noop_and_refusals(store_copy):
    a = fit(store_copy, colors=5, seed=1, max_steps=20, scheduler="threads")
    b = fit(store_copy, colors=5, seed=1, max_steps=20, scheduler="threads")
    assert b.status == "already complete"
    assert np.array_equal(a.centers, b.centers)
    with pytest.raises(StoreMismatchError, match="colors=5"):
        fit(store_copy, colors=6, scheduler="threads")
    c = fit(store_copy, colors=6, max_steps=20, scheduler="threads", overwrite=True)
    assert c.k == 6
    assert streamq.load_fit(store_copy).k == 6


def test_checkpoint_from_other_sklearn_refused(store_copy):
    from streamq.config import FitConfig
    from streamq.fit.driver import _fit_fingerprint
    from streamq.store import Store
    from streamq.store.checkpoint import encode_state, estimator_state

    fit(store_copy, colors=4, max_steps=10, scheduler="threads")
    st = Store.open(store_copy, mode="r+")
    model = MiniBatchKMeans(4, n_init=1, random_state=0).partial_fit(np.random.rand(100, 3))
    state = estimator_state(model)
    state["sklearn"] = "0.1"
    fp = _fit_fingerprint(st, FitConfig(colors=4, max_steps=10))
    st.group["fit/checkpoint"][0] = encode_state({
        "fingerprint": fp, "phase": "minibatch", "model": state, "cursor": 3, "pixels_seen": 1,
        "calm": 0, "history": {"step": np.zeros(0)}})
    st.set_section("fit", {**st.section("fit"), "state": "running"})
    with pytest.raises(CheckpointMismatchError, match="scikit-learn 0.1"):
        fit(store_copy, colors=4, max_steps=10, scheduler="threads")


def test_too_few_colours_is_a_clear_error(tmp_path):
    from PIL import Image

    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        (tmp_path / "flat" / "Solid").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), colour).save(tmp_path / "flat" / "Solid" / f"Solid_{i:04d}.png")
    streamq.ingest(tmp_path / "flat", tmp_path / "flat.zarr", scheduler="sync", progress=False)
    for algorithm in ("minibatch", "lloyd"):
        with pytest.raises(ConfigError, match="only 3 distinct colours, fewer than colors=5") as e:
            fit(str(tmp_path / "flat.zarr"), colors=5, algorithm=algorithm, scheduler="sync", overwrite=True)
        assert "\n" not in str(e.value)
    res = fit(str(tmp_path / "flat.zarr"), colors=3, algorithm="lloyd", scheduler="sync", overwrite=True)
    assert sorted(map(tuple, res.palette)) == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]


@pytest.mark.parametrize(("flag", "message"), [
    (["-k", "1"], "key 'fit.colors' has value 1, expected an integer from 2 to 65536"),
    (["-k", "70000"], "key 'fit.colors' has value 70000, expected an integer from 2 to 65536"),
    (["--tol", "-1"], "key 'fit.tol' has value -1.0, expected a number >= 0"),
    (["--n-init", "0"], "key 'fit.n_init' has value 0, expected an integer >= 1"),
])
def test_bad_flags_are_one_line(store_copy, flag, message):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    result = CliRunner().invoke(cli, ["fit", store_copy, *flag])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {message}"


def test_unknown_algorithm_is_refused(store_copy):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    result = CliRunner().invoke(cli, ["fit", store_copy, "--algorithm", "elkan"])
    assert result.exit_code == 2
    assert "'elkan' is not one of" in result.output
    with pytest.raises(ConfigError, match="key 'fit.algorithm' has value 'elkan'"):
        fit(store_copy, algorithm="elkan")


def test_oklab_fit_stores_rgb_palette(store_copy, all_pixels):
    res = fit(store_copy, colors=8, color_space="oklab", max_steps=60, scheduler="threads")
    assert res.palette.dtype == np.uint8
    np.testing.assert_array_equal(res.palette, to_rgb8(res.centers, "oklab"))
    assert 10 < res.psnr < 60


def test_colour_space_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5000, 3), dtype=np.uint8)
    for space in ("rgb", "oklab"):
        np.testing.assert_array_equal(to_rgb8(to_space(rgb, space), space), rgb)


def test_info_and_cli_show_the_fit(store_copy):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["fit", store_copy, "-k", "5", "--max-steps", "20", "--scheduler", "threads"])
    assert out.exit_code == 0, out.output
    line = out.output.strip()
    assert line.startswith("fitted: K=5 (minibatch, rgb), ")
    assert "dB over every pixel" in line
    assert "stopped: mini-batch: max_steps; exact Lloyd on every pixel, best of 17 starts" in line
    js = json.loads(runner.invoke(cli, ["info", store_copy, "--json"]).output)
    assert js["fit"]["k"] == 5
    assert len(js["fit"]["palette_hex"]) == 5
    assert js["fit"]["state"] == "complete"
    text = runner.invoke(cli, ["info", store_copy]).output
    assert "palette      K=5 (minibatch, rgb), " in text


def test_duplicate_palette_colours_are_replaced_by_worst_served_pixels():
    from streamq.fit.lloyd import ensure_distinct

    rng = np.random.default_rng(0)
    val = to_space(rng.integers(0, 256, size=(5000, 3), dtype=np.uint8), "rgb").astype(np.float64)
    centers = np.repeat(val[:1], 6, axis=0)  # six identical centres
    centers[1] = val[1]
    out = ensure_distinct(centers, val, "rgb")
    assert len({tuple(c) for c in to_rgb8(out, "rgb")}) == 6
    np.testing.assert_array_equal(out[:2], centers[:2])  # the first of each colour stays


def test_the_client_model_runs_on_one_thread_in_a_fresh_process():
    """threadpoolctl limits only the libraries loaded when its block starts: in a process that
    has not imported scikit-learn yet, ``client_threads`` must load its OpenMP runtime first,
    or ``partial_fit`` runs on every core beside the workers (it did: ``_n_threads`` 2)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "assert 'sklearn' not in sys.modules\n"
        "from streamq.minibatch import client_threads, new_model\n"
        "x = np.random.default_rng(0).random((2000, 3))\n"
        "with client_threads(1):\n"
        "    m = new_model(4, x[:4], 1000, 0, 0.01)\n"
        "    m.partial_fit(x[:1000])\n"
        "print(m._n_threads)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "1"


def test_worker_processes_keep_no_points_after_the_fit(store_copy, cluster_address):
    """A cluster that lives on after the fit (given by address, or ``streamq run``'s with
    ``dask.processes: true``) keeps none of the fit's cached points (``release_workers``)."""
    from distributed import Client

    def held() -> int:
        from streamq.fit import lloyd as worker_lloyd

        return len(worker_lloyd._POINTS)

    fit(store_copy, colors=6, seed=2, max_steps=8, scheduler=cluster_address, overwrite=True)
    with Client(cluster_address) as client:
        assert list(client.run(held).values()) == [0, 0]
