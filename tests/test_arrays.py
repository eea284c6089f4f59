"""Arrays in and out: ``ingest_array`` against a file ingest of the same images, resuming, and
a store's images, labels and quantized pixels as (lazy) arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import png
import pytest
import zarr
from helpers import assert_same_store
from PIL import Image

import streamq
from streamq.errors import ConfigError, StreamQError

SMALL = {"chunk_pixels": 2048, "block_pixels": 1024}  # images straddle shards and tasks


def _crops(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Crops of the bundled photos (real pixels, many colours)."""
    from streamq.examples import source_photos

    photos = list(source_photos().values())
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = int(rng.integers(0, p.shape[0] - h)), int(rng.integers(0, p.shape[1] - w))
        out.append(np.ascontiguousarray(p[y:y + h, x:x + w]))
    return out


def _files(pattern: str, store: str) -> dict[str, bytes]:
    root = Path(store)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob(pattern))
            if p.is_file()}


def _same_data(a: str, b: str) -> None:
    """Same images, pixels (chunk files byte for byte) and colour histogram."""
    assert_same_store(a, b)
    assert _files("pixels/**/*", a) == _files("pixels/**/*", b)
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    for name in ("colors/code", "colors/count", "ingest/tasks/chunk_start"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)


def test_dask_array_equals_ingest_of_png_files(tmp_path, cluster_address):
    import dask.array as da

    images = np.stack(_crops(6, 37, 53, seed=1))
    names = [f"{'ab'[i // 3]}/img_{i}.png" for i in range(len(images))]  # sorted, as listed
    for name, img in zip(names, images, strict=True):
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "src" / name)
    layout = {"chunk_pixels": 1024, "block_pixels": 1024}  # 12 shards, 2 write tasks
    streamq.ingest(tmp_path / "src", tmp_path / "files.zarr", scheduler="threads",
                   progress=False, **layout)
    lazy = da.from_array(images, chunks=(2, 10, 53, 3))  # row blocks: tasks read parts of them
    summary = streamq.ingest_array(lazy, tmp_path / "array.zarr", names=names,
                                   scheduler=cluster_address, progress=False, **layout)
    assert (summary.n_images, summary.n_labels, summary.status) == (6, 2, "ingested")
    _same_data(str(tmp_path / "files.zarr"), str(tmp_path / "array.zarr"))
    tasks = zarr.open_group(str(tmp_path / "array.zarr"), mode="r")["ingest/tasks/chunk_start"]
    assert tasks.shape[0] == 2  # image 4 straddles them: each task reads its rows
    coll = streamq.open_store(tmp_path / "array.zarr")
    assert coll.labels == ["a"] * 3 + ["b"] * 3
    assert coll.modes == ["RGB"] * 6
    info = streamq.collection_info(coll)
    assert info["source"].startswith("Array (6, 37, 53, 3) uint8")
    again = streamq.ingest_array(lazy, tmp_path / "array.zarr", names=names,
                                 scheduler="threads", progress=False, **layout)
    assert again.status == "already complete"


def test_sequence_of_mixed_images_equals_files(tmp_path):
    """Other sizes, 16-bit and alpha: converted as ingest converts such files."""
    rng = np.random.default_rng(3)
    rgb = _crops(3, 41, 29, seed=2) + _crops(2, 23, 60, seed=4)
    rgb16 = rng.integers(0, 65536, size=(19, 31, 3), dtype=np.uint16)
    rgba = np.dstack([rgb[0], rng.integers(0, 256, size=rgb[0].shape[:2], dtype=np.uint8)])
    images = [*rgb, rgb16, rgba]
    src = tmp_path / "src"
    src.mkdir()
    names = [f"{i}.png" for i in range(len(images))]
    for name, img in zip(names, images, strict=True):
        if img.dtype == np.uint16:
            png.from_array(img.reshape(img.shape[0], -1), mode="RGB;16").save(str(src / name))
        else:
            Image.fromarray(img).save(src / name)
    streamq.ingest(src, tmp_path / "files.zarr", scheduler="threads", progress=False, **SMALL)
    streamq.ingest_array(images, tmp_path / "array.zarr", names=names, labels=["src"] * 7,
                         scheduler="threads", progress=False, **SMALL)
    _same_data(str(tmp_path / "files.zarr"), str(tmp_path / "array.zarr"))
    assert streamq.open_store(tmp_path / "array.zarr").modes[-2:] == ["RGB;16", "RGBA"]


