"""Alpha end to end: cut-outs of real photos with soft alpha masks, through ingest, the RGBA
fit, quantize and every export; opaque collections exactly as before alpha was kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import (
    alpha_ssim_reference,
    plain_weighted_lloyd,
    ssim_reference,
    write_alpha_collection,
)
from PIL import Image

import streamq
from streamq.errors import ConfigError
from streamq.per_image import load_per_image
from streamq.store import FORMAT_VERSION
from streamq.store.upgrade import renamed

K = 12


@pytest.fixture(scope="module")
def alpha_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("alpha_src")
    return root, write_alpha_collection(root)


@pytest.fixture(scope="module")
def alpha_store(alpha_dir, tmp_path_factory, cluster_address) -> str:
    """Ingested in small shards (images straddle tasks), a K-colour fit, its labels."""
    path = str(tmp_path_factory.mktemp("alpha") / "alpha.zarr")
    streamq.ingest(alpha_dir[0], path, chunk_pixels=4096, scheduler=cluster_address,
                   progress=False)
    streamq.fit(path, colors=K, n_init=4, scheduler="threads")
    streamq.quantize(path, scheduler=cluster_address, progress=False)
    return path


def _source_rgba(path) -> np.ndarray:
    """Independent reference: Pillow's own RGBA conversion of the file."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGBA"))


def _premultiply(rgba: np.ndarray) -> np.ndarray:
    c, a = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64)
    return np.floor(c * a / 255 + 0.5).astype(np.uint8)  # round half up, as (c*a + 127)//255


def _quantized(store: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, (K, 4) straight RGBA palette) of image ``i`` from the store's arrays."""
    coll = streamq.open_store(store)
    g = zarr.open_group(store, mode="r")
    off, h, w = int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i])
    labels = np.asarray(g["quantize/labels"][off:off + h * w]).reshape(h, w)
    pal = np.stack([g[f"fit/palette/{c}"][:] for c in "rgba"], axis=1).astype(np.uint8)
    return labels, pal


def test_ingest_keeps_alpha(alpha_store, alpha_dir):
    root, kinds = alpha_dir
    coll = streamq.open_store(alpha_store)
    assert sorted(coll.paths) == sorted(kinds)
    for i, name in enumerate(coll.paths):
        rgba = _source_rgba(root / name)
        assert bool(coll.has_alpha[i]) == (kinds[name] == "alpha"), name
        np.testing.assert_array_equal(coll.read_alpha(i), rgba[..., 3], err_msg=name)
        np.testing.assert_array_equal(coll.read(i), _premultiply(rgba), err_msg=name)
    cut = root / "cut/cut_00.png"
    a = _source_rgba(cut)[..., 3]
    assert (a == 0).any()
    assert ((a > 0) & (a < 255)).any()
    g = zarr.open_group(alpha_store, mode="r")
    assert g.attrs["streamq"]["format_version"] == FORMAT_VERSION  # 3: as an opaque store
    assert "alpha" not in g.attrs["ingest"]["settings"]  # the default: not in the settings
    info = streamq.collection_info(alpha_store)
    assert info["n_images_with_alpha"] == sum(v == "alpha" for v in kinds.values())
    from streamq.info import format_info

    assert "(8 with alpha)" in format_info(info)


def test_fit_is_exact_kmeans_on_rgba(alpha_store):
    """Against a numpy reference of the distance (the mean of the squared errors of the two
    composites, on black and on white): every pixel is labelled with its nearest centre, every
    centre but the pinned transparent one is the mean of its pixels, and the fit's and
    quantize's MSE are the premultiplied RGBA MSE of the labelled pixels."""
    coll = streamq.open_store(alpha_store)
    fit = streamq.load_fit(alpha_store)
    assert fit.alpha is not None
    assert fit.centers.shape == (K, 4)
    px = np.concatenate([np.dstack([coll.read(i), coll.read_alpha(i)]).reshape(-1, 4)
                         for i in range(len(coll))]).astype(np.float64) / 255
    black, white = px[:, :3], px[:, :3] + 1 - px[:, 3:]
    cb, cw = fit.centers[:, :3], fit.centers[:, :3] + 1 - fit.centers[:, 3:]
    d = (((black[:, None] - cb[None]) ** 2).sum(2) + ((white[:, None] - cw[None]) ** 2).sum(2)) / 2
    labels = np.argmin(d, axis=1)
    g = zarr.open_group(alpha_store, mode="r")
    stored = np.concatenate([g["quantize/labels"][int(o):int(o) + int(h * w)]
                             for o, h, w in zip(coll.offsets, coll.heights, coll.widths, strict=True)])
    np.testing.assert_array_equal(stored, labels)
    # the fully transparent colour is kept, exactly, at index 0 (tRNS entries come first)
    assert (px[:, 3] == 0).any()
    np.testing.assert_array_equal(fit.centers[0], 0)
    assert fit.alpha[0] == 0
    assert (np.diff((fit.alpha == 255).astype(int)) >= 0).all()  # transparent ones first
    for j in range(1, K):
        np.testing.assert_allclose(fit.centers[j], px[labels == j].mean(0), rtol=0, atol=1e-12)
    pal = np.concatenate([fit.palette, fit.alpha[:, None]], axis=1)
    target = _premultiply(pal).astype(np.float64)
    target = np.concatenate([target, pal[:, 3:]], axis=1)
    mse = ((px * 255 - target[labels]) ** 2).mean()
    assert fit.mse == pytest.approx(mse, rel=1e-12)
    assert g.attrs["quantize"]["mse"] == pytest.approx(mse, rel=1e-12)
    assert streamq.collection_mse(alpha_store) == pytest.approx(mse, rel=1e-12)
    # per image: over the four channels of every pixel
    sizes = (coll.heights * coll.widths).astype(int)
    per_image = np.split(((px * 255 - target[labels]) ** 2).sum(1), np.cumsum(sizes)[:-1])
    np.testing.assert_allclose(g["quantize/images/mse"][:],
                               [e.sum() / (4 * n) for e, n in zip(per_image, sizes, strict=True)])


