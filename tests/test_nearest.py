"""Exact nearest centres and the 24-bit label table against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from streamq.colorspace import to_space
from streamq.kmeans.nearest import SORTED_FROM_K, assign
from streamq.kmeans.table import LabelTable


def _nearest(x: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: the first centre of least squared distance (summed in float64)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centers, np.float64)
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


@pytest.mark.parametrize("k", [1, 5, SORTED_FROM_K, 64, 300])
@pytest.mark.parametrize("dim", [1, 3, 7])
def test_assign_equals_numpy_including_ties(k, dim):
    rng = np.random.default_rng(k * 10 + dim)
    # A coarse lattice: many rows sit at equal distance from several centres (and centres
    # repeat), so any tie broken differently from "first centre" would show.
    x = rng.integers(0, 5, (4000, dim)) / 4
    c = rng.integers(0, 5, (k, dim)) / 4
    labels, dist = assign(x, c)
    ref_labels, ref_dist = _nearest(x, c)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [64, 256])
def test_assign_threads_and_continuous_data(k):
    rng = np.random.default_rng(k)
    x = rng.random((150_000, 3)).astype(np.float32)
    c = rng.random((k, 3)).astype(np.float32)
    one, d1 = assign(x, c)
    two, d2 = assign(x, c, n_threads=2)
    ref, _ = _nearest(x[:20_000], c)
    np.testing.assert_array_equal(one[:20_000], ref)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("k", [7, 64, 300])
@pytest.mark.parametrize("space", ["rgb", "oklab"])
def test_label_table_equals_numpy(k, space):
    rng = np.random.default_rng(k)
    rgb = rng.integers(0, 256, (30_000, 3), dtype=np.uint8)
    rgb[10_000:20_000] = rgb[:10_000]  # repeated colours: the second pass reads the table
    centers = to_space(rng.integers(0, 256, (k, 3), dtype=np.uint8), space).astype(np.float64)
    palette = rng.integers(0, 256, (k, 3), dtype=np.uint8)
    table = LabelTable(centers, palette, space)
    ends = np.asarray([5_000, 12_345, 30_000])
    labels, sse, _ = table.labels_sse(rgb, np.uint16, ends)
    ref, _ = _nearest(to_space(rgb, space), centers)
    np.testing.assert_array_equal(labels, ref)
    err = ((rgb.astype(np.int64) - palette[ref].astype(np.int64)) ** 2).sum(1)
    np.testing.assert_array_equal(sse, [err[:5_000].sum(), err[5_000:12_345].sum(), err[12_345:].sum()])
    again, sse2, _ = table.labels_sse(rgb, np.uint16, ends)  # all from the filled table
    np.testing.assert_array_equal(again, labels)
    np.testing.assert_array_equal(sse2, sse)
    lab, per_px = table.labels(rgb)
    np.testing.assert_array_equal(lab, ref)
    np.testing.assert_array_equal(per_px, err)
