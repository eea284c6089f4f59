"""Images over max_pixels read in bands of rows (streamq.ingest.bands): a tiled BigTIFF mosaic of
photo crops ingested in bands is the same store content as the same image decoded whole."""

from __future__ import annotations

import io
import shutil
import tracemalloc

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

import streamq
from streamq.examples import write_mosaic
from streamq.export import tiff
from streamq.ingest import bands

H, W = 1200, 1700
LIMIT = 500_000  # max_pixels for the band path: the mosaic has 2 Mpx
PALETTE = ["#000000", "#ffffff", "#808080", "#c04030", "#30a050", "#3050c0", "#e0c060",
           "#604020"]


@pytest.fixture(scope="module")
def mosaic_dir(tmp_path_factory):
    """A tiled BigTIFF mosaic of photo crops, a small PNG crop of it, and a JPEG over LIMIT."""
    root = tmp_path_factory.mktemp("mosaic")
    write_mosaic(root / "big.tif", H, W, seed=3)
    with Image.open(root / "big.tif") as im:
        crop = np.asarray(im)
    Image.fromarray(crop[100:400, 200:700]).save(root / "small.png")
    # 0.55 Mpx: skipped at LIMIT (a JPEG: Pillow decodes it whole; PNGs: tests/test_png_strips.py)
    Image.fromarray(crop[:500, :1100]).save(root / "wide.jpg", quality=90)
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
    # the mosaic is read in bands; the JPEG over the limit is skipped as before
    assert [s[0] for s in summary.skipped_first] == ["wide.jpg"]
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
    # byte for byte what the whole decode stored (the PNG, wide.jpg skipped, follows)
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


def _labels_and_palette(store, per_image=None):
    """The mosaic's labels ``(H, W)`` and palette straight from the store's arrays."""
    g = zarr.open_group(store, mode="r")
    if per_image is None:
        lab = g["quantize/labels"]
        pal = np.stack([np.asarray(g[f"fit/palette/{c}"]) for c in "rgb"], axis=1)
    else:
        lab = g[f"per_image/k{per_image}/labels"]
        pal = np.asarray(g[f"per_image/k{per_image}/palette"][0])
    return np.asarray(lab[:H * W]).reshape(H, W), pal.astype(np.uint8)


def test_export_writes_images_over_max_pixels_as_tiled_bigtiff(banded, whole_store, tmp_path):
    """The mosaic read in bands is exported as a tiled palette BigTIFF whose pixels are those
    of the PNG the same image gives when under the limit; a rerun writes nothing."""
    store = banded[0]
    out = tmp_path / "out"
    summary = streamq.export(store, out, scheduler="threads", progress=False)
    assert (summary.too_large, summary.tiled) == ([], [0])
    assert (summary.n_images, summary.n_written) == (2, 2)
    assert "1 over max_pixels as tiled BigTIFF" in str(summary)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["big.tif", "small.png"]
    labels, palette = _labels_and_palette(store)
    with tifffile.TiffFile(out / "big.tif") as tf:
        page = tf.pages[0]
        assert tf.is_bigtiff
        assert page.is_tiled
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tilelength * W <= tiff.BAND_PIXELS  # a row of tiles is at most a band
        got = page.asarray()
        colormap = page.colormap
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_array_equal(colormap[:, :len(palette)].T, palette.astype(np.uint16) * 257)
    # the independent reference: Pillow's PNG of the same image, exported whole (under the
    # limit in the store ingested without one), against the TIFF as Pillow reads it
    whole = streamq.export(whole_store, tmp_path / "whole", scheduler="threads", progress=False)
    assert whole.tiled == []
    with Image.open(tmp_path / "whole" / "big.png") as png, Image.open(out / "big.tif") as tif:
        assert tif.mode == "P"
        np.testing.assert_array_equal(np.asarray(tif.convert("RGB")),
                                      np.asarray(png.convert("RGB")))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("big*")}
    again = streamq.export(store, out, scheduler="threads", progress=False)
    assert (again.n_written, again.n_existing) == (0, 2)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("big*")} == before
    # the compact form still holds the mosaic's labels
    streamq.export(store, tmp_path / "out.zarr", zarr=True, scheduler="threads", progress=False)
    arr = zarr.open_group(tmp_path / "out.zarr", mode="r")["labels"]
    np.testing.assert_array_equal(np.asarray(arr[:H * W]).reshape(H, W), labels)