def test_info_shows_the_palette_with_its_alpha(alpha_store):
    """``info`` lists a palette with alpha as #rrggbbaa, by pixel count, from the store's own
    palette table."""
    from streamq.info import format_info

    fit = streamq.load_fit(alpha_store)
    info = streamq.collection_info(alpha_store)
    want = [f"#{r:02x}{g:02x}{b:02x}{a:02x}"
            for (r, g, b), a in zip(fit.palette, fit.alpha, strict=True)]
    assert info["fit"]["palette_rgba_hex"] == want
    line = next(x for x in format_info(info).splitlines() if x.startswith("colours"))
    order = np.argsort(info["fit"]["counts"])[::-1][:16]
    assert line.split()[1:1 + len(order)] == [want[i] for i in order]
    assert any(a < 255 for a in fit.alpha)  # the pinned transparent entry at least


def test_png_export_keeps_transparency(alpha_store, alpha_dir, tmp_path, cluster_address):
    root, kinds = alpha_dir
    out = tmp_path / "png"
    streamq.export(alpha_store, out, scheduler=cluster_address, progress=False)
    coll = streamq.open_store(alpha_store)
    for i, name in enumerate(coll.paths):
        labels, pal = _quantized(alpha_store, i)
        with Image.open((out / name).with_suffix(".png")) as im:
            assert im.mode == "P"
            trns = im.info["transparency"]
            decoded = np.asarray(im.convert("RGBA"))
        assert isinstance(trns, bytes)
        assert list(trns) == pal[:len(trns), 3].tolist()
        assert (pal[len(trns):, 3] == 255).all()  # entries past tRNS are opaque
        np.testing.assert_array_equal(decoded[..., 3], pal[labels, 3], err_msg=name)
        np.testing.assert_array_equal(decoded[..., :3], pal[labels, :3], err_msg=name)
        src = _source_rgba(root / name)[..., 3]
        assert (decoded[..., 3][src == 0] == 0).all(), name  # transparent stays transparent
    # soft edges survive as soft alpha, not flattened
    decoded = np.asarray(Image.open(out / "cut/cut_01.png").convert("RGBA"))[..., 3]
    assert len(np.unique(decoded[(decoded > 0) & (decoded < 255)])) >= 2


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_rgb_formats_with_alpha(alpha_store, tmp_path, cluster_address, fmt):
    out = tmp_path / fmt
    streamq.export(alpha_store, out, format=fmt, scheduler=cluster_address, progress=False)
    coll = streamq.open_store(alpha_store)
    i = coll.paths.index("cut/cut_02.png")
    labels, pal = _quantized(alpha_store, i)
    ext = ".webp" if fmt == "webp" else ".jpg"
    with Image.open(out / ("cut/cut_02" + ext)) as im:
        decoded = np.asarray(im)
    if fmt == "webp":  # RGBA; the alpha plane is coded losslessly
        assert decoded.shape[2] == 4
        np.testing.assert_array_equal(decoded[..., 3], pal[labels, 3])
    else:  # composited on the ingest's background (white), lossy
        rgb = pal[labels, :3].astype(float)
        a = pal[labels, 3:].astype(float) / 255
        assert np.abs(decoded - (rgb * a + 255 * (1 - a))).mean() < 6


def test_zarr_export_has_rgba_palette(alpha_store, tmp_path, cluster_address):
    out = tmp_path / "arrays.zarr"
    streamq.export(alpha_store, out, zarr=True, scheduler=cluster_address, progress=False)
    g = zarr.open_group(str(out), mode="r")
    fit = streamq.load_fit(alpha_store)
    np.testing.assert_array_equal(g["palette"][:], np.concatenate(
        [fit.palette, fit.alpha[:, None]], axis=1))
    res = g.attrs["streamq_export"]["results"][0]
    assert res["alpha"] is True
    assert res["read"].endswith("width[j], 4)")


