"""The k-means core (``streamq.kmeans``) against plain references.

References: NumPy loops written from the definitions (greedy weighted k-means++ over the same
draws, weighted Lloyd with ``argmin`` labels, ``bincount`` means and scikit-learn's stopping
and empty-cluster rules), scikit-learn ``KMeans`` with ``sample_weight`` from the same start,
and an ``argmin`` over float64 distances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_sample_image

from streamq.colorspace import to_space
from streamq.kmeans import (
    codes_to_points,
    codes_to_rgb,
    distinct_colours,
    fixed_point,
    inertia,
    kmeans,
    kmeans_plusplus,
    label_pixels,
    lloyd,
    rgb_to_codes,
    tolerance,
)
from streamq.kmeans.filtering import CellPoints, lloyd_cells
from streamq.kmeans.plusplus import cell_layout, cell_order


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo's pixels: a 120x150 crop of scikit-learn's china.jpg, (n, 3) uint8."""
    return np.ascontiguousarray(load_sample_image("china.jpg")[150:270, 300:450].reshape(-1, 3))


def _points(rgb):
    codes, counts = distinct_colours(rgb)
    return codes_to_points(codes), counts.astype(np.float64)


@pytest.fixture(scope="module")
def points(photo):
    return _points(photo[np.random.default_rng(0).choice(len(photo), 12_000, replace=False)])


@pytest.fixture(scope="module")
def whole_photo():
    """Every distinct colour of a whole real photo (~96 k points), with counts."""
    return _points(load_sample_image("flower.jpg").reshape(-1, 3))


def _reference_kmeanspp(x, w, k, rng, order=None):
    """Greedy weighted k-means++ from its definition, over the points in ``order``."""
    trials = 2 + int(math.log(k))
    first = rng.random()
    uniforms = rng.random((k, trials))
    order = np.arange(len(x)) if order is None else order
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


def _labels(x, c):
    return ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)


def _reference_lloyd(x, w, centers, tol=1e-4, max_iter=300):
    """Weighted Lloyd from its definition: argmin labels, exact integer sums of the fixed-point
    points, scikit-learn's stopping rule and empty-cluster rule."""
    X, W, f = fixed_point(x, w)
    xq = X * 2.0**-f
    mean = np.average(xq, axis=0, weights=w)
    threshold = tol * np.average((xq - mean) ** 2, axis=0, weights=w).mean()
    k, d = centers.shape
    labels = _labels(xq, centers)
    for it in range(1, max_iter + 1):
        sums = np.zeros((k, d), np.int64)
        np.add.at(sums, labels, W[:, None] * X)
        weight = np.bincount(labels, weights=W, minlength=k).astype(np.int64)
        empty = np.flatnonzero(weight == 0)
        if len(empty):  # the farthest points from their centres, moved with their weight
            far = np.argsort(-((xq - centers[labels]) ** 2).sum(1), kind="stable")
            for j, i in zip(empty, far, strict=False):
                sums[labels[i]] -= W[i] * X[i]
                weight[labels[i]] -= W[i]
                sums[j], weight[j] = W[i] * X[i], W[i]
                labels[i] = j
        safe = np.where(weight > 0, weight, 1).astype(np.float64)
        new = np.where(weight[:, None] > 0, sums.astype(np.float64) / safe[:, None] * 2.0**-f,
                       centers)
        shift = ((new - centers) ** 2).sum()
        centers = new
        new_labels = _labels(xq, centers)
        changed = (new_labels != labels).any()
        labels = new_labels
        if not changed and not len(empty):
            return centers, it, "labels"
        if tol > 0 and shift <= threshold:
            return centers, it, "tol"
    return centers, max_iter, "max_iter"


def test_codes_round_trip_and_distinct_colours(photo):
    codes, counts = distinct_colours(photo)
    ref_codes, ref_counts = np.unique(photo.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1]),
                                      return_counts=True)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(rgb_to_codes(codes_to_rgb(codes)), codes)
    np.testing.assert_array_equal(codes_to_points(codes),
                                  to_space(codes_to_rgb(codes), "rgb").astype(np.float64))


