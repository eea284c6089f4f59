"""The colour histogram: the counting kernel, ingest's per-task counts and their sum, resumes,
and the one pass for stores ingested before ingest counted colours."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import zarr
from helpers import assert_histogram, store_bincount

import streamq
from streamq.kmeans import histogram as kernel
from streamq.kmeans.histogram import ColorTotals, count_colors
from streamq.store import Store
from streamq.store.histogram import histogram, load_histogram


def _unique(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: numpy's unique over the packed codes."""
    rgb = rgb.astype(np.int64)
    return np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2], return_counts=True)


# -- the kernel --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 200_000])
def test_kernel_equals_unique_on_random_pixels(n):
    rng = np.random.default_rng(n)
    for high in (4, 256):  # many repeats, then nearly all distinct
        rgb = rng.integers(0, high, size=(n, 3), dtype=np.uint8)
        codes, counts = count_colors(rgb)
        ref_codes, ref_counts = _unique(rgb)
        np.testing.assert_array_equal(codes, ref_codes)
        np.testing.assert_array_equal(counts, ref_counts)
        assert codes.dtype == counts.dtype == np.int64


def test_kernel_counts_only_the_given_runs():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 8, size=(5000, 3), dtype=np.uint8)
    starts, stops = np.array([0, 100, 100, 4000]), np.array([50, 100, 3000, 5000])
    codes, counts = count_colors(rgb, starts, stops)
    ref = _unique(np.concatenate([rgb[a:b] for a, b in zip(starts, stops, strict=True)]))
    np.testing.assert_array_equal(codes, ref[0])
    np.testing.assert_array_equal(counts, ref[1])
    empty = count_colors(rgb, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(empty[0]) == len(empty[1]) == 0
    with pytest.raises(ValueError, match="start <= stop"):
        count_colors(rgb, [10], [5001])
    with pytest.raises(ValueError, match="expected"):
        count_colors(rgb[:, :2])


def test_kernel_equals_unique_on_a_photo():
    from sklearn.datasets import load_sample_image

    rgb = load_sample_image("china.jpg").reshape(-1, 3)
    codes, counts = count_colors(rgb)
    ref_codes, ref_counts = _unique(rgb)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(counts, ref_counts)
    again = count_colors(rgb[::2])  # the reused table was left clean
    np.testing.assert_array_equal(again[1], _unique(rgb[::2])[1])


def test_kernel_counts_past_one_byte_per_colour():
    """Counters are one byte: each wrap past 255 is an event, added back exactly."""
    sizes = {0: 1, 1: 254, 2: 255, 3: 256, 0x123456: 510, 0xFFFFFF: 70_001}
    codes = np.repeat(np.array(list(sizes), np.int64), list(sizes.values()))
    rng = np.random.default_rng(5)
    rgb = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8)
    got_codes, got_counts = count_colors(rgb[rng.permutation(len(rgb))])
    np.testing.assert_array_equal(got_codes, sorted(sizes))
    np.testing.assert_array_equal(got_counts, [sizes[c] for c in sorted(sizes)])


def test_kernel_recovers_from_an_interrupted_call(monkeypatch):
    rgb = np.random.default_rng(2).integers(0, 256, size=(10_000, 3), dtype=np.uint8)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(kernel, "_take", interrupted)
    with pytest.raises(KeyboardInterrupt):
        count_colors(rgb)  # counted, never read out nor zeroed
    monkeypatch.undo()
    np.testing.assert_array_equal(count_colors(rgb[:10])[1], _unique(rgb[:10])[1])


def test_kernel_from_two_threads_at_once():
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(n).reshape(-1, 3) for n in ("china.jpg", "flower.jpg")]
    refs = [_unique(p) for p in photos]
    start = threading.Barrier(2)
    errors: list[str] = []

    def work(i: int) -> None:
        start.wait()
        for _ in range(3):
            codes, counts = count_colors(photos[i])
            if not (np.array_equal(codes, refs[i][0]) and np.array_equal(counts, refs[i][1])):
                errors.append(f"thread {i}: wrong counts")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("dense_at", [ColorTotals.DENSE_AT, 10_000, 1])
def test_color_totals_sum_parts_exactly(dense_at, monkeypatch):
    """Kept sparse, turned dense part way through, or dense from the first part: the same
    exact sums (also of parts with repeated codes, against ``np.add.at``)."""
    monkeypatch.setattr(ColorTotals, "DENSE_AT", dense_at)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(30_000, 3), dtype=np.uint8) // 16
    repeated = ColorTotals()
    codes = rng.integers(0, 1 << 24, 3000)
    codes[1000:2000] = codes[:1000]  # a part's codes need not be distinct or sorted
    counts = rng.integers(1, 50, 3000)
    for part in (slice(0, 1500), slice(1500, 3000)):
        repeated.add(codes[part], counts[part])
    expected = np.zeros(1 << 24, np.int64)
    np.add.at(expected, codes, counts)
    assert repeated.result()[0].tolist() == np.flatnonzero(expected).tolist()
    assert repeated.result()[1].tolist() == expected[np.flatnonzero(expected)].tolist()
    totals = ColorTotals()
    assert len(totals.result()[0]) == 0
    for a in range(0, len(rgb), 7000):
        totals.add(*count_colors(rgb[a:a + 7000]))
    codes, counts = totals.result()
    np.testing.assert_array_equal(codes, _unique(rgb)[0])
    np.testing.assert_array_equal(counts, _unique(rgb)[1])
    with pytest.raises(ValueError, match="colour codes"):
        totals.add(np.array([1 << 24]), np.array([1]))