def test_export_with_dither_leaves_images_over_max_pixels_out(banded, tmp_path):
    """Error diffusion needs the whole image: with --dither the mosaic is not written, and the
    summary says how to export it."""
    summary = streamq.export(banded[0], tmp_path / "out", dither=True, scheduler="threads",
                             progress=False)
    assert (summary.too_large, summary.tiled, summary.n_images) == ([0], [], 1)
    assert "1 image(s) over max_pixels not written (--dither" in str(summary)
    assert "--zarr" in str(summary)
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == \
        ["small.png"]


def test_per_image_palettes_export_as_tiled_bigtiff(banded, tmp_path):
    """Per-image palettes take the same path: the mosaic's own palette is the colormap."""
    store = str(tmp_path / "pi.zarr")
    shutil.copytree(banded[0], store)
    streamq.fit_per_image(store, colors=[6], sample=0.05, seed=4, scheduler="threads")
    streamq.quantize(store, scheduler="threads", progress=False, ssim=False)
    summary = streamq.export(store, tmp_path / "out", per_image=6, scheduler="threads",
                             progress=False)
    assert summary.tiled == [0]
    labels, palette = _labels_and_palette(store, per_image=6)
    with tifffile.TiffFile(tmp_path / "out" / "big.tif") as tf:
        page = tf.pages[0]
        assert tf.is_bigtiff
        assert page.is_tiled
        np.testing.assert_array_equal(page.asarray(), labels)
        np.testing.assert_array_equal(page.colormap[:, :6].T, palette.astype(np.uint16) * 257)