def test_squared_errors_against_every_pixel(photo):
    """The histogram's squared error and pixels per palette colour: those of every pixel of
    the photo replaced by its label's colour (plain numpy, pixel by pixel)."""
    from streamq.kmeans.codes import squared_errors

    codes, counts = distinct_colours(photo)
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, len(codes))
    sse, per_colour = squared_errors(codes, counts, labels, palette)
    pixel_label = labels[np.searchsorted(codes, rgb_to_codes(photo))]
    err = photo.astype(np.int64) - palette[pixel_label].astype(np.int64)
    assert sse == int((err ** 2).sum())
    np.testing.assert_array_equal(per_colour, np.bincount(pixel_label, minlength=7))
    assert squared_errors(codes[:0], counts[:0], labels[:0], palette)[0] == 0
    # past int64: white and near-white shown as black, 2**46 pixels in all
    big = np.array([2**45, 2**44, 2**44], np.int64)
    near = np.array([0xFFFFFF, 0xFEFFFF, 0xFFFFFE])
    sse, _ = squared_errors(near, big, np.zeros(3, np.int64), np.zeros((1, 3), np.uint8))
    assert sse == 2**45 * 3 * 255**2 + 2**44 * (254**2 + 2 * 255**2) * 2 > 2**63


def test_distinct_colours_of_chosen_rows(photo):
    idx = np.sort(np.random.default_rng(1).choice(len(photo), 5_000, replace=False))
    codes, counts = distinct_colours(photo, idx)
    ref_codes, ref_counts = distinct_colours(photo[idx])
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(counts, ref_counts)
    assert counts.dtype == np.int64
    assert counts.sum() == 5_000
    flat = np.zeros((40, 3), np.uint8)  # one colour: a count above every other
    np.testing.assert_array_equal(distinct_colours(flat)[1], [40])
    assert [len(a) for a in distinct_colours(photo[:0])] == [0, 0]


@pytest.mark.parametrize("n", [10_001, 12_345, 200_003])
@pytest.mark.parametrize("fraction", [0.0201, 0.03, 0.3, 0.7, 0.999])
def test_sample_histogram_is_the_seeded_choice(photo, n, fraction):
    from streamq.kmeans.sampling import sample_histogram, takes_fisher_yates

    rgb = np.resize(photo, (n, 3))
    m = int(round(fraction * n))
    assert takes_fisher_yates(n, m)
    for seed in ([0, 1], [4, 7, 2]):
        idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
        want = distinct_colours(rgb, idx)
        got = sample_histogram(rgb, m, np.random.default_rng(seed))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_sample_shuffle_resumes_when_draws_run_out():
    from streamq.kmeans.sampling import _shuffle

    n = 30_000
    for m in (601, 15_000, n - 1):
        rng = np.random.default_rng([1, 2])
        pos = np.arange(n, dtype=np.int32)
        used = np.zeros(1, np.int64)
        draws = rng.bit_generator.random_raw(5).view(np.uint32)
        i = n - 1
        while (i := _shuffle(pos, i, n - m - 1, draws, used)) != n - m - 1:
            draws = np.concatenate([draws[used[0]:], rng.bit_generator.random_raw(3).view(np.uint32)])
            used[0] = 0
        want = np.sort(np.random.default_rng([1, 2]).choice(n, size=m, replace=False))
        np.testing.assert_array_equal(np.sort(pos[n - m:]), want)


def test_sample_histogram_small_sizes_take_numpy(photo):
    from streamq.kmeans.sampling import sample_histogram

    for n, m in ((500, 350), (20_000, 300), (20_000, 20_000)):
        rgb = np.resize(photo, (n, 3))
        idx = (np.sort(np.random.default_rng(3).choice(n, size=m, replace=False)) if m < n
               else np.arange(n))
        got = sample_histogram(rgb, m, np.random.default_rng(3))
        np.testing.assert_array_equal(got[1], distinct_colours(rgb, idx)[1])


@pytest.mark.parametrize("k", [2, 6, 30, 64])
def test_kmeans_plusplus_is_the_plain_greedy_loop(points, k):
    x, w = points
    ours = kmeans_plusplus(x, w, k, np.random.default_rng(k))
    ref = _reference_kmeanspp(x, w, k, np.random.default_rng(k), cell_order(x)[0])
    np.testing.assert_array_equal(ours, ref)
    assert len(np.unique(ours, axis=0)) == k


