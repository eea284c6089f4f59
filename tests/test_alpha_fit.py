"""The shared fit of a collection with alpha with the options of the RGB fit: fixed colours
(``--fixed-colors``, held in premultiplied RGBA) and a quality target (``--quality``, the K
search on the RGBA histogram).

References: plain NumPy Lloyd in the metric space of :mod:`streamq.rgba` (every point against
every centre, the held centres never moved), and the brute-force premultiplied RGBA error of
every pixel of the store, independent of the fit's histogram."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import plain_weighted_lloyd, write_alpha_collection
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.errors import QualityError
from streamq.metrics import psnr

K = 12
# straight RGBA: an opaque brand red, a half-transparent blue, a faint yellow ([r, g, b, a]),
# the red again (dropped: kept once, first place)
GIVEN = ["#e30613", "#005ca980", [255, 204, 0, 40], "#e30613"]
FIXED = np.array([[0xE3, 0x06, 0x13, 255], [0x00, 0x5C, 0xA9, 0x80], [255, 204, 0, 40]],
                 np.uint8)


@pytest.fixture(scope="module")
def alpha_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("alpha_fit_src")
    write_alpha_collection(root)
    return root


@pytest.fixture(scope="module")
def base_store(alpha_src, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("alpha_fit") / "alpha.zarr")
    streamq.ingest(alpha_src, path, chunk_pixels=4096, scheduler="threads", progress=False)
    return path


@pytest.fixture
def store_copy(base_store, tmp_path) -> str:
    dst = tmp_path / "copy.zarr"
    shutil.copytree(base_store, dst)
    return str(dst)


def _premultiply(rgba: np.ndarray) -> np.ndarray:
    """``(n, 4)`` straight uint8 RGBA as premultiplied RGBA (round half up, as ingest)."""
    c, a = rgba[:, :3].astype(np.float64), rgba[:, 3:].astype(np.float64)
    return np.concatenate([np.floor(c * a / 255 + 0.5), a], axis=1).astype(np.uint8)


def _pixels(store: str) -> np.ndarray:
    """Every pixel of the store as ``(n, 4)`` uint8 premultiplied RGBA, read image by image."""
    coll = streamq.open_store(store)
    return np.concatenate([np.dstack([coll.read(i), coll.read_alpha(i)]).reshape(-1, 4)
                           for i in range(len(coll))])


def _metric(p: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA in [0, 1] as points whose squared distance is the mean of the squared
    errors of the two composites (on black and on white), written from that definition:
    ``|c|^2 + |c - a|^2`` per channel over 2 is ``|c - a/2|^2 + a^2/4``."""
    return np.concatenate([p[:, :3] - p[:, 3:] / 2, np.repeat(p[:, 3:] / 2, 3, axis=1)], axis=1)


def _plain_lloyd(x, w, c, n_fixed):
    """Weighted Lloyd to zero label changes (:func:`helpers.plain_weighted_lloyd`), the first
    ``n_fixed`` centres held: ``(centres, inertia)``."""
    c, _, _ = plain_weighted_lloyd(x, w, c, n_fixed)
    return c, _inertia(x, w, c)


def _inertia(x, w, c):
    return float((w * ((x[:, None] - c[None]) ** 2).sum(2).min(1)).sum())


def _check_labels(store: str, px: np.ndarray, centers: np.ndarray, palette: np.ndarray,
                  alpha: np.ndarray) -> float:
    """Brute force: every stored label (quantize's) is a nearest centre of its pixel by the
    mean of the squared errors of the two composites, on black and on white (exact ties, which
    colours on the 1/255 lattice such as fixed ones make, may go either way); returns the MSE
    over premultiplied RGBA of those labels, over the four channels."""
    coll = streamq.open_store(store)
    g = zarr.open_group(store, mode="r")
    labels = np.concatenate([g["quantize/labels"][int(o):int(o) + int(h * w)]
                             for o, h, w in zip(coll.offsets, coll.heights, coll.widths,
                                                strict=True)]).astype(np.int64)
    p = px / 255.0
    black, white = p[:, :3], p[:, :3] + 1 - p[:, 3:]
    cb, cw = centers[:, :3], centers[:, :3] + 1 - centers[:, 3:]
    d = ((black[:, None] - cb[None]) ** 2).sum(2) + ((white[:, None] - cw[None]) ** 2).sum(2)
    chosen = d[np.arange(len(d)), labels]
    assert (chosen <= d.min(1) + 1e-12).all()
    target = _premultiply(np.concatenate([palette, alpha[:, None]], axis=1)).astype(np.float64)
    return float(((px.astype(np.float64) - target[labels]) ** 2).mean())


