"""fit --per-image --quality MIN-MAX: each image's smallest K of --k-range whose own palette
reaches MAX dB on that image's pixels; images below MIN recorded (exit 99, the others done);
quantize and export of those palettes; resumable after kill -9."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import pillow_rgb
from helpers import PHOTOS, kill_when, streamq_cmd
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.metrics import psnr
from streamq.per_image import fit_image, fit_per_image

LO, HI = 3, 40
MIN, MAX = 20.0, 30.0
SEED = 2


@pytest.fixture(scope="module")
def few_photos(photo_dir, tmp_path_factory):
    """Two crops of each session photo, and one image of two colours (exact at K = 2)."""
    root = tmp_path_factory.mktemp("pq_src")
    for name in PHOTOS:
        (root / name).mkdir()
        for j in range(2):
            shutil.copy(photo_dir / name / f"{name}_{j:04d}.jpg", root / name)
    two = np.zeros((20, 30, 3), np.uint8)
    two[:, 15:] = (200, 40, 10)
    (root / "Flat").mkdir()
    Image.fromarray(two).save(root / "Flat" / "flat.png")
    return root


@pytest.fixture(scope="module")
def ingested(few_photos, tmp_path_factory, cluster_address):
    path = str(tmp_path_factory.mktemp("pq") / "src.zarr")
    streamq.ingest(few_photos, path, chunk_pixels=20_000, scheduler=cluster_address,
                   progress=False)
    return path


@pytest.fixture(scope="module")
def quality_store(ingested, tmp_path_factory, cluster_address):
    """The quality fit on the session cluster, quantized: ``(path, fit summary)``."""
    path = str(tmp_path_factory.mktemp("pq") / "q.zarr")
    shutil.copytree(ingested, path)
    summary = fit_per_image(path, quality=[MIN, MAX], k_range=[LO, HI], method="histogram",
                            seed=SEED, pixels_per_task=30_000, scheduler=cluster_address,
                            progress=False)
    streamq.quantize(path, scheduler=cluster_address, progress=False)
    return path, summary


def _brute_psnr(rgb, centers):
    """PSNR of ``rgb`` with every pixel on its nearest centre (numpy argmin over float64
    squared distances, first centre on ties) shown as the centre's rounded colour: a
    reference independent of the search's histogram and compiled labels."""
    c = np.asarray(centers, np.float64)
    pal = np.round(np.clip(c * 255, 0, 255)).astype(np.int64)
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    x = colours.astype(np.float64) / 255
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(2)
    err = ((colours.astype(np.int64) - pal[d.argmin(1)]) ** 2).sum(1)
    return psnr(float((err * counts).sum()) / (3 * counts.sum()))


def _table(path):
    g = zarr.open_group(path, mode="r")
    return {c: g[f"per_image/quality/{c}"][:] for c in ("k", "mse", "psnr", "met", "reason")}


def _check_smallest_k(path, source, method, lo, hi, qmax, seed, fixed=None):
    """Every image's K is the smallest of [lo, hi] reaching qmax by the search's rule: its
    palette (the same :func:`fit_image` fit) reaches qmax over every pixel and K - 1, fitted
    independently, misses it (unless K = lo); or no K does and K is the largest. With
    ``fixed`` colours, every palette starts with them and the exact palette is they and the
    image's other colours."""
    coll = streamq.open_store(path)
    g = zarr.open_group(path, mode="r")
    centers = g[f"per_image/k{hi}/centers"][:]
    palettes = g[f"per_image/k{hi}/palette"][:]
    t = _table(path)
    between = 0
    for i in range(len(coll)):
        rgb = pillow_rgb(source / coll.paths[i]).reshape(-1, 3)
        np.testing.assert_array_equal(rgb, coll.read(i).reshape(-1, 3))
        k = int(t["k"][i])
        own = np.unique(rgb, axis=0)
        if fixed is not None:  # the exact palette: the fixed colours, then the image's others
            own = own[~(own[:, None, :] == fixed[None, :, :]).all(2).any(1)]
            np.testing.assert_array_equal(palettes[i][:len(fixed)], fixed)
        d = len(own) + (0 if fixed is None else len(fixed))
        top = min(hi, d)
        assert min(lo, top) <= k <= top
        # the stored palette: the image's K entries, then repeats of the first
        np.testing.assert_array_equal(palettes[i][k:], np.repeat(palettes[i][:1], hi - k, 0))
        if k < d:
            want = fit_image(rgb, k, 0.7, seed, i, method=method, fixed=fixed)
            np.testing.assert_allclose(centers[i][:k], want, rtol=0, atol=1e-12)
        else:  # exact: every pixel's own colour is an entry
            assert _brute_psnr(rgb, centers[i][:k]) == np.inf
        value = _brute_psnr(rgb, centers[i][:k])
        assert value == pytest.approx(float(t["psnr"][i]), rel=1e-9)
        assert bool(t["met"][i]) == (value >= qmax)
        if value >= qmax:
            if k > lo:
                below = _brute_psnr(rgb, fit_image(rgb, k - 1, 0.7, seed, i, method=method,
                                                   fixed=fixed))
                assert below < qmax, (coll.paths[i], k, below)
                between += k < top
        else:
            assert k == top, (coll.paths[i], k, value)
    return between