def test_pixel_chunks_of_zeros_are_written_and_opaque_alpha_chunks_are_not(tmp_path):
    """Write tasks store every pixel chunk, zeros only or not (Zarr's compare with the fill
    value is left out: ``streamq.store.arrays.every_chunk``), and still skip alpha chunks of
    255 (an opaque image stores no alpha); what is read back is the images either way."""
    black = np.zeros((64, 64, 4), np.uint8)
    black[..., 3] = 255  # opaque black: pixel shards of zeros, alpha shards of 255
    clear = np.dstack([_crops(1, 64, 64, seed=6)[0], np.full((64, 64), 128, np.uint8)])
    path = tmp_path / "a.zarr"
    streamq.ingest_array([black, clear], path, scheduler="sync", progress=False,
                         chunk_pixels=2048, block_pixels=1024)  # 2 shards an image

    def shards(name: str) -> list[int]:
        root = path / name / "c"
        return sorted(int(p.relative_to(root).parts[0]) for p in root.rglob("*") if p.is_file())

    assert shards("pixels") == [0, 1, 2, 3]
    assert shards("alpha") == [2, 3]
    coll = streamq.open_store(path)
    np.testing.assert_array_equal(coll.read(0), black[..., :3])
    np.testing.assert_array_equal(coll.read_alpha(0), black[..., 3])
    np.testing.assert_array_equal(coll.read_alpha(1), clear[..., 3])


class Frames:
    """An array-like that is not NumPy, Dask or Zarr: shape, dtype, slicing, ``__array__``;
    it counts the images it is asked for, and fails on ``fail_at`` (an unreadable source)."""

    def __init__(self, data: np.ndarray, fail_at: int | None = None) -> None:
        self.data, self.fail_at, self.reads = data, fail_at, 0
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        if isinstance(key, tuple) and key[0] == self.fail_at:
            raise OSError(f"frame {key[0]} is unreadable")
        self.reads += 1
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)

    def __dask_tokenize__(self):
        return "frames-v1"


def test_interrupted_ingest_resumes(tmp_path):
    data = np.stack(_crops(20, 30, 40, seed=5))
    layout = {"chunk_pixels": 1024, "block_pixels": 1024}  # 24 shards in 3 write tasks
    broken = Frames(data, fail_at=19)  # in the last task
    with pytest.raises(OSError, match="frame 19 is unreadable"):
        streamq.ingest_array(broken, tmp_path / "a.zarr", scheduler="sync", progress=False,
                             **layout)
    with pytest.raises(StreamQError, match="no finished ingest"):
        streamq.open_store(tmp_path / "a.zarr")
    frames = Frames(data)
    summary = streamq.ingest_array(frames, tmp_path / "a.zarr", scheduler="sync", progress=False,
                                   **layout)
    assert summary.status == "resumed"
    full = Frames(data)
    streamq.ingest_array(full, tmp_path / "b.zarr", scheduler="sync", progress=False, **layout)
    assert zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["ingest/tasks/report"].shape == (3,)
    assert 0 < frames.reads < full.reads / 2  # the finished tasks were not read again
    _same_data(str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"))


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((2, 5, 5, 2), np.uint8), r"has shape \(5, 5, 2\), expected \(H, W, 3\)"),
    (np.zeros((2, 5, 5, 3), np.float32), "has dtype float32, expected uint8 or uint16"),
    (np.zeros((5, 3), np.uint8), r"shape \(5, 3\), expected \(N, H, W, 3\)"),
    ("photos/", "files and folders are ingested by streamq.ingest"),
])
def test_bad_arrays_are_one_line_errors(tmp_path, array, message):
    with pytest.raises(ConfigError, match=message) as exc:
        streamq.ingest_array(array, tmp_path / "x.zarr", scheduler="sync")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "x.zarr").exists()


def test_names_must_be_one_per_image(tmp_path):
    with pytest.raises(ConfigError, match="expected 2 distinct names"):
        streamq.ingest_array(np.zeros((2, 4, 4, 3), np.uint8), tmp_path / "x.zarr",
                             names=["a", "a"], scheduler="sync")


