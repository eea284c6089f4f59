"""Per-image SSIM: equal to scikit-image's on real photos, stored by quantize for every image
(shared and per-image palettes), resumed bit for bit, shown by info, left out by --no-ssim."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import alpha_ssim_reference as alpha_reference
from helpers import composites, soft_mask
from helpers import ssim_reference as reference

import streamq
from streamq.cli.main import cli
from streamq.examples import source_photos
from streamq.per_image import fit_per_image
from streamq.rgba import premultiplied
from streamq.ssim import chunk_ssim, composite_luts, halo, luma, ssim


def nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Labels of the nearest palette colours (plain numpy argmin)."""
    d = ((rgb.reshape(-1, 1, 3).astype(np.int64) - palette[None].astype(np.int64)) ** 2).sum(2)
    return d.argmin(1)


def premultiplied_image(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` premultiplied RGBA (as the store holds it) of a straight one."""
    return premultiplied(rgba[..., :3].reshape(-1, 3), rgba[..., 3].reshape(-1)).reshape(
        rgba.shape)


def cut_out(img: np.ndarray, seed: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A straight RGBA cut-out of ``img`` (soft mask), its labels and a ``(k, 4)`` straight
    RGBA palette of its own pixels (fully transparent pixels: colour 0, as ingest stores them)."""
    h, w = img.shape[:2]
    rgba = np.dstack([img, soft_mask(h, w, seed)])
    rgba[rgba[..., 3] == 0, :3] = 0
    flat = rgba.reshape(-1, 4)
    pal = flat[np.random.default_rng(seed).choice(len(flat), k, replace=False)]
    pre = premultiplied_image(rgba).reshape(-1, 4).astype(np.int64)
    ppre = premultiplied(pal[:, :3], pal[:, 3]).astype(np.int64)
    labels = ((pre[:, None] - ppre[None]) ** 2).sum(2).argmin(1)
    return rgba, labels, pal


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


@pytest.mark.parametrize("name", ["Coffee", "Astronaut", "Chelsea"])
def test_with_alpha_is_the_mean_on_black_and_on_white(photos, name):
    """An image with alpha: the mean of scikit-image's SSIM of the composites on black and on
    white; an opaque one (alpha 255 everywhere) as without alpha, to the last bit."""
    img = photos[name][::3, ::3]
    for k, seed in ((3, 0), (16, 1), (48, 2)):
        rgba, labels, pal = cut_out(img, seed, k)
        q = pal[labels].reshape(rgba.shape)
        got = ssim(premultiplied_image(rgba), premultiplied_image(q))
        assert got == pytest.approx(alpha_reference(rgba, q), abs=1e-6)
        (ob, ow), (qb, qw) = composites(rgba), composites(q)
        assert reference(ob, qb) != pytest.approx(reference(ow, qw), abs=1e-3)  # both count
    opaque = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    labels, palette = quantized_by(img, 8, 5)
    q = palette[labels].reshape(img.shape)
    q4 = np.dstack([q, np.full(img.shape[:2], 255, np.uint8)])
    assert ssim(opaque, q4) == ssim(img, q)


@pytest.mark.parametrize("chunk", [7, 1000, 100_000])
def test_chunk_sums_with_alpha_add_up(photos, chunk):
    # Images with alpha beside opaque ones, back to back in chunks: the sums of an image
    # with alpha (its (2, K) luma) add up to the mean SSIM on black and on white, an opaque
    # image's to its SSIM without alpha
    imgs = [photos["Flower"][:40, :64], photos["Rocket"][100:140, 200:260],
            photos["Coins"][:30, :50], photos["Grace_Hopper"][200:260, 100:131]]
    has_alpha = [True, False, True, True]
    rgba, labels, pals = [], [], []
    for j, (img, alpha) in enumerate(zip(imgs, has_alpha, strict=True)):
        if alpha:
            im, lab, pal = cut_out(img, 10 + j, 6)
        else:
            lab, pal = quantized_by(img, 6, 10 + j)
            im = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
            pal = np.concatenate([pal, np.full((6, 1), 255, np.uint8)], axis=1)
        rgba.append(im)
        labels.append(lab)
        pals.append(pal)
    pre = np.concatenate([premultiplied_image(i).reshape(-1, 4) for i in rgba])
    lab = np.concatenate(labels).astype(np.uint8)
    sizes = [i.shape[0] * i.shape[1] for i in imgs]
    offsets = np.cumsum([0] + sizes[:-1])

    def lut_of(j: int) -> np.ndarray:
        if has_alpha[j]:
            return composite_luts(premultiplied(pals[j][:, :3], pals[j][:, 3]))
        return luma(pals[j][:, :3])

    total, count = np.zeros(len(imgs)), np.zeros(len(imgs), np.int64)
    for lo in range(0, len(pre), chunk):
        hi = min(lo + chunk, len(pre))
        over = [(j, int(offsets[j]), sizes[j]) for j in range(len(imgs))
                if offsets[j] < hi and offsets[j] + sizes[j] > lo]
        shapes = [imgs[j].shape[:2] for j, _, _ in over]
        a, b = halo(over, shapes, lo, hi)
        for j, s, n in chunk_ssim(pre[a:b, :3], lab[a:b], a, lo, hi, over, shapes, lut_of,
                                  alpha=pre[a:b, 3]):
            total[j] += s
            count[j] += n
    for j, im in enumerate(rgba):
        q = pals[j][labels[j]].reshape(im.shape)
        want = alpha_reference(im, q) if has_alpha[j] else reference(im[..., :3], q[..., :3])
        assert total[j] / count[j] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="compared with alpha, but no alpha given"):
        chunk_ssim(pre[:, :3], lab, 0, 0, len(pre), [(0, 0, sizes[0])], [imgs[0].shape[:2]],
                   lut_of)


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
