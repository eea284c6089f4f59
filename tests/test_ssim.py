"""Per-image SSIM: equal to scikit-image's on real photos, stored by quantize for every image
(shared and per-image palettes), resumed bit for bit, shown by info, left out by --no-ssim."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from skimage.metrics import structural_similarity

import streamq
from streamq.cli.main import cli
from streamq.examples import source_photos
from streamq.per_image import fit_per_image
from streamq.ssim import chunk_ssim, halo, luma, ssim


def reference(original: np.ndarray, quantized: np.ndarray) -> float:
    """scikit-image's SSIM with the paper's settings on the BT.601 luma of both images."""
    y = np.array([0.299, 0.587, 0.114])
    return structural_similarity(original.astype(np.float64) @ y,
                                 quantized.astype(np.float64) @ y, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=255)


def nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Labels of the nearest palette colours (plain numpy argmin)."""
    d = ((rgb.reshape(-1, 1, 3).astype(np.int64) - palette[None].astype(np.int64)) ** 2).sum(2)
    return d.argmin(1)


@pytest.fixture(scope="module")
def photos():
    return source_photos()


def quantized_by(rgb: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``rgb`` quantized to ``k`` of its own pixels' colours (labels, palette)."""
    flat = rgb.reshape(-1, 3)
    palette = flat[np.random.default_rng(seed).choice(len(flat), k, replace=False)]
    return nearest(flat, palette), palette


@pytest.mark.parametrize("name", ["China_Temple", "Coffee", "Astronaut", "Coins"])
def test_equals_scikit_image_on_photos(photos, name):
    img = photos[name][::2, ::2]  # real photos, halved: the test stays fast
    for k, seed in ((2, 0), (16, 1), (64, 2)):
        labels, palette = quantized_by(img, k, seed)
        q = palette[labels].reshape(img.shape)
        assert ssim(img, q) == pytest.approx(reference(img, q), abs=1e-6)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def test_window_sized_crops_and_smaller_images(photos):
    img = photos["Chelsea"]
    for h, w in ((11, 11), (11, 300), (37, 12)):
        crop = img[50:50 + h, 60:60 + w]
        labels, palette = quantized_by(crop, 4, 3)
        q = palette[labels].reshape(crop.shape)
        assert ssim(crop, q) == pytest.approx(reference(crop, q), abs=1e-6)
    tiny = img[:10, :40]
    assert np.isnan(ssim(tiny, tiny))
    with pytest.raises(ValueError, match="win_size exceeds image extent"):
        reference(tiny, tiny)


@pytest.mark.parametrize("chunk", [7, 97, 1000, 4096, 100_000])
def test_chunk_sums_add_up_to_the_whole_image(photos, chunk):
    # Images back to back cut into chunks of any size (smaller than a row too): each chunk
    # sees only its pixels and the halo, and the sums add up to each image's SSIM.
    imgs = [photos["Flower"][:40, :64], photos["Rocket"][100:111, 200:300],
            photos["Coins"][:9, :50], photos["Grace_Hopper"][200:260, 100:131]]
    palette = np.concatenate([quantized_by(i, 6, 4)[1] for i in imgs])
    rgb = np.concatenate([i.reshape(-1, 3) for i in imgs])
    labels = nearest(rgb, palette).astype(np.uint8)
    sizes = [i.shape[0] * i.shape[1] for i in imgs]
    offsets = np.cumsum([0] + sizes[:-1])
    lut = luma(palette)
    total, count = np.zeros(len(imgs)), np.zeros(len(imgs), np.int64)
    for lo in range(0, len(rgb), chunk):
        hi = min(lo + chunk, len(rgb))
        over = [(j, int(offsets[j]), sizes[j]) for j in range(len(imgs))
                if offsets[j] < hi and offsets[j] + sizes[j] > lo]
        shapes = [imgs[j].shape[:2] for j, _, _ in over]
        a, b = halo(over, shapes, lo, hi)
        for j, s, n in chunk_ssim(rgb[a:b], labels[a:b], a, lo, hi, over, shapes,
                                  lambda _: lut):
            total[j] += s
            count[j] += n
    for j, img in enumerate(imgs):
        q = palette[labels[offsets[j]:offsets[j] + sizes[j]]].reshape(img.shape)
        h, w = img.shape[:2]
        assert count[j] == max(h - 10, 0) * max(w - 10, 0)
        if count[j]:
            assert total[j] / count[j] == pytest.approx(reference(img, q), abs=1e-6)


def stored_references(store: str, labels: str, palette_of) -> list[float]:
    coll = streamq.open_store(store)
    lab = np.asarray(zarr.open_array(f"{store}/{labels}", mode="r")[:])
    out = []
    for i in range(len(coll)):
        a, (h, w) = int(coll.offsets[i]), coll.shapes[i]
        out.append(reference(coll.read(i), palette_of(i)[lab[a:a + h * w]].reshape(h, w, 3)))
    return out


def test_quantize_stores_ssim_of_every_image(photo_store):
    # photo_store: real photos in 20,000-pixel shards (images straddle them), quantized on the
    # session cluster with the defaults
    g = zarr.open_group(photo_store, mode="r")
    stored = g["quantize/images/ssim"][:]
    palette = streamq.load_fit(photo_store).palette
    ref = stored_references(photo_store, "quantize/labels", lambda i: palette)
    assert len(stored) == len(ref) == 48
    np.testing.assert_allclose(stored, ref, rtol=0, atol=1e-6)
    sec = g.attrs["quantize"]
    assert sec["ssim"] is True
    assert sec["ssim_mean"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert sec["ssim_min"] == pytest.approx(np.min(ref), abs=1e-6)
    assert sec["ssim_images"] == 48
    # every record holds its chunk's sums; they add up to the stored values
    assert all("ssim" in json.loads(r) for r in g["quantize/records"][:])
    # info shows it, in text and JSON
    runner = CliRunner()
    text = runner.invoke(cli, ["info", photo_store]).output
    assert f"SSIM         mean {np.mean(ref):.4f}, min {np.min(ref):.4f}" in text
    worst = int(np.argmin(ref))
    coll = streamq.open_store(photo_store)
    assert f"worst SSIM   {coll.paths[worst]} {ref[worst]:.4f}" in text
    info = json.loads(runner.invoke(cli, ["info", photo_store, "--json"]).output)["labels"]
    assert info["ssim_mean"] == sec["ssim_mean"]
    assert [w["id"] for w in info["worst_ssim"]] == list(np.argsort(ref, kind="stable")[:5])


@pytest.fixture
def small_store(faces_store, tmp_path):
    """A copy of the faces collection (small shards) with a 6-colour palette."""
    path = str(tmp_path / "s.zarr")
    shutil.copytree(faces_store, path)
    streamq.fit(path, colors=6, max_steps=20, batch_size=4096, scheduler="threads")
    return path


def test_no_ssim_leaves_it_out_and_a_later_run_adds_it(small_store, tmp_path):
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(small_store, ref)
    full = streamq.quantize(ref, scheduler="threads", progress=False)
    assert full.ssim is not None
    assert "mean SSIM" in str(full)

    result = CliRunner().invoke(cli, ["quantize", small_store, "--no-ssim", "--scheduler",
                                      "threads"])
    assert result.exit_code == 0, result.output
    assert "SSIM" not in result.output
    g = zarr.open_group(small_store, mode="r")
    assert "ssim" not in g["quantize/images"]
    assert g.attrs["quantize"]["ssim"] is False
    assert all("ssim" not in json.loads(r) for r in g["quantize/records"][:])
    assert "SSIM" not in CliRunner().invoke(cli, ["info", small_store]).output
    labels = np.asarray(g["quantize/labels"][:])
    np.testing.assert_array_equal(labels, zarr.open_array(f"{ref}/quantize/labels")[:])
    # --no-ssim again: nothing to do; with SSIM: added to the labels there, bit for bit
    assert streamq.quantize(small_store, ssim=False, scheduler="threads").status == \
        "already complete"
    added = streamq.quantize(small_store, scheduler="threads", progress=False)
    assert added.ssim == full.ssim
    g = zarr.open_group(small_store, mode="r")
    r = zarr.open_group(ref, mode="r")
    np.testing.assert_array_equal(g["quantize/images/ssim"][:], r["quantize/images/ssim"][:])
    np.testing.assert_array_equal(g["quantize/labels"][:], labels)
    # a new palette labelled with --no-ssim: the SSIM of the old labels goes
    streamq.fit(small_store, colors=5, max_steps=20, batch_size=4096, scheduler="threads",
                overwrite=True)
    streamq.quantize(small_store, ssim=False, scheduler="threads")
    assert "ssim" not in zarr.open_group(small_store, mode="r")["quantize/images"]


def test_config_key_and_resume_from_records(small_store, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("quantize:\n  ssim: false\n")
    result = CliRunner().invoke(cli, ["-q", "quantize", small_store, "--config", str(cfg),
                                      "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    assert zarr.open_group(small_store, mode="r").attrs["quantize"]["ssim"] is False
    streamq.quantize(small_store, scheduler="threads", overwrite=True)
    g = zarr.open_group(small_store, mode="r+")
    want = np.asarray(g["quantize/images/ssim"][:])
    # as a killed run leaves it: some chunks recorded, the others not
    records = g["quantize/records"]
    n = records.shape[0]
    for c in range(0, n, 2):
        records[c] = ""
    g.attrs["quantize"] = {**g.attrs["quantize"], "state": "running"}
    again = streamq.quantize(small_store, scheduler="threads", progress=False)
    assert again.status == "quantized"
    np.testing.assert_array_equal(zarr.open_group(small_store, mode="r")["quantize/images/ssim"][:],
                                  want)


def test_per_image_palettes_get_ssim_too(small_store):
    fit_per_image(small_store, colors=[4], sample=0.5, pixels_per_task=100_000,
                  scheduler="threads")
    streamq.quantize(small_store, scheduler="threads", progress=False)
    g = zarr.open_group(small_store, mode="r")
    pal = np.asarray(g["per_image/k4/palette"][:])
    ref = stored_references(small_store, "per_image/k4/labels", lambda i: pal[i])
    np.testing.assert_allclose(g["per_image/k4/images/ssim"][:], ref, rtol=0, atol=1e-6)
    assert g.attrs["per_image_quantize_k4"]["ssim_mean"] == pytest.approx(np.mean(ref))


def test_per_image_ssim_is_added_to_the_labels_there(small_store):
    """Labels of the per-image palettes made with --no-ssim are kept when SSIM is wanted
    later: only their SSIM is computed, as for the shared palette."""
    fit_per_image(small_store, colors=[4], sample=0.5, pixels_per_task=100_000,
                  scheduler="threads")
    streamq.quantize(small_store, ssim=False, scheduler="threads", progress=False)
    g = zarr.open_group(small_store, mode="r")
    before = g.attrs["per_image_quantize_k4"]["labels_id"]
    labels = np.asarray(g["per_image/k4/labels"][:])
    streamq.quantize(small_store, scheduler="threads", progress=False)
    g = zarr.open_group(small_store, mode="r")
    assert g.attrs["per_image_quantize_k4"]["labels_id"] == before
    assert g.attrs["per_image_quantize_k4"]["ssim"] is True
    records = [json.loads(r) for r in g["per_image/k4/label_records"][:]]
    assert all("ssim" in r for r in records)
    np.testing.assert_array_equal(g["per_image/k4/labels"][:], labels)


def test_given_palette_gets_ssim(small_store, photo_store):
    # quantize --palette: another store's palette, labelled through the same chunkwise path
    streamq.quantize(small_store, palette=photo_store, overwrite=True, scheduler="threads")
    palette = streamq.load_fit(photo_store).palette
    ref = stored_references(small_store, "quantize/labels", lambda i: palette)
    g = zarr.open_group(small_store, mode="r")
    np.testing.assert_allclose(g["quantize/images/ssim"][:], ref, rtol=0, atol=1e-6)
    assert g.attrs["quantize"]["ssim_min"] == pytest.approx(min(ref), abs=1e-6)
