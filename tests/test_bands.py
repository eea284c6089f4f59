"""Images over max_pixels read in bands of rows (streamq.bands): a tiled BigTIFF mosaic of
photo crops ingested in bands is the same store content as the same image decoded whole."""

from __future__ import annotations

import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import streamq
from streamq import bands
from streamq.examples import write_mosaic

H, W = 2000, 3000
LIMIT = 1_000_000  # max_pixels for the band path: the mosaic has 6 Mpx


@pytest.fixture(scope="module")
def mosaic_dir(tmp_path_factory):
    """A tiled BigTIFF mosaic of photo crops, a small PNG crop of it, and a PNG over LIMIT."""
    root = tmp_path_factory.mktemp("mosaic")
    write_mosaic(root / "big.tif", H, W, seed=3)
    crop = np.asarray(Image.open(root / "big.tif"))
    Image.fromarray(crop[100:400, 200:700]).save(root / "small.png")
    Image.fromarray(crop[:800, :1500]).save(root / "wide.png")  # 1.2 Mpx: skipped at LIMIT
    return root


@pytest.fixture(scope="module")
def whole_store(mosaic_dir, tmp_path_factory, cluster_address):
    path = str(tmp_path_factory.mktemp("whole") / "s.zarr")
    streamq.ingest(mosaic_dir, path, scheduler=cluster_address, progress=False)
    streamq.fit(path, colors=8, max_steps=10, batch_size=4096, n_init=2, scheduler="threads")
    streamq.quantize(path, scheduler=cluster_address, progress=False, ssim=False)
    return path


def _table(path: str) -> dict[str, list]:
    coll = streamq.open_store(path)
    return {"path": list(coll.paths), "shape": list(coll.shapes)}


def test_band_ingest_equals_whole_decode(mosaic_dir, whole_store, tmp_path, cluster_address):
    banded = str(tmp_path / "b.zarr")
    summary = streamq.ingest(mosaic_dir, banded, scheduler=cluster_address, progress=False,
                             max_pixels=LIMIT, chunk_pixels=65_536)
    # the mosaic is read in bands; the PNG over the limit is skipped as before
    assert [s[0] for s in summary.skipped_first] == ["wide.png"]
    assert "max_pixels=1000000" in summary.skipped_first[0][1]
    tiles = zarr.open(tifffile.imread(mosaic_dir / "big.tif", aszarr=True), mode="r")
    whole = streamq.open_store(whole_store)
    coll = streamq.open_store(banded)
    assert _table(banded)["path"] == ["big.tif", "small.png"]
    assert coll.shapes[0] == (H, W)
    pixels = zarr.open_group(banded, mode="r")["pixels"]
    n = H * W
    for top in range(0, H, 512):  # the source, tile row by tile row
        rows = min(512, H - top)
        got = np.asarray(pixels[top * W:(top + rows) * W]).reshape(rows, W, 3)
        np.testing.assert_array_equal(got, tiles[top:top + rows])
    # byte for byte what the whole decode stored (the PNG, wide.png skipped, follows)
    ref = zarr.open_group(whole_store, mode="r")["pixels"]
    i_small = whole.paths.index("small.png")
    a = int(whole.offsets[i_small])
    np.testing.assert_array_equal(np.asarray(pixels[n:]), np.asarray(ref[a:a + 300 * 500]))
    i_big = whole.paths.index("big.tif")
    b = int(whole.offsets[i_big])
    np.testing.assert_array_equal(np.asarray(pixels[:n]), np.asarray(ref[b:b + n]))
    # quantized with the whole store's palette: the same labels
    streamq.quantize(banded, palette=whole_store, scheduler=cluster_address, progress=False,
                     ssim=False)
    lab = zarr.open_group(banded, mode="r")["quantize/labels"]
    ref_lab = zarr.open_group(whole_store, mode="r")["quantize/labels"]
    np.testing.assert_array_equal(np.asarray(lab[:n]), np.asarray(ref_lab[b:b + n]))


def test_bands_read_only_their_rows(mosaic_dir):
    """A band read holds a few tile rows, never the image: peak allocation well under it."""
    src = str(mosaic_dir / "big.tif")
    ref = np.asarray(Image.open(src))
    tracemalloc.start()
    try:
        got = []
        for top, rgb, alpha in bands.read_rows(src, 700, 1100, False, (255, 255, 255),
                                               band_pixels=100_000):
            assert alpha is None and rgb.shape[0] * W <= 100_000 + W
            np.testing.assert_array_equal(rgb, ref[top:top + rgb.shape[0]])
            got.append(top)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got[0] == 700 and got[-1] < 1100
    assert peak < ref.nbytes / 4, f"peak {peak} bytes for an image of {ref.nbytes}"


def test_large_skip_keeps_the_old_behaviour(mosaic_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(mosaic_dir / "big.tif", src / "big.tif")
    summary = streamq.ingest(src, tmp_path / "s.zarr", scheduler="threads", progress=False,
                             max_pixels=LIMIT, large="skip")
    assert summary.n_images == 0
    assert summary.skipped_first[0][0] == "big.tif"
    assert "max_pixels=1000000" in summary.skipped_first[0][1]


def test_a_tiff_layout_not_read_in_bands_is_skipped_with_why(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = np.zeros((3, 1100, 1000), np.uint8)
    tifffile.imwrite(src / "planar.tif", data, photometric="rgb", planarconfig="separate",
                     tile=(256, 256))
    summary = streamq.ingest(src, tmp_path / "s.zarr", scheduler="threads", progress=False,
                             max_pixels=LIMIT)
    assert summary.n_images == 0
    reason = summary.skipped_first[0][1]
    assert "max_pixels=1000000" in reason and "planar samples cannot be read in bands" in reason


def test_export_leaves_images_over_max_pixels_to_zarr(mosaic_dir, tmp_path, cluster_address):
    """A store whose mosaic was read in bands exports its other images as PNGs and says
    that the mosaic needs --zarr; the Zarr export holds its labels."""
    store = str(tmp_path / "b.zarr")
    streamq.ingest(mosaic_dir, store, scheduler=cluster_address, progress=False,
                   max_pixels=LIMIT, chunk_pixels=65_536)
    streamq.fit(store, colors=4, max_steps=5, batch_size=2048, n_init=1, scheduler="threads")
    streamq.quantize(store, scheduler=cluster_address, progress=False, ssim=False)
    summary = streamq.export(store, tmp_path / "out", scheduler="threads", progress=False)
    assert summary.too_large == [0] and summary.n_images == 1
    assert "1 image(s) over max_pixels not written" in str(summary) and "--zarr" in str(summary)
    assert (tmp_path / "out" / "small.png").is_file()
    assert not list((tmp_path / "out").glob("big*"))
    streamq.export(store, tmp_path / "out.zarr", zarr=True, scheduler="threads", progress=False)
    labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["labels"]
    ref = zarr.open_group(store, mode="r")["quantize/labels"]
    np.testing.assert_array_equal(np.asarray(labels[:H * W]), np.asarray(ref[:H * W]))
