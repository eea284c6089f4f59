"""Fixed colours (``fit --fixed-colors``): kept exactly, the others fitted.

References: NumPy loops written from the definitions, independent of ``streamq.kmeans``:
weighted Lloyd in float64 with ``argmin`` labels (lowest index on ties), the free centres
moved to the weighted means of their points and the fixed ones held, scikit-learn's
stopping rule and empty-cluster rule applied to the free centres only; greedy weighted
k-means++ started from the fixed centres over the same draws.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_sample_image

import streamq
import streamq.store
from streamq.cli.main import cli
from streamq.colorspace import to_space
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fit.lloyd import GRID_BITS
from streamq.kmeans import codes_to_points, distinct_colours, initial_centers, kmeans, lloyd
from streamq.kmeans.codes import cell_means, rgb_to_codes
from streamq.kmeans.filtering import lloyd_cells
from streamq.kmeans.plusplus import cell_order
from streamq.kmeans.starts import fixed_first

# white, black and three brand colours, white repeated (dropped: kept once, first place)
BRAND = [(255, 255, 255), (0, 0, 0), (0xE3, 0x06, 0x13), (0x00, 0x5C, 0xA9), (0xFF, 0xCC, 0x00),
         (255, 255, 255)]
FIXED = np.array(BRAND[:5], dtype=np.uint8)


# -- references ----------------------------------------------------------------------------------
def _labels(x, c):
    return ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)


def reference_lloyd(x, w, centers, fixed, tol=0.0, max_iter=1000):
    """Weighted Lloyd with the centres of mask ``fixed`` held: ``(centres, inertia)``."""
    c = np.array(centers, dtype=np.float64)
    k = len(c)
    mean = np.average(x, axis=0, weights=w)
    threshold = tol * np.average((x - mean) ** 2, axis=0, weights=w).mean()
    labels = _labels(x, c)
    for _ in range(max_iter):
        weight = np.bincount(labels, weights=w, minlength=k)
        empty = [j for j in range(k) if weight[j] == 0 and not fixed[j]]
        if empty:  # the farthest points from their centres refill the free empty clusters
            far = np.argsort(-((x - c[labels]) ** 2).sum(1), kind="stable")
            for j, i in zip(empty, far, strict=False):
                labels[i] = j
            weight = np.bincount(labels, weights=w, minlength=k)
        new = c.copy()
        for j in range(k):
            if not fixed[j] and weight[j] > 0:
                new[j] = (w[labels == j, None] * x[labels == j]).sum(0) / weight[j]
        shift = ((new - c) ** 2).sum()
        c = new
        new_labels = _labels(x, c)
        changed = (new_labels != labels).any()
        labels = new_labels
        if (tol > 0 and shift <= threshold) or (not changed and not empty):
            break
    return c, inertia(x, w, c)


def inertia(x, w, c):
    return float((w * ((x[:, None, :] - c[None]) ** 2).sum(2).min(1)).sum())


def reference_kmeanspp(x, w, k, rng, fixed, order):
    """Greedy weighted k-means++ from the ``fixed`` centres, over the points in ``order``."""
    trials = 2 + int(math.log(k))
    uniforms = rng.random((k - len(fixed) + 1, trials))
    xs, ws = x[order], w[order]
    closest = ((xs[:, None, :] - fixed[None]) ** 2).sum(2).min(1)
    chosen = []
    for c in range(1, k - len(fixed) + 1):
        cum = np.cumsum(ws * closest)
        best = None
        for t in range(trials):
            j = min(int(np.searchsorted(cum, uniforms[c, t] * cum[-1], side="right")), len(xs) - 1)
            cand = np.minimum(closest, ((xs - xs[j]) ** 2).sum(1))
            pot = (ws * cand).sum()
            if best is None or pot < best[0]:
                best = (pot, j, cand)
        chosen.append(best[1])
        closest = best[2]
    return np.concatenate([fixed, xs[chosen]])


@pytest.fixture(scope="module")
def photo_points():
    """Every distinct colour of a crop of a real photo, with its count."""
    rgb = np.ascontiguousarray(load_sample_image("china.jpg")[100:260, 250:450].reshape(-1, 3))
    codes, counts = distinct_colours(rgb)
    return codes_to_points(codes), counts.astype(np.float64)


# -- the k-means core ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def held_start(photo_points):
    """A start with fixed centres at any positions (one far from every colour: always empty,
    never refilled when a free cluster is) and a free duplicate, and where the NumPy
    reference Lloyd ends from it: ``(start, fixed, reference centres, reference inertia)``
    (the one reference of both forms of Lloyd)."""
    x, w = photo_points
    k = 10
    start = initial_centers(x, w, k, "k-means++", np.random.default_rng(3))
    fixed = np.zeros(k, dtype=bool)
    fixed[[1, 4, 8]] = True
    start[1] = [1.0, 1.0, 1.0]
    start[4] = [0.0, 0.0, 0.0]
    start[8] = [3.0, -2.0, 3.0]  # far from every colour: an empty cluster that must stay
    start[9] = start[2]  # a free duplicate: empty, so the empty-cluster rule runs
    return (start, fixed, *reference_lloyd(x, w, start, fixed))


@pytest.mark.parametrize("form", ["bounded", "cells"])
def test_lloyd_holds_fixed_centers_and_matches_the_reference(photo_points, held_start, form):
    """Fixed centres at any positions (one far from every colour: always empty, never
    refilled when a free cluster is) stay bit for bit; the free ones end where the NumPy
    reference ends."""
    x, w = photo_points
    start, fixed, ref, ref_inertia = held_start
    start = start.copy()  # each form from its own copy
    run = lloyd if form == "bounded" else lloyd_cells
    res = run(x, w, start, tol=0, max_iter=500, fixed=fixed)
    assert np.array_equal(res.centers[fixed], start[fixed])
    assert res.stop == "labels"
    np.testing.assert_allclose(res.centers, ref, atol=1e-9)
    assert res.inertia <= ref_inertia * (1 + 1e-12)
    assert not (res.labels == 8).any()
    plain = run(x, w, start, tol=0, max_iter=500)  # without the mask the far centre moves
    assert not np.array_equal(plain.centers[8], start[8])


def test_kmeans_plusplus_starts_from_the_fixed_centers(photo_points):
    x, w = photo_points
    held = to_space(FIXED, "rgb").astype(np.float64)
    ours = initial_centers(x, w, 16, "k-means++", np.random.default_rng(7), fixed=held)
    ref = reference_kmeanspp(x, w, 16, np.random.default_rng(7), held, cell_order(x)[0])
    np.testing.assert_array_equal(ours, ref)
    assert np.array_equal(ours[:5], held)
    # random starts: the fixed centres, then distinct points
    rnd = initial_centers(x, w, 16, "random", np.random.default_rng(7), fixed=held)
    assert np.array_equal(rnd[:5], held)
    assert len(np.unique(rnd[5:], axis=0)) == 11


def test_kmeans_with_fixed_centers_converges_as_the_reference(photo_points):
    x, w = photo_points
    held = to_space(FIXED, "rgb").astype(np.float64)
    res = kmeans(x, w, 16, np.random.default_rng(1), n_init=2, tol=0, fixed=held)
    assert np.array_equal(res.centers[:5], held)
    start = initial_centers(x, w, 16, "k-means++", np.random.default_rng(1), fixed=held)
    _, ref_inertia = reference_lloyd(x, w, start, fixed_first(16, 5))
    assert res.inertia <= ref_inertia * (1 + 1e-12)  # best of two starts, the first one's


# -- the shared fit ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_store(faces_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fixed") / "faces.zarr"
    streamq.ingest(faces_dir, path, chunk_pixels=65_536, scheduler="threads", progress=False)
    return str(path)


@pytest.fixture
def store_copy(base_store, tmp_path):
    dst = tmp_path / "copy.zarr"
    shutil.copytree(base_store, dst)
    return str(dst)


@pytest.fixture(scope="module")
def histogram_points(base_store):
    """The collection's distinct colours and counts, from its pixels (not its histogram)."""
    coll = streamq.open_store(base_store)
    rgb = np.concatenate([coll.read(i).reshape(-1, 3) for i in range(len(coll))])
    codes, counts = np.unique((rgb.astype(np.int64) << [16, 8, 0]).sum(1), return_counts=True)
    return np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], 1).astype(np.uint8), counts


