"""Every odd image mode is stored as the documented RGB uint8, every bad file is recorded."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import pillow_rgb
from PIL import Image

import streamq

BG = (10, 200, 30)


@pytest.fixture(scope="module")
def odd_store(odd_dir, tmp_path_factory, cluster_address):
    root, _ = odd_dir
    path = tmp_path_factory.mktemp("odd") / "odd.zarr"
    streamq.ingest(root, path, max_pixels=50_000, background=BG, chunk_pixels=4096,
                   alpha="flatten", scheduler=cluster_address, progress=False)
    return streamq.open_store(path)


def _stored(coll, name):
    return coll.read(coll.paths.index(name))


def _composite(rgb, alpha):
    rgb, a = rgb.astype(float), alpha.astype(float)[..., None]
    return np.round((rgb * a + np.asarray(BG, float) * (255 - a)) / 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["modes/rgb.png", "modes/l.png", "modes/one_bit.png", "modes/p.png",
                                  "modes/cmyk.jpg", "modes/cmyk.tif", "modes/rgb.webp",
                                  "modes/rgb.bmp", "modes/anim.gif"])
def test_plain_modes_equal_pillow_rgb(odd_store, odd_dir, name):
    np.testing.assert_array_equal(_stored(odd_store, name), pillow_rgb(odd_dir[0] / name))


def test_gif_keeps_first_frame(odd_store, odd_dir):
    with Image.open(odd_dir[0] / "modes/anim.gif") as im:
        first = np.asarray(im.convert("RGB"))
        im.seek(1)
        second = np.asarray(im.convert("RGB"))
    stored = _stored(odd_store, "modes/anim.gif")
    np.testing.assert_array_equal(stored, first)
    assert not np.array_equal(stored, second)


def test_exif_orientation_applied(odd_store, odd_dir):
    with Image.open(odd_dir[0] / "modes/exif_rot.jpg") as im:
        raw = np.asarray(im.convert("RGB"))  # as stored in the file, not rotated
    stored = _stored(odd_store, "modes/exif_rot.jpg")
    assert stored.shape == (raw.shape[1], raw.shape[0], 3)
    np.testing.assert_array_equal(stored, np.rot90(raw, k=-1))  # orientation 6: 90° clockwise


def test_alpha_composited_on_background(odd_store, odd_dir):
    with Image.open(odd_dir[0] / "modes/rgba.png") as im:
        rgba = np.asarray(im)
    np.testing.assert_array_equal(_stored(odd_store, "modes/rgba.png"),
                                  _composite(rgba[..., :3], rgba[..., 3]))
    with Image.open(odd_dir[0] / "modes/la.png") as im:
        la = np.asarray(im)
    grey = np.repeat(la[..., :1], 3, axis=2)
    np.testing.assert_array_equal(_stored(odd_store, "modes/la.png"), _composite(grey, la[..., 1]))


def test_palette_transparency_key(odd_store, odd_dir):
    with Image.open(odd_dir[0] / "modes/p_transparent.png") as im:
        idx = np.asarray(im)
        pal = np.asarray(im.getpalette()[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    expected = pal[idx]
    expected[idx == 3] = BG
    assert (idx == 3).any()
    np.testing.assert_array_equal(_stored(odd_store, "modes/p_transparent.png"), expected)


def test_16bit_grey_is_scaled_not_truncated(odd_store, odd_dir):
    with Image.open(odd_dir[0] / "modes/i16.png") as im:
        raw = np.asarray(im).astype(np.int64)
    assert raw.max() > 255
    expected = np.round(raw * 255 / 65535).astype(np.uint8)
    stored = _stored(odd_store, "modes/i16.png")
    np.testing.assert_array_equal(stored, np.repeat(expected[..., None], 3, axis=2))
    assert (expected != (raw >> 8)).any()  # the test can tell scaling from truncation


@pytest.mark.parametrize("name", ["modes/rgb16.tif", "modes/rgb16.png"])
def test_16bit_rgb_is_scaled_not_truncated(odd_store, odd_dir, name):
    if name.endswith(".tif"):
        raw = tifffile.imread(odd_dir[0] / name).astype(np.int64)
    else:
        import png

        w, h, rows, _ = png.Reader(filename=str(odd_dir[0] / name)).asDirect()
        raw = np.vstack([np.asarray(r) for r in rows]).reshape(h, w, 3).astype(np.int64)
    expected = np.round(raw * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(_stored(odd_store, name), expected)
    assert odd_store.modes[odd_store.paths.index(name)] == "RGB;16"
    assert (expected != (raw >> 8)).any()


def test_16bit_grey_alpha_png_is_scaled_grey_and_alpha(tmp_path):
    """A 16-bit grey + alpha PNG (which Pillow opens as RGBA) is its grey on R, G and B and
    its alpha, both scaled; the reference reads the file's two planes with pypng."""
    import png

    from streamq.decode import decode_rgba, read_header

    rng = np.random.default_rng(5)
    raw = rng.integers(0, 65536, (12, 2 * 17), dtype=np.uint16)
    raw[0, 1] = 0  # a fully transparent pixel
    path = tmp_path / "la16.png"
    with open(path, "wb") as fh:
        png.Writer(17, 12, greyscale=True, alpha=True, bitdepth=16).write(fh, raw.tolist())
    header = read_header(str(path), 10_000)
    assert not isinstance(header, str), header
    assert header.alpha
    got = decode_rgba(str(path), 10_000)
    assert not isinstance(got, str), got
    rgb, alpha = got
    planes = np.round(raw.reshape(12, 17, 2).astype(np.int64) * 255 / 65535).astype(np.int64)
    grey, a = planes[..., 0], planes[..., 1]
    assert alpha is not None
    np.testing.assert_array_equal(alpha, a)
    premultiplied = (grey * a + 127) // 255
    np.testing.assert_array_equal(rgb, np.repeat(premultiplied[..., None], 3, axis=2))