def test_each_image_gets_the_smallest_k_reaching_max(quality_store, few_photos):
    path, summary = quality_store
    assert _check_smallest_k(path, few_photos, "histogram", LO, HI, MAX, SEED) >= 3
    t = _table(path)
    coll = streamq.open_store(path)
    flat = coll.paths.index("Flat/flat.png")
    assert t["k"][flat] == 2
    assert t["psnr"][flat] == np.inf
    assert not any(t["reason"])  # MIN 20 dB: every photo reaches it at K = 40
    # the summary: every image's K and PSNR, the mean K and how many reached MAX
    q = summary.quality
    assert [im["k"] for im in q["images"]] == t["k"].tolist()
    assert [im["psnr"] for im in q["images"]] == t["psnr"].tolist()
    assert q["mean_k"] == pytest.approx(t["k"].mean())
    assert q["met"] == int(t["met"].sum())
    assert f"K in {LO}..{HI}: mean K {t['k'].mean():.1f}, {q['met']} of {len(coll)} reached" \
        in str(summary)
    # quantize labels each image within its own K, to the PSNR the search measured
    g = zarr.open_group(path, mode="r")
    labels = g[f"per_image/k{HI}/labels"][:]
    for i in range(len(coll)):
        off, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        own = labels[off:off + n]
        assert own.max() < t["k"][i]
    np.testing.assert_allclose(g[f"per_image/k{HI}/images/psnr"][:], t["psnr"], rtol=1e-9)


def test_kmeans_method_follows_the_same_rule(ingested, tmp_path, cluster_address, few_photos):
    path = str(tmp_path / "km.zarr")
    shutil.copytree(ingested, path)
    fit_per_image(path, quality=[18, 26], k_range=[2, 12], method="kmeans", seed=1,
                  scheduler=cluster_address, progress=False)
    assert _check_smallest_k(path, few_photos, "kmeans", 2, 12, 26.0, 1) >= 2


def test_fixed_colours_are_held_in_every_k_searched(ingested, tmp_path, few_photos):
    """--fixed-colors with --quality: each K tried holds them (F below LO), the image's K the
    smallest by the same rule; the two-colour image (one of them fixed) is exact at F + 1."""
    fixed = np.asarray([[200, 40, 10], [0, 0, 255], [250, 250, 250]], np.uint8)
    src = tmp_path / "fixed.gpl"
    src.write_text("GIMP Palette\n" + "".join(f"{r} {g} {b}\tc\n" for r, g, b in fixed))
    path = str(tmp_path / "fx.zarr")
    shutil.copytree(ingested, path)
    fit_per_image(path, quality=[18, 26], k_range=[5, 16], method="histogram", seed=1,
                  fixed_colors=str(src), scheduler="threads", progress=False)
    assert _check_smallest_k(path, few_photos, "histogram", 5, 16, 26.0, 1, fixed) >= 2
    coll = streamq.open_store(path)
    flat = coll.paths.index("Flat/flat.png")
    t = _table(path)
    assert (t["k"][flat], t["psnr"][flat]) == (4, np.inf)  # the 3 fixed and black
    sec = zarr.open_group(path, mode="r").attrs["per_image"]
    assert sec["fixed_colors"]["n"] == 3
    with pytest.raises(streamq.errors.ConfigError, match="expected fewer than colors=3"):
        fit_per_image(path, quality=[18, 26], k_range=[3, 16], method="histogram",
                      fixed_colors=str(src), overwrite=True, scheduler="threads")