# -- fixed colours -------------------------------------------------------------------------------
def test_fixed_colours_are_held_exactly_in_premultiplied_rgba(store_copy, tmp_path):
    from streamq.kmeans import initial_centers
    from streamq.kmeans.rgba import _grid
    from streamq.rgba import rgba_codes, to_metric

    fx = tmp_path / "fx.json"
    fx.write_text(json.dumps(GIVEN))
    res = streamq.fit(store_copy, colors=K, fixed_colors=str(fx), n_init=1, seed=3,
                      scheduler="threads")
    assert res.n_fixed == 3  # the repeated red was dropped
    np.testing.assert_array_equal(res.palette[:3], FIXED[:, :3])  # straight, as given
    np.testing.assert_array_equal(res.alpha[:3], FIXED[:, 3])
    np.testing.assert_array_equal(res.centers[:3], _premultiply(FIXED) / 255.0)
    # the fully transparent entry stays pinned, first after the fixed colours
    np.testing.assert_array_equal(res.centers[3], 0)
    assert res.alpha[3] == 0
    assert (np.diff((res.alpha[3:] == 255).astype(int)) >= 0).all()  # then transparent first
    assert len(np.unique(np.concatenate([res.palette, res.alpha[:, None]], axis=1), axis=0)) == K
    assert "(lloyd, premultiplied RGBA, 3 fixed)" in str(res)
    assert "minibatch" not in str(res)
    loaded = streamq.load_fit(store_copy)
    np.testing.assert_array_equal(loaded.palette, res.palette)
    np.testing.assert_array_equal(loaded.alpha, res.alpha)
    assert loaded.n_fixed == 3
    sec = streamq.store.Store.open(store_copy).section("fit")
    assert sec["fixed_colors"]["colors"] == ["#e30613", "#005ca980", "#ffcc0028"]
    # quantize labels each pixel with a nearest entry; the fit's MSE is theirs (brute force)
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    px = _pixels(store_copy)
    mse = _check_labels(store_copy, px, res.centers, res.palette, res.alpha)
    assert res.mse == pytest.approx(mse, rel=1e-12)
    g = zarr.open_group(store_copy, mode="r")
    assert g.attrs["quantize"]["mse"] == pytest.approx(mse, rel=1e-12)
    # at least as good as the plain Lloyd from the same start (held: the three colours and
    # the transparent one), run as the fit runs it: on the colour grid, then on every colour
    rgba, w = np.unique(px, axis=0, return_counts=True)
    codes = rgba_codes(rgba[:, :3], rgba[:, 3])
    order = np.argsort(codes)
    codes, rgba, w = codes[order], rgba[order], w[order].astype(np.float64)
    assert codes[0] == 0
    xm = to_metric(rgba / 255.0)  # the module's points: the same distances as _metric's
    sample = rgba[::997] / 255.0
    np.testing.assert_allclose(((to_metric(sample)[:, None] - to_metric(sample)[None]) ** 2).sum(2),
                               ((_metric(sample)[:, None] - _metric(sample)[None]) ** 2).sum(2),
                               atol=1e-12)
    gx, gw = _grid(codes, w, xm)
    if 2 * len(gx) > len(xm) or len(gx) < K:
        gx, gw = xm, w
    start = initial_centers(gx[1:], gw[1:], K - 1, "k-means++", np.random.default_rng([3, 1000]),
                            fixed=to_metric(_premultiply(FIXED) / 255.0))
    start = np.concatenate([start[:3], np.zeros((1, 4)), start[3:]])
    on_grid, _ = _plain_lloyd(gx, gw, start, 4)
    _, ref = _plain_lloyd(xm, w, on_grid, 4)
    assert _inertia(xm, w, to_metric(res.centers)) <= ref * (1 + 1e-9)
    # export: the fixed colours are the PNG's first entries, with their alpha
    out = tmp_path / "png"
    streamq.export(store_copy, out, ids=[0], scheduler="threads", progress=False)
    with Image.open(next(out.rglob("*.png"))) as im:
        pal = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
        trns = im.info["transparency"]
    np.testing.assert_array_equal(pal[:3], FIXED[:, :3])
    assert list(trns[:3]) == FIXED[:, 3].tolist()