def test_ssim_with_alpha(alpha_store, alpha_dir, tmp_path, cluster_address):
    """Every image's stored SSIM equals scikit-image's on the original and quantized images
    (from the source files and the palette) composited on black and on white, averaged; a
    run with --no-ssim, then one without it, adds the same values to the labels there."""
    coll = streamq.open_store(alpha_store)
    g = zarr.open_group(alpha_store, mode="r")
    stored = np.asarray(g["quantize/images/ssim"][:])
    ref = []
    for i, name in enumerate(coll.paths):
        labels, pal = _quantized(alpha_store, i)
        ref.append(alpha_ssim_reference(_source_rgba(alpha_dir[0] / name), pal[labels]))
    np.testing.assert_allclose(stored, ref, rtol=0, atol=1e-6)
    sec = g.attrs["quantize"]
    assert sec["ssim"] is True
    assert sec["ssim_images"] == len(coll)
    assert sec["ssim_mean"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert (np.asarray(g["fit/palette/a"][:]) < 255).any()  # opaque images compared on both
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    streamq.quantize(copy, ssim=False, overwrite=True, scheduler=cluster_address, progress=False)
    assert "ssim" not in zarr.open_group(str(copy), mode="r")["quantize/images"]
    added = streamq.quantize(copy, scheduler="threads", progress=False)
    assert added.ssim == sec["ssim_mean"]
    np.testing.assert_array_equal(zarr.open_group(str(copy), mode="r")["quantize/images/ssim"][:],
                                  stored)


def test_opaque_collection_unchanged(tmp_path, cluster_address):
    """Every array, record, attribute and exported file as the streamq before alpha was kept
    made them (tests/data/opaque_reference.json, see tests/opaque_reference.py), for a
    collection that holds files able to carry alpha but without a transparent pixel."""
    from opaque_reference import make_opaque_collection, run_all

    # (its fit/starts digest rewritten once: the race's records, see tests/test_golden.py)
    expected = json.loads((Path(__file__).parent / "data/opaque_reference.json").read_text())
    # made at store format 1: the names and version of format 3 (streamq.store.upgrade)
    expected["store"] = {renamed(k) or k: v for k, v in expected["store"].items()}
    expected["attributes"]["streamq"] = FORMAT_VERSION
    make_opaque_collection(tmp_path / "src")
    got = run_all(tmp_path / "src", tmp_path, scheduler=cluster_address)
    alpha_names = {"alpha", "images/has_alpha", "colors_rgba/code", "colors_rgba/count",
                   "fit/palette/a", "fit/palette/centers_3", "colors_rgba"}
    # Arrays, attributes and manifest keys of the reference are all there and the same; what
    # other features may add beside them, never anything of alpha (no alpha array left).
    for part in ("store", "zarr_export"):
        assert not alpha_names & set(got[part]), part
        assert {k: got[part].get(k) for k in expected[part]} == expected[part], part
    for part in ("png", "webp"):
        assert got[part] == expected[part], part
    for key, value in expected["attributes"].items():
        if key in ("ingest_keys", "top_level"):
            assert set(value) <= set(got["attributes"][key]), key
            assert not alpha_names & set(got["attributes"][key]), key
        elif isinstance(value, dict):
            assert {k: got["attributes"][key].get(k) for k in value} == value, key
        else:
            assert got["attributes"][key] == value, key
    assert set(expected["manifest_keys"]) <= set(got["manifest_keys"])
    assert "alpha" not in got["manifest_keys"]


def test_flatten_is_the_old_ingest(alpha_dir, tmp_path):
    root, _ = alpha_dir
    path = tmp_path / "flat.zarr"
    streamq.ingest(root, path, alpha="flatten", background=(10, 200, 30), scheduler="threads",
                   progress=False)
    coll = streamq.open_store(path)
    g = zarr.open_group(str(path), mode="r")
    assert "alpha" not in g
    assert not coll.has_alpha.any()
    assert g.attrs["streamq"]["format_version"] == FORMAT_VERSION
    assert g.attrs["ingest"]["settings"]["alpha"] == "flatten"
    i = coll.paths.index("cut/cut_03.png")
    rgba = _source_rgba(root / "cut/cut_03.png").astype(np.uint32)
    bg = np.asarray((10, 200, 30), np.uint32)
    expected = (rgba[..., :3] * rgba[..., 3:] + bg * (255 - rgba[..., 3:]) + 127) // 255
    np.testing.assert_array_equal(coll.read(i), expected)


def test_resumed_ingest_checks_alpha_rows(alpha_store, tmp_path):
    """A rerun of an ingest whose records exist checks the alpha rows against their records
    too: a lost alpha chunk is written again."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    src = streamq.open_store(alpha_store)
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["ingest"] = {**g.attrs["ingest"], "state": "planned"}
    shard = next(p for p in sorted((copy / "alpha" / "c").iterdir()))
    shard.unlink()  # lost in a crash
    streamq.ingest(g.attrs["ingest"]["root"], copy, chunk_pixels=4096, scheduler="threads",
                   progress=False)
    coll = streamq.open_store(copy)
    for i in range(len(coll)):
        np.testing.assert_array_equal(coll.read_alpha(i), src.read_alpha(i))
    np.testing.assert_array_equal(coll.has_alpha, src.has_alpha)


def test_rgb_only_stages_refuse_alpha(alpha_store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    with pytest.raises(ConfigError, match=r"has 8 images with alpha, fitted per image in "
                       r"premultiplied RGBA: per_image.method 'kmeans' \(scikit-learn's KMeans\) "
                       r"cannot keep") as err:
        streamq.fit_per_image(copy, colors=[4], scheduler="threads")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="color_space 'oklab' is not available"):
        streamq.fit(copy, colors=4, color_space="oklab", overwrite=True, scheduler="threads")
    pal = tmp_path / "p.json"
    pal.write_text('["#000000", "#ffffff80"]')
    with pytest.raises(ConfigError, match=r"has 8 images with alpha, labelled in premultiplied "
                       r"RGBA: color_space 'oklab' is not available") as err:
        streamq.quantize(copy, palette=pal, color_space="oklab", overwrite=True,
                         scheduler="threads")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("k", [12, 64])
def test_rgba_lloyd_is_plain_weighted_lloyd(alpha_dir, k):
    """The alpha fit's Lloyd (the core's, with distance bounds on the 4-d points) against a
    plain NumPy Lloyd from the same k-means++ start, on the distinct premultiplied RGBA
    colours of the cut-outs: the same labels and changes at every update, the same centres
    to 1e-12. Both run on the points the core works on, rounded to its fixed point (at most
    2**-41 away): colours lie on a 1/255 lattice, where exact ties are common and the last
    bit decides them."""
    from streamq.kmeans import initial_centers, lloyd
    from streamq.kmeans.bounded import fixed_point
    from streamq.kmeans.rgba import _lloyd
    from streamq.rgba import to_metric

    root, kinds = alpha_dir
    px = np.concatenate([np.concatenate([_premultiply(a), a[..., 3:]], axis=2).reshape(-1, 4)
                         for a in (_source_rgba(root / name) for name in sorted(kinds))])
    rgba, w = np.unique(px, axis=0, return_counts=True)
    assert (rgba[0] == 0).all()
    assert ((rgba[:, 3] > 0) & (rgba[:, 3] < 255)).sum() > 1000
    x = to_metric(rgba / 255.0)
    xi, _, f = fixed_point(x, w)
    xq = xi * 2.0**-f
    assert np.abs(xq - x).max() <= 2.0**-41
    w = w.astype(np.float64)
    start = np.concatenate([np.zeros((1, 4)), initial_centers(
        x[1:], w[1:], k - 1, "k-means++", np.random.default_rng(7))])
    ref_c, ref_labels, rows = plain_weighted_lloyd(xq, w, start, 1)
    assert len(rows) > 3
    got = _lloyd(x, w, start, 1, 0.0, 1000)
    assert got["stop"] == "labels"
    assert got["n_iter"] == len(rows)
    assert [h[2] for h in got["history"]] == [r[0] for r in rows]
    np.testing.assert_allclose([h[1] for h in got["history"]], [r[1] for r in rows],
                               rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(got["centers"], ref_c, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got["centers"][0], 0)  # the transparent centre held
    assert got["inertia"] == pytest.approx(float((w * ((xq - ref_c[ref_labels]) ** 2).sum(1)).sum()),
                                           rel=1e-12)
    res = lloyd(x, w, start, tol=0.0, max_iter=1000, fixed=np.arange(k) < 1)
    np.testing.assert_array_equal(res.labels, ref_labels)
    plain = lloyd(x, w, start, tol=0.0, max_iter=1000, fixed=np.arange(k) < 1, bounds=False)
    np.testing.assert_array_equal(plain.centers, res.centers)  # bounds change no bit


@pytest.mark.parametrize(("k", "exact"), [(40, False), (300, False), (40, True)])
def test_rgba_labels_and_counts_split_by_alpha(k, exact):
    """Opaque pixels through the 24-bit table, transparent ones at once, soft ones by their
    distinct colours: the same labels, segment errors and counts as every pixel by its own
    nearest-centre search (K > 256: no table)."""
    from helpers import soft_mask

    from streamq.decode import premultiply
    from streamq.examples import source_photos
    from streamq.rgba import RgbaLabels, count_rgba, palette_of, rgba_codes

    photo = source_photos()["Astronaut"][::2, ::2]
    rgba = np.dstack([photo, soft_mask(*photo.shape[:2], seed=5)]).reshape(-1, 4)
    prem, alpha = premultiply(rgba), rgba[:, 3]
    rng = np.random.default_rng(2)
    centers = np.concatenate([prem, alpha[:, None]], 1)[rng.choice(len(rgba), k)] / 255.0
    pal, a = palette_of(centers)
    table = RgbaLabels(centers, pal, a, exact=exact)
    ends = np.sort(rng.integers(0, len(rgba), 9))
    labels, sse = table.labels_sse(prem, alpha, np.uint16, ends)
    lab, err = table.distinct(rgba_codes(prem, alpha))
    np.testing.assert_array_equal(labels, lab)
    if exact:  # uint8 centres in integer units: a brute force in integers, ties to the first
        some = rng.choice(len(rgba), 4000, replace=False)
        px = np.concatenate([prem, alpha[:, None]], 1)[some].astype(np.int64)
        d = px[:, None] - np.round(centers * 255).astype(np.int64)[None]
        dist = (d[..., :3] ** 2).sum(2) + ((d[..., :3] - d[..., 3:]) ** 2).sum(2)
        np.testing.assert_array_equal(labels[some], np.argmin(dist, axis=1))
        tied = (dist == dist.min(1, keepdims=True)).sum(1) > 1
        assert tied.any()  # the sample has exact ties (repeated centres), all to the first
    bounds = np.concatenate([[0], ends, [len(rgba)]])
    np.testing.assert_array_equal(sse, [err[x:y].sum() for x, y in zip(bounds[:-1], bounds[1:],
                                                                           strict=True)])
    codes, counts = count_rgba(prem, alpha)
    expected = np.unique(rgba_codes(prem, alpha), return_counts=True)
    np.testing.assert_array_equal(codes, expected[0])
    np.testing.assert_array_equal(counts, expected[1])


def test_more_than_256_colours_export_rgba(alpha_store, tmp_path):
    """K > 256: uint16 labels, RGBA PNGs (no palette PNG can hold the palette)."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    streamq.fit(copy, colors=300, n_init=2, overwrite=True, scheduler="threads")
    streamq.quantize(copy, scheduler="threads", progress=False)
    streamq.export(copy, tmp_path / "out", scheduler="threads", progress=False)
    coll = streamq.open_store(copy)
    i = coll.paths.index("cut/la.png")
    labels, pal = _quantized(str(copy), i)
    assert labels.dtype == np.uint16
    with Image.open(tmp_path / "out/cut/la.png") as im:
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im), pal[labels])