def test_kmeans_plusplus_any_dimension():
    rng = np.random.default_rng(0)
    x = rng.random((500, 5))
    w = rng.integers(1, 4, 500).astype(float)
    ours = kmeans_plusplus(x, w, 7, np.random.default_rng(1))
    np.testing.assert_array_equal(ours, _reference_kmeanspp(x, w, 7, np.random.default_rng(1)))


@pytest.mark.parametrize("k", [2, 6, 30, 64])
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_bounded_lloyd_is_plain_weighted_lloyd_bit_for_bit(points, k, tol):
    x, w = points
    start = kmeans_plusplus(x, w, k, np.random.default_rng(1))
    res = lloyd(x, w, start, tol=tol, max_iter=1000)
    plain = lloyd(x, w, start, tol=tol, max_iter=1000, bounds=False)
    ref, ref_iter, ref_stop = _reference_lloyd(x, w, start, tol=tol, max_iter=1000)
    assert (res.n_iter, res.stop) == (ref_iter, ref_stop)
    np.testing.assert_array_equal(res.centers, ref)
    np.testing.assert_array_equal(plain.centers, ref)
    np.testing.assert_array_equal(res.labels, _labels(x, res.centers))
    assert res.inertia == pytest.approx(inertia(x, w, res.centers), rel=1e-12)
    assert [r[0] for r in res.history] == list(range(1, res.n_iter + 1))


def _same_result(a, b):
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.inertia, a.n_iter, a.stop, a.history) == (b.inertia, b.n_iter, b.stop, b.history)


@pytest.mark.parametrize("k", [2, 3, 6, 30, 64, 256])
@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_lloyd_cells_is_bounded_lloyd_bit_for_bit(whole_photo, k, tol):
    x, w = whole_photo
    start = kmeans_plusplus(x, w, k, np.random.default_rng(k))
    order, cells = cell_order(x)
    ours = lloyd_cells(x, w, start, tol=tol, max_iter=120, order=order, start=cells)
    _same_result(ours, lloyd(x, w, start, tol=tol, max_iter=120))
    # the cells labelled by three threads: the same run
    _same_result(lloyd_cells(x, w, start, tol=tol, max_iter=120, order=order, start=cells,
                             n_threads=3), ours)
    # any grouping of the points into cells: the same result
    one = np.array([0, len(x)])
    _same_result(lloyd_cells(x, w, start, tol=tol, max_iter=120, order=np.arange(len(x)), start=one),
                 lloyd(x, w, start, tol=tol, max_iter=120))


def test_lloyd_cells_runs_sharing_their_cell_points_from_threads(whole_photo):
    """Runs from several starts on one CellPoints, at once from threads (each labelling on
    two more): each the result of a run of its own."""
    import concurrent.futures as cf

    x, w = whole_photo
    order, cells = cell_order(x)
    shared = CellPoints(x, w, order, cells)
    starts = [kmeans_plusplus(x, w, k, np.random.default_rng(k)) for k in (2, 6, 16, 30, 6, 16)]
    alone = [lloyd_cells(x, w, s, tol=0, max_iter=80) for s in starts]
    with cf.ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda s: lloyd_cells(x, w, s, tol=0, max_iter=80, cells=shared,
                                                       n_threads=2), starts))
    for a, b in zip(alone, together, strict=True):
        _same_result(a, b)
    _same_result(lloyd_cells(x, w, starts[2], tol=1e-4, cells=shared),
                 lloyd(x, w, starts[2], tol=1e-4))
    with pytest.raises(ValueError, match="cells of"):
        lloyd_cells(x[:-1], w[:-1], starts[0], cells=shared)
    with pytest.raises(ValueError, match="not a grouping"):
        CellPoints(x, w, order, cells[:-1])  # the last cell's points left out


@pytest.mark.parametrize("bad", [-1.0, 2.5, np.nan])
def test_weights_must_be_pixel_counts(bad):
    x = np.random.default_rng(0).random((50, 3))
    w = np.ones(50)
    w[17] = bad
    for make in (lambda: CellPoints(x, w), lambda: fixed_point(x, w),
                 lambda: lloyd(x, w, x[:3])):
        with pytest.raises(ValueError, match="whole non-negative"):
            make()


