"""Images over max_pixels read in bands of rows (streamq.ingest.bands): a tiled BigTIFF mosaic of
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
from streamq.examples import write_mosaic
from streamq.ingest import bands

H, W = 1200, 1700
LIMIT = 500_000  # max_pixels for the band path: the mosaic has 2 Mpx
PALETTE = ["#000000", "#ffffff", "#808080", "#c04030", "#30a050", "#3050c0", "#e0c060",
           "#604020"]


@pytest.fixture(scope="module")
def mosaic_dir(tmp_path_factory):
    """A tiled BigTIFF mosaic of photo crops, a small PNG crop of it, and a PNG over LIMIT."""
    root = tmp_path_factory.mktemp("mosaic")
    write_mosaic(root / "big.tif", H, W, seed=3)
    with Image.open(root / "big.tif") as im:
        crop = np.asarray(im)
    Image.fromarray(crop[100:400, 200:700]).save(root / "small.png")
    Image.fromarray(crop[:500, :1100]).save(root / "wide.png")  # 0.55 Mpx: skipped at LIMIT
    (root.parent / "palette.hex").write_text("\n".join(PALETTE) + "\n")
    return root


@pytest.fixture(scope="module")
def whole_store(mosaic_dir, tmp_path_factory, cluster_address):
    path = str(tmp_path_factory.mktemp("whole") / "s.zarr")
    streamq.ingest(mosaic_dir, path, scheduler=cluster_address, progress=False)
    streamq.quantize(path, palette=str(mosaic_dir.parent / "palette.hex"),
                     scheduler=cluster_address, progress=False, ssim=False)
    return path


@pytest.fixture(scope="module")
def banded(mosaic_dir, tmp_path_factory, cluster_address):
    """The same folder ingested with the mosaic over max_pixels (small shards: the mosaic
    spans many write tasks), quantized with the same palette."""
    path = str(tmp_path_factory.mktemp("banded") / "b.zarr")
    summary = streamq.ingest(mosaic_dir, path, scheduler=cluster_address, progress=False,
                             max_pixels=LIMIT, chunk_pixels=65_536)
    streamq.quantize(path, palette=str(mosaic_dir.parent / "palette.hex"),
                     scheduler=cluster_address, progress=False, ssim=False)
    return path, summary


def test_band_ingest_equals_whole_decode(mosaic_dir, whole_store, banded, request):
    banded, summary = banded
    # the mosaic is read in bands; the PNG over the limit is skipped as before
    assert [s[0] for s in summary.skipped_first] == ["wide.png"]
    assert "max_pixels=500000" in summary.skipped_first[0][1]
    tiff_store = tifffile.imread(mosaic_dir / "big.tif", aszarr=True)
    request.addfinalizer(tiff_store.close)  # the store holds the file open
    tiles = zarr.open(tiff_store, mode="r")
    whole = streamq.open_store(whole_store)
    coll = streamq.open_store(banded)
    assert list(coll.paths) == ["big.tif", "small.png"]
    assert coll.shapes[0] == (H, W)
    pixels = zarr.open_group(banded, mode="r")["pixels"]
    n = H * W
    for top in range(0, H, 512):  # the source, tile row by tile row
        rows = min(512, H - top)
        got = np.asarray(pixels[top * W:(top + rows) * W]).reshape(rows, W, 3)
        np.testing.assert_array_equal(got, tiles[top:top + rows])
    # byte for byte what the whole decode stored (the PNG, wide.png skipped, follows)
    ref = zarr.open_group(whole_store, mode="r")["pixels"]
    a = int(whole.offsets[whole.paths.index("small.png")])
    np.testing.assert_array_equal(np.asarray(pixels[n:]), np.asarray(ref[a:a + 300 * 500]))
    b = int(whole.offsets[whole.paths.index("big.tif")])
    np.testing.assert_array_equal(np.asarray(pixels[:n]), np.asarray(ref[b:b + n]))
    # quantized with the same palette: the same labels
    lab = zarr.open_group(banded, mode="r")["quantize/labels"]
    ref_lab = zarr.open_group(whole_store, mode="r")["quantize/labels"]
    np.testing.assert_array_equal(np.asarray(lab[:n]), np.asarray(ref_lab[b:b + n]))


def test_bands_read_only_their_rows(mosaic_dir, tmp_path):
    """A band read holds a few tile rows, never the image: peak allocation well under it."""
    tall = np.vstack([np.asarray(Image.open(mosaic_dir / "big.tif"))[:, :600]] * 3)
    src = str(tmp_path / "tall.tif")
    tifffile.imwrite(src, tall, photometric="rgb", tile=(64, 64), compression="zlib")
    with bands.tiff_rows(src) as rows:  # imports done before measuring
        next(bands.read_rows(rows, 0, 1, False, (255, 255, 255)))
    tracemalloc.start()
    try:
        got = []
        with bands.tiff_rows(src) as rows:
            for top, rgb, alpha in bands.read_rows(rows, 500, 3000, False, (255, 255, 255),
                                                   band_pixels=30_000):
                assert alpha is None
                assert rgb.shape[0] * 600 <= 30_000
                np.testing.assert_array_equal(rgb, tall[top:top + rgb.shape[0]])
                got.append(top + rgb.shape[0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got[-1] == 3000
    assert peak < tall.nbytes / 6, f"peak {peak} bytes for an image of {tall.nbytes}"


def test_large_skip_keeps_the_old_behaviour(mosaic_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(mosaic_dir / "big.tif", src / "big.tif")
    summary = streamq.ingest(src, tmp_path / "s.zarr", scheduler="threads", progress=False,
                             max_pixels=LIMIT, large="skip")
    assert summary.n_images == 0
    assert summary.skipped_first[0][0] == "big.tif"
    assert "max_pixels=500000" in summary.skipped_first[0][1]


def test_a_tiff_layout_not_read_in_bands_is_skipped_with_why(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = np.zeros((3, 600, 1000), np.uint8)
    tifffile.imwrite(src / "planar.tif", data, photometric="rgb", planarconfig="separate",
                     tile=(256, 256))
    summary = streamq.ingest(src, tmp_path / "s.zarr", scheduler="threads", progress=False,
                             max_pixels=LIMIT)
    assert summary.n_images == 0
    reason = summary.skipped_first[0][1]
    assert "max_pixels=500000" in reason
    assert "planar samples cannot be read in bands" in reason


def test_export_leaves_images_over_max_pixels_to_zarr(banded, tmp_path):
    """A store whose mosaic was read in bands exports its other images as PNGs and says
    that the mosaic needs --zarr; the Zarr export holds its labels."""
    store = banded[0]
    summary = streamq.export(store, tmp_path / "out", scheduler="threads", progress=False)
    assert summary.too_large == [0]
    assert summary.n_images == 1
    assert "1 image(s) over max_pixels not written" in str(summary)
    assert "--zarr" in str(summary)
    assert (tmp_path / "out" / "small.png").is_file()
    assert not list((tmp_path / "out").glob("big*"))
    streamq.export(store, tmp_path / "out.zarr", zarr=True, scheduler="threads", progress=False)
    labels = zarr.open_group(tmp_path / "out.zarr", mode="r")["labels"]
    ref = zarr.open_group(store, mode="r")["quantize/labels"]
    np.testing.assert_array_equal(np.asarray(labels[:H * W]), np.asarray(ref[:H * W]))


def test_cli_large_skip(mosaic_dir, tmp_path):
    import subprocess

    from helpers import streamq_cmd

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(mosaic_dir / "big.tif", src / "big.tif")
    out = subprocess.run(streamq_cmd("ingest", str(src), str(tmp_path / "s.zarr"), "--scheduler",
                                     "threads", "--max-pixels", str(LIMIT), "--large", "skip",
                                     "--json"), capture_output=True, text=True, check=True)
    assert '"n_skipped": 1' in out.stdout