def test_interrupted_rgba_fit_reruns_to_the_same_palette(alpha_store, tmp_path):
    """The RGBA fit keeps no checkpoint: a rerun after a kill (fit still running, RGBA
    histogram half written) counts again and ends with the same palette, bit for bit."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    g = zarr.open_group(str(copy), mode="r+")
    g.attrs["fit"] = {**g.attrs["fit"], "state": "running"}
    g.attrs["colors_rgba"] = {"state": "writing"}
    done = streamq.load_fit(alpha_store)
    again = streamq.fit(copy, colors=K, n_init=4, scheduler="threads")
    assert again.status == "fitted"
    np.testing.assert_array_equal(again.centers, done.centers)
    np.testing.assert_array_equal(again.alpha, done.alpha)
    np.testing.assert_array_equal(again.palette, done.palette)
    assert zarr.open_group(str(copy), mode="r").attrs["colors_rgba"]["state"] == "complete"


# -- per-image palettes with alpha -----------------------------------------------------------------
def _premultiplied_px(coll, i: int) -> np.ndarray:
    """``(n, 4)`` premultiplied RGBA in [0, 1] of image ``i`` as stored."""
    return np.dstack([coll.read(i), coll.read_alpha(i)]).reshape(-1, 4).astype(np.float64) / 255


def _nearest_rgba(px: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Brute force: the index of each pixel's nearest centre by the mean of the squared errors
    of the two composites (on black and on white), ties to the lowest index."""
    black, white = px[:, :3], px[:, :3] + 1 - px[:, 3:]
    cb, cw = centers[:, :3], centers[:, :3] + 1 - centers[:, 3:]
    d = (((black[:, None] - cb[None]) ** 2).sum(2) + ((white[:, None] - cw[None]) ** 2).sum(2)) / 2
    return np.argmin(d, axis=1)


