"""quantize --palette: a given palette labels every pixel with its exact nearest colour (ties to
the lowest index), through the chunkwise path; where it came from is recorded and shown."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import run_until, streamq_cmd
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.colorspace import to_space
from streamq.errors import StoreMismatchError
from streamq.palettes import read_palette, write_palette


@pytest.fixture
def store(photo_store, tmp_path):
    """A copy of the session's photo store (its 12-colour fit and labels included)."""
    dst = tmp_path / "photos.zarr"
    shutil.copytree(photo_store, dst)
    return str(dst)


def _pixels_labels(path):
    """Every image's pixels and labels, back to back (skipped inputs' gaps left out)."""
    coll = streamq.open_store(path)
    labels = zarr.open_array(f"{path}/quantize/labels", mode="r")
    px, lab = [], []
    for i in range(len(coll)):
        a, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        px.append(coll.read(i).reshape(-1, 3))
        lab.append(np.asarray(labels[a:a + n]).astype(np.int64))
    return np.concatenate(px), np.concatenate(lab)


def _brute_force(px, palette, space):
    """argmin (first of equal minima) over squared distances: integers in RGB, float64
    coordinate sums in OKLab; the number of pixels with two or more nearest colours."""
    out, ties = np.empty(len(px), np.int64), 0
    for a in range(0, len(px), 20_000):
        if space == "rgb":
            d = ((px[a:a + 20_000, None, :].astype(np.int64) - palette[None].astype(np.int64)) ** 2).sum(2)
        else:
            x = to_space(px[a:a + 20_000], space).astype(np.float64)
            c = to_space(palette, space).astype(np.float64)
            d = ((x[:, None, 0] - c[None, :, 0]) ** 2 + (x[:, None, 1] - c[None, :, 1]) ** 2
                 + (x[:, None, 2] - c[None, :, 2]) ** 2)
        out[a:a + 20_000] = d.argmin(1)
        ties += int(((d == d.min(1, keepdims=True)).sum(1) > 1).sum())
    return out, ties


def _tie_palette(px, seed=0):
    """Photo colours, plus pairs ``p + d``, ``p - d`` around other photo colours ``p`` (in
    either order, and never ``p`` itself): those pixels have two nearest colours at exactly
    the same distance. One entry repeats an earlier one."""
    rng = np.random.default_rng(seed)
    colours = np.unique(px, axis=0)
    base = colours[rng.choice(len(colours), 24, replace=False)].astype(np.int64)
    steps = np.array([[1, 0, 0], [0, 2, 0], [1, 1, 1], [0, 3, 4], [2, 0, 1]])
    pairs = []
    for p in colours[rng.choice(len(colours), 60, replace=False)].astype(np.int64):
        d = steps[rng.integers(len(steps))]
        a, b = p + d, p - d
        if a.max() <= 255 and b.min() >= 0:
            pairs += [a, b] if rng.random() < 0.5 else [b, a]
    pal = np.concatenate([base, np.asarray(pairs), base[3:4]]).astype(np.uint8)
    return pal