# -- ingest writes it ---------------------------------------------------------------------------
def test_ingest_histogram_equals_bincount_of_stored_pixels(faces_store):
    assert_histogram(faces_store)
    st = Store.open(faces_store)
    reports = [json.loads(r) for r in st.task_reports()]
    assert len(reports) > 1
    assert st.group["ingest/colors"].shape == (len(reports), 2, 1 << 24)
    assert sum(r["colors"]["pixels"] for r in reports) == streamq.open_store(faces_store).n_pixels


@pytest.fixture(scope="module")
def odd_store(odd_dir, tmp_path_factory, cluster_address):
    path = tmp_path_factory.mktemp("odd-hist") / "odd.zarr"
    streamq.ingest(odd_dir[0], path, max_pixels=50_000, chunk_pixels=4096,
                   scheduler=cluster_address, progress=False)
    return path


def test_ingest_histogram_leaves_out_failed_images(odd_store):
    coll = streamq.open_store(odd_store)
    failed = [s for s in coll.skipped if s.reason.startswith("cannot decode")]
    assert failed  # images planned from their header, then lost: zero gaps in pixels
    assert coll.store.pixels().shape[0] > coll.n_pixels
    assert_histogram(odd_store)


# -- resumes --------------------------------------------------------------------------------
# A kill -9 mid-ingest and the same command again (the rerun sums the rows of the killed run's
# tasks with the counts of its own): test_resume.test_kill_during_ingest_then_rerun, which
# ends with assert_histogram on both schedulers.


def test_interrupted_merge_is_redone(faces_store, faces_dir, tmp_path, cluster_address):
    """The state a kill during the merge leaves: tasks all recorded, the table half written."""
    store = tmp_path / "merge.zarr"
    shutil.copytree(faces_store, store)
    g = zarr.open_group(str(store), mode="r+")
    g.attrs["ingest"] = {**g.attrs["ingest"], "state": "planned"}
    g.attrs["colors"] = {}
    zarr.create_array(str(store), name="colors/count", shape=(3,), dtype="int64", overwrite=True)
    summary = streamq.ingest(faces_dir, store, chunk_pixels=20_000, scheduler=cluster_address,
                             progress=False)
    assert summary.status == "resumed"
    assert "merging colour counts" in summary.timings
    assert_histogram(store)


# -- stores without one ----------------------------------------------------------------------
class NoTasks:
    """A runner that fails if anything is submitted: proves no pass over the pixels runs."""

    def submit(self, *args, **kwargs):
        raise AssertionError("the histogram was counted from the pixels")


def as_old_store(src, path) -> None:
    """Copy store ``src`` to ``path`` as ingest left stores before it counted colours: no
    ``ingest/colors`` rows, no ``colors`` table nor attribute, records without ``colors``."""
    shutil.copytree(src, path)
    g = zarr.open_group(str(path), mode="r+")
    del g["colors"], g["ingest/colors"]
    del g.attrs["colors"]
    reports = g["ingest/tasks/report"]
    for t, text in enumerate(reports[:]):
        reports[t] = json.dumps({k: v for k, v in json.loads(text).items() if k != "colors"},
                                sort_keys=True)


def _table_files(path) -> dict[str, int]:
    """Modification time (ns) of every file of the ``colors`` table."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in (path / "colors").rglob("*")
            if p.is_file()}


def test_old_store_gets_one_pass_once(faces_store, tmp_path, cluster_address, caplog):
    """The first fit of an old store counts every stored pixel in one pass (an OKLab fit: the
    distinct colours are transformed, not the pixels); the second fit reads the table."""
    path = tmp_path / "old.zarr"
    as_old_store(faces_store, path)
    assert load_histogram(str(path)) is None
    kw = dict(algorithm="lloyd", color_space="oklab", scheduler=cluster_address, progress=False)
    with caplog.at_level("INFO", logger="streamq.store.histogram"):
        first = streamq.fit(path, colors=6, **kw)
    assert_histogram(path, computed="pass")
    section = zarr.open_group(str(path), mode="r").attrs["colors"]
    files = _table_files(path)
    assert files
    with caplog.at_level("INFO", logger="streamq.store.histogram"):
        second = streamq.fit(path, colors=7, overwrite=True, **kw)
    passes = [r for r in caplog.records if "counting the colours of every pixel" in r.message]
    assert len(passes) == 1  # the first fit's pass, and no other
    assert zarr.open_group(str(path), mode="r").attrs["colors"] == section
    assert _table_files(path) == files  # the table was not rewritten
    n_pixels = streamq.open_store(path).n_pixels
    assert first.counts.sum() == second.counts.sum() == n_pixels  # every pixel, from the table
    assert not Store.open(path).has("ingest/colors")


def test_missing_table_is_summed_from_task_counts(faces_store, tmp_path):
    path = tmp_path / "parts.zarr"
    shutil.copytree(faces_store, path)
    g = zarr.open_group(str(path), mode="r+")
    del g["colors"], g.attrs["colors"]
    codes, counts = histogram(NoTasks(), Store.open(path, mode="r+"))
    ref = store_bincount(path)
    np.testing.assert_array_equal(codes, ref[0])
    np.testing.assert_array_equal(counts, ref[1])
    assert_histogram(path)