EXPECTED_SKIPS = {
    "bad/empty.jpg": "empty file",
    "bad/not_an_image.png": "not an image",
    "bad/truncated.png": "truncated",
    "bad/truncated.jpg": "runcated",
    "bad/too_big.jpg": "max_pixels=50000",
    "modes/f32.tif": "floating-point",
}


def test_bad_inputs_recorded_with_reasons(odd_store, odd_dir):
    _, kinds = odd_dir
    skipped = {s.path: s.reason for s in odd_store.skipped}
    assert set(skipped) == {k for k, v in kinds.items() if v == "bad"}
    for path, words in EXPECTED_SKIPS.items():
        assert words in skipped[path], (path, skipped[path])
    assert sorted(odd_store.paths) == sorted(k for k, v in kinds.items() if v == "ok")
    assert "notes.txt" not in skipped  # not an image extension: not an input of a folder


def test_no_good_image_lost_next_to_a_bad_one(odd_store, odd_dir):
    for i, name in enumerate(odd_store.paths):
        if name.startswith("modes/") and "16" not in name and "rgba" not in name \
                and name not in ("modes/la.png", "modes/p_transparent.png", "modes/exif_rot.jpg"):
            np.testing.assert_array_equal(odd_store.read(i), pillow_rgb(odd_dir[0] / name))


def test_pillow_pixel_limit_of_the_caller_is_kept(tmp_path):
    """Pillow's limit is process-wide: a decode uses ``max_pixels`` for its own open only, so
    a program (or a later in-process stage) keeps its own limit and warnings."""
    from streamq.decode import decode_rgb, read_header

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000
        assert isinstance(decode_rgb(str(path), 10**6, (255, 255, 255)), np.ndarray)
        assert read_header(str(path), 10).startswith("image is larger")  # 2000 > 10: skipped
        assert Image.MAX_IMAGE_PIXELS == 1_000
    finally:
        Image.MAX_IMAGE_PIXELS = before