def test_lazy_labels_and_quantized_equal_the_quantize_output(photo_store, cluster_address):
    import dask
    from distributed import Client

    coll = streamq.open_store(photo_store)
    g = zarr.open_group(photo_store, mode="r")
    stored = g["quantize/labels"][:]
    palette = streamq.load_fit(photo_store).palette
    labels = coll.to_dask("labels")
    quantized = coll.to_dask("quantized")
    assert len(labels) == len(coll)
    assert labels[0].dtype == np.uint8
    with Client(cluster_address):  # computed by the worker processes, which read the store
        got_labels, got_quantized = dask.compute(labels, quantized)
    for i in range(len(coll)):
        h, w = coll.shapes[i]
        expect = stored[coll.offsets[i]:coll.offsets[i] + h * w].reshape(h, w)
        np.testing.assert_array_equal(got_labels[i], expect)
        np.testing.assert_array_equal(got_quantized[i], palette[expect])
    i = len(coll) - 1
    np.testing.assert_array_equal(coll.pixel_labels(i), got_labels[i])
    np.testing.assert_array_equal(coll.quantized(i), got_quantized[i])
    np.testing.assert_array_equal(coll.to_dask("pixels")[i].compute(), coll.read(i))
    with pytest.raises(ConfigError, match="stack=True needs images of one shape"):
        coll.to_dask("labels", stack=True)


def test_zarr_array_in_stacked_pixels_out_and_missing_labels(tmp_path):
    data = np.stack(_crops(4, 21, 33, seed=6))
    source = zarr.create_array(str(tmp_path / "source.zarr"), shape=data.shape, dtype="uint8",
                               chunks=(1, 8, 33, 3))
    source[:] = data
    streamq.ingest_array(source, tmp_path / "s.zarr", scheduler="threads", progress=False,
                         **SMALL)
    coll = streamq.open_store(tmp_path / "s.zarr")
    assert coll.paths == ["000000", "000001", "000002", "000003"]  # the array's order
    stacked = coll.to_dask("pixels", stack=True, chunk_pixels=200)
    assert stacked.shape == data.shape
    assert stacked.numblocks[1] > 1
    np.testing.assert_array_equal(stacked.compute(scheduler="sync"), data)
    with pytest.raises(StreamQError, match=r"labels are missing; run `streamq quantize` first"):
        coll.to_dask("labels")
    # an image's own palette (fit --per-image), read through the same collection
    streamq.fit_per_image(tmp_path / "s.zarr", colors=[3], scheduler="threads", progress=False)
    streamq.quantize(tmp_path / "s.zarr", scheduler="threads", progress=False)
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    labels, palettes = g["per_image/k3/labels"][:], g["per_image/k3/palette"][:]
    quantized = coll.to_dask("quantized", per_image=3)
    for i in range(len(coll)):
        expect = labels[coll.offsets[i]:coll.offsets[i] + 21 * 33].reshape(21, 33)
        np.testing.assert_array_equal(coll.pixel_labels(i, per_image=3), expect)
        np.testing.assert_array_equal(quantized[i].compute(scheduler="sync"), palettes[i][expect])


def test_xarray_data_arrays_equal_the_arrays_inside_and_name_the_images(tmp_path):
    """An xarray ``DataArray`` (over NumPy or over Dask) ingests as the array it wraps; the
    coordinate on its first dimension names the images, as ``names=`` would."""
    import dask.array as da
    import xarray as xr

    data = np.stack(_crops(5, 23, 31, seed=8))
    names = [f"scene/{c}" for c in "vwxyz"]
    dims = ("image", "y", "x", "band")
    streamq.ingest_array(data, tmp_path / "plain.zarr", names=names, scheduler="threads",
                         progress=False, **SMALL)
    for kind, values in (("numpy", data), ("dask", da.from_array(data, chunks=(2, 9, 31, 3)))):
        wrapped = xr.DataArray(values, dims=dims, coords={"image": names})
        out = str(tmp_path / f"{kind}.zarr")
        streamq.ingest_array(wrapped, out, scheduler="threads", progress=False, **SMALL)
        _same_data(str(tmp_path / "plain.zarr"), out)
        assert streamq.open_store(out).paths == names
    # without a coordinate: numbered, as for a plain array
    bare = xr.DataArray(data, dims=dims)
    streamq.ingest_array(bare, tmp_path / "bare.zarr", scheduler="threads", progress=False,
                         **SMALL)
    assert streamq.open_store(tmp_path / "bare.zarr").paths == [f"{i:06d}" for i in range(5)]