@pytest.mark.parametrize("seed", range(12))
def test_lloyd_cells_ties_and_empty_clusters_as_bounded(seed):
    # points on a coarse lattice (many exact ties), several starts on one point and some far
    # away: clusters go empty and are refilled, at the first update and later
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    k = int(rng.integers(2, min(n, 40)))
    x = rng.integers(0, 4, size=(n, 3)) / 3.0
    w = rng.integers(1, 5, size=n).astype(float)
    start = np.concatenate([x[:1].repeat(k // 2, 0), rng.random((k - k // 2, 3)) * 2 - 0.5])
    for tol in (1e-4, 0.0):
        _same_result(lloyd_cells(x, w, start, tol=tol), lloyd(x, w, start, tol=tol))
        _same_result(lloyd_cells(x, w, start, tol=tol, n_threads=2), lloyd(x, w, start, tol=tol))
    for max_iter in (0, 1, 2):
        _same_result(lloyd_cells(x, None, start, max_iter=max_iter),
                     lloyd(x, None, start, max_iter=max_iter))
    hooked: list[int] = []  # handing back after every update: the same, refills included
    _same_result(lloyd_cells(x, w, start, tol=0, on_iter=lambda it, c, rows: hooked.append(it)),
                 lloyd(x, w, start, tol=0))
    assert hooked == list(range(1, len(hooked) + 1))


def test_kmeans_takes_lloyd_cells_for_colours_with_the_same_result(whole_photo, photo):
    x, w = whole_photo
    for k in (6, 64):
        rng = np.random.default_rng([1, k])
        ours = kmeans(x, w, k, rng, n_init=2)
        rng = np.random.default_rng([1, k])
        best = None
        for _ in range(2):  # the same starts, bounded Lloyd
            res = lloyd(x, w, kmeans_plusplus(x, w, k, rng), tol=1e-4)
            best = res if best is None or res.inertia < best.inertia else best
        _same_result(ours, best)
    layout = cell_layout(x)
    np.testing.assert_array_equal(kmeans_plusplus(x, w, 9, np.random.default_rng(0), layout),
                                  kmeans_plusplus(x, w, 9, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="3-d points"):
        lloyd_cells(x[:, :2], w, x[:2, :2])


def test_lloyd_on_a_whole_photo_is_bit_for_bit_with_and_without_bounds(whole_photo):
    x, w = whole_photo
    start = kmeans_plusplus(x, w, 256, np.random.default_rng(5))
    res = lloyd(x, w, start, tol=0, max_iter=40)
    plain = lloyd(x, w, start, tol=0, max_iter=40, bounds=False)
    np.testing.assert_array_equal(res.centers, plain.centers)
    np.testing.assert_array_equal(res.labels, plain.labels)
    assert res.history == plain.history


@pytest.mark.parametrize("k", [5, 40])
def test_lloyd_matches_sklearn_with_sample_weight(points, k):
    x, w = points
    start = kmeans_plusplus(x, w, k, np.random.default_rng(2))
    ours = lloyd(x, w, start, tol=0, max_iter=500)  # to the fixed point, both
    km = KMeans(n_clusters=k, init=start, n_init=1, tol=0, max_iter=500, algorithm="lloyd")
    km.fit(x, sample_weight=w)
    np.testing.assert_allclose(ours.centers, km.cluster_centers_, rtol=0, atol=1e-9)
    assert ours.inertia == pytest.approx(km.inertia_, rel=1e-9)
    assert ours.stop == "labels"


def test_tolerance_is_relative_to_the_weighted_variance(points):
    x, w = points
    pixels = np.repeat(x, w.astype(int), axis=0)  # the pixels the points stand for
    assert tolerance(x, w, 1e-3) == pytest.approx(1e-3 * pixels.var(axis=0).mean(), rel=1e-9)
    assert tolerance(x, w, 0) == 0


def test_lloyd_refills_an_empty_cluster():
    x = np.array([[0, 0, 0], [0.1, 0, 0], [1, 1, 1], [0.9, 1, 1]], dtype=np.float64)
    w = np.array([1.0, 1.0, 1.0, 5.0])
    start = np.array([[0.05, 0, 0], [0.95, 1, 1], [5, 5, 5]])  # the third centre gets nothing
    res = lloyd(x, w, start, tol=0)
    ref, ref_iter, _ = _reference_lloyd(x, w, start, tol=0)
    assert len(np.unique(res.centers, axis=0)) == 3
    np.testing.assert_array_equal(res.centers, ref)
    assert res.n_iter == ref_iter
    assert res.inertia < 0.01


@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_lloyd_resumed_from_any_checkpoint_is_identical(points, tol):
    x, w = points
    start = kmeans_plusplus(x, w, 16, np.random.default_rng(3))
    saved = []
    ref = lloyd(x, w, start, tol=tol, max_iter=1000,
                on_iter=lambda it, c, rows: saved.append((it, c.copy(), list(rows))))
    assert len(saved) == ref.n_iter - 1  # every update the run went on from
    for it, centers, rows in saved[:: max(1, len(saved) // 6)] + saved[-1:]:
        resumed = lloyd(x, w, centers, tol=tol, max_iter=1000, start_iter=it)
        np.testing.assert_array_equal(resumed.centers, ref.centers)
        assert (resumed.n_iter, resumed.stop) == (ref.n_iter, ref.stop)
        assert rows + resumed.history == ref.history


@pytest.mark.parametrize("tol", [1e-4, 0.0])
def test_lloyd_cells_checkpoints_and_resumes_as_bounded_lloyd(whole_photo, tol):
    x, w = whole_photo
    start = kmeans_plusplus(x, w, 24, np.random.default_rng(4))
    order, cells = cell_order(x)
    seen, saved = [], []
    ref = lloyd(x, w, start, tol=tol, max_iter=300,
                on_iter=lambda it, c, rows: seen.append((it, c.copy(), list(rows))))
    ours = lloyd_cells(x, w, start, tol=tol, max_iter=300, order=order, start=cells, n_threads=2,
                       on_iter=lambda it, c, rows: saved.append((it, c.copy(), list(rows))))
    _same_result(ours, ref)
    assert len(saved) == len(seen) == ref.n_iter - 1
    for (it_a, c_a, rows_a), (it_b, c_b, rows_b) in zip(saved, seen, strict=True):
        assert (it_a, rows_a) == (it_b, rows_b)
        np.testing.assert_array_equal(c_a, c_b)
    for it, centers, rows in saved[:: max(1, len(saved) // 5)] + saved[-1:]:  # on one thread
        resumed = lloyd_cells(x, w, centers, tol=tol, max_iter=300, order=order, start=cells,
                              start_iter=it)
        np.testing.assert_array_equal(resumed.centers, ref.centers)
        assert (resumed.n_iter, resumed.stop) == (ref.n_iter, ref.stop)
        assert rows + resumed.history == ref.history
    capped = lloyd_cells(x, w, start, tol=tol, max_iter=5, on_iter=lambda *a: None)
    _same_result(capped, lloyd(x, w, start, tol=tol, max_iter=5))


def test_lloyd_any_dimension_and_max_iter():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.1, (200, 4)) for m in (0, 1, 2)])
    start = x[[0, 1, 2]]
    res = lloyd(x, None, start, tol=0, max_iter=500)
    ref, ref_iter, _ = _reference_lloyd(x, np.ones(len(x)), start, tol=0, max_iter=500)
    np.testing.assert_array_equal(res.centers, ref)
    assert res.n_iter == ref_iter
    short = lloyd(x, None, start, tol=0, max_iter=1)
    assert (short.n_iter, short.stop, short.converged) == (1, "max_iter", False)
    with pytest.raises(ValueError, match=r"centers of shape \(3, 3\) do not match"):
        lloyd(x, None, x[:3, :3])


@pytest.mark.parametrize("k", [2, 7, 64, 256])
def test_labels_are_the_exact_nearest_center(photo, k):
    rng = np.random.default_rng(k)
    centers = rng.random((k, 3))
    centers[-1] = centers[0]  # an exact tie: argmin takes the first
    x = to_space(photo, "rgb").astype(np.float64)
    ref = _labels(x, centers)
    palette = np.round(centers * 255).astype(np.uint8)
    labels, sse, err = label_pixels(photo, centers, palette, want_err=True)
    np.testing.assert_array_equal(labels, ref)
    expected = ((photo.astype(np.int64) - palette[ref]) ** 2).sum(1)
    np.testing.assert_array_equal(err, expected)
    assert sse == expected.sum()
    assert not (labels == k - 1).any()


def test_labels_of_fitted_centers_on_pixel_lattice_ties():
    # centres on the colour lattice itself and a pixel exactly between two of them
    centers = to_space(np.array([[10, 10, 10], [12, 10, 10], [200, 30, 40]], np.uint8), "rgb")
    pixels = np.array([[11, 10, 10], [10, 10, 10], [12, 10, 10], [199, 30, 40]], np.uint8)
    labels, _, _ = label_pixels(pixels, centers)
    x = to_space(pixels, "rgb").astype(np.float64)
    np.testing.assert_array_equal(labels, _labels(x, centers.astype(np.float64)))


def test_kmeans_is_deterministic_and_handles_few_points(photo):
    x, w = _points(photo)
    a = kmeans(x, w, 16, np.random.default_rng([3, 4, 16])).centers
    b = kmeans(x, w, 16, np.random.default_rng([3, 4, 16])).centers
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, kmeans(x, w, 16, np.random.default_rng([3, 5, 16])).centers)
    few_x, few_w = _points(np.array([[1, 2, 3], [1, 2, 3], [200, 100, 0]], np.uint8))
    c = kmeans(few_x, few_w, 4, np.random.default_rng(0)).centers
    np.testing.assert_array_equal(c, few_x[[0, 1, 0, 0]])


def test_best_of_several_starts_and_random_init(points, photo):
    x, w = _points(photo)
    one = kmeans(x, w, 12, np.random.default_rng(9))
    best = kmeans(x, w, 12, np.random.default_rng(9), n_init=3)
    assert best.inertia <= one.inertia
    rnd = kmeans(x, w, 12, np.random.default_rng(9), init="random").centers
    assert rnd.shape == (12, 3)
    assert np.isfinite(rnd).all()
    with pytest.raises(ValueError, match="unknown init 'kmeans'"):
        kmeans(x, w, 12, np.random.default_rng(9), init="kmeans")
    px, pw = points
    with pytest.raises(ValueError, match="at least k=5 points"):
        kmeans_plusplus(px[:4], pw[:4], 5, np.random.default_rng(0))


def test_same_quality_as_sklearn_kmeans_on_the_sample(photo):
    """Another start, the same algorithm: within a few hundredths of a dB of KMeans."""
    idx = np.sort(np.random.default_rng(0).choice(len(photo), int(0.7 * len(photo)), replace=False))
    x, w = _points(photo[idx])
    for k in (6, 30):
        ours = kmeans(x, w, k, np.random.default_rng(k)).centers
        km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(to_space(photo[idx], "rgb"))
        e_ours = label_pixels(photo, ours)[1]
        e_ref = label_pixels(photo, km.cluster_centers_)[1]
        assert 10 * np.log10(e_ref / e_ours) > -0.1  # dB


def _plain_kmeanspp(x, w, k, rng, fixed=None):
    """k-means++ by the module's plain loop (every point for every candidate, in the points'
    order), on the draws :func:`kmeans_plusplus` takes from ``rng``: the reference of the
    4-d search tree."""
    from streamq.kmeans import plusplus

    x = np.ascontiguousarray(x, np.float64)
    w = np.ascontiguousarray(w, np.float64)
    trials = 2 + int(math.log(k))
    if fixed is None:
        first = rng.random()
        uniforms = rng.random((k, trials))
        chosen = np.empty(k, np.int64)
        plusplus._kmeanspp_plain(x, w, k, plusplus._first(w, first), uniforms, chosen,
                                 np.empty(len(x)))
        return x[chosen]
    m = k - len(fixed) + 1
    uniforms = rng.random((m, trials))
    chosen = np.empty(m, np.int64)
    plusplus._kmeanspp_plain(x, w, m, -1, uniforms, chosen, plusplus._to_fixed(x, fixed))
    return np.concatenate([fixed, x[chosen[1:]]])


@pytest.fixture
def tree_always(monkeypatch):
    """k-means++ on 4-d points by the search tree whatever their number; counts its runs."""
    from streamq.kmeans import plusplus

    runs = []
    by_tree = plusplus._plain_by_tree

    def counted(*args):
        runs.append(len(args[0]))
        return by_tree(*args)

    monkeypatch.setattr(plusplus, "TREE_FROM", 0)
    monkeypatch.setattr(plusplus, "TREE_SETUP", 0)
    monkeypatch.setattr(plusplus, "_plain_by_tree", counted)
    return runs


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_plusplus_4d_tree_is_the_plain_loop(seed, tree_always):
    # random weighted 4-d points: on a coarse lattice (duplicates, exact ties of distance and
    # weight, fewer distinct points than K at times) or continuous, a few far outliers
    rng = np.random.default_rng(seed)
    n = int(rng.integers(300, 3000))
    if seed % 2:
        x = rng.integers(0, 4, size=(n, 4)) / 3.0
        w = rng.integers(1, 4, size=n).astype(float)
    else:
        x = rng.normal(size=(n, 4)) * np.array([1.0, 0.5, 2.0, 0.1])
        x[:5] *= 40
        w = rng.exponential(size=n) + 0.01
    for k in (2, 16, 256):
        ours = kmeans_plusplus(x, w, k, np.random.default_rng([seed, k]))
        ref = _plain_kmeanspp(x, w, k, np.random.default_rng([seed, k]))
        np.testing.assert_array_equal(ours, ref, err_msg=f"k={k}")
        if seed % 2 == 0:
            assert len(np.unique(ours, axis=0)) == k
    held = x[:3] + 0.01  # fixed centres: the others from them
    np.testing.assert_array_equal(kmeans_plusplus(x, w, 40, np.random.default_rng(seed), fixed=held),
                                  _plain_kmeanspp(x, w, 40, np.random.default_rng(seed), held))
    assert tree_always == [n] * 4


def test_kmeans_plusplus_4d_takes_the_tree_when_it_pays(monkeypatch):
    from streamq.kmeans import plusplus

    runs = []
    by_tree = plusplus._plain_by_tree
    monkeypatch.setattr(plusplus, "_plain_by_tree", lambda *a: runs.append(len(a[0])) or by_tree(*a))
    rng = np.random.default_rng(0)
    x, w = rng.random((4000, 4)), rng.integers(1, 9, 4000).astype(float)
    for k in (4, 64):
        np.testing.assert_array_equal(kmeans_plusplus(x, w, k, np.random.default_rng(k)),
                                      _plain_kmeanspp(x, w, k, np.random.default_rng(k)))
    assert runs == [4000]  # 4000 points, K = 64: the tree; K = 4: the plain loop
    with pytest.raises(ValueError, match="64-bit code"):
        plusplus.tree_layout(x, bits=16)


@pytest.mark.parametrize(("n_colors", "bits"), [(5000, 3), (40_000, 6), (5000, 6), (300, 7)])
def test_cell_means_equal_a_plain_loop(n_colors, bits):
    """The coarse grid's weighted means and weights, whether summed densely over every cell
    (many colours for the grid: 5000 at 3 bits, 40,000 at the race's 6) or over the occupied
    cells (few), equal a plain loop that adds each colour to its cell in order: bit for bit."""
    from streamq.kmeans.codes import cell_means, codes_to_rgb

    rng = np.random.default_rng(n_colors + bits)
    codes = np.unique(rng.integers(0, 1 << 24, size=n_colors))
    counts = rng.integers(1, 1000, size=len(codes)).astype(np.float64)
    x = to_space(codes_to_rgb(codes), "oklab").astype(np.float64)
    means, weight = cell_means(codes, counts, x, bits)
    sums: dict[int, list[float]] = {}
    for c, n, p in zip(codes.tolist(), counts.tolist(), x.tolist(), strict=True):
        r, g, b = c >> 16, (c >> 8) & 255, c & 255
        cell = (r >> (8 - bits)) << (2 * bits) | (g >> (8 - bits)) << bits | (b >> (8 - bits))
        acc = sums.setdefault(cell, [0.0, 0.0, 0.0, 0.0])
        acc[0] += n
        for j in range(3):
            acc[j + 1] += n * p[j]
    cells = sorted(sums)
    expected_w = np.array([sums[c][0] for c in cells])
    expected = np.array([sums[c][1:] for c in cells]) / expected_w[:, None]
    np.testing.assert_array_equal(weight, expected_w)
    np.testing.assert_array_equal(means, expected)