def _image_labels(g, coll, k: int, i: int) -> np.ndarray:
    off, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
    return np.asarray(g[f"per_image/k{k}/labels"][off:off + n])


def test_per_image_palettes_with_alpha(alpha_store, alpha_dir, tmp_path, cluster_address):
    """Each image with alpha gets its own RGBA palette (every pixel fitted: sample 1): every
    pixel labelled with its nearest centre in premultiplied RGBA (numpy brute force), every
    centre but the pinned transparent one the mean of its pixels, errors over premultiplied
    RGBA, and palette PNGs whose decoded alpha is the quantized alpha."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    ks = [5, K]
    streamq.fit_per_image(copy, colors=ks, method="histogram", sample=1.0, n_init=2,
                          scheduler=cluster_address, progress=False)
    streamq.quantize(copy, scheduler=cluster_address, progress=False)
    coll = streamq.open_store(copy)
    g = zarr.open_group(str(copy), mode="r")
    for k in ks:
        centers, palettes = load_per_image(str(copy), k)
        alphas = np.asarray(g[f"per_image/k{k}/alpha"][:])
        assert centers.shape == (len(coll), k, 4)
        assert (alphas[~coll.has_alpha] == 255).all()
        np.testing.assert_array_equal(centers[~coll.has_alpha][..., 3], 1.0)
        for i in np.flatnonzero(coll.has_alpha):
            px, c = _premultiplied_px(coll, i), centers[i]
            labels = _nearest_rgba(px, c)
            np.testing.assert_array_equal(_image_labels(g, coll, k, i), labels, err_msg=str(i))
            fixed = 0
            if (px[:, 3] == 0).any():  # the fully transparent colour kept, exactly, first
                np.testing.assert_array_equal(c[0], 0)
                assert alphas[i, 0] == 0
                fixed = 1
            assert (np.diff((alphas[i] == 255).astype(int)) >= 0).all()  # transparent first
            for j in range(fixed, k):
                if (labels == j).any():
                    np.testing.assert_allclose(c[j], px[labels == j].mean(0), rtol=0, atol=1e-12)
            pal = np.concatenate([palettes[i], alphas[i][:, None]], axis=1)
            target = np.concatenate([_premultiply(pal), pal[:, 3:]], axis=1).astype(np.float64)
            mse = ((px * 255 - target[labels]) ** 2).mean()
            assert g[f"per_image/k{k}/images/mse"][i] == pytest.approx(mse, rel=1e-12)
            h, w = int(coll.heights[i]), int(coll.widths[i])
            ssim = alpha_ssim_reference(_source_rgba(alpha_dir[0] / coll.paths[i]),
                                        pal[labels].reshape(h, w, 4))
            assert g[f"per_image/k{k}/images/ssim"][i] == pytest.approx(ssim, abs=1e-6)
        for i in np.flatnonzero(~coll.has_alpha):  # an opaque image: the SSIM without alpha
            h, w = int(coll.heights[i]), int(coll.widths[i])
            q = palettes[i][_image_labels(g, coll, k, i)].reshape(h, w, 3)
            assert g[f"per_image/k{k}/images/ssim"][i] == pytest.approx(
                ssim_reference(coll.read(i), q), abs=1e-6)
        assert g.attrs[f"per_image_quantize_k{k}"]["ssim_images"] == len(coll)
    out = tmp_path / "png"
    streamq.export(copy, out, per_image=K, scheduler=cluster_address, progress=False)
    _, palettes = load_per_image(str(copy), K)
    alphas = np.asarray(g[f"per_image/k{K}/alpha"][:])
    for i, name in enumerate(coll.paths):
        h, w = int(coll.heights[i]), int(coll.widths[i])
        labels = _image_labels(g, coll, K, i).reshape(h, w)
        with Image.open((out / name).with_suffix(".png")) as im:
            assert im.mode == "P"
            trns = im.info.get("transparency")
            decoded = np.asarray(im.convert("RGBA"))
        np.testing.assert_array_equal(decoded[..., 3], alphas[i][labels], err_msg=name)
        np.testing.assert_array_equal(decoded[..., :3], palettes[i][labels], err_msg=name)
        if coll.has_alpha[i]:
            assert (decoded[..., 3][_source_rgba(alpha_dir[0] / name)[..., 3] == 0] == 0).all()
        else:
            assert trns is None, name  # an opaque image's file as from an opaque store
    manifest = json.loads((out / ".streamq-export.json").read_text())
    assert manifest["alpha"] is True
    # --zarr: each image's palette as straight RGBA, its alpha beside its colours; decoded
    # with plain zarr + numpy, equal to the PNGs' decoded RGBA (images with alpha and opaque)
    zout = tmp_path / "arrays.zarr"
    streamq.export(copy, zout, zarr=True, per_image=ks, scheduler=cluster_address,
                   progress=False)
    z = zarr.open_group(str(zout), mode="r")
    results = {r["group"]: r for r in z.attrs["streamq_export"]["results"]}
    for k in ks:
        assert results[f"k{k}"]["alpha"] is True
        assert results[f"k{k}"]["read"].endswith("width[j], 4)")
        centers, palettes = load_per_image(str(copy), k)
        alphas = np.asarray(g[f"per_image/k{k}/alpha"][:])
        assert z[f"k{k}/palette"].shape == (len(coll), k, 4)
        np.testing.assert_array_equal(z[f"k{k}/centers"][:], centers)
        labels, palette = z[f"k{k}/labels"][:], z[f"k{k}/palette"][:]
        for j, i in enumerate(z["images/id"][:]):
            o, h, w = (int(z[f"images/{c}"][j]) for c in ("offset", "height", "width"))
            got = palette[j][labels[o:o + h * w]].reshape(h, w, 4)
            lab = _image_labels(g, coll, k, i).reshape(h, w)
            np.testing.assert_array_equal(got, np.dstack([palettes[i][lab], alphas[i][lab]]))
            if k == K:
                with Image.open((out / coll.paths[i]).with_suffix(".png")) as im:
                    np.testing.assert_array_equal(got, np.asarray(im.convert("RGBA")))
            assert (got[..., 3] == 255).all() != bool(coll.has_alpha[i])


def test_per_image_opaque_images_as_in_an_opaque_store(alpha_store, alpha_dir, tmp_path,
                                                       cluster_address):
    """Beside images with alpha, an opaque image's palette, labels and errors are those of the
    same image in a store without alpha (the collection ingested with --alpha flatten: same
    ids); images with alpha, fitted on a 70% sample, still label each pixel with its nearest
    RGBA centre."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    flat = tmp_path / "flat.zarr"
    streamq.ingest(alpha_dir[0], flat, alpha="flatten", chunk_pixels=4096, scheduler="threads",
                   progress=False)
    for store in (copy, flat):
        streamq.fit_per_image(store, colors=[K], method="histogram", scheduler=cluster_address,
                              progress=False)
        streamq.quantize(store, scheduler=cluster_address, progress=False)
    coll, fcoll = streamq.open_store(copy), streamq.open_store(flat)
    assert coll.paths == fcoll.paths
    assert not fcoll.has_alpha.any()
    g, f = zarr.open_group(str(copy), mode="r"), zarr.open_group(str(flat), mode="r")
    assert "per_image/k12/alpha" not in f
    assert f[f"per_image/k{K}/centers"].shape[2] == 3
    opaque = np.flatnonzero(~coll.has_alpha)
    assert len(opaque) == 2
    for i in opaque:
        np.testing.assert_array_equal(g[f"per_image/k{K}/centers"][i][:, :3],
                                      f[f"per_image/k{K}/centers"][i])
        np.testing.assert_array_equal(g[f"per_image/k{K}/palette"][i],
                                      f[f"per_image/k{K}/palette"][i])
        np.testing.assert_array_equal(_image_labels(g, coll, K, i), _image_labels(f, fcoll, K, i))
        for col in ("sse", "mse", "psnr", "ssim"):  # SSIM too: to the last bit
            assert g[f"per_image/k{K}/images/{col}"][i] == f[f"per_image/k{K}/images/{col}"][i]
    centers = np.asarray(g[f"per_image/k{K}/centers"][:])
    for i in np.flatnonzero(coll.has_alpha):
        np.testing.assert_array_equal(_image_labels(g, coll, K, i),
                                      _nearest_rgba(_premultiplied_px(coll, i), centers[i]))