def test_a_transparent_fixed_colour_is_the_pinned_entry(store_copy, tmp_path):
    """A fixed colour of alpha 0 is the fully transparent point: it takes the pinned entry's
    place (entry 0, its straight colour as given), no second transparent entry is made."""
    fx = tmp_path / "fx.hex"
    fx.write_text("#ff000000\n#ffffff\n")
    res = streamq.fit(store_copy, colors=6, fixed_colors=str(fx), n_init=1,
                      scheduler="threads")
    assert res.n_fixed == 2
    np.testing.assert_array_equal(res.palette[:2], [[255, 0, 0], [255, 255, 255]])
    np.testing.assert_array_equal(res.alpha[:2], [0, 255])
    np.testing.assert_array_equal(res.centers[0], 0)
    assert (res.alpha[1:] > 0).all()
    assert "2 fixed colours kept" in res.stop_reason
    assert "the fully transparent colour" not in res.stop_reason


def test_opaque_fixed_colours_on_an_opaque_store_ignore_alpha(tmp_path, alpha_src):
    """An opaque collection takes fixed colours without their alpha, as before: the colours
    of ``#rrggbbaa`` are held and the fingerprint is that of the same colours as ``#rrggbb``."""
    flat = tmp_path / "flat.zarr"
    streamq.ingest(alpha_src, flat, alpha="flatten", chunk_pixels=4096, scheduler="threads",
                   progress=False)
    fx = tmp_path / "fx.json"
    fx.write_text('["#e3061380", "#005ca9"]')
    res = streamq.fit(flat, colors=6, algorithm="lloyd", fixed_colors=str(fx), n_init=1,
                      scheduler="threads")
    assert res.alpha is None
    np.testing.assert_array_equal(res.palette[:2], [[0xE3, 6, 0x13], [0, 0x5C, 0xA9]])
    plain = tmp_path / "plain.json"
    plain.write_text('["#e30613", "#005ca9"]')
    again = streamq.fit(flat, colors=6, algorithm="lloyd", fixed_colors=str(plain), n_init=1,
                        scheduler="threads")
    assert again.status == "already complete"


