"""``ColorQuantizer``: scikit-learn's estimator checks, exact labels, the same centres as
scikit-learn ``KMeans`` from the same start, and the same palette as ``streamq fit``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.utils.estimator_checks import parametrize_with_checks

import streamq
from streamq.cli.main import cli
from streamq.colorspace import to_space
from streamq.estimator import ColorQuantizer

SMALL = {"chunk_pixels": 2048, "block_pixels": 1024}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 60 x 90 crop of a real photo (uint8 RGB)."""
    from sklearn.datasets import load_sample_image

    return np.ascontiguousarray(load_sample_image("china.jpg")[150:210, 200:290])


# Every check applies: non-colour numbers (the checks' float and integer data, any number of
# features) are clustered as generic points by the same k-means core. n_colors=3 as the checks
# cluster 3 blobs; none is expected to fail.
@parametrize_with_checks([ColorQuantizer(n_colors=3)])
def test_scikit_learn_estimator_checks(estimator, check, monkeypatch):
    # scikit-learn skips its array API check (NumPy inputs with array API dispatch on must give
    # the same results) unless SCIPY_ARRAY_API is set: set it, so that check runs too.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


def _argmin(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d = ((points.astype(np.float64)[:, None, :] - centers[None]) ** 2).sum(-1)
    return np.argmin(d, axis=1)  # first centre on ties


@pytest.mark.parametrize("space", ["rgb", "oklab"])
def test_predict_equals_brute_force_argmin(photo, space):
    q = ColorQuantizer(n_colors=7, color_space=space, n_init=2).fit(photo)
    labels = q.predict(photo)
    assert labels.shape == photo.shape[:2]
    assert labels.dtype == np.int32
    expect = _argmin(to_space(photo.reshape(-1, 3), space), q.cluster_centers_)
    np.testing.assert_array_equal(labels.reshape(-1), expect)
    np.testing.assert_array_equal(q.labels_, labels)
    np.testing.assert_array_equal(q.transform(photo), q.palette_[labels])
    np.testing.assert_array_equal(q.fit_transform(photo), q.palette_[labels])
    assert q.n_features_in_ == 3
    assert q.color_input_
    pixels = photo.reshape(-1, 3)
    np.testing.assert_array_equal(q.predict(pixels), labels.reshape(-1))  # rows or an image
    d = to_space(pixels, space).astype(np.float64) - q.cluster_centers_[labels.reshape(-1)]
    assert q.inertia_ == pytest.approx((d ** 2).sum(), rel=1e-9)


def test_same_start_same_centers_as_scikit_learn_kmeans(photo):
    from sklearn.cluster import KMeans

    x = to_space(photo.reshape(-1, 3), "rgb").astype(np.float64)
    start = x[np.random.default_rng(0).choice(len(x), 6, replace=False)]
    ours = ColorQuantizer(n_colors=6, init=start, tol=0).fit(photo)
    theirs = KMeans(n_clusters=6, init=start, n_init=1, tol=0, max_iter=1000).fit(x)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-7)
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-6)
    np.testing.assert_array_equal(ours.labels_.reshape(-1), theirs.labels_)


def test_dask_array_equals_numpy(photo):
    import dask.array as da

    stack = np.stack([photo, photo[::-1]])
    lazy = da.from_array(stack, chunks=(1, 25, 40, 3))
    q = ColorQuantizer(n_colors=5, n_init=2).fit(lazy)
    ref = ColorQuantizer(n_colors=5, n_init=2).fit(stack)
    np.testing.assert_array_equal(q.cluster_centers_, ref.cluster_centers_)
    labels = q.predict(lazy)
    assert isinstance(labels, da.Array)
    assert labels.shape == stack.shape[:3]
    np.testing.assert_array_equal(labels.compute(scheduler="sync"), ref.labels_)
    np.testing.assert_array_equal(q.transform(lazy).compute(scheduler="sync"),
                                  ref.transform(stack))


def test_store_fit_equals_cli_fit_and_predict_equals_quantize(photo, tmp_path):
    stores = [str(tmp_path / "cli.zarr"), str(tmp_path / "est.zarr")]
    streamq.ingest_array([photo, photo[:40, :50]], stores[0], scheduler="threads",
                         progress=False, **SMALL)
    shutil.copytree(stores[0], stores[1])
    done = CliRunner().invoke(cli, ["fit", stores[0], "-k", "6", "--seed", "3", "--n-init", "4",
                                    "--scheduler", "threads"])
    assert done.exit_code == 0, done.output
    by_cli = streamq.load_fit(stores[0])
    q = ColorQuantizer(n_colors=6, random_state=3, n_init=4, scheduler="threads",
                       progress=False).fit(stores[1])
    assert q.fit_result_.algorithm == "minibatch"  # the default of `streamq fit`
    np.testing.assert_array_equal(q.cluster_centers_, by_cli.centers)
    np.testing.assert_array_equal(q.palette_, by_cli.palette)
    # lazy labels computed from the pixels are the labels quantize stores (read through a
    # collection opened before quantize ran)
    coll = streamq.open_store(stores[1])
    streamq.quantize(stores[1], scheduler="threads", progress=False)
    predicted = [a.compute(scheduler="sync") for a in q.predict(stores[1])]
    for i, lab in enumerate(predicted):
        np.testing.assert_array_equal(lab, coll.pixel_labels(i))
        np.testing.assert_array_equal(q.transform(coll)[i].compute(scheduler="sync"),
                                      coll.quantized(i))
    assert len(q.labels_) == 2


@pytest.mark.parametrize(("kwargs", "X", "message"), [
    ({"algorithm": "minibatch"}, "photo", "algorithm='minibatch' streams batches from a store"),
    ({"color_space": "oklab"}, "floats", "color_space='oklab' applies to uint8/uint16 colours"),
    ({}, "rgba", "with 4 channels, expected 3"),
    ({"n_colors": 300}, "photo", "distinct colours, fewer than n_colors=300"),
])
def test_bad_input_is_a_one_line_error(photo, kwargs, X, message):
    data = {"photo": photo[:10, :10], "floats": np.random.default_rng(0).random((20, 3)),
            "rgba": np.zeros((4, 4, 4), np.uint8)}[X]
    with pytest.raises(ValueError, match=message) as exc:
        ColorQuantizer(**kwargs).fit(data)
    assert "\n" not in str(exc.value)