@pytest.mark.parametrize("space", ["rgb", "oklab"])
def test_every_pixel_gets_its_nearest_palette_colour_ties_to_the_lowest_index(
        store, tmp_path, cluster_address, space):
    px, _ = _pixels_labels(store)
    palette = _tie_palette(px)
    src = tmp_path / "ties.gpl"
    write_palette(src, palette, name="ties")
    summary = streamq.quantize(store, palette=src, color_space=space, overwrite=True,
                               scheduler=cluster_address, progress=False)
    assert summary.status == "quantized"
    assert summary.k == len(palette)
    px, ours = _pixels_labels(store)
    ref, ties = _brute_force(px, palette, space)
    if space == "rgb":
        assert ties > 500  # the pairs make real ties, not just rare coincidences
    np.testing.assert_array_equal(ours, ref)
    # the store's record of the palette: its colours, pixels per colour, exact MSE
    fit = streamq.load_fit(store)
    np.testing.assert_array_equal(fit.palette, palette)
    np.testing.assert_array_equal(fit.counts, np.bincount(ref, minlength=len(palette)))
    mse = ((px.astype(np.int64) - palette[ref].astype(np.int64)) ** 2).sum() / (3 * len(px))
    assert fit.mse == pytest.approx(mse, rel=1e-12)
    assert summary.mse == pytest.approx(mse, rel=1e-12)
    assert fit.algorithm == "palette"
    assert fit.color_space == space
    assert fit.palette_source["kind"] == "gpl"
    assert fit.palette_source["name"] == "ties"
    coll = streamq.open_store(store)
    g = zarr.open_group(store, mode="r")
    start = 0
    for i in range(len(coll)):
        n = int(coll.heights[i] * coll.widths[i])
        err = (px[start:start + n].astype(float) - palette[ref[start:start + n]]) ** 2
        assert g["quantize/images/mse"][i] == pytest.approx(err.mean(), rel=1e-12)
        start += n


def test_a_palette_from_another_store_gives_that_stores_own_labels(photo_store, store, tmp_path,
                                                                  cluster_address):
    summary = streamq.quantize(store, palette=photo_store, overwrite=True,
                               scheduler=cluster_address, progress=False)
    assert summary.status == "quantized"
    np.testing.assert_array_equal(_pixels_labels(store)[1], _pixels_labels(photo_store)[1])
    given = zarr.open_group(store, mode="r").attrs["fit"]["palette_source"]
    assert given["kind"] == "store"
    assert given["path"] == photo_store
    assert given["centers"] == "fit"  # the source's float centres, not its rounded colours
    assert given["fit_fingerprint"] == zarr.open_group(photo_store, mode="r").attrs["fit"]["fingerprint"]
    # an OKLab fit travels with its colour space and centres
    lab = tmp_path / "lab.zarr"
    shutil.copytree(photo_store, lab)
    streamq.fit(lab, colors=9, color_space="oklab", max_steps=20, batch_size=4096,
                scheduler="threads", overwrite=True)
    streamq.quantize(lab, scheduler=cluster_address, progress=False)
    streamq.quantize(store, palette=lab, overwrite=True, scheduler=cluster_address, progress=False)
    np.testing.assert_array_equal(_pixels_labels(store)[1], _pixels_labels(lab)[1])
    mine, theirs = streamq.load_fit(store), streamq.load_fit(lab)
    assert mine.color_space == "oklab"
    np.testing.assert_array_equal(mine.centers, theirs.centers)
    np.testing.assert_array_equal(mine.counts, theirs.counts)
    assert mine.mse == pytest.approx(theirs.mse, rel=1e-12)


