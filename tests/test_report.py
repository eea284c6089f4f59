"""The HTML report, opened in headless Chromium, checked against the store's own arrays."""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.errors import ConfigError
from streamq.per_image import fit_per_image

# A label that is also HTML: it must show as text, never as markup.
EVIL = "<img src=x onerror=console.error('label-xss')>&amp;\"'"


# -- stores at each stage ------------------------------------------------------------------
# Session-scoped (the collections of conftest, built once per test process and shared with
# other modules): the tests of this module spread over the ``pytest -n`` workers instead of
# running as one serial unit. Tests that change a store work on a copy.
@pytest.fixture
def shared_store(photo_store):
    """A collection (48 images) with one 12-colour palette, quantized on the cluster: the
    session's photo store."""
    return photo_store


@pytest.fixture
def per_image_store(faces_per_image_store):
    """The faces collection with per-image palettes for K = 2, 6, 30 (the tutorial)."""
    return faces_per_image_store


@pytest.fixture(scope="session")
def evil_dir(tmp_path_factory):
    """Crops of a bundled photo under a folder whose name is HTML, plus a bad file."""
    from sklearn.datasets import load_sample_image

    root = tmp_path_factory.mktemp("evil")
    photo = load_sample_image("china.jpg")
    for label, n in ((EVIL, 3), ("Plain", 2)):
        (root / label).mkdir()
        for j in range(n):
            crop = photo[40 * j: 40 * j + 36, 60 * j: 60 * j + 44]
            Image.fromarray(crop).save(root / label / f"{label}_{j:04d}.png")
    (root / "Plain" / "<b>empty<b>.png").write_bytes(b"")
    return root


@pytest.fixture(scope="session")
def lloyd_store(evil_dir, tmp_path_factory):
    """The HTML-named collection fitted with exact Lloyd and quantized."""
    path = str(tmp_path_factory.mktemp("rep") / "lloyd.zarr")
    streamq.ingest(evil_dir, path, scheduler="threads", progress=False)
    streamq.fit(path, colors=5, algorithm="lloyd", scheduler="threads")
    streamq.quantize(path, scheduler="threads")
    return path


@pytest.fixture(scope="session")
def groups_store(photo_store, tmp_path_factory):
    """The photo collection (12-colour palette, quantized) grouped into 4 image groups."""
    path = str(tmp_path_factory.mktemp("rep") / "groups.zarr")
    shutil.copytree(photo_store, path)
    streamq.cluster_images(path, groups=4, scheduler="threads", rows_per_chunk=8)
    return path


# -- the browser -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright (no browser download); installed by
    the test session itself on a machine that lacks it (see helpers.chromium)."""
    from helpers import chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright adds --headless and a fresh temporary --user-data-dir itself.
        b = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _colour_counts(rgb: np.ndarray) -> np.ndarray:
    """How many pixels of an RGB uint8 image have each 24-bit colour ``r << 16 | g << 8 | b``."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    return np.bincount(codes.reshape(-1), minlength=1 << 24)


def _std(values: np.ndarray) -> float:
    """``values.std()`` of an RGB uint8 image's values (all three channels), from its colour
    counts: exact, and seconds faster than numpy's float64 pass (or a 256-bin ``bincount``)
    on a full-page screenshot (tens of millions of values)."""
    return _std_of(_colour_counts(values))


def _std_of(by_colour: np.ndarray) -> float:
    """:func:`_std` from the colour counts of :func:`_colour_counts`."""
    by_colour = by_colour.reshape(256, 256, 256)
    hist = (by_colour.sum((1, 2)) + by_colour.sum((0, 2)) + by_colour.sum((0, 1))).astype(np.float64)
    levels = np.arange(256.0)
    mean = (hist * levels).sum() / hist.sum()
    return float(np.sqrt((hist * (levels - mean) ** 2).sum() / hist.sum()))