def test_alpha_image_over_max_pixels_exports_as_rgba_bigtiff(tmp_path):
    """An RGBA TIFF read in bands (alpha kept) comes out as an RGBA BigTIFF (unassociated
    alpha: straight colours, as the RGBA PNG) equal to the fitted RGBA palette[labels]."""
    from streamq.store.results import load_fit

    h, w = 700, 900
    yy, xx = np.mgrid[:h, :w]
    rgba = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), 128),
                     np.select([xx < w // 3, xx < 2 * w // 3], [0, 128], 255)],
                    axis=2).astype(np.uint8)
    (tmp_path / "src").mkdir()
    tifffile.imwrite(tmp_path / "src" / "a.tif", rgba, photometric="rgb",
                     extrasamples=["unassalpha"], tile=(64, 64))
    store = str(tmp_path / "s.zarr")
    streamq.ingest(tmp_path / "src", store, scheduler="threads", progress=False,
                   max_pixels=LIMIT)
    streamq.fit(store, colors=8, scheduler="threads")
    streamq.quantize(store, scheduler="threads", progress=False, ssim=False)
    summary = streamq.export(store, tmp_path / "out", scheduler="threads", progress=False)
    assert summary.tiled == [0]
    fitted = load_fit(store)
    assert fitted.alpha is not None
    table = np.concatenate([fitted.palette, fitted.alpha[:, None]], axis=1).astype(np.uint8)
    labels = np.asarray(zarr.open_group(store, mode="r")["quantize/labels"][:h * w])
    with tifffile.TiffFile(tmp_path / "out" / "a.tif") as tf:
        page = tf.pages[0]
        assert tf.is_bigtiff
        assert page.is_tiled
        assert tuple(page.extrasamples) == (tifffile.EXTRASAMPLE.UNASSALPHA,)
        np.testing.assert_array_equal(page.asarray(), table[labels].reshape(h, w, 4))


def test_killed_tiled_export_leaves_no_torn_file(banded, tmp_path):
    """kill -9 while the BigTIFF is half written (its temporary file seen growing): no file
    under its name, and a rerun gives the files of an export never killed, byte for byte."""
    from helpers import kill_when, output_files, streamq_cmd

    store = banded[0]
    clean = tmp_path / "clean"
    streamq.export(store, clean, scheduler="threads", progress=False)
    out = tmp_path / "out"
    tmp_dir = out / ".streamq-tmp-files"

    def half_written():
        return any(p.name.startswith(".big.tif.") and p.stat().st_size > 0
                   for p in (tmp_dir.iterdir() if tmp_dir.is_dir() else ()))

    kill_when(streamq_cmd("-q", "export", store, str(out), "--scheduler", "threads"),
              half_written, interval=0.001)
    torn = out / "big.tif"
    if torn.exists():  # renamed between the last poll and the kill: then it is whole
        assert torn.read_bytes() == (clean / "big.tif").read_bytes()
    summary = streamq.export(store, out, scheduler="threads", progress=False)
    assert summary.n_written >= 1
    assert output_files(out) == output_files(clean)
    assert not list(tmp_dir.glob("*")) if tmp_dir.exists() else True


def test_tiled_export_to_s3(banded, s3, tmp_path):
    """To an object store the BigTIFF is written to a local temporary file and uploaded: the
    object is the file a local export writes, and a rerun uploads nothing."""
    import fsspec
    from helpers import BUCKET

    store = banded[0]
    streamq.export(store, tmp_path / "local", scheduler="threads", progress=False)
    url = f"s3://{BUCKET}/tiled-out"
    summary = streamq.export(store, url, scheduler="threads", progress=False,
                             storage_options=s3)
    assert (summary.tiled, summary.too_large, summary.n_written) == ([0], [], 2)
    fs = fsspec.filesystem("s3", **s3)
    assert fs.cat_file(f"{url}/big.tif") == (tmp_path / "local" / "big.tif").read_bytes()
    again = streamq.export(store, url, scheduler="threads", progress=False, storage_options=s3)
    assert (again.n_written, again.n_existing) == (0, 2)


def test_write_tiff_rgb_rgba_and_bounded_memory(tmp_path):
    """K > 256 gives RGB, a palette with alpha RGBA (unassociated), each equal to
    palette[labels]; the labels are taken a band at a time and never held whole."""
    rng = np.random.default_rng(5)
    h, w = 700, 900
    lab = rng.integers(0, 300, (h, w)).astype(np.uint16)
    pal = rng.integers(0, 256, (300, 3)).astype(np.uint8)
    alpha = rng.integers(0, 256, 300).astype(np.uint8)
    tile = tiff.tile_shape(w, band_pixels=40_000)
    assert tile == (32, 256)
    for a, extra in ((None, ()), (alpha, (tifffile.EXTRASAMPLE.UNASSALPHA,))):
        buf = io.BytesIO()
        tiff.write_tiff(buf, (lab[y:y + tile[0]] for y in range(0, h, tile[0])), h, w, pal, a,
                        tile)
        buf.seek(0)
        with tifffile.TiffFile(buf) as tf:
            page = tf.pages[0]
            assert tf.is_bigtiff
            assert page.is_tiled
            assert page.photometric == tifffile.PHOTOMETRIC.RGB
            assert tuple(page.extrasamples) == extra
            ref = pal[lab] if a is None else np.concatenate([pal, a[:, None]], axis=1)[lab]
            np.testing.assert_array_equal(page.asarray(), ref)
    # memory: a tall RGB image made band by band (never whole anywhere) into a file
    h = 6000

    def bands():
        for y in range(0, h, tile[0]):
            yield np.random.default_rng(y).integers(0, 300, (min(tile[0], h - y), w),
                                                    dtype=np.uint16)

    with open(tmp_path / "tall.tif", "w+b") as fh:
        tracemalloc.start()
        try:
            tiff.write_tiff(fh, bands(), h, w, pal, None, tile, level=0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        fh.seek(0)
        with tifffile.TiffFile(fh) as tf:
            assert tf.pages[0].shape == (h, w, 3)
    assert peak < h * w * 3 / 10, f"peak {peak} bytes for an image of {h * w * 3}"


def test_write_tiff_refuses_missing_rows():
    with pytest.raises(ValueError, match="rows of labels"):
        tiff.write_tiff(io.BytesIO(), [np.zeros((16, 32), np.uint8)], 32, 32,
                        np.zeros((2, 3), np.uint8), None, (16, 256))


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
