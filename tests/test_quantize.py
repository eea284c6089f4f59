"""Chunkwise labels against scikit-learn's predict; metrics; staleness after a refit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

import streamq
from streamq.colorspace import to_space
from streamq.errors import StageNotReadyError, StreamQError
from streamq.quantize import quantize


@pytest.fixture(scope="module")
def base_store(faces_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "q.zarr"
    streamq.ingest(faces_dir, path, chunk_pixels=30_000, scheduler="threads", progress=False)
    return str(path)


@pytest.fixture
def store(base_store, tmp_path):
    dst = tmp_path / "s.zarr"
    shutil.copytree(base_store, dst)
    return str(dst)


def _pixels(store):
    coll = streamq.open_store(store)
    return np.concatenate([coll.read(i).reshape(-1, 3) for i in range(len(coll))])


@pytest.mark.parametrize(("k", "space", "dtype"), [(64, "rgb", np.uint8), (300, "rgb", np.uint16),
                                                    (32, "oklab", np.uint8)])
def test_labels_equal_sklearn_predict_except_ties(store, cluster_address, k, space, dtype):
    res = streamq.fit(store, colors=k, color_space=space, max_steps=30, batch_size=8192, scheduler="threads")
    summary = quantize(store, scheduler=cluster_address, progress=False)
    labels = zarr.open_array(f"{store}/quantize/labels", mode="r")
    assert labels.dtype == dtype
    assert labels.chunks == (30_000,)
    ours = np.asarray(labels[:]).astype(np.int64)
    px = _pixels(store)
    x = to_space(px, space).astype(np.float64)
    ref = res.estimator().predict(x)
    differ = np.flatnonzero(ours != ref)
    if len(differ):  # only exact (float) ties may differ
        c = res.centers
        d_ours = ((x[differ] - c[ours[differ]]) ** 2).sum(1)
        d_ref = ((x[differ] - c[ref[differ]]) ** 2).sum(1)
        np.testing.assert_allclose(d_ours, d_ref, rtol=1e-9, atol=1e-12)
    assert len(differ) < 1e-4 * len(px)
    # collection metrics equal a plain computation
    mse = ((px.astype(float) - res.palette[ours].astype(float)) ** 2).mean()
    assert summary.mse == pytest.approx(mse, rel=1e-12)


def test_per_image_metrics(store):
    streamq.fit(store, colors=8, max_steps=20, scheduler="threads")
    quantize(store, scheduler="threads")
    coll = streamq.open_store(store)
    labels = np.asarray(zarr.open_array(f"{store}/quantize/labels")[:])
    pal = streamq.load_fit(store).palette.astype(float)
    g = zarr.open_group(store, mode="r")
    mse = g["quantize/images/mse"][:]
    psnr = g["quantize/images/psnr"][:]
    for i in (0, 7, len(coll) - 1):
        a = int(coll.offsets[i])
        n = int(coll.heights[i] * coll.widths[i])
        ref = ((coll.read(i).reshape(-1, 3) - pal[labels[a:a + n]]) ** 2).mean()
        assert mse[i] == pytest.approx(ref, rel=1e-12)
        assert psnr[i] == pytest.approx(10 * np.log10(255 ** 2 / ref), rel=1e-12)


def test_rerun_noop_and_refit_makes_labels_stale(store):
    from click.testing import CliRunner

    from streamq.cli.main import cli

    streamq.fit(store, colors=6, max_steps=20, scheduler="threads")
    first = quantize(store, scheduler="threads")
    assert first.status == "quantized"
    assert quantize(store, scheduler="threads").status == "already complete"
    old = np.asarray(zarr.open_array(f"{store}/quantize/labels")[:]).astype(np.int64)
    res = streamq.fit(store, colors=7, max_steps=20, scheduler="threads", overwrite=True)
    info = CliRunner().invoke(cli, ["info", store]).output
    assert "labels       stale" in info
    with pytest.raises(StreamQError, match="stale"):
        streamq.export(store, store + "-out")
    again = quantize(store, scheduler="threads")
    assert again.status == "quantized"
    assert again.k == 7
    # every label is the new palette's nearest centre (a plain argmin; exact ties aside), so
    # none is left over from the 6-colour palette
    ours = np.asarray(zarr.open_array(f"{store}/quantize/labels")[:]).astype(np.int64)
    x = to_space(_pixels(store), "rgb").astype(np.float64)
    d = ((x[:, None, :] - res.centers[None, :, :]) ** 2).sum(2)
    best = d.min(1)
    assert np.all(d[np.arange(len(x)), ours] <= best + 1e-12)
    assert np.any(ours != old)
    assert ours.max() == 6  # the new seventh colour is used


def test_labels_of_another_palette_are_stale_for_every_reader(store):
    """One rule: labels whose palette is not the store's fit are stale for every reader, by
    the fingerprints alone (a refit writes nothing into the labels' own record)."""
    streamq.fit(store, colors=6, max_steps=20, scheduler="threads")
    quantize(store, scheduler="threads")
    group = zarr.open_group(store, mode="r+")
    group.attrs["fit"] = {**group.attrs["fit"], "fingerprint": "another palette"}
    assert group.attrs["quantize"]["state"] == "complete"  # its record says nothing more
    assert streamq.collection_info(store)["labels"]["state"] == "stale"
    with pytest.raises(StageNotReadyError, match=r"labels are stale \(the palette was refitted\); "
                                                 r"run `streamq quantize` first"):
        streamq.export(store, store + "-out")


def test_quantize_needs_a_palette(store):
    with pytest.raises(StreamQError, match="no fitted palette"):
        quantize(store, scheduler="sync")