@contextmanager
def opened(browser, html_path, shot_path=None):
    """Open the page offline; check it loads with every image and no console error; with
    ``shot_path``, also that it has images and a full-page screenshot shows them (a page of a
    few sections, ``shot_path=None``, may have none)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, requests = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    try:
        response = page.goto(Path(html_path).as_uri(), wait_until="load")
        assert response is not None
        assert response.ok
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        assert all(c and w > 0 and h > 0 for c, w, h in images), images
        assert errors == []
        assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
        if shot_path is None:
            yield page
            return
        assert images, "the page has no images"
        page.screenshot(path=str(shot_path), full_page=True)
        with Image.open(shot_path) as im:
            assert im.format == "PNG"
            rgb = np.asarray(im.convert("RGB"))
        assert rgb.shape[0] > 900
        assert rgb.shape[1] == 1200
        # every other row and column: a page of figures and photos shows there as well
        by_colour = _colour_counts(rgb[::2, ::2])
        assert _std_of(by_colour) > 20  # not blank
        assert np.count_nonzero(by_colour) > 200  # figures and photos, not a flat page
        yield page
    finally:
        page.close()


def _texts(page, selector):
    return page.eval_on_selector_all(selector, "els => els.map(e => e.innerText)")


def _data(page, selector, attr):
    return page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{attr}'))")


def _worst_reference(psnr, n):
    """The n lowest PSNR, lowest first, lower id first on ties (a plain sort)."""
    return sorted(range(len(psnr)), key=lambda i: (psnr[i], i))[:n]


# -- tests ------------------------------------------------------------------------------------
def test_ingest_only(faces_store, browser, tmp_path):
    before = zarr.open_group(faces_store, mode="r").attrs.asdict()
    out = tmp_path / "ingest.html"
    summary = streamq.report(faces_store, out)
    assert any("no palette yet" in m for m in summary.missing)
    with opened(browser, out, tmp_path / "ingest.png") as page:
        assert _data(page, "section", "id") == ["overview", "collection", "palette", "samples",
                                                 "convergence", "quality", "groups", "run"]
        overview = page.inner_text("#overview")
        assert "48 images" in overview
        assert "streamq fit STORE -k K" in overview
        assert page.query_selector_all(".swatch") == []
        ids = [int(i) for i in _data(page, "figure.pair", "data-id")]
        assert len(ids) == 8
        assert ids == sorted(set(ids))
        assert "computed by `streamq quantize STORE`" in page.inner_text("#quality")
        assert ("No image groups yet: run `streamq fit STORE -k K` and `streamq quantize STORE`, "
                "then `streamq cluster-images STORE --groups G`.") in page.inner_text("#groups")
        coll = streamq.open_store(faces_store)
        counts = {lab: coll.labels.count(lab) for lab in set(coll.labels)}
        rows = [r.split("\t") for r in _texts(page, "table.labels tbody tr")]
        assert {r[0]: int(r[1]) for r in rows} == counts
        assert "ingest" in page.inner_text("table.timings")
    assert zarr.open_group(faces_store, mode="r").attrs.asdict() == before  # read only


def test_shared_palette_matches_store(shared_store, browser, tmp_path):
    out = tmp_path / "shared.html"
    summary = streamq.report(shared_store, out, worst=7, seed=5)
    assert summary.missing == []
    g = zarr.open_group(shared_store, mode="r")
    r, gr, b, count = (np.asarray(g[f"fit/palette/{c}"][:]) for c in ("r", "g", "b", "count"))
    order = sorted(range(len(count)), key=lambda j: (-count[j], j))
    psnr = np.asarray(g["quantize/images/psnr"][:])
    with opened(browser, out, tmp_path / "shared.png") as page:
        hexes = _data(page, "#palette .swatch", "data-hex")
        assert hexes == [f"#{r[j]:02x}{gr[j]:02x}{b[j]:02x}" for j in order]
        assert [int(c) for c in _data(page, "#palette .swatch", "data-count")] == [int(count[j]) for j in order]
        for text, j in zip(_texts(page, "#palette .swatch"), order, strict=True):
            assert f"{int(count[j]):,}" in text
        # before/after: every shown image with its stored PSNR, in the caption too
        ids = [int(i) for i in _data(page, "figure.pair", "data-id")]
        assert len(ids) == 8
        shown = [float(v) for v in _data(page, "figure.pair", "data-psnr-shared")]
        assert shown == [float(psnr[i]) for i in ids]
        for caption, i in zip(_texts(page, "figure.pair figcaption"), ids, strict=True):
            assert f"PSNR {psnr[i]:.2f} dB" in caption
        # the worst list is the 7 lowest PSNR, with their values
        rows = [t.split("\t") for t in _texts(page, ".worst[data-result=shared] tbody tr")]
        assert [int(row[1]) for row in rows] == _worst_reference(psnr, 7)
        assert [float(v) for v in _data(page, ".worst .psnr", "data-psnr")] == \
            [float(psnr[i]) for i in _worst_reference(psnr, 7)]
        assert len(page.query_selector_all(".worst img.thumb")) == 14
        # SSIM: its histogram and statistics, and each worst image's stored value
        ssim = np.asarray(g["quantize/images/ssim"][:])
        assert [float(v) for v in _data(page, ".worst .ssim", "data-ssim")] == \
            [float(ssim[i]) for i in _worst_reference(psnr, 7)]
        for row, i in zip(rows, _worst_reference(psnr, 7), strict=True):
            assert row[5] == f"{ssim[i]:.4f}"
        assert len(page.query_selector_all("#quality img.ssim-hist")) == 1
        (stats,) = [t.split("\t") for t in _texts(page, "table.ssim-stats tbody tr")]
        assert stats == ["shared K=12", "48", *(f"{fn(ssim):.4f}" for fn in
                                                (np.min, np.median, np.mean, np.max)), "0"]
        # convergence and run facts
        conv = page.inner_text("#convergence")
        assert f"history points\t{g['fit/history/step'].shape[0]:,}" in conv
        facts = page.inner_text("#run")
        assert "shared fit" in facts
        assert "Dask cluster at tcp://127.0.0.1" in facts  # quantize ran on the session cluster
        import sklearn

        assert f"scikit-learn\t{sklearn.__version__}" in facts
        assert "seed\t0" in facts
        assert "No image groups yet: run `streamq cluster-images STORE --groups G`." in \
            page.inner_text("#groups")
        assert page.query_selector_all(".group") == []
    # the same seed shows the same images, another seed others (built with one section only)
    from streamq.report import before_after

    again = tmp_path / "again.html"
    s = streamq.report(shared_store, again, seed=5, sections=[before_after])
    assert s.sections == ["Before and after"]
    other = tmp_path / "other.html"
    streamq.report(shared_store, other, seed=6, sections=[before_after])

    def shown(p):
        return [int(x.split('"')[0]) for x in Path(p).read_text().split('class="pair" data-id="')[1:]]

    assert shown(again) == ids
    assert shown(other) != ids


def test_per_image_rows_palettes_and_worst(per_image_store, browser, tmp_path):
    out = tmp_path / "per_image.html"
    streamq.report(per_image_store, out, samples=5, worst=4)
    g = zarr.open_group(per_image_store, mode="r")
    coll = streamq.open_store(per_image_store)
    psnr = {k: np.asarray(g[f"per_image/k{k}/images/psnr"][:]) for k in (2, 6, 30)}
    with opened(browser, out, tmp_path / "per_image.png") as page:
        ids = [int(i) for i in _data(page, "figure.pair", "data-id")]
        assert len(ids) == 5
        for k in (2, 6, 30):
            assert [float(v) for v in _data(page, "figure.pair", f"data-psnr-k{k}")] == \
                [float(psnr[k][i]) for i in ids]
            rows = [t.split("\t") for t in _texts(page, f".worst[data-result=k{k}] tbody tr")]
            assert [int(row[1]) for row in rows] == _worst_reference(psnr[k], 4)
            ssim = np.asarray(g[f"per_image/k{k}/images/ssim"][:])
            assert [float(v) for v in _data(page, f".worst[data-result=k{k}] .ssim",
                                            "data-ssim")] == \
                [float(ssim[i]) for i in _worst_reference(psnr[k], 4)]
        assert [t.split("\t")[0] for t in _texts(page, "table.ssim-stats tbody tr")] == \
            ["per-image K=2", "per-image K=6", "per-image K=30"]
        captions = _texts(page, "figure.pair figcaption")
        assert all("per-image K=2" in c and "per-image K=30" in c for c in captions)
        # per-image palettes of the first sampled images, sorted by their own pixel counts
        blocks = page.query_selector_all(".per-image-palette")
        assert [int(b.get_attribute("data-id")) for b in blocks] == ids[:4]
        for block in blocks:
            i = int(block.get_attribute("data-id"))
            a, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
            rows = block.eval_on_selector_all(".pi-k", "rows => rows.map(r => Array.from("
                                              "r.querySelectorAll('.swatch'), s => [s.dataset.hex, "
                                              "Number(s.dataset.count)]))")
            for row, k in zip(rows, (2, 6, 30), strict=True):
                labels = np.asarray(g[f"per_image/k{k}/labels"][a:a + n]).astype(np.int64)
                counts = np.bincount(labels, minlength=k)
                pal = np.asarray(g[f"per_image/k{k}/palette"][i])
                order = sorted(range(k), key=lambda j: (-counts[j], j))
                assert row == [["#{:02x}{:02x}{:02x}".format(*pal[j]), int(counts[j])] for j in order]
        assert "no collection-wide convergence curve" in page.inner_text("#convergence")
        assert "per-image labels K=30" in page.inner_text("#run")


def test_labels_from_files_are_escaped_and_lloyd_curve(lloyd_store, browser, tmp_path):
    out = tmp_path / "evil.html"
    streamq.report(lloyd_store, out, labels=[EVIL])
    text = out.read_text()
    assert EVIL not in text
    assert "<b>empty<b>" not in text
    with opened(browser, out, tmp_path / "evil.png") as page:  # also: no console error
        assert page.query_selector_all("img[src=x]") == []
        assert page.query_selector_all("b") == []
        assert EVIL in page.inner_text("#collection")  # shown as text, exactly
        assert "<b>empty<b>.png" in page.inner_text("#collection")  # a skipped input
        coll = streamq.open_store(lloyd_store)
        ids = [int(i) for i in _data(page, "figure.pair", "data-id")]
        assert ids == [i for i, lab in enumerate(coll.labels) if lab == EVIL]
        assert all(EVIL in c for c in _texts(page, "figure.pair figcaption"))
        conv = page.inner_text("#convergence")
        steps = zarr.open_group(lloyd_store, mode="r")["fit/history/step"].shape[0]
        assert "lloyd in rgb" in conv
        assert f"iterations\t{steps:,}" in conv


def test_stale_labels_after_a_refit(shared_store, browser, tmp_path):
    path = str(tmp_path / "s.zarr")
    shutil.copytree(shared_store, path)
    streamq.fit(path, colors=6, max_steps=10, scheduler="threads", overwrite=True)
    out = tmp_path / "stale.html"
    summary = streamq.report(path, out, samples=3)
    assert summary.missing == ["labels for shared K=6 are stale: run `streamq quantize STORE`."]
    with opened(browser, out, tmp_path / "stale.png") as page:
        assert len(_data(page, "#palette .swatch", "data-hex")) == 6
        assert "stale" in page.inner_text("#overview")
        assert _data(page, "figure.pair", "data-psnr-shared") == [None] * 3  # originals only
        assert page.query_selector_all(".worst") == []


def test_labels_without_ssim_are_named(lloyd_store, tmp_path):
    from streamq.report import quality

    path = str(tmp_path / "l.zarr")
    shutil.copytree(lloyd_store, path)
    streamq.quantize(path, ssim=False, overwrite=True, scheduler="threads")
    out = tmp_path / "no-ssim.html"
    streamq.report(path, out, worst=3, sections=[quality])
    text = out.read_text()
    assert "No SSIM for shared K=5: it was quantized with --no-ssim" in text
    assert "ssim-hist" not in text
    assert "ssim-stats" not in text
    assert text.count('<span class="ssim" data-ssim="">—</span>') == 3


@pytest.fixture(scope="session")
def alpha_report_store(tmp_path_factory):
    """Cut-outs with soft alpha beside opaque images: a 6-colour RGBA fit and per-image RGBA
    palettes of 4 colours, quantized with SSIM."""
    from helpers import write_alpha_collection

    root = tmp_path_factory.mktemp("alpha_rep")
    write_alpha_collection(root / "src")
    path = str(root / "alpha.zarr")
    streamq.ingest(root / "src", path, chunk_pixels=4096, scheduler="threads", progress=False)
    streamq.fit(path, colors=6, n_init=2, scheduler="threads")
    fit_per_image(path, colors=[4], method="histogram", scheduler="threads", progress=False)
    streamq.quantize(path, scheduler="threads", progress=False)
    return path


def test_palettes_with_alpha_and_their_ssim(alpha_report_store, browser, tmp_path):
    """A collection with alpha: the shared palette and the per-image palettes of images with
    alpha show each entry's alpha (``data-alpha``, ``#rrggbbaa``, over a checkerboard), an
    opaque image's palette as before; the SSIM figure and statistics are there and equal the
    stored values."""
    store = alpha_report_store
    coll = streamq.open_store(store)
    g = zarr.open_group(store, mode="r")
    opaque = [int(i) for i in np.flatnonzero(~coll.has_alpha)]
    with_alpha = [int(i) for i in np.flatnonzero(coll.has_alpha)]
    ids = sorted(with_alpha[:3] + opaque[:1])
    out = tmp_path / "alpha.html"
    streamq.report(store, out, ids=ids, samples=4, worst=3)
    r, gr, b, a, count = (np.asarray(g[f"fit/palette/{c}"][:])
                          for c in ("r", "g", "b", "a", "count"))
    assert (a < 255).any()
    order = sorted(range(len(count)), key=lambda j: (-count[j], j))
    with opened(browser, out) as page:
        shared = "#palette > .swatches .swatch"
        assert _data(page, shared, "data-hex") == \
            [f"#{r[j]:02x}{gr[j]:02x}{b[j]:02x}" for j in order]
        assert [int(v) for v in _data(page, shared, "data-alpha")] == [int(a[j]) for j in order]
        for text, j in zip(_texts(page, shared), order, strict=True):
            assert text.startswith(f"#{r[j]:02x}{gr[j]:02x}{b[j]:02x}{a[j]:02x}")
        styles = _data(page, shared, "style")
        assert all("repeating-conic-gradient" in st for st in styles)
        assert "checkerboard" in page.inner_text("#palette .alpha-note")
        blocks = page.query_selector_all(".per-image-palette")
        assert sorted(int(bl.get_attribute("data-id")) for bl in blocks) == ids
        pal, alpha = np.asarray(g["per_image/k4/palette"][:]), np.asarray(g["per_image/k4/alpha"][:])
        for block in blocks:
            i = int(block.get_attribute("data-id"))
            o, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
            counts = np.bincount(np.asarray(g["per_image/k4/labels"][o:o + n]).astype(np.int64),
                                 minlength=4)
            order = sorted(range(4), key=lambda j: (-counts[j], j))
            (row,) = block.eval_on_selector_all(".pi-k", "rows => rows.map(r => Array.from("
                                                "r.querySelectorAll('.swatch'), s => [s.dataset.hex, "
                                                "s.dataset.alpha ?? null, Number(s.dataset.count)]))")
            want_alpha = ([int(alpha[i, j]) for j in order] if coll.has_alpha[i]
                          else [None] * 4)
            assert row == [["#{:02x}{:02x}{:02x}".format(*pal[i, j]),
                            None if v is None else str(v), int(counts[j])]
                           for j, v in zip(order, want_alpha, strict=True)], i
        # SSIM of both results, as stored
        assert len(page.query_selector_all("#quality img.ssim-hist")) == 1
        assert str(len(with_alpha)) in page.inner_text("#quality .ssim-alpha")
        stats = [t.split("\t") for t in _texts(page, "table.ssim-stats tbody tr")]
        for row, name in zip(stats, ("quantize/images/ssim", "per_image/k4/images/ssim"),
                             strict=True):
            v = np.asarray(g[name][:])
            assert np.isfinite(v).all()
            assert row[1:6] == [str(len(v)), *(f"{fn(v):.4f}" for fn in
                                               (np.min, np.median, np.mean, np.max))]
        assert [row[0] for row in stats] == ["shared K=6", "per-image K=4"]


def _groups_reference(store):
    """Groups x labels counts by a plain loop over ``groups/images/group`` and ``images/label``."""
    g = zarr.open_group(store, mode="r")
    group = np.asarray(g["groups/images/group"][:])
    labels = [str(x) for x in g["images/label"][:]]
    names = sorted(set(labels))
    table = np.zeros((g["groups/centers"].shape[0], len(names)), dtype=np.int64)
    for gi, lab in zip(group, labels, strict=True):
        table[gi, names.index(lab)] += 1
    return group, labels, names, table


def _png_of(src):
    """The pixels of a ``data:image/png;base64,...`` URI."""
    import base64
    import io

    head, data = src.split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("RGB"))


def test_image_groups_section(groups_store, browser, tmp_path):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    out = tmp_path / "groups.html"
    summary = streamq.report(groups_store, out, samples=2, worst=1, group_samples=3,
                             group_labels=2)
    assert summary.missing == []
    assert "Image groups" in summary.sections
    g = zarr.open_group(groups_store, mode="r")
    group, labels, names, table = _groups_reference(groups_store)
    distance = np.asarray(g["groups/images/distance"][:])
    centers = np.asarray(g["groups/centers"][:])
    stored = g.attrs["groups"]["summary"]
    k = g.attrs["groups"]["k"]
    pal = np.stack([np.asarray(g[f"fit/palette/{c}"][:]) for c in "rgb"], 1)
    coll = streamq.open_store(groups_store)
    with opened(browser, out, tmp_path / "groups.png") as page:  # every image loads
        assert "image groups\tcomplete\t4 groups (histogram, K=12)" in page.inner_text("#overview")
        blocks = page.query_selector_all("#groups .group")
        assert [int(b.get_attribute("data-group")) for b in blocks] == [0, 1, 2, 3]
        for block in blocks:
            gi = int(block.get_attribute("data-group"))
            members = np.flatnonzero(group == gi)
            assert int(block.get_attribute("data-size")) == len(members)
            assert f"Group {gi} · {len(members)} images" in block.inner_text()
            # up to 3 members, nearest to the centre first; each thumbnail is that image
            shown = block.eval_on_selector_all(
                "figure.member", "els => els.map(e => [Number(e.dataset.id), "
                "e.querySelector('img').src, e.querySelector('figcaption').innerText])")
            ids = [i for i, _, _ in shown]
            assert ids == sorted(members.tolist(), key=lambda i: (distance[i], i))[:3]
            assert all(group[i] == gi for i in ids)
            for i, src, caption in shown:
                img = coll.read(i)
                step = -(-max(img.shape[:2]) // 96)
                np.testing.assert_array_equal(_png_of(src), img[::step, ::step])
                assert caption == f"#{i} {labels[i]}"
            # the centre as a palette histogram: colours by share, largest first
            segs = block.eval_on_selector_all(
                ".hbar .seg", "els => els.map(e => [e.dataset.hex, Number(e.dataset.share)])")
            share = np.clip(centers[gi, :k], 0, None) / np.clip(centers[gi, :k], 0, None).sum()
            order = [j for j in sorted(range(k), key=lambda j: (-share[j], j)) if share[j] > 0]
            assert [h for h, _ in segs] == ["#{:02x}{:02x}{:02x}".format(*pal[j]) for j in order]
            np.testing.assert_allclose([v for _, v in segs], share[order], rtol=1e-12)
        # overlap with the labels: the stored scores, equal to sklearn's on the stored arrays
        ari = float(page.get_attribute("#groups .ari", "data-ari"))
        nmi = float(page.get_attribute("#groups .nmi", "data-nmi"))
        assert (ari, nmi) == (stored["ari"], stored["nmi"])
        assert ari == pytest.approx(adjusted_rand_score(labels, group), abs=1e-12)
        assert nmi == pytest.approx(normalized_mutual_info_score(labels, group), abs=1e-12)
        assert ari > 0.9
        # groups x the 2 labels with most images (name order on ties) + other + total
        top = sorted(range(len(names)), key=lambda j: (-table[:, j].sum(), j))[:2]
        rest = [j for j in range(len(names)) if j not in top]
        assert _texts(page, "table.contingency thead th") == [
            "group", *[names[j] for j in top], f"other ({len(rest)} labels)", "images"]
        rows = [r.split("\t") for r in _texts(page, "table.contingency tbody tr")]
        expect = [[f"group {gi}", *(str(table[gi, j]) for j in top),
                   str(table[gi, rest].sum()), str(table[gi].sum())] for gi in range(4)]
        expect.append(["all groups", *(str(table[:, j].sum()) for j in top),
                       str(table[:, rest].sum()), str(len(group))])
        assert rows == expect
        assert "image groups" in page.inner_text("#run")
    # with room for every label: one column each, no "other" (the groups section alone)
    from streamq.report import image_groups

    streamq.report(groups_store, out, samples=1, worst=0, group_samples=0,
                   sections=[image_groups])
    with opened(browser, out) as page:
        assert page.query_selector_all("figure.member") == []
        assert _texts(page, "table.contingency thead th") == ["group", *names, "images"]
        rows = [r.split("\t") for r in _texts(page, "table.contingency tbody tr")]
        assert [[int(v) for v in r[1:-1]] for r in rows[:-1]] == table.tolist()


def test_image_groups_stale_after_a_refit(groups_store, tmp_path):
    from streamq.report import image_groups, overview

    # the overview says what is missing, the groups section what is shown
    only = {"samples": 1, "worst": 0, "sections": [overview, image_groups]}
    path = str(tmp_path / "g.zarr")
    shutil.copytree(groups_store, path)
    streamq.fit(path, colors=6, max_steps=10, scheduler="threads", overwrite=True)
    out = tmp_path / "stale.html"
    summary = streamq.report(path, out, **only)
    step = "run `streamq quantize STORE`, then `streamq cluster-images STORE`"
    assert f"image groups are stale: {step}." in summary.missing
    text = out.read_text()
    assert f"The image groups are stale (the palette was refitted): {step}." in text
    assert 'class="group"' not in text
    streamq.quantize(path, scheduler="threads")
    summary = streamq.report(path, out, **only)
    assert summary.missing == ["image groups are stale: run `streamq cluster-images STORE`."]
    streamq.cluster_images(path, groups=4, scheduler="threads")
    assert streamq.report(path, out, **only).missing == []
    assert out.read_text().count('class="group"') == 4


def _damage_all_but(path, shown):
    """Make every pixel and label shard unreadable except those of the images ``shown``;
    return {(array, shard): file} of all of them."""
    coll = streamq.open_store(path)
    shard, _ = coll.store.pixel_layout()
    needed = set()
    for i in shown:
        a, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        needed |= set(range(a // shard, (a + n - 1) // shard + 1))

    def chunk_files(name):
        root = path / name / "c"
        return {int(p.relative_to(root).parts[0]): p for p in root.rglob("*") if p.is_file()}

    files = {**{("pixels", c): p for c, p in chunk_files("pixels").items()},
             **{("labels", c): p for c, p in chunk_files("quantize/labels").items()}}
    assert len(files) > 2 * len(needed) + 4
    for (_, c), p in files.items():
        if c not in needed:
            p.write_bytes(b"not a chunk")
    return {key: p for key, p in files.items() if key[1] in needed}


class _Page(HTMLParser):
    """Every start tag with its attributes, and the page's text (entities decoded)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