def test_per_image_alpha_refusals(alpha_store, tmp_path):
    """What per-image palettes with alpha cannot do says so in one line: the ``kmeans`` method
    (scikit-learn cannot hold the transparent entry). Their ``--quality``, ``--fixed-colors``,
    export ``--dither`` (tests/test_alpha_fit.py) and ``--zarr`` (above) work."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    with pytest.raises(ConfigError, match="per_image.method 'kmeans'.*add --method histogram"
                       ) as err:
        streamq.fit_per_image(copy, colors=[4], method="kmeans", scheduler="threads",
                              progress=False)
    assert "\n" not in str(err.value)
    assert "images with alpha" in str(err.value)


# -- a given palette with alpha --------------------------------------------------------------------
def _all_px(coll) -> np.ndarray:
    return np.concatenate([_premultiplied_px(coll, i) for i in range(len(coll))])


def test_quantize_with_an_rgba_palette_file(alpha_store, tmp_path, cluster_address):
    """``quantize --palette`` with ``#rrggbbaa`` colours: every pixel (opaque images too)
    labelled with its nearest colour in premultiplied RGBA (numpy brute force), MSE over
    premultiplied RGBA, and the exported PNGs' alpha is the palette's."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    given = ["#00000000", "#ffffff", "#20406080", "#c08040c0", "#ff000040", "#3060a0",
             "#e0d0b0", "#40302010"]
    pal = tmp_path / "p.json"
    pal.write_text(json.dumps(given))
    streamq.quantize(copy, palette=pal, overwrite=True, scheduler=cluster_address,
                     progress=False)
    rgba = np.asarray([[int(c[j:j + 2], 16) for j in (1, 3, 5)]
                       + [int(c[7:9], 16) if len(c) == 9 else 255] for c in given], np.uint8)
    fit = streamq.load_fit(str(copy))
    np.testing.assert_array_equal(fit.palette, rgba[:, :3])
    np.testing.assert_array_equal(fit.alpha, rgba[:, 3])
    target = np.concatenate([_premultiply(rgba), rgba[:, 3:]], axis=1).astype(np.float64)
    coll = streamq.open_store(copy)
    px = _all_px(coll)
    # integer distances (a given palette's colours tie exactly: the first wins)
    d8 = np.round(px * 255).astype(np.int64)[:, None] - target.astype(np.int64)[None]
    labels = np.argmin((d8[..., :3] ** 2).sum(2) + ((d8[..., :3] - d8[..., 3:]) ** 2).sum(2),
                       axis=1)
    g = zarr.open_group(str(copy), mode="r")
    stored = np.concatenate([g["quantize/labels"][int(o):int(o) + int(h * w)]
                             for o, h, w in zip(coll.offsets, coll.heights, coll.widths,
                                                strict=True)])
    np.testing.assert_array_equal(stored, labels)
    assert len(np.unique(labels)) >= 6  # transparent, soft and opaque entries all chosen
    mse = ((px * 255 - target[labels]) ** 2).mean()
    assert g.attrs["quantize"]["mse"] == pytest.approx(mse, rel=1e-12)
    assert fit.mse == pytest.approx(mse, rel=1e-12)
    np.testing.assert_array_equal(fit.counts, np.bincount(labels, minlength=len(given)))
    out = tmp_path / "png"
    streamq.export(copy, out, ids=[0, 8], scheduler=cluster_address, progress=False)
    for i in (0, 8):
        h, w = int(coll.heights[i]), int(coll.widths[i])
        off = int(coll.offsets[i])
        with Image.open((out / coll.paths[i]).with_suffix(".png")) as im:
            decoded = np.asarray(im.convert("RGBA"))
        np.testing.assert_array_equal(decoded.reshape(-1, 4), rgba[labels[off:off + h * w]])