@pytest.fixture(scope="module")
def brand_gpl(tmp_path_factory):
    path = tmp_path_factory.mktemp("pal") / "brand.gpl"
    path.write_text("GIMP Palette\nName: brand\n#\n"
                    + "".join(f"{r} {g} {b}\tc{i}\n" for i, (r, g, b) in enumerate(BRAND)))
    return str(path)


def _assert_converged(res, rgb, counts, space):
    """The fit's free centres are a fixed point of the reference Lloyd (fixed held)."""
    x = to_space(rgb, space).astype(np.float64)
    mask = fixed_first(res.k, res.n_fixed)
    again, _ = reference_lloyd(x, counts.astype(np.float64), res.centers, mask, max_iter=1)
    np.testing.assert_allclose(again, res.centers, atol=1e-9)
    return x


@pytest.mark.parametrize("space", ["rgb", "oklab"])
def test_minibatch_fit_keeps_fixed_colours(store_copy, brand_gpl, histogram_points, space):
    res = streamq.fit(store_copy, colors=12, color_space=space, fixed_colors=brand_gpl, n_init=1,
                      max_steps=20, batch_size=4096, seed=2, scheduler="threads", progress=False)
    assert res.n_fixed == 5  # the repeated white was dropped
    assert np.array_equal(res.palette[:5], FIXED)  # exactly, in RGB as in OKLab
    assert np.array_equal(res.centers[:5], to_space(FIXED, space).astype(np.float64))
    assert len(np.unique(res.palette, axis=0)) == 12
    assert "5 fixed" in str(res)
    loaded = streamq.load_fit(store_copy)
    assert np.array_equal(loaded.palette, res.palette)
    assert loaded.n_fixed == 5
    sec = streamq.store.Store.open(store_copy).section("fit")
    assert sec["fixed_colors"]["colors"][:2] == ["#ffffff", "#000000"]
    rgb, counts = histogram_points
    x = _assert_converged(res, rgb, counts, space)
    # the mini-batch phase held them too, and the fit is at least as good as the reference
    # Lloyd from the mini-batch centres, run as the fit runs every start: to convergence on
    # the 64-level colour grid, then on every colour (with n_init=1 both starts finish)
    mb = np.asarray(sec["minibatch_centers"])
    assert np.array_equal(mb[:5], res.centers[:5])
    mask = fixed_first(12, 5)
    gx, gw = cell_means(rgb_to_codes(rgb), counts.astype(np.float64), x, GRID_BITS)
    if 2 * len(gx) > len(x):
        gx, gw = x, counts
    on_grid, _ = reference_lloyd(gx, gw, mb, mask)
    _, ref_inertia = reference_lloyd(x, counts.astype(np.float64), on_grid, mask)
    assert inertia(x, counts, res.centers) <= ref_inertia * (1 + 1e-9)