HOSTILE_K = "<img src=x onerror=alert(1)>"


def test_hostile_values_from_store_attributes_are_escaped(lloyd_store, tmp_path):
    """A store whose per-image K (attribute per_image.colors, and the arrays named after it) is
    markup: the page holds it as text only, never as a tag or an attribute."""
    from streamq.report import SECTIONS, before_after

    path = tmp_path / "hostile.zarr"
    shutil.copytree(lloyd_store, path)
    fit_per_image(str(path), colors=[3], scheduler="threads")
    streamq.quantize(str(path), scheduler="threads")
    os.rename(path / "per_image" / "k3", path / "per_image" / f"k{HOSTILE_K}")
    meta = json.loads((path / "zarr.json").read_text())
    attrs = meta["attributes"]
    attrs["per_image"]["colors"] = [HOSTILE_K]
    labels = attrs.pop("per_image_quantize_k3")
    # The whole page with the labels missing (K in the per-image palettes), then the page part
    # that names an attribute after K, with the labels there.
    for section, builders in (({}, SECTIONS), ({f"per_image_quantize_k{HOSTILE_K}": labels},
                                               [before_after])):
        (path / "zarr.json").write_text(json.dumps({**meta, "attributes": {**attrs, **section}}))
        summary = streamq.report(path, tmp_path / "r.html", samples=3, sections=builders)
        page = _Page((tmp_path / "r.html").read_text(encoding="utf-8"))
        assert [t for t, _ in page.tags if t == "img"]  # the figures
        for tag, attributes in page.tags:
            names = [n for n, _ in attributes]
            assert "onerror" not in names, (tag, attributes)
            assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in names), (tag, attributes)
        assert any(HOSTILE_K in m for m in summary.missing)
        if builders is SECTIONS:
            assert HOSTILE_K in "".join(page.text)  # shown, as text