def test_quantize_with_an_alpha_store_or_trns_image(alpha_store, tmp_path, cluster_address):
    """Another alpha store's fit as the palette gives that store's own labels (its RGBA
    centres travel with it); a palette PNG with ``tRNS`` gives its entries' alpha."""
    copy = tmp_path / "copy.zarr"
    shutil.copytree(alpha_store, copy)
    streamq.quantize(copy, palette=alpha_store, overwrite=True, scheduler=cluster_address,
                     progress=False)
    a, b = zarr.open_group(alpha_store, mode="r"), zarr.open_group(str(copy), mode="r")
    np.testing.assert_array_equal(b["quantize/labels"][:], a["quantize/labels"][:])
    assert b.attrs["quantize"]["mse"] == a.attrs["quantize"]["mse"]
    fit = streamq.load_fit(str(copy))
    np.testing.assert_array_equal(fit.alpha, streamq.load_fit(alpha_store).alpha)
    assert fit.palette_source["centers"] == "fit"

    from streamq.palettes import read_palette

    img = Image.new("P", (4, 1))
    img.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30, 250, 250, 250])
    img.putdata([0, 1, 2, 3])
    img.save(tmp_path / "p.png", transparency=bytes([0, 128, 255]))
    got = read_palette(tmp_path / "p.png")
    np.testing.assert_array_equal(got.alpha, [0, 128, 255, 255])
    np.testing.assert_array_equal(got.colors, [[0, 0, 0], [200, 100, 50], [10, 20, 30],
                                               [250, 250, 250]])