def test_streamed_fit_is_a_plain_partial_fit_loop_with_fixed_centers_put_back(store_copy,
                                                                            brand_gpl):
    """The mini-batch phase: scikit-learn's partial_fit over the seeded batches, the fixed
    centres set back after every step (they drift otherwise), from a start that holds them."""
    from sklearn.cluster import MiniBatchKMeans

    from streamq.batches import STREAM_TRAIN, PixelSource, draw_pixels
    from streamq.config import FitConfig
    from streamq.fit.minibatch import initial_centers
    from streamq.kmeans import codes_to_rgb
    from streamq.scheduler import Runner, _SyncPool
    from streamq.store.histogram import histogram

    streamq.fit(store_copy, colors=9, seed=5, max_steps=12, batch_size=4096, batches_per_task=3,
                n_init=1, fixed_colors=brand_gpl, scheduler="threads")
    coll = streamq.open_store(store_copy)
    source = PixelSource.of_collection(coll)
    fcfg = FitConfig(colors=9, seed=5, batch_size=4096, batches_per_task=3)
    run = Runner(None, _SyncPool(), "sync")
    codes, counts = histogram(run, coll.store, source)
    x = to_space(codes_to_rgb(codes), "rgb").astype(np.float64)
    held = to_space(FIXED, "rgb")
    init = initial_centers(run, source, fcfg, x, counts, held.astype(np.float64))
    assert np.array_equal(init[:5], held)
    ref = MiniBatchKMeans(9, init=init, n_init=1, batch_size=4096, compute_labels=False,
                          random_state=5)
    drift = 0.0
    for t in range(4):
        data = draw_pixels(source, 5, STREAM_TRAIN, t, 3 * 4096, fcfg.blocks_per_task)
        for j in range(3):
            ref.partial_fit(to_space(data[j * 4096:(j + 1) * 4096], "rgb"))
            drift = max(drift, float(np.abs(ref.cluster_centers_[:5] - held).max()))
            ref.cluster_centers_[:5] = held
    assert drift > 0.01  # partial_fit alone moves them
    expected = ref.cluster_centers_.astype(np.float64)
    expected[:5] = held.astype(np.float64)
    mb = np.asarray(coll.store.section("fit")["minibatch_centers"])
    assert np.array_equal(expected, mb)