def test_reads_only_the_images_it_shows(shared_store, tmp_path):
    """Every pixel and label shard of images not shown is made unreadable: the report works."""
    path = tmp_path / "s.zarr"
    shutil.copytree(shared_store, path)
    psnr = np.asarray(zarr.open_group(str(path), mode="r")["quantize/images/psnr"][:])
    kept = _damage_all_but(path, {3, 17} | set(_worst_reference(psnr, 2)))
    summary = streamq.report(path, tmp_path / "r.html", ids=[3, 17], worst=2)
    assert summary.missing == []
    # and the corruption is real: damaging a shown image's shard breaks the report
    kept[min(k for k in kept if k[0] == "pixels")].write_bytes(b"not a chunk")
    with pytest.raises(RuntimeError, match="decompression"):  # the codec's error, through zarr
        streamq.report(path, tmp_path / "r2.html", ids=[3, 17], worst=2)


def test_image_groups_read_only_the_images_shown(groups_store, tmp_path):
    """The groups section reads the pixels of the members it shows, and no other."""
    path = tmp_path / "g.zarr"
    shutil.copytree(groups_store, path)
    res = streamq.load_groups(str(path))
    shown = {int(res.members(g)[0]) for g in range(res.groups)}
    _damage_all_but(path, shown | {0})
    summary = streamq.report(path, tmp_path / "r.html", ids=[0], samples=1, worst=0,
                             group_samples=1)
    assert summary.missing == []
    text = (tmp_path / "r.html").read_text()
    assert text.count('class="member"') == res.groups


