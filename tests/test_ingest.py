"""Ingest on a real Dask cluster: exact pixels, layout, listing, reruns and refusals."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import zarr
from conftest import pillow_rgb
from helpers import assert_same_store
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import streamq
from streamq.errors import ConfigError, StoreLayoutError, StoreMismatchError
from streamq.ingest.local import list_sources
from streamq.ingest.plan import plan_tasks


def test_every_image_equals_pillow_decode(faces_store, faces_dir):
    coll = streamq.open_store(faces_store)
    files = sorted(p.relative_to(faces_dir).as_posix() for p in faces_dir.rglob("*.jpg"))
    assert coll.paths == files  # sorted relative paths: stable ids
    assert len(coll) == 48
    assert not coll.skipped
    for i, rel in enumerate(coll.paths):
        np.testing.assert_array_equal(coll.read(i), pillow_rgb(faces_dir / rel))
    assert coll.labels == [p.split("/")[0] for p in coll.paths]


def test_flat_layout_has_no_padding_and_images_straddle_chunks(faces_store):
    coll = streamq.open_store(faces_store)
    pixels = zarr.open_array(f"{faces_store}/pixels", mode="r")
    assert pixels.shape == (coll.n_pixels, 3)  # no padding at all
    assert pixels.chunks == (20_000, 3)
    ends = coll.offsets + coll.heights * coll.widths
    straddling = (coll.offsets // 20_000) != ((ends - 1) // 20_000)
    assert straddling.sum() >= 3  # the test exercises images split across chunks and tasks
    np.testing.assert_array_equal(coll.offsets[1:], ends[:-1])


def test_tasks_partition_chunks(faces_store):
    g = zarr.open_group(faces_store, mode="r")
    starts, stops = g["ingest/tasks/chunk_start"][:], g["ingest/tasks/chunk_stop"][:]
    n_chunks = -(-g["pixels"].shape[0] // 20_000)
    assert starts[0] == 0
    assert stops[-1] == n_chunks
    np.testing.assert_array_equal(starts[1:], stops[:-1])
    assert len(starts) > 1


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=60), chunk=st.integers(50, 3000))
def test_plan_tasks_properties(sizes, chunk):
    sizes = np.asarray(sizes, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    starts, stops = plan_tasks(offsets, sizes, n, chunk, max_chunks=4)
    n_chunks = -(-n // chunk)
    if n == 0:
        assert len(starts) == 0
        return
    # a partition of the chunks into runs of 1..4
    assert starts[0] == 0
    assert stops[-1] == n_chunks
    assert (starts[1:] == stops[:-1]).all()
    assert ((stops - starts) >= 1).all()
    assert ((stops - starts) <= 4).all()
    # a boundary inside a task is straddled by an image larger than chunk/8
    ends = offsets + sizes
    for a, b in zip(starts, stops, strict=True):
        for c in range(a + 1, b):
            x = c * chunk
            big = [(o < x < e) and s > chunk // 8 for o, e, s in zip(offsets, ends, sizes, strict=True)]
            assert any(big)


def test_rerun_is_noop(faces_store, faces_dir, cluster_address):
    before = zarr.open_group(faces_store, mode="r").attrs.asdict()
    summary = streamq.ingest(faces_dir, faces_store, chunk_pixels=20_000,
                             scheduler=cluster_address, progress=False)
    assert summary.status == "already complete"
    assert zarr.open_group(faces_store, mode="r").attrs.asdict() == before


def test_other_settings_or_source_refused(faces_store, faces_dir, odd_dir, tmp_path):
    with pytest.raises(StoreMismatchError, match="other settings"):
        streamq.ingest(faces_dir, faces_store, chunk_pixels=30_000, scheduler="sync")
    with pytest.raises(StoreMismatchError, match="other inputs"):
        streamq.ingest(odd_dir[0], faces_store, chunk_pixels=20_000, scheduler="sync")


def test_overwrite_replaces(faces_dir, tmp_path):
    path = tmp_path / "s.zarr"
    streamq.ingest(faces_dir, path, scheduler="sync", chunk_pixels=50_000, progress=False)
    s = streamq.ingest(faces_dir, path, scheduler="sync", chunk_pixels=30_000,
                       overwrite=True, progress=False)
    assert s.status == "ingested"
    assert zarr.open_array(f"{path}/pixels", mode="r").chunks == (30_000, 3)


def test_schedulers_give_identical_stores(faces_store, faces_dir, tmp_path):
    for sched in ("threads", "sync"):
        path = tmp_path / f"{sched}.zarr"
        streamq.ingest(faces_dir, path, chunk_pixels=20_000, scheduler=sched, progress=False)
        assert_same_store(path, faces_store)


def test_glob_and_list_sources(faces_dir, tmp_path):
    root, rel, missing = list_sources(str(faces_dir / "*" / "*_000[12].jpg"))
    assert root == str(faces_dir)
    assert rel
    assert all(r.split("_")[-1] in ("0001.jpg", "0002.jpg") for r in rel)
    listing = tmp_path / "list.txt"
    chosen = sorted(p.relative_to(faces_dir).as_posix() for p in faces_dir.rglob("*.jpg"))[::10]
    listing.write_text("# chosen images\n" + "\n".join(str(faces_dir / c) for c in chosen)
                       + "\n\nmissing/nope.jpg\n")
    path = tmp_path / "l.zarr"
    streamq.ingest(listing, path, scheduler="sync", progress=False)
    coll = streamq.open_store(path)
    assert coll.paths == chosen  # common root of the listed files is the faces folder
    assert coll.labels == [c.split("/")[0] for c in chosen]
    assert [(s.path, s.reason) for s in coll.skipped] == [("missing/nope.jpg", "listed file does not exist")]


def test_missing_source_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        streamq.ingest(tmp_path / "nope", tmp_path / "s.zarr", scheduler="sync")
    assert "\n" not in str(err.value)


def test_open_store_rejects_non_stores_and_other_versions(faces_store, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreLayoutError, match="not a streamq store"):
        streamq.open_store(tmp_path / "plain")
    with pytest.raises(StoreLayoutError, match="does not exist"):
        streamq.open_store(tmp_path / "missing")
    zarr.open_group(str(tmp_path / "z.zarr"), mode="w")
    with pytest.raises(StoreLayoutError, match="not a streamq store"):
        streamq.open_store(tmp_path / "z.zarr")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(faces_store, copy)
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["streamq"] = {"format_version": 99}
    with pytest.raises(StoreLayoutError, match="format_version 99"):
        streamq.open_store(copy)


def test_collection_api(faces_store):
    coll = streamq.open_store(faces_store)
    h, w = coll.shapes[3]
    assert coll.read(3).shape == (h, w, 3)
    assert coll.read(-1).shape[2] == 3
    with pytest.raises(IndexError):
        coll.read(len(coll))
    assert "48 images" in repr(coll)


def test_stale_partial_files_are_removed_on_write_open(faces_store, tmp_path):
    from streamq.store import Store

    copy = tmp_path / "p.zarr"
    shutil.copytree(faces_store, copy)
    junk = copy / "zarr.abc123.partial"
    junk.write_bytes(b"half a write")
    fresh = copy / "zarr.def456.partial"  # may be a write in flight: kept
    fresh.write_bytes(b"in flight")
    os.utime(junk, (time.time() - 3600, time.time() - 3600))
    Store.open(copy)  # read-only: leaves it
    assert junk.exists()
    Store.open(copy, mode="r+")
    assert not junk.exists()
    assert fresh.exists()


def test_sharded_layout_reads_blocks(faces_dir, tmp_path):
    """Shards of chunk_pixels (one writer each) made of block_pixels inner chunks."""
    path = tmp_path / "sharded.zarr"
    streamq.ingest(faces_dir, path, chunk_pixels=65_536, block_pixels=16_384, scheduler="threads",
                   progress=False)
    px = zarr.open_array(f"{path}/pixels", mode="r")
    assert px.shards == (65_536, 3)
    assert px.chunks == (16_384, 3)
    coll = streamq.open_store(path)
    for i in range(len(coll)):
        np.testing.assert_array_equal(coll.read(i), pillow_rgb(faces_dir / coll.paths[i]))
    streamq.fit(str(path), colors=4, max_steps=10, scheduler="threads")
    streamq.quantize(str(path), scheduler="threads")
    labels = zarr.open_array(f"{path}/quantize/labels", mode="r")
    assert labels.shards == (65_536,)
    assert labels.chunks == (16_384,)


def test_scan_results_cross_to_the_client_as_text_unchanged(tmp_path):
    """A scan task sends its headers as one JSON text (a list of tuples costs Dask ~16 ms a
    task to send); read back they equal the task's own list: sizes, modes, alpha, the fifth
    element of a PNG read in strips, and skip reasons, non-ASCII ones too."""
    from PIL import Image

    from streamq.config import RetryConfig
    from streamq.ingest.scan import _from_text, _scan_batch, _scan_batch_text
    from streamq.ingest.sources import SourceRoot
    from streamq.names import stored_name

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "café.jpg").write_bytes(b"not an image")
    names = [stored_name(n) for n in ("a.jpg", "big.png", "café.jpg", "grey.png")]
    args = (SourceRoot(stored_name(str(tmp_path))), names, 1000, RetryConfig(), [None] * 4)
    direct = _scan_batch(args)
    assert len(direct[1]) == 5  # read in strips
    assert isinstance(direct[2], str)  # skipped
    assert _from_text(_scan_batch_text(args)) == direct


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.isdir("/proc/self/fd"),
                    reason="a hint this platform lacks (or no /proc to name a descriptor's file)")
def test_files_are_asked_for_ahead_of_their_reads(tmp_path, monkeypatch):
    """The header scan and the write tasks ask the kernel to read local files ahead
    (``posix_fadvise(WILLNEED)``): the scan a whole batch's first blocks before its first
    header; a write task, in order, at least the next file and files up to the budget ahead
    of each read. A missing file, a folder or a FIFO is left to its read."""
    from streamq.ingest import sources

    tmp_path = type(tmp_path)(os.path.realpath(tmp_path))  # as /proc/self/fd names it
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(b"x" * 1000)
        paths.append(str(p))
    os.mkfifo(tmp_path / "fifo.jpg")
    events: list[tuple[str, ...]] = []
    real_advise = os.posix_fadvise

    def advise(fd, offset, length, advice):
        events.append(("advise", os.readlink(f"/proc/self/fd/{fd}"), str(length), str(advice)))
        return real_advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    odd = [str(tmp_path / "missing.jpg"), str(tmp_path), str(tmp_path / "fifo.jpg")]
    assert sources.will_need([*paths[:2], *odd], 123) == [1000, 1000, 0, 0, 0]
    assert [e[2:] for e in events] == [("123", str(os.POSIX_FADV_WILLNEED))] * 2

    def asked() -> list[str]:
        return [e[1] for e in events if e[0] == "advise"]

    for budget, ahead in ((2500, 3), (0, 2)):  # 2,500 bytes: this file and 2 more; 0: the next
        events.clear()
        seen = []
        for i, path in enumerate(sources._read_ahead(paths, budget=budget)):
            seen.append(path)
            assert asked() == paths[:min(len(paths), i + ahead)]
        assert seen == paths

    # the scan: every header of the batch asked for (its first block) before the first read
    events.clear()
    real_header = sources.read_header
    monkeypatch.setattr(sources, "read_header", lambda path, mp: (
        events.append(("read", path)), real_header(path, mp))[1])
    root = sources.SourceRoot(str(tmp_path))
    names = [os.path.basename(p) for p in paths[:4]]
    root.headers(names, [None] * 4, 10**6, None)
    assert events[:4] == [("advise", p, str(sources.HEADER_BLOCK), str(os.POSIX_FADV_WILLNEED))
                          for p in paths[:4]]
    assert [e[1] for e in events[4:]] == paths[:4]
    assert all(e[0] == "read" for e in events[4:])


def test_a_missing_file_is_skipped_with_read_ahead(tmp_path):
    """A file that disappears between the listing and its read is a skip with its reason: the
    read-ahead's hint on it raises nothing."""
    from streamq.config import RetryConfig
    from streamq.ingest.sources import SourceRoot

    img = tmp_path / "a.png"
    Image.new("RGB", (4, 3), (10, 20, 30)).save(img)
    got = list(SourceRoot(str(tmp_path)).pixels(["a.png", "gone.png"], 10**6, (0, 0, 0),
                                                  RetryConfig(attempts=1)))
    assert got[0].shape == (3, 4, 3)
    assert got[1] == "cannot read file: No such file or directory"