def test_lloyd_fit_keeps_fixed_colours_to_the_exported_palette(store_copy, brand_gpl,
                                                               histogram_points, tmp_path):
    res = streamq.fit(store_copy, colors=10, algorithm="lloyd", color_space="oklab",
                      fixed_colors=brand_gpl, n_init=2, seed=1, scheduler="threads")
    assert np.array_equal(res.palette[:5], FIXED)
    rgb, counts = histogram_points
    _assert_converged(res, rgb, counts, "oklab")
    streamq.quantize(store_copy, scheduler="threads", progress=False)
    out = tmp_path / "out"
    streamq.export(store_copy, str(out), ids="0-2", scheduler="threads", progress=False)
    png = sorted(out.rglob("*.png"))[0]
    with Image.open(png) as im:
        assert im.mode == "P"
        pal = np.asarray(im.getpalette("RGB"), np.uint8).reshape(-1, 3)
    assert np.array_equal(pal[:5], FIXED)
    info = CliRunner().invoke(cli, ["info", store_copy])
    assert "fixed        5 colours, entries 0..4: #ffffff #000000 #e30613" in info.output


def test_same_colours_elsewhere_resume_other_colours_refused(store_copy, brand_gpl, tmp_path):
    kw = {"colors": 8, "algorithm": "lloyd", "n_init": 1, "scheduler": "threads"}
    first = streamq.fit(store_copy, fixed_colors=brand_gpl, **kw)
    moved = tmp_path / "same.json"  # the same colours in another file and format
    moved.write_text(json.dumps([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in FIXED.tolist()]))
    again = streamq.fit(store_copy, fixed_colors=str(moved), **kw)
    assert again.status == "already complete"
    assert np.array_equal(again.palette, first.palette)
    other = tmp_path / "other.hex"
    other.write_text("ffffff\n808080\n")
    with pytest.raises(StoreMismatchError):
        streamq.fit(store_copy, fixed_colors=str(other), **kw)