@pytest.mark.parametrize(("h", "w", "side"), [(2100, 2000, 320), (30, 50, 320), (301, 7, 96)])
def test_strided_preview_equals_numpy_slicing(h, w, side):
    """Large images are read row by row at the displayed stride: same pixels as slicing."""
    from streamq.report.context import READ_WHOLE, _read_strided

    rng = np.random.default_rng(h)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    flat = np.concatenate([np.zeros((123, 3), np.uint8), img.reshape(-1, 3)])
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=flat.shape, chunks=(65_536, 3),
                            dtype="uint8")
    arr[:] = flat
    step = -(-max(h, w) // side)
    got = _read_strided(arr, 123, h, w, side)
    np.testing.assert_array_equal(got, img[::step, ::step])
    assert max(got.shape[:2]) <= side
    assert (h * w > READ_WHOLE) == (h == 2100)  # the row-by-row path is exercised


def test_cli_report_and_one_line_errors(shared_store, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.html"
    r = runner.invoke(cli, ["report", shared_store, str(out), "--ids", "0,5-6", "--samples", "2",
                            "--worst", "1", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["out"] == str(out)
    assert out.read_text().count('class="pair"') == 2
    coll = streamq.open_store(shared_store)
    cases = [
        ([str(tmp_path / "x.txt")], "should end in .html"),
        ([os.path.join(shared_store, "r.html")], "is inside the store"),
        ([str(tmp_path / "y.html"), "--label", "Nobody"], "--label 'Nobody' is not a label"),
        ([str(tmp_path / "y.html"), "--ids", "0", "--label", coll.labels[-1]], "no image has both"),
        ([str(tmp_path / "y.html"), "--ids", "9999"], "--ids names image 9999"),
    ]
    for args, message in cases:
        r = runner.invoke(cli, ["report", shared_store, *args])
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output
        assert r.output.strip().count("\n") == 0
    r = runner.invoke(cli, ["--help"])
    assert r.output.index("  info ") < r.output.index("  report ")
    with pytest.raises(ConfigError, match="no output given"):
        streamq.report(shared_store)


def test_run_writes_the_report_when_configured(evil_dir, tmp_path):
    from streamq.config import load_config

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"store: s.zarr\ningest:\n  source: {evil_dir}\nfit:\n  colors: 4\n"
                   "  max_steps: 10\n  batch_size: 1024\n"
                   "dask:\n  scheduler: threads\nreport:\n  out: out/report.html\n  samples: 2\n")
    assert load_config(cfg).report.out == str(tmp_path / "out" / "report.html")
    result = streamq.run(str(cfg), progress=False)
    assert "report" in result.stages
    text = (tmp_path / "out" / "report.html").read_text()
    assert text.count('class="pair"') == 2
    assert "data-psnr-shared" in text


def test_screenshot_std_helper_equals_numpy():
    """The screenshot check's histogram ``_std`` is numpy's ``std`` (on a flat and a random image)."""
    rng = np.random.default_rng(5)
    for values in (np.full((7, 5, 3), 9, np.uint8), rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)):
        assert _std(values) == pytest.approx(float(values.std()), rel=1e-12, abs=1e-12)