@pytest.mark.parametrize("k", [2, 16, 256])
def test_rgba_kmeans_plusplus_is_the_plain_loop(alpha_dir, k, monkeypatch):
    """k-means++ on real premultiplied RGBA (the cut-outs' distinct colours in the metric
    space, and the coarse grid's means kmeans_rgba races its starts on) by the search tree
    gives the plain loop's centres bit for bit (the loop kept as the reference), called
    directly and through kmeans_plusplus (which takes the tree where it pays), and the
    palettes of kmeans_rgba are the same either way."""
    from streamq.kmeans import plusplus
    from streamq.kmeans.rgba import _grid, kmeans_rgba
    from streamq.rgba import rgba_codes, to_metric

    root, kinds = alpha_dir
    px = np.concatenate([np.concatenate([_premultiply(a), a[..., 3:]], axis=2).reshape(-1, 4)
                         for a in (_source_rgba(root / name) for name in sorted(kinds))])
    rgba, counts = np.unique(px, axis=0, return_counts=True)
    codes = rgba_codes(rgba[:, :3], rgba[:, 3])
    assert np.all(np.diff(codes) > 0)
    x = to_metric(rgba / 255.0)
    gx, gw = _grid(codes, counts, x)
    assert len(gx) > 300
    runs = []
    by_tree = plusplus._plain_by_tree
    monkeypatch.setattr(plusplus, "_plain_by_tree", lambda *a: runs.append(len(a[0])) or by_tree(*a))
    trials = 2 + int(np.log(k))
    for points, w in ((x, counts.astype(np.float64)), (gx, gw)):
        for seed in range(3):
            rng = [seed, k]
            ours = plusplus.kmeans_plusplus(points, w, k, np.random.default_rng(rng))
            x0, w0 = np.ascontiguousarray(points), np.ascontiguousarray(w)
            g = np.random.default_rng(rng)
            first, uniforms = g.random(), g.random((k, trials))
            chosen = np.empty(k, np.int64)
            plusplus._kmeanspp_plain(x0, w0, k, plusplus._first(w0, first), uniforms, chosen,
                                     np.empty(len(x0)))
            np.testing.assert_array_equal(ours, x0[chosen], err_msg=f"seed {seed}")
            tree = np.empty(k, np.int64)  # the tree itself, whether it pays or not
            by_tree(x0, w0, k, plusplus._first(w0, first), uniforms, tree, np.empty(len(x0)))
            np.testing.assert_array_equal(tree, chosen, err_msg=f"seed {seed}")
    assert runs == [len(p) for p in (x, gx) if plusplus._tree_pays(len(p), k, trials)
                    for _ in range(3)]
    assert len(runs) == (6 if k == 256 else 0)  # (the tree pays at K = 256 here)
    ours = kmeans_rgba(codes, counts, k, n_init=4, seed=5)
    monkeypatch.setattr(plusplus, "TREE_FROM", 10**18)  # the plain loop only
    ref = kmeans_rgba(codes, counts, k, n_init=4, seed=5)
    np.testing.assert_array_equal(ours["metric_centers"], ref["metric_centers"])
    np.testing.assert_array_equal(ours["palette"], ref["palette"])
    np.testing.assert_array_equal(ours["alpha"], ref["alpha"])
