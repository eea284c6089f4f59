"""The compiled per-image k-means (``streamq.hist_kmeans``) and exact labels
(``streamq.nearest``) against plain references.

References: NumPy loops written from the definitions (greedy weighted k-means++ over the same
draws, weighted Lloyd with ``argmin`` labels and ``bincount`` means), scikit-learn ``KMeans``
with ``sample_weight`` from the same start, and an ``argmin`` over float64 distances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_sample_image

from streamq.colorspace import to_space
from streamq.hist_kmeans import cell_order, distinct_colours, fit_histogram, kmeans_plusplus, lloyd
from streamq.nearest import inertia, label_pixels


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo's pixels: a 120x150 crop of scikit-learn's china.jpg, (n, 3) uint8."""
    return np.ascontiguousarray(load_sample_image("china.jpg")[150:270, 300:450].reshape(-1, 3))


@pytest.fixture(scope="module")
def points(photo):
    return distinct_colours(photo[np.random.default_rng(0).choice(len(photo), 12_000, replace=False)])


def _reference_kmeanspp(x, w, k, rng):
    """Greedy weighted k-means++ from its definition, over the points in ``cell_order``."""
    trials = 2 + int(math.log(k))
    first = rng.random()
    uniforms = rng.random((k, trials))
    order = cell_order(x)[0]
    xs, ws = x[order], w[order]
    cum = np.cumsum(ws)
    chosen = [int(np.searchsorted(cum, first * cum[-1], side="right"))]
    closest = ((xs - xs[chosen[0]]) ** 2).sum(1)
    for c in range(1, k):
        cum = np.cumsum(ws * closest)
        best = None
        for t in range(trials):
            j = min(int(np.searchsorted(cum, uniforms[c, t] * cum[-1], side="right")), len(xs) - 1)
            cand = np.minimum(closest, ((xs - xs[j]) ** 2).sum(1))
            pot = (ws * cand).sum()
            if best is None or pot < best[0]:
                best = (pot, j, cand)
        chosen.append(best[1])
        closest = best[2]
    return xs[chosen]


def _reference_lloyd(x, w, centres, tol=1e-4, max_iter=300):
    """Weighted Lloyd: argmin labels, bincount means; scikit-learn's stopping rule."""
    var = np.average((x - np.average(x, axis=0, weights=w)) ** 2, axis=0, weights=w).mean()
    k = len(centres)
    previous = None
    for it in range(1, max_iter + 1):
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
        if previous is not None and np.array_equal(labels, previous):
            return centres, it - 1
        sums = np.stack([np.bincount(labels, weights=w * x[:, j], minlength=k) for j in range(3)], 1)
        weight = np.bincount(labels, weights=w, minlength=k)
        new = np.where(weight[:, None] > 0, sums / np.where(weight > 0, weight, 1)[:, None], centres)
        shift = ((new - centres) ** 2).sum()
        centres, previous = new, labels
        if shift <= tol * var:
            return centres, it
    return centres, max_iter


def test_distinct_colours_are_the_histogram(photo):
    x, w = distinct_colours(photo)
    codes, counts = np.unique(photo.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]), return_counts=True)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    np.testing.assert_array_equal(x, to_space(rgb, "rgb").astype(np.float64))
    np.testing.assert_array_equal(w, counts)


@pytest.mark.parametrize("k", [2, 6, 30, 64])
def test_kmeans_plusplus_is_the_plain_greedy_loop(points, k):
    x, w = points
    ours = kmeans_plusplus(x, w, k, np.random.default_rng(k))
    np.testing.assert_array_equal(ours, _reference_kmeanspp(x, w, k, np.random.default_rng(k)))
    assert len(np.unique(ours, axis=0)) == k


@pytest.mark.parametrize("k", [2, 6, 30, 64])
def test_lloyd_is_plain_weighted_lloyd(points, k):
    x, w = points
    start = kmeans_plusplus(x, w, k, np.random.default_rng(1))
    centres, labels, n_iter, converged = lloyd(x, w, start)
    ref, ref_iter = _reference_lloyd(x, w, start)
    assert converged
    assert n_iter == ref_iter
    np.testing.assert_allclose(centres, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [5, 40])
def test_lloyd_matches_sklearn_with_sample_weight(points, k):
    x, w = points
    start = kmeans_plusplus(x, w, k, np.random.default_rng(2))
    ours = lloyd(x, w, start, tol=0, max_iter=500)[0]  # to the fixed point, both
    km = KMeans(n_clusters=k, init=start, n_init=1, tol=0, max_iter=500, algorithm="lloyd")
    km.fit(x, sample_weight=w)
    np.testing.assert_allclose(ours, km.cluster_centers_, rtol=0, atol=1e-9)
    assert inertia(x, w, ours) == pytest.approx(km.inertia_, rel=1e-9)