def test_images_below_min_are_recorded_the_others_done_exit_99(ingested, tmp_path,
                                                              few_photos):
    path = str(tmp_path / "low.zarr")
    shutil.copytree(ingested, path)
    args = ["fit", path, "--per-image", "--quality", "33-40", "--k-range", "2-4", "--method",
            "histogram", "--scheduler", "threads", "--no-progress"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 99, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    coll = streamq.open_store(path)
    t = _table(path)
    below = [i for i in range(len(coll)) if t["reason"][i]]
    flat = coll.paths.index("Flat/flat.png")
    assert flat not in below
    assert t["k"][flat] == 2
    assert t["met"][flat]
    assert len(below) == len(coll) - 1  # no photo crop is within 33 dB with 4 colours
    assert f": {len(below)} of {len(coll)} images stay below MIN 33 dB even with K=4: " \
        f"{coll.paths[below[0]]} ({t['psnr'][below[0]]:.2f} dB at K=4)" in lines[0]
    for i in below:
        assert t["k"][i] == 4
        assert t["psnr"][i] < 33
        assert t["reason"][i].startswith("below MIN 33 dB: K=4")
    # the fit finished: every image has its palette, and quantize and info work
    sec = zarr.open_group(path, mode="r").attrs["per_image"]
    assert sec["state"] == "complete"
    assert sec["quality"]["below_min"] == len(below)
    streamq.quantize(path, scheduler="threads", progress=False)
    g = zarr.open_group(path, mode="r")
    np.testing.assert_allclose(g["per_image/k4/images/psnr"][:], t["psnr"], rtol=1e-9)
    info = CliRunner().invoke(cli, ["info", path])
    assert info.exit_code == 0
    assert f"below MIN  {coll.paths[below[0]]}: below MIN 33 dB: K=4" in info.output
    # a rerun fails again at once, with the same line, fitting nothing
    again = CliRunner().invoke(cli, args)
    assert (again.exit_code, again.output) == (99, out.output)
    assert zarr.open_group(path, mode="r").attrs["per_image"]["finished"] == sec["finished"]


def test_export_writes_each_image_with_its_own_k_palette(quality_store, tmp_path):
    path, _ = quality_store
    out = tmp_path / "out"
    streamq.export(path, str(out), per_image=HI, scheduler="threads", progress=False)
    coll = streamq.open_store(path)
    g = zarr.open_group(path, mode="r")
    palettes = g[f"per_image/k{HI}/palette"][:]
    labels = g[f"per_image/k{HI}/labels"][:]
    t = _table(path)
    for i in range(len(coll)):
        k = int(t["k"][i])
        with Image.open(out / (coll.paths[i].rsplit(".", 1)[0] + ".png")) as im:
            assert im.mode == "P"
            entries = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
            rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
        assert len(entries) == k
        np.testing.assert_array_equal(entries, palettes[i][:k])
        off, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        np.testing.assert_array_equal(rgb, palettes[i][labels[off:off + n]])


def test_resumes_after_kill_with_the_same_choice(quality_store, ingested, tmp_path):
    path = str(tmp_path / "r.zarr")
    shutil.copytree(ingested, path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("per_image:\n  pixels_per_task: 1\n")  # one task per image
    cmd = streamq_cmd("fit", path, "--config", str(cfg), "--per-image", "--quality",
                      f"{MIN:g}-{MAX:g}", "--k-range", f"{LO}-{HI}", "--method", "histogram",
                      "--seed", str(SEED), "--scheduler", "threads", "--no-progress")

    def records():
        try:
            return [str(r) for r in zarr.open_array(f"{path}/per_image/records", mode="r")[:]]
        except Exception:  # noqa: BLE001  (not created yet)
            return []

    kill_when(cmd, lambda: sum(1 for r in records() if r) >= 2)
    before = records()
    done = [r for r in before if r]
    assert 2 <= len(done) < len(before)  # killed mid-fit
    assert zarr.open_group(path, mode="r").attrs["per_image"]["state"] == "running"
    subprocess.run(cmd, check=True, capture_output=True)
    after = records()
    assert [a for a, b in zip(after, before, strict=True) if b] == done  # kept, not refitted
    want, got = _table(quality_store[0]), _table(path)
    for c in ("k", "mse", "met"):
        np.testing.assert_array_equal(got[c], want[c])
    g, w = zarr.open_group(path, mode="r"), zarr.open_group(quality_store[0], mode="r")
    name = f"per_image/k{HI}/centers"
    np.testing.assert_array_equal(g[name][:], w[name][:])
    for r in after:  # each record: its images' K, as the table has them
        for image_id, k, mse, _, tried in json.loads(r)["quality"]:
            assert (k, mse) == (want["k"][image_id], want["mse"][image_id])
            assert [k, mse] in tried


def test_zarr_export_holds_each_images_own_k(quality_store, tmp_path):
    """--zarr of a quality fit (no --per-image: the store has no shared palette, so its one
    group k{HI}): each image's K beside its padded palette, equal to the store's."""
    path, _ = quality_store
    out = tmp_path / "q-labels.zarr"
    summary = streamq.export(path, str(out), zarr=True, ids="1-4,6", scheduler="threads",
                             progress=False)
    assert summary.results == [f"per-image K={HI}"]
    coll = streamq.open_store(path)
    g, e = zarr.open_group(path, mode="r"), zarr.open_group(str(out), mode="r")
    t = _table(path)
    ids = e["images/id"][:]
    assert ids.tolist() == [1, 2, 3, 4, 6]
    for c in ("k", "mse", "psnr", "met", "reason"):
        np.testing.assert_array_equal(e[f"k{HI}/quality/{c}"][:], t[c][ids])
    palettes, labels = g[f"per_image/k{HI}/palette"][:], g[f"per_image/k{HI}/labels"][:]
    np.testing.assert_array_equal(e[f"k{HI}/palette"][:], palettes[ids])
    np.testing.assert_array_equal(e[f"k{HI}/centers"][:], g[f"per_image/k{HI}/centers"][:][ids])
    np.testing.assert_array_equal(e[f"k{HI}/images/psnr"][:], t["psnr"][ids])
    off, h, w = (e[f"images/{c}"][:] for c in ("offset", "height", "width"))
    out_labels, own_k = e[f"k{HI}/labels"][:], e[f"k{HI}/quality/k"][:]
    for j, i in enumerate(ids):
        n = int(h[j] * w[j])
        src = labels[int(coll.offsets[i]):int(coll.offsets[i]) + n]
        mine = out_labels[int(off[j]):int(off[j]) + n]
        np.testing.assert_array_equal(mine, src)
        assert mine.max() < own_k[j]
        # the image read as the attributes say: its own K entries only
        own = e[f"k{HI}/palette"][j][:own_k[j]]
        np.testing.assert_array_equal(own[mine].reshape(int(h[j]), int(w[j]), 3),
                                      palettes[i][src].reshape(int(h[j]), int(w[j]), 3))
    info = e.attrs["streamq_export"]["results"][0]
    assert info["group"] == f"k{HI}"
    assert info["quality"] == {"min": MIN, "max": MAX, "k_range": [LO, HI],
                               "own_k": f"k{HI}/quality/k"}
    assert f"k{HI}/palette[j][:k{HI}/quality/k[j]]" in info["read"]
    # --per-image HI names the same export: a rerun finds it complete
    again = streamq.export(path, str(out), zarr=True, ids="1-4,6", per_image=HI,
                           scheduler="threads", progress=False)
    assert again.status == "already complete"


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".streamq" not in p.as_posix()}


def test_run_with_a_quality_target_equals_fit_quantize_export(ingested, few_photos, tmp_path):
    """`streamq run` with per_image.quality: fit, quantize and export as the separate commands
    do (export without --per-image takes the fit's one group), and exit 99 after finishing when
    images stay below MIN, as fit does; a rerun writes a Zarr export and fails again."""
    fit_args = ["--quality", "33-40", "--k-range", "2-4", "--method", "histogram", "--seed",
                "3", "--scheduler", "threads", "--no-progress"]
    ref = str(tmp_path / "ref.zarr")
    shutil.copytree(ingested, ref)
    fitted = CliRunner().invoke(cli, ["fit", ref, "--per-image", *fit_args])
    assert fitted.exit_code == 99, fitted.output
    for args in (["quantize", ref], ["export", ref, str(tmp_path / "ref-out")],
                 ["export", ref, str(tmp_path / "ref.out.zarr"), "--zarr"]):
        done = CliRunner().invoke(cli, [*args, "--scheduler", "threads", "--no-progress"])
        assert done.exit_code == 0, done.output

    store = str(tmp_path / "run.zarr")
    shutil.copytree(ingested, store)  # the run's ingest finds it complete
    cfg = tmp_path / "run.yaml"

    def config(**export):
        cfg.write_text(json.dumps({
            "store": store, "ingest": {"source": str(few_photos), "chunk_pixels": 20_000},
            "dask": {"scheduler": "threads"}, "export": export,
            "report": {"out": str(tmp_path / "run.html"), "samples": 2, "worst": 0},
            "per_image": {"enabled": True, "quality": [33, 40], "k_range": [2, 4],
                          "method": "histogram", "seed": 3}}))

    config(out=str(tmp_path / "run-out"))
    first = CliRunner().invoke(cli, ["run", str(cfg), "--no-progress"])
    assert first.exit_code == 99, first.output
    assert first.output.strip().splitlines() == [fitted.output.strip().replace(ref, store)]
    for c in ("k", "mse", "psnr", "met", "reason"):
        np.testing.assert_array_equal(_table(store)[c], _table(ref)[c])
    g, w = zarr.open_group(store, mode="r"), zarr.open_group(ref, mode="r")
    for name in ("centers", "palette", "labels", "images/psnr"):
        np.testing.assert_array_equal(g[f"per_image/k4/{name}"][:], w[f"per_image/k4/{name}"][:])
    want = _files(tmp_path / "ref-out")
    assert len(want) == len(streamq.open_store(ref))
    assert _files(tmp_path / "run-out") == want
    # the run's report (written before the run fails): the images below MIN and why
    t = _table(store)
    below = [i for i in range(len(t["k"])) if t["reason"][i]]
    assert len(below) == len(t["k"]) - 1  # the two-colour image reaches MAX
    rows = [r for r in _Tables((tmp_path / "run.html").read_text()).rows["below-min"] if r]
    assert [(int(r[0]), int(r[3]), r[5]) for r in rows] == \
        [(i, 4, t["reason"][i]) for i in below]

    config(out=str(tmp_path / "run.out.zarr"), zarr=True)
    second = CliRunner().invoke(cli, ["run", str(cfg), "--no-progress"])
    assert (second.exit_code, second.output) == (99, first.output)
    a, b = (zarr.open_group(str(tmp_path / p), mode="r") for p in ("run.out.zarr", "ref.out.zarr"))
    assert a.attrs["streamq_export"]["state"] == "complete"
    for name in ("images/id", "k4/palette", "k4/labels", "k4/quality/k", "k4/quality/reason"):
        np.testing.assert_array_equal(a[name][:], b[name][:])


class _Tables(HTMLParser):
    """Rows (cell texts) of every table by class, every swatch's attributes in order, and
    the data-k of each per-image palette row (``.pi-k``) by image id; parsed, not rendered."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.swatches, self.pi_k = {}, {}, {}
        self._table = self._cell = self._image = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("class")
        elif tag == "tr" and self._table:
            self.rows.setdefault(self._table, []).append([])
        elif tag == "td" and self._table:
            self._cell = ""
        elif tag == "div" and a.get("class") == "per-image-palette":
            self._image = int(a["data-id"])
        elif tag == "div" and a.get("class") == "pi-k" and self._image is not None:
            self.pi_k.setdefault(self._image, []).append(int(a["data-k"]))
        elif tag == "div" and a.get("class") == "swatch" and self._image is not None:
            self.swatches.setdefault(self._image, []).append(a)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td" and self._cell is not None:
            self.rows[self._table][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_report_shows_each_images_k_psnr_and_own_palette(quality_store, tmp_path):
    path, _ = quality_store
    out = tmp_path / "q.html"
    summary = streamq.report(path, out, samples=3, worst=2)
    assert summary.missing == []
    assert "Per-image quality target" in summary.sections
    html = out.read_text()
    page = _Tables(html)
    coll = streamq.open_store(path)
    t = _table(path)
    g = zarr.open_group(path, mode="r")
    rows = [r for r in page.rows["chosen-k"] if r]
    assert [int(r[0]) for r in rows] == list(range(len(coll)))
    assert [r[2] for r in rows] == coll.paths
    assert [int(r[3]) for r in rows] == t["k"].tolist()
    for r, value, met in zip(rows, t["psnr"], t["met"], strict=True):
        assert r[4] == ("exact (inf dB)" if np.isinf(value) else f"{value:.2f} dB")
        assert r[5] == ("yes" if met else "no")
    ks, counts = np.unique(t["k"], return_counts=True)
    assert [[int(a) for a in r] for r in page.rows["k-counts"] if r] == \
        [[int(k), int(c)] for k, c in zip(ks, counts, strict=True)]
    assert "below-min" not in page.rows  # MIN 20 dB: none below
    assert (f"mean K {t['k'].mean():.1f}, {int(t['met'].sum())} of {len(coll)} images reached "
            "MAX, 0 below MIN") in html
    # each sampled image's palette: its own K entries, by pixel count in its labels
    palettes, labels = g[f"per_image/k{HI}/palette"][:], g[f"per_image/k{HI}/labels"][:]
    assert page.swatches
    for i, swatches in page.swatches.items():
        k = int(t["k"][i])
        assert page.pi_k[i] == [k]
        off, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        count = np.bincount(labels[off:off + n], minlength=HI)
        assert not count[k:].any()
        order = sorted(range(k), key=lambda j: (-count[j], j))
        assert [(s["data-hex"], int(s["data-count"])) for s in swatches] == \
            [("#{:02x}{:02x}{:02x}".format(*palettes[i][j]), int(count[j])) for j in order]
    for i in page.swatches:
        assert f"per-image K={int(t['k'][i])} (quality): PSNR" in html