# -- per-image palettes --------------------------------------------------------------------------
def test_per_image_palettes_keep_fixed_colours(store_copy, brand_gpl, tmp_path):
    from streamq.per_image import _sample_histogram, load_per_image, sample_size
    from streamq.report.palettes import palette

    streamq.fit_per_image(store_copy, colors=[6, 12], method="histogram", fixed_colors=brand_gpl,
                          scheduler="threads", progress=False)
    coll = streamq.open_store(store_copy)
    held = codes_to_points((FIXED.astype(np.int64) << [16, 8, 0]).sum(1))
    for k in (6, 12):
        centers, palettes = load_per_image(store_copy, k)
        assert (palettes[:, :5] == FIXED).all()
        assert np.array_equal(centers[:, :5], np.broadcast_to(held, (len(coll), 5, 3)))
        for image_id in (0, 7):  # the rest: as the reference Lloyd from the same start
            rgb = coll.read(image_id).reshape(-1, 3)
            codes, w = _sample_histogram(rgb, sample_size(len(rgb), k, 0.7), 0, image_id)
            x, w = codes_to_points(codes), w.astype(np.float64)
            start = initial_centers(x, w, k, "k-means++", np.random.default_rng([0, image_id, k]),
                                    fixed=held)
            _, ref_inertia = reference_lloyd(x, w, start, fixed_first(k, 5), tol=1e-4)
            assert inertia(x, w, centers[image_id]) <= ref_inertia * (1 + 1e-9)
    streamq.report(store_copy, tmp_path / "r.html", sections=[palette])  # named in the report
    html = (tmp_path / "r.html").read_text()
    assert html.count('<div class="fixed-colors"><h4>Fixed colours: 5, kept exactly') == 1
    with pytest.raises(ConfigError, match="needs per_image.method 'histogram'"):
        streamq.fit_per_image(store_copy, colors=[6], fixed_colors=brand_gpl, overwrite=True,
                              scheduler="threads")


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "args", "message"), [
    pytest.param(None, ["-k", "8"],
                 "fixed colours (key 'fit.fixed_colors'): palette {src}: no such file",
                 id="missing"),
    pytest.param("GIMP Palette\n1 2\n", ["-k", "8"], "palette {src}, line 2: expected a colour",
                 id="bad-line"),
    pytest.param("GIMP Palette\n1 2 3\n4 5 6\n", ["-k", "2"],
                 "fixed colours {src} (key 'fit.fixed_colors'): 2 distinct colours, expected "
                 "fewer than colors=2", id="F>=K"),
    pytest.param("GIMP Palette\n1 2 3\n", ["--per-image", "-k", "2,6"],
                 "key 'per_image.fixed_colors' needs per_image.method 'histogram'",
                 id="per-image-kmeans"),
    pytest.param("GIMP Palette\n1 2 3\n4 5 6\n",
                 ["--per-image", "-k", "2,6", "--method", "histogram"],
                 "(key 'per_image.fixed_colors'): 2 distinct colours, expected fewer than "
                 "colors=2", id="per-image-F>=K"),
    pytest.param("GIMP Palette\n1 2 3\n", ["--quality", "20-30"],
                 "key 'fit.fixed_colors' does not go with 'fit.quality'", id="quality"),
])
def test_bad_fixed_colours_are_one_line_errors(store_copy, tmp_path, content, args, message):
    src = tmp_path / "fixed.gpl"
    if content is not None:
        src.write_text(content)
    before = streamq.store.Store.open(store_copy).section("fit")
    result = CliRunner().invoke(cli, ["fit", store_copy, *args, "--fixed-colors", str(src),
                                      "--scheduler", "threads"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message.format(src=src) in lines[0]
    assert streamq.store.Store.open(store_copy).section("fit") == before  # nothing written


def test_report_shows_the_fixed_colours_and_their_source(store_copy, brand_gpl, tmp_path):
    """The report's palette section lists the fixed colours, in palette order, and names
    their source; a palette fitted without them shows no such block."""
    from streamq.report.palettes import palette

    streamq.fit(store_copy, colors=8, algorithm="lloyd", n_init=1, fixed_colors=brand_gpl,
                scheduler="threads")
    page = tmp_path / "fixed.html"
    streamq.report(store_copy, page, sections=[palette])
    html = page.read_text()
    block = html[html.index('<div class="fixed-colors">'):]
    block = block[:block.index("</div></div>")]
    hexes = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in FIXED.tolist()]
    assert f"Fixed colours: {len(FIXED)}, kept exactly as entries 0..{len(FIXED) - 1}" in block
    assert Path(brand_gpl).name in block
    shown = [part.split('"', 1)[0] for part in block.split('data-hex="')[1:]]
    assert shown == hexes
    streamq.fit(store_copy, colors=8, algorithm="lloyd", n_init=1, overwrite=True,
                scheduler="threads")
    streamq.report(store_copy, page, sections=[palette])
    assert 'class="fixed-colors"' not in page.read_text()