def test_lloyd_refills_an_empty_cluster():
    x = np.array([[0, 0, 0], [0.1, 0, 0], [1, 1, 1], [0.9, 1, 1]], dtype=np.float64)
    w = np.array([1.0, 1.0, 1.0, 5.0])
    start = np.array([[0.05, 0, 0], [0.95, 1, 1], [5, 5, 5]])  # the third centre gets nothing
    centres, labels, _, _ = lloyd(x, w, start, tol=0)
    assert len(np.unique(centres, axis=0)) == 3
    ref, _ = _reference_lloyd(x, w, np.array([[0.05, 0, 0], [0.95, 1, 1], x[3]]), tol=0)
    assert sorted(map(tuple, centres.round(9))) == sorted(map(tuple, ref.round(9)))


@pytest.mark.parametrize("k", [2, 7, 64, 256])
def test_labels_are_the_exact_nearest_centre(photo, k):
    rng = np.random.default_rng(k)
    centres = rng.random((k, 3))
    centres[-1] = centres[0]  # an exact tie: argmin takes the first
    x = to_space(photo, "rgb").astype(np.float64)
    d = ((x[:, None, :] - centres[None]) ** 2).sum(2)
    ref = d.argmin(1)
    palette = np.round(centres * 255).astype(np.uint8)
    labels, sse, err = label_pixels(photo, centres, palette, want_err=True)
    np.testing.assert_array_equal(labels, ref)
    expected = ((photo.astype(np.int64) - palette[ref]) ** 2).sum(1)
    np.testing.assert_array_equal(err, expected)
    assert sse == expected.sum()
    assert not (labels == k - 1).any()


def test_labels_of_fitted_centres_on_pixel_lattice_ties(photo):
    # centres on the colour lattice itself and a pixel exactly between two of them
    centres = to_space(np.array([[10, 10, 10], [12, 10, 10], [200, 30, 40]], np.uint8), "rgb")
    pixels = np.array([[11, 10, 10], [10, 10, 10], [12, 10, 10], [199, 30, 40]], np.uint8)
    labels, _, _ = label_pixels(pixels, centres)
    x = to_space(pixels, "rgb").astype(np.float64)
    ref = ((x[:, None, :] - centres[None].astype(np.float64)) ** 2).sum(2).argmin(1)
    np.testing.assert_array_equal(labels, ref)


def test_fit_histogram_is_deterministic_and_handles_few_colours(photo):
    a = fit_histogram(photo, 16, np.random.default_rng([3, 4, 16]))
    b = fit_histogram(photo, 16, np.random.default_rng([3, 4, 16]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fit_histogram(photo, 16, np.random.default_rng([3, 5, 16])))
    few = np.array([[1, 2, 3], [1, 2, 3], [200, 100, 0]], np.uint8)
    c = fit_histogram(few, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(c, to_space(few[[0, 2, 0, 0]], "rgb").astype(np.float64))


def test_best_of_several_starts_and_random_init(points, photo):
    x, w = points
    one = fit_histogram(photo, 12, np.random.default_rng(9))
    best = fit_histogram(photo, 12, np.random.default_rng(9), n_init=3)
    px, pw = distinct_colours(photo)
    assert inertia(px, pw, best) <= inertia(px, pw, one)
    rnd = fit_histogram(photo, 12, np.random.default_rng(9), init="random")
    assert rnd.shape == (12, 3)
    assert np.isfinite(rnd).all()
    with pytest.raises(ValueError, match="unknown init 'kmeans'"):
        fit_histogram(photo, 12, np.random.default_rng(9), init="kmeans")
    with pytest.raises(ValueError, match="at least k=5 points"):
        kmeans_plusplus(x[:4], w[:4], 5, np.random.default_rng(0))


def test_same_quality_as_sklearn_kmeans_on_the_sample(photo):
    """Another start, the same algorithm: within a few hundredths of a dB of KMeans."""
    idx = np.sort(np.random.default_rng(0).choice(len(photo), int(0.7 * len(photo)), replace=False))
    for k in (6, 30):
        ours = fit_histogram(photo[idx], k, np.random.default_rng(k))
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(to_space(photo[idx], "rgb"))
        e_ours = label_pixels(photo, ours)[1]
        e_ref = label_pixels(photo, km.cluster_centers_)[1]
        assert 10 * np.log10(e_ref / e_ours) > -0.1  # dB