def test_rerun_is_a_noop_and_another_palette_needs_overwrite(store, tmp_path):
    colors = np.array([[250, 250, 245], [20, 20, 25], [200, 40, 30], [40, 160, 60],
                       [50, 70, 190], [128, 128, 128]], np.uint8)
    gpl, js = tmp_path / "brand.gpl", tmp_path / "brand.json"
    write_palette(gpl, colors, name="Brand")
    write_palette(js, colors)
    with pytest.raises(StoreMismatchError) as err:
        streamq.quantize(store, palette=gpl, scheduler="threads")
    assert str(err.value) == (f"{store} already has a fitted palette (K=12, minibatch, rgb); pass "
                              f"--overwrite to replace it with the palette of {gpl}")
    first = streamq.quantize(store, palette=gpl, overwrite=True, scheduler="threads")
    assert first.status == "quantized"
    assert first.k == 6
    g = zarr.open_group(store, mode="r")
    attrs = {k: g.attrs[k] for k in ("fit", "quantize")}
    files = {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp, _, fs in os.walk(store)
             for p in fs}
    for src in (gpl, js):  # the same colours from another file: the same palette
        again = streamq.quantize(store, palette=src, scheduler="threads")
        assert again.status == "already complete"
    g = zarr.open_group(store, mode="r")
    assert {k: g.attrs[k] for k in ("fit", "quantize")} == attrs
    assert {p: os.stat(os.path.join(dp, p)).st_mtime_ns for dp, _, fs in os.walk(store)
            for p in fs} == files
    # another palette, another colour space, a fit: each refused without --overwrite
    other = tmp_path / "other.hex"
    write_palette(other, colors[:4])
    for kw in ({"palette": other}, {"palette": gpl, "color_space": "oklab"}):
        with pytest.raises(StoreMismatchError, match="already has another given palette "
                           r"\(6 colours of GIMP palette 'Brand' .*brand\.gpl\); pass --overwrite"):
            streamq.quantize(store, scheduler="threads", **kw)
    with pytest.raises(StoreMismatchError, match="already has a given palette .* replace it with a fit"):
        streamq.fit(store, colors=5, scheduler="threads")
    res = streamq.quantize(store, palette=other, overwrite=True, scheduler="threads")
    assert res.status == "quantized"
    assert res.k == 4
    assert _pixels_labels(store)[1].max() <= 3
    # a fit replaces a given palette with --overwrite, and no trace of it is left
    streamq.fit(store, colors=5, max_steps=10, scheduler="threads", overwrite=True)
    assert "palette_source" not in zarr.open_group(store, mode="r").attrs["fit"]
    assert streamq.load_fit(store).palette_source is None


def test_export_zarr_info_and_report_show_where_the_palette_came_from(store, tmp_path):
    from sklearn.datasets import load_sample_image

    logo = Image.fromarray(load_sample_image("china.jpg")[:120, :160]).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=10)
    logo.save(tmp_path / "logo.png")
    streamq.quantize(store, palette=tmp_path / "logo.png", overwrite=True, scheduler="threads")
    pal = read_palette(tmp_path / "logo.png")
    assert pal.k == 10
    coll = streamq.open_store(store)
    labels = zarr.open_array(f"{store}/quantize/labels", mode="r")
    out = tmp_path / "out"
    streamq.export(store, out, scheduler="threads", progress=False)
    for i in range(len(coll)):
        a, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        with Image.open(out / (os.path.splitext(coll.paths[i])[0] + ".png")) as im:
            assert im.mode == "P"
            assert im.getpalette("RGB") == pal.colors.ravel().tolist()  # SRC's order
            decoded = np.asarray(im.convert("RGB"))
        want = pal.colors[np.asarray(labels[a:a + n])].reshape(decoded.shape)
        np.testing.assert_array_equal(decoded, want)
    given = zarr.open_group(store, mode="r").attrs["fit"]["palette_source"]
    assert given["kind"] == "image"
    assert given["image_palette"] is True
    manifest = json.loads((out / ".streamq-export.json").read_text())
    assert manifest["palette_source"] == given
    streamq.export(store, tmp_path / "out.zarr", zarr=True, scheduler="threads", progress=False)
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["streamq_export"]
    assert attrs["results"][0]["palette_source"] == given
    assert attrs["results"][0]["algorithm"] == "palette"
    info = json.loads(CliRunner().invoke(cli, ["info", store, "--json"]).output)
    assert info["fit"]["palette_source"] == given
    text = CliRunner().invoke(cli, ["info", store]).output
    assert (f"from         10 colours of image {tmp_path / 'logo.png'} (the palette entries its "
            "pixels use)") in text
    summary = streamq.report(store, tmp_path / "r.html", samples=1, worst=1)
    html = (tmp_path / "r.html").read_text()
    assert summary.out.endswith("r.html")
    assert "Given, not fitted: 10 colours of image" in html
    assert "The shared palette was given" in html