def test_fixed_colours_cli_on_a_store_with_alpha(store_copy, tmp_path):
    fx = tmp_path / "fx.json"
    fx.write_text('["#ff0000", "#00ff00"]')
    result = CliRunner().invoke(cli, ["fit", store_copy, "--colors", "8", "--fixed-colors",
                                      str(fx), "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    fit = streamq.load_fit(store_copy)
    np.testing.assert_array_equal(fit.palette[:2], [[255, 0, 0], [0, 255, 0]])
    np.testing.assert_array_equal(fit.alpha[:2], [255, 255])
    info = CliRunner().invoke(cli, ["info", store_copy])
    assert "fixed        2 colours, entries 0..1: #ff0000 #00ff00" in info.output


# -- a quality target ----------------------------------------------------------------------------
def test_quality_search_on_rgba_is_the_smallest_k_reaching_max(store_copy, tmp_path):
    """The K search on the RGBA histogram: the chosen K's PSNR (over premultiplied RGBA, brute
    force from quantize's labels) reaches MAX, K - 1 fitted on its own (``fit -k K-1``) misses
    it, and the chosen palette is the one ``fit -k K`` gives."""
    qmax = 24.0
    res = streamq.fit(store_copy, quality=(20, qmax), k_range=(2, 40), n_init=2,
                      scheduler="threads")
    k = res.k
    assert 2 < k < 40
    assert res.alpha is not None
    assert len(res.alpha) == k
    assert res.algorithm == "lloyd"
    assert res.psnr >= qmax
    q = res.quality
    assert q["k"] == k
    assert q["reached"] is True
    assert q["searched"] == [2, 40]
    tried = dict((int(kk), m) for kk, m in q["tried"])
    assert k - 1 in tried
    assert psnr(tried[k - 1]) < qmax
    assert f"K={k} is the smallest" in str(res)
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    mse = _check_labels(store_copy, _pixels(store_copy), res.centers, res.palette, res.alpha)
    assert res.mse == pytest.approx(mse, rel=1e-12)
    # independent fits of K - 1 and K
    below = tmp_path / "below.zarr"
    shutil.copytree(store_copy, below)
    prev = streamq.fit(below, colors=k - 1, n_init=2, scheduler="threads", overwrite=True)
    assert prev.psnr < qmax
    assert prev.mse == pytest.approx(tried[k - 1], rel=1e-12)
    same = streamq.fit(below, colors=k, n_init=2, scheduler="threads", overwrite=True)
    np.testing.assert_array_equal(same.palette, res.palette)
    np.testing.assert_array_equal(same.alpha, res.alpha)
    np.testing.assert_array_equal(same.centers, res.centers)
    assert same.mse == res.mse


def test_quality_below_min_on_rgba_exits_99(store_copy):
    result = CliRunner().invoke(cli, ["fit", store_copy, "--quality", "60-70", "--k-range", "2-6",
                                      "--scheduler", "threads"])
    assert result.exit_code == 99, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "quality 60-70 dB not reached: K=6, the largest K searched (2..6)" in lines[0]
    sec = streamq.store.Store.open(store_copy).section("fit")
    assert sec["state"] == "failed"
    assert sec["quality"]["reached"] is False
    assert [k for k, _ in sec["quality"]["tried"]] == [6]
    with pytest.raises(QualityError):  # a rerun fails again
        streamq.fit(store_copy, quality=(60, 70), k_range=(2, 6), scheduler="threads")
    # a quality target and fixed colours together stay refused, as for an opaque store
    result = CliRunner().invoke(cli, ["fit", store_copy, "--quality", "20-24", "--fixed-colors",
                                      "x.json", "--scheduler", "threads", "--overwrite"])
    assert result.exit_code == 1
    assert "does not go with 'fit.quality'" in result.output


# -- per-image palettes with alpha ----------------------------------------------------------------
def _image_px(coll, i: int) -> np.ndarray:
    """``(n, 4)`` uint8 premultiplied RGBA of image ``i`` as stored."""
    return np.dstack([coll.read(i), coll.read_alpha(i)]).reshape(-1, 4)


def _distances(px: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Brute force: the mean of the squared errors of the two composites (on black and on
    white) of every pixel against every centre (premultiplied RGBA in [0, 1])."""
    p = px / 255.0
    black, white = p[:, :3], p[:, :3] + 1 - p[:, 3:]
    cb, cw = centers[:, :3], centers[:, :3] + 1 - centers[:, 3:]
    return ((black[:, None] - cb[None]) ** 2).sum(2) + ((white[:, None] - cw[None]) ** 2).sum(2)


def _brute_psnr_rgba(px: np.ndarray, centers: np.ndarray, palette: np.ndarray,
                     alpha: np.ndarray) -> float:
    """PSNR over premultiplied RGBA of every pixel on its nearest centre (first on ties) shown
    as its uint8 entry (straight ``palette`` and ``alpha``, premultiplied as a decoder does)."""
    labels = _distances(px, centers).argmin(1)
    target = _premultiply(np.concatenate([palette, alpha[:, None]], axis=1)).astype(np.float64)
    return psnr(float(((px.astype(np.float64) - target[labels]) ** 2).mean()))


def _flat_twin(alpha_src, tmp_path, **kw):
    """The same collection ingested with --alpha flatten (same ids; opaque images' pixels
    identical), fitted per image with ``kw``: its per-image group."""
    flat = tmp_path / "flat.zarr"
    streamq.ingest(alpha_src, flat, alpha="flatten", chunk_pixels=4096, scheduler="threads",
                   progress=False)
    streamq.fit_per_image(flat, method="histogram", scheduler="threads", progress=False, **kw)
    return zarr.open_group(str(flat), mode="r")


def test_per_image_quality_with_alpha(store_copy, alpha_src, tmp_path):
    """Each image with alpha gets the smallest K of the range whose RGBA palette reaches MAX
    over premultiplied RGBA (brute force over every pixel); its palette is the per-image RGBA
    fit of that K, K - 1 fitted on its own misses MAX; opaque images beside them get the K,
    palette and PSNR of a store without alpha."""
    from streamq.per_image import fit_image_rgba
    from streamq.rgba import palette_of

    lo, hi, qmax = 4, 24, 27.0
    kw = {"quality": [18, qmax], "k_range": [lo, hi], "seed": 1}
    streamq.fit_per_image(store_copy, method="histogram", scheduler="threads", progress=False,
                          **kw)
    coll = streamq.open_store(store_copy)
    g = zarr.open_group(store_copy, mode="r")
    centers = g[f"per_image/k{hi}/centers"][:]
    palettes, alphas = g[f"per_image/k{hi}/palette"][:], g[f"per_image/k{hi}/alpha"][:]
    t = {c: g[f"per_image/quality/{c}"][:] for c in ("k", "psnr", "met")}
    between = 0
    for i in np.flatnonzero(coll.has_alpha):
        px, k = _image_px(coll, i), int(t["k"][i])
        d = len(np.unique(px, axis=0))
        top = min(hi, d)
        assert min(lo, top) <= k <= top
        np.testing.assert_array_equal(centers[i][k:], np.repeat(centers[i][:1], hi - k, 0))
        value = _brute_psnr_rgba(px, centers[i][:k], palettes[i][:k], alphas[i][:k])
        assert value == pytest.approx(float(t["psnr"][i]), rel=1e-9)
        if k < d:
            want = fit_image_rgba(coll.read(i).reshape(-1, 3), coll.read_alpha(i).reshape(-1), k,
                                  0.7, 1, int(i))
            np.testing.assert_allclose(centers[i][:k], want, rtol=0, atol=1e-12)
        assert bool(t["met"][i]) == (value >= qmax)
        if value >= qmax and k > lo:
            c = fit_image_rgba(coll.read(i).reshape(-1, 3), coll.read_alpha(i).reshape(-1),
                               k - 1, 0.7, 1, int(i))
            below = _brute_psnr_rgba(px, c, *palette_of(c))
            assert below < qmax, (coll.paths[i], k, below)
            between += k < top
        elif value < qmax:
            assert k == top
    assert between >= 2  # the rule was exercised between LO and the top
    # quantize's per-image PSNR over premultiplied RGBA is the search's
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    g = zarr.open_group(store_copy, mode="r")
    np.testing.assert_allclose(g[f"per_image/k{hi}/images/psnr"][:], t["psnr"], rtol=1e-9)
    # exported: each image's own K entries, with their alpha (tRNS within the palette)
    out = tmp_path / "png"
    streamq.export(store_copy, out, per_image=hi, scheduler="threads", progress=False)
    for i in np.flatnonzero(coll.has_alpha):
        k = int(t["k"][i])
        off, h, w = int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i])
        labels = np.asarray(g[f"per_image/k{hi}/labels"][off:off + h * w])
        assert labels.max() < k
        with Image.open((out / coll.paths[i]).with_suffix(".png")) as im:
            assert im.mode == "P"
            trns = im.info["transparency"]  # bytes, or the one transparent entry's index
            assert (len(trns) if isinstance(trns, bytes) else trns + 1) <= k
            decoded = np.asarray(im.convert("RGBA")).reshape(-1, 4)
        np.testing.assert_array_equal(decoded[:, :3], palettes[i][labels])
        np.testing.assert_array_equal(decoded[:, 3], alphas[i][labels])
    f = _flat_twin(alpha_src, tmp_path, **kw)
    for i in np.flatnonzero(~coll.has_alpha):
        assert f["per_image/quality/k"][i] == t["k"][i]
        assert f["per_image/quality/psnr"][i] == t["psnr"][i]
        np.testing.assert_array_equal(f[f"per_image/k{hi}/centers"][i], centers[i][:, :3])
        np.testing.assert_array_equal(f[f"per_image/k{hi}/palette"][i], palettes[i])
        assert (alphas[i] == 255).all()


def test_per_image_fixed_colours_with_alpha(store_copy, alpha_src, tmp_path):
    """--fixed-colors per image on a store with alpha (every pixel fitted: sample 1): each
    image with alpha holds them as its first entries (straight RGBA as given, centres their
    premultiplied value exactly), the transparent entry pinned after them, every other centre
    the mean of its pixels (brute-force nearest labels); with a quality target every K tried
    holds them; opaque images as in a store without alpha."""
    fx = tmp_path / "fx.json"
    fx.write_text(json.dumps(GIVEN))
    ks = [6, K]
    streamq.fit_per_image(store_copy, colors=ks, method="histogram", sample=1.0, n_init=2,
                          fixed_colors=str(fx), scheduler="threads", progress=False)
    coll = streamq.open_store(store_copy)
    g = zarr.open_group(store_copy, mode="r")
    held = _premultiply(FIXED) / 255.0
    for k in ks:
        centers = g[f"per_image/k{k}/centers"][:]
        palettes, alphas = g[f"per_image/k{k}/palette"][:], g[f"per_image/k{k}/alpha"][:]
        for i in np.flatnonzero(coll.has_alpha):
            np.testing.assert_array_equal(palettes[i][:3], FIXED[:, :3])
            np.testing.assert_array_equal(alphas[i][:3], FIXED[:, 3])
            np.testing.assert_array_equal(centers[i][:3], held)
            px = _image_px(coll, i)
            n_held = 3
            if (px[:, 3] == 0).any():  # the pinned transparent entry, right after them
                np.testing.assert_array_equal(centers[i][3], 0)
                n_held = 4
            dist = _distances(px, centers[i])
            labels = dist.argmin(1)
            for j in range(n_held, k):
                mine = labels == j
                if mine.any():
                    np.testing.assert_allclose(centers[i][j], (px[mine] / 255.0).mean(0),
                                               rtol=0, atol=1e-9)
        f = _flat_twin(alpha_src, tmp_path / str(k), colors=[k], sample=1.0, n_init=2,
                       fixed_colors=str(fx))
        for i in np.flatnonzero(~coll.has_alpha):
            np.testing.assert_array_equal(f[f"per_image/k{k}/centers"][i], centers[i][:, :3])
            np.testing.assert_array_equal(f[f"per_image/k{k}/palette"][i], palettes[i])
            np.testing.assert_array_equal(palettes[i][:3], FIXED[:, :3])
    sec = g.attrs["per_image"]
    assert sec["fixed_colors"]["colors"] == ["#e30613", "#005ca980", "#ffcc0028"]
    # with a quality target: every K tried holds them, quantize's PSNR is the search's
    streamq.fit_per_image(store_copy, quality=[18, 26], k_range=[5, 16], method="histogram",
                          fixed_colors=str(fx), overwrite=True, scheduler="threads",
                          progress=False)
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    g = zarr.open_group(store_copy, mode="r")
    palettes, alphas = g["per_image/k16/palette"][:], g["per_image/k16/alpha"][:]
    for i in np.flatnonzero(coll.has_alpha):
        np.testing.assert_array_equal(palettes[i][:3], FIXED[:, :3])
        np.testing.assert_array_equal(alphas[i][:3], FIXED[:, 3])
    assert (g["per_image/quality/k"][:] >= 5).all()
    np.testing.assert_allclose(g["per_image/k16/images/psnr"][:], g["per_image/quality/psnr"][:],
                               rtol=1e-9)


def test_per_image_quality_below_min_with_alpha_exits_99(store_copy):
    args = ["fit", store_copy, "--per-image", "--method", "histogram", "--quality", "45-50",
            "--k-range", "2-3", "--scheduler", "threads", "--no-progress"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 99, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1
    assert "images stay below MIN 45 dB even with K=3" in lines[0]
    coll = streamq.open_store(store_copy)
    g = zarr.open_group(store_copy, mode="r")
    reason = g["per_image/quality/reason"][:]
    assert all(str(reason[i]).startswith("below MIN 45 dB: K=3")
               for i in np.flatnonzero(coll.has_alpha))


# -- export --dither with alpha -------------------------------------------------------------------
def _gradient(h: int = 96, w: int = 128) -> np.ndarray:
    """A smooth straight-RGBA gradient: grey ramps across (64..192), alpha down from a fully
    transparent band (the top 16 rows) through 85 to opaque."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    grey = 64 + 128 * x / (w - 1)
    a = np.where(y < 16, 0, 85 + 170 * (y - 16) / (h - 17))
    return np.round(np.stack([grey, grey, grey, a], 2)).astype(np.uint8)


# its palette: greys 64, 128, 192 at alphas 85, 170, 255 and the transparent colour, so that
# every premultiplied pixel lies in the hull of the entries (a cell's four corners)
LATTICE = ["#00000000"] + [f"#{g:02x}{g:02x}{g:02x}{a:02x}" for a in (85, 170, 255)
                           for g in (64, 128, 192)]


def test_dither_with_alpha_diffuses_in_premultiplied_rgba(tmp_path):
    """``export --dither`` of a palette with alpha: the PNG decodes to palette entries only,
    fully transparent source pixels stay alpha 0, and averaged over 8x8 blocks the dithered
    image is closer to the source (premultiplied RGBA) than the un-dithered one, whose flat
    bands carry a local bias."""
    src = tmp_path / "src"
    src.mkdir()
    rgba = _gradient()
    Image.fromarray(rgba, mode="RGBA").save(src / "gradient.png")
    store = str(tmp_path / "g.zarr")
    streamq.ingest(src, store, scheduler="threads", progress=False)
    pal = tmp_path / "lattice.json"
    pal.write_text(json.dumps(LATTICE))
    streamq.quantize(store, palette=str(pal), scheduler="threads", progress=False)
    fit = streamq.load_fit(store)
    decoded = {}
    for dither in (False, True):
        out = tmp_path / f"out{int(dither)}"
        streamq.export(store, out, dither=dither, scheduler="threads", progress=False)
        with Image.open(out / "gradient.png") as im:
            assert im.mode == "P"
            decoded[dither] = np.asarray(im.convert("RGBA"))
    entries = {tuple(e) for e in np.concatenate([fit.palette, fit.alpha[:, None]], 1).tolist()}
    src_px = _premultiply(rgba.reshape(-1, 4)).astype(np.float64).reshape(rgba.shape)
    bias = {}
    for dither, img in decoded.items():
        assert {tuple(c) for c in img.reshape(-1, 4).tolist()} <= entries  # entries only
        assert (img[..., 3][rgba[..., 3] == 0] == 0).all()  # transparent stays transparent
        px = _premultiply(img.reshape(-1, 4)).astype(np.float64).reshape(rgba.shape)
        diff = (px - src_px).reshape(12, 8, 16, 8, 4).mean((1, 3))  # 8x8 block means
        bias[dither] = float(np.sqrt((diff ** 2).mean()))
    assert not np.array_equal(decoded[True], decoded[False])
    assert bias[True] < 0.5 * bias[False], bias
    # as JPEG (composited on the background) and WebP too
    for fmt in ("webp", "jpeg"):
        out = tmp_path / fmt
        streamq.export(store, out, dither=True, format=fmt, scheduler="threads", progress=False)
        with Image.open(next(out.rglob(f"*.{'jpg' if fmt == 'jpeg' else fmt}"))) as im:
            assert im.size == (rgba.shape[1], rgba.shape[0])


def test_dither_rgba_labels_are_nearest_to_the_diffused_values():
    """The reference loop written from the definition (raster Floyd–Steinberg, nearest entry by
    the composites on black and on white, transparent pixels skipped) gives the same labels."""
    from streamq.dither import dither_rgba

    rgba = _gradient(24, 20)
    px = _premultiply(rgba.reshape(-1, 4))
    pal = np.array([[0, 0, 0], [200, 120, 90], [60, 180, 120], [220, 60, 140], [90, 90, 200]],
                   np.uint8)
    pal_a = np.array([0, 255, 128, 200, 60], np.uint8)
    got = dither_rgba(px[:, :3], px[:, 3], 24, 20, pal, pal_a)
    target = _premultiply(np.concatenate([pal, pal_a[:, None]], 1)).astype(np.float64)
    v = px.reshape(24, 20, 4).astype(np.float64)
    want = np.zeros((24, 20), np.int64)
    for y in range(24):
        for x in range(20):
            if px.reshape(24, 20, 4)[y, x, 3] == 0:
                want[y, x] = 0  # nearest (0, 0, 0, 0): the transparent entry
                continue
            u = v[y, x].copy()
            p = u.copy()
            p[3] = np.clip(p[3], 0, 255)
            p[:3] = np.clip(p[:3], 0, p[3])
            d = (((p[:3] / 255 - target[:, :3] / 255) ** 2).sum(1)
                 + (((p[:3] + 255 - p[3]) / 255 - (target[:, :3] + 255 - target[:, 3:]) / 255)
                    ** 2).sum(1))
            j = int(d.argmin())
            want[y, x] = j
            e = np.clip(u - target[j], -64, 64)  # before clipping, clamped
            for dy, dx, f in ((0, 1, 7), (1, -1, 3), (1, 0, 5), (1, 1, 1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < 24 and 0 <= xx < 20 and px.reshape(24, 20, 4)[yy, xx, 3] != 0:
                    v[yy, xx] += e * f / 16
    np.testing.assert_array_equal(got, want)


def test_per_image_dither_with_alpha(store_copy, alpha_src, tmp_path):
    """``export --per-image K --dither``: an image with alpha is dithered to its own RGBA
    palette (its entries only, transparent pixels stay transparent); an opaque image beside it
    decodes as the same image dithered from a store without alpha."""
    streamq.fit_per_image(store_copy, colors=[6], method="histogram", scheduler="threads",
                          progress=False)
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    out = tmp_path / "d"
    streamq.export(store_copy, out, per_image=6, dither=True, scheduler="threads",
                   progress=False)
    coll = streamq.open_store(store_copy)
    g = zarr.open_group(store_copy, mode="r")
    palettes, alphas = g["per_image/k6/palette"][:], g["per_image/k6/alpha"][:]
    _flat_twin(alpha_src, tmp_path, colors=[6])
    flat = tmp_path / "flat.zarr"
    streamq.quantize(flat, scheduler="threads", progress=False)
    flat_out = tmp_path / "fd"
    streamq.export(flat, flat_out, per_image=6, dither=True, scheduler="threads", progress=False)
    changed = 0
    for i, name in enumerate(coll.paths):
        with Image.open((out / name).with_suffix(".png")) as im:
            decoded = np.asarray(im.convert("RGBA"))
        if coll.has_alpha[i]:
            own = {tuple(e) for e in np.concatenate([palettes[i], alphas[i][:, None]], 1).tolist()}
            assert {tuple(c) for c in decoded.reshape(-1, 4).tolist()} <= own
            assert (decoded[..., 3][coll.read_alpha(i) == 0] == 0).all()
            h, w = int(coll.heights[i]), int(coll.widths[i])
            off = int(coll.offsets[i])
            labels = np.asarray(g["per_image/k6/labels"][off:off + h * w]).reshape(h, w)
            plain = np.concatenate([palettes[i], alphas[i][:, None]], 1)[labels]
            changed += not np.array_equal(plain, decoded)
        else:
            with Image.open((flat_out / name).with_suffix(".png")) as im:
                np.testing.assert_array_equal(decoded, np.asarray(im.convert("RGBA")))
    assert changed >= 1