def test_kill_mid_labelling_then_the_same_command_finishes_it(store, tmp_path):
    colors = np.random.default_rng(1).integers(0, 256, (40, 3), dtype=np.uint8)
    src = tmp_path / "p.act"
    write_palette(src, colors)
    ref = tmp_path / "ref.zarr"
    shutil.copytree(store, ref)
    streamq.quantize(ref, palette=src, overwrite=True, scheduler="threads")
    records = os.path.join(store, "quantize", "records", "c")
    n_chunks = zarr.open_array(f"{store}/quantize/records", mode="r").shape[0]
    assert n_chunks >= 10
    cmd = streamq_cmd("-q", "quantize", store, "--palette", str(src), "--overwrite",
                      "--scheduler", "sync")

    def done() -> int:  # records of the new palette's labels (the copy holds the old ones)
        attrs = zarr.open_group(store, mode="r").attrs
        fit, q = attrs.get("fit", {}), attrs.get("quantize", {})
        if ("palette_source" not in fit or q.get("state") != "running"
                or q.get("fit_fingerprint") != fit.get("fingerprint") or not os.path.isdir(records)):
            return 0
        return len(os.listdir(records))

    assert run_until(cmd, lambda: done() >= 1) is None
    assert 1 <= done() < n_chunks
    assert zarr.open_group(store, mode="r").attrs["quantize"]["state"] == "running"
    res = CliRunner().invoke(cli, ["quantize", store, "--palette", str(src), "--overwrite",
                                   "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    assert "quantized:" in res.output
    np.testing.assert_array_equal(_pixels_labels(store)[1], _pixels_labels(ref)[1])
    g, r = zarr.open_group(store, mode="r"), zarr.open_group(str(ref), mode="r")
    np.testing.assert_array_equal(g["quantize/images/sse"][:], r["quantize/images/sse"][:])
    assert g.attrs["fit"]["fingerprint"] == r.attrs["fit"]["fingerprint"]


def test_fit_save_palette_writes_the_fitted_palette(store, tmp_path):
    run = CliRunner()
    gpl = tmp_path / "fitted.gpl"
    res = run.invoke(cli, ["fit", store, "-k", "5", "--max-steps", "10", "--scheduler", "threads",
                           "--overwrite", "--save-palette", str(gpl)])
    assert res.exit_code == 0, res.output
    fit = streamq.load_fit(store)
    assert f"wrote the palette to {gpl} (gpl, 5 colours)" in res.output
    pal = read_palette(gpl)
    np.testing.assert_array_equal(pal.colors, fit.palette)
    assert pal.name == "streamq photos.zarr K=5"
    for ext in (".act", ".json", ".hex"):  # the same fit again: nothing refitted, file written
        res = run.invoke(cli, ["fit", store, "-k", "5", "--max-steps", "10", "--scheduler",
                               "threads", "--save-palette", str(tmp_path / f"f{ext}")])
        assert res.exit_code == 0, res.output
        assert "already complete" in res.output
        np.testing.assert_array_equal(read_palette(tmp_path / f"f{ext}").colors, fit.palette)
    before = zarr.open_group(store, mode="r").attrs["fit"]
    res = run.invoke(cli, ["fit", store, "-k", "300", "--overwrite", "--scheduler", "threads",
                           "--save-palette", str(tmp_path / "big.act")])
    assert res.exit_code == 1
    assert res.output.strip() == (f"error: palette file {tmp_path / 'big.act'}: an Adobe colour "
                                  "table holds at most 256 colours, this palette has 300; use "
                                  ".gpl, .json or .hex")
    res = run.invoke(cli, ["fit", store, "-k", "6", "--overwrite", "--save-palette", "x.png"])
    assert res.exit_code == 1
    assert "extension '.png', expected .gpl, .act" in res.output
    assert zarr.open_group(store, mode="r").attrs["fit"] == before  # refused before fitting
    res = run.invoke(cli, ["fit", store, "--per-image", "-k", "2", "--save-palette", "x.gpl"])
    assert res.exit_code == 2
    assert "does not go with --per-image" in res.output
