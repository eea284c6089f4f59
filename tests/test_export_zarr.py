"""export --zarr: a stand-alone Zarr store of labels + palette + image table, read back with plain
zarr + numpy and compared with the PNG export and with the store's own arrays."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import PHOTOS, run_until, streamq_cmd
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.errors import ConfigError, StoreExistsError, StreamQError

ARRAY_TYPES = {"uint8", "uint16", "int64", "float64", "string"}


def rebuilt(out, group: str = "") -> dict[int, np.ndarray]:
    """Every image of an export, by source id: what a downstream user writes with zarr + numpy."""
    g = zarr.open_group(str(out), mode="r")
    pre = f"{group}/" if group else ""
    labels, palette = g[f"{pre}labels"][:], g[f"{pre}palette"][:]
    t = {k: g[f"images/{k}"][:] for k in ("id", "offset", "height", "width")}
    images = {}
    for j, i in enumerate(t["id"]):
        o, h, w = int(t["offset"][j]), int(t["height"][j]), int(t["width"][j])
        pal = palette if palette.ndim == 2 else palette[j]
        images[int(i)] = pal[labels[o:o + h * w]].reshape(h, w, 3)
    return images


def store_image(store, i: int, group: str = "") -> np.ndarray:
    """Image ``i`` quantized, read from the store itself with plain zarr."""
    g = zarr.open_group(str(store), mode="r")
    o, h, w = (int(g[f"images/{k}"][i]) for k in ("offset", "height", "width"))
    if group:
        labels, palette = g[f"per_image/{group}/labels"], g[f"per_image/{group}/palette"][i]
    else:
        labels = g["quantize/labels"]
        palette = np.stack([g[f"fit/palette/{c}"][:] for c in "rgb"], 1)
    return palette[labels[o:o + h * w]].reshape(h, w, 3)


def export_attrs(out) -> dict:
    return dict(zarr.open_group(str(out), mode="r").attrs["streamq_export"])


def files(out) -> dict[str, tuple[int, int]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(Path(out).rglob("*")) if p.is_file()}


def contents(out) -> dict[str, np.ndarray]:
    """Every array of an export, by path."""
    g = zarr.open_group(str(out), mode="r")
    return {name: np.asarray(a[:]) for name, a in g.members(max_depth=None)
            if isinstance(a, zarr.Array)}


def png_of(out, rel: str) -> np.ndarray:
    with Image.open(Path(out) / (os.path.splitext(rel)[0] + ".png")) as im:
        return np.asarray(im.convert("RGB"))


def test_zarr_export_is_the_png_export_as_arrays(photo_store, tmp_path, cluster_address):
    coll = streamq.open_store(photo_store)
    streamq.export(photo_store, tmp_path / "png", scheduler=cluster_address, progress=False)
    out = tmp_path / "photos-labels.zarr"
    s = streamq.export(photo_store, out, zarr=True, scheduler=cluster_address, progress=False)
    assert (s.status, s.n_images, s.n_existing) == ("exported", len(coll), 0)
    assert s.n_written == s.n_chunks > 1
    images = rebuilt(out)
    assert sorted(images) == list(range(len(coll)))
    for i, rel in enumerate(coll.paths):
        np.testing.assert_array_equal(images[i], png_of(tmp_path / "png", rel), err_msg=rel)
    g = zarr.open_group(str(out), mode="r")
    assert list(g["images/path"][:]) == coll.paths
    assert list(g["images/label"][:]) == coll.labels
    np.testing.assert_array_equal(g["images/height"][:], coll.heights)
    np.testing.assert_array_equal(g["images/width"][:], coll.widths)
    sizes = coll.heights * coll.widths
    np.testing.assert_array_equal(g["images/offset"][:], np.cumsum(sizes) - sizes)
    assert g["labels"].dtype == np.uint8
    assert g["labels"].shape == (sizes.sum(),)
    fit = streamq.load_fit(photo_store)
    np.testing.assert_array_equal(g["palette"][:], fit.palette)
    np.testing.assert_array_equal(g["centers"][:], fit.centers)
    src = zarr.open_group(photo_store, mode="r")
    for k in ("mse", "psnr", "ssim"):
        np.testing.assert_array_equal(g[f"images/{k}"][:], src[f"quantize/images/{k}"][:])
    a = export_attrs(out)
    assert (a["format_version"], a["state"], a["n_images"]) == (1, "complete", len(coll))
    (r,) = a["results"]
    assert (r["group"], r["k"], r["color_space"], r["labels_dtype"]) == ("", 12, "rgb", "uint8")
    assert (r["errors"], r["ssim"]) == (True, True)
    assert r["fit_fingerprint"] == src.attrs["fit"]["fingerprint"]  # a refit is detectable
    assert a["store"]["source_fingerprint"] == src.attrs["ingest"]["source_fingerprint"]
    # completion records: one per chunk, with the CRC-32 of the chunk's labels
    labels, chunk, starts = g["labels"][:], a["chunk_pixels"], np.cumsum(sizes) - sizes
    for c, rec in enumerate(g["label_records"][:]):
        part = labels[c * chunk:(c + 1) * chunk]
        touched = int(((starts < (c + 1) * chunk) & (starts + sizes > c * chunk)).sum())
        assert json.loads(rec) == {"pixels": len(part), "images": touched,
                                   "crc32": zlib.crc32(part.tobytes())}
    # nothing pickled: JSON metadata, numeric and vlen-utf8 string arrays only
    for meta in out.rglob("zarr.json"):
        doc = json.loads(meta.read_text())
        assert "pickle" not in meta.read_text().lower()
        if doc["node_type"] == "array":
            assert doc["data_type"] in ARRAY_TYPES, meta
    # a rerun of the finished export writes nothing
    before = files(out)
    again = streamq.export(photo_store, out, zarr=True, scheduler="threads", progress=False)
    assert (again.status, again.n_written, again.n_existing) == ("already complete", 0, s.n_chunks)
    assert files(out) == before


def test_selection_repacks_labels(photo_store, tmp_path):
    coll = streamq.open_store(photo_store)
    out = tmp_path / "some.zarr"
    streamq.export(photo_store, out, zarr=True, ids="1,3-5,40", scheduler="threads", progress=False)
    g = zarr.open_group(str(out), mode="r")
    ids = [1, 3, 4, 5, 40]
    assert list(g["images/id"][:]) == ids
    assert list(g["images/path"][:]) == [coll.paths[i] for i in ids]
    sizes = coll.heights[ids] * coll.widths[ids]
    np.testing.assert_array_equal(g["images/offset"][:], np.cumsum(sizes) - sizes)
    assert g["labels"].shape == (sizes.sum(),)
    for i, img in rebuilt(out).items():
        np.testing.assert_array_equal(img, store_image(photo_store, i))
    src = zarr.open_group(photo_store, mode="r")
    for name in ("psnr", "ssim"):  # the selected images' rows
        np.testing.assert_array_equal(g[f"images/{name}"][:], src[f"quantize/images/{name}"][:][ids])
    assert export_attrs(out)["selection"]["ids"] == "1,3-5,40"
    # by label, through the command line, together with ids
    label = PHOTOS[2]
    result = CliRunner().invoke(cli, ["-q", "export", photo_store, str(tmp_path / "lab.zarr"), "--zarr",
                                      "--label", label, "--ids", "0-30", "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    want = [i for i in range(31) if coll.labels[i] == label]
    images = rebuilt(tmp_path / "lab.zarr")
    assert want
    assert sorted(images) == want
    for i, img in images.items():
        np.testing.assert_array_equal(img, store_image(photo_store, i))
    assert export_attrs(tmp_path / "lab.zarr")["selection"]["labels"] == [label]


@pytest.fixture
def per_image_store(faces_per_image_store):
    """Per-image palettes for K = 2, 6, 30 (conftest: built once per session)."""
    return faces_per_image_store


def test_per_image_palettes_one_group_per_k(per_image_store, tmp_path, cluster_address):
    coll = streamq.open_store(per_image_store)
    out = tmp_path / "pi.zarr"
    s = streamq.export(per_image_store, out, zarr=True, per_image=[2, 6], scheduler=cluster_address,
                       progress=False)
    assert s.results == ["per-image K=2", "per-image K=6"]
    g, src = zarr.open_group(str(out), mode="r"), zarr.open_group(per_image_store, mode="r")
    assert "labels" not in g  # no shared palette was asked for
    assert "palette" not in g
    for k in (2, 6):
        assert g[f"k{k}/palette"].shape == (len(coll), k, 3)
        np.testing.assert_array_equal(g[f"k{k}/palette"][:], src[f"per_image/k{k}/palette"][:])
        np.testing.assert_array_equal(g[f"k{k}/centers"][:], src[f"per_image/k{k}/centers"][:])
        for name in ("mse", "ssim"):
            np.testing.assert_array_equal(g[f"k{k}/images/{name}"][:],
                                          src[f"per_image/k{k}/images/{name}"][:])
    streamq.export(per_image_store, tmp_path / "png6", per_image=6, scheduler="threads", progress=False)
    images = rebuilt(out, "k6")
    for i, rel in enumerate(coll.paths):
        np.testing.assert_array_equal(images[i], png_of(tmp_path / "png6", rel), err_msg=rel)
    r6 = export_attrs(out)["results"][1]
    assert (r6["group"], r6["palette"], r6["k"]) == ("k6", "per-image", 6)
    assert r6["fit_fingerprint"] == src.attrs["per_image"]["fingerprint"]
    # a selection keeps each exported image's own palette row
    result = CliRunner().invoke(cli, ["-q", "export", per_image_store, str(tmp_path / "sel.zarr"),
                                      "--zarr", "--per-image", "6", "--ids", "0,7-9",
                                      "--scheduler", "threads"])
    assert result.exit_code == 0, result.output
    sel = zarr.open_group(str(tmp_path / "sel.zarr"), mode="r")
    np.testing.assert_array_equal(sel["k6/palette"][:], src["per_image/k6/palette"][:][[0, 7, 8, 9]])
    for i, img in rebuilt(tmp_path / "sel.zarr", "k6").items():
        np.testing.assert_array_equal(img, store_image(per_image_store, i, "k6"))
    with pytest.raises(StreamQError, match="no per-image palettes for K=7"):
        streamq.export(per_image_store, tmp_path / "x.zarr", zarr=True, per_image=7)
    with pytest.raises(ConfigError, match="one K at a time"):
        streamq.export(per_image_store, tmp_path / "y", per_image=[2, 6])


def test_more_than_256_colours_and_a_refit(faces_300_store, tmp_path, monkeypatch):
    store = str(tmp_path / "big.zarr")
    shutil.copytree(faces_300_store, store)  # fitted with 300 colours and quantized
    fit = dict(colors=300, max_steps=5, batch_size=4096, init_size=20_000, n_init=2, max_iter=20,
               scheduler="threads")  # few starts and iterations: the count of colours matters here
    out = tmp_path / "big-labels.zarr"
    streamq.export(store, out, zarr=True, scheduler="threads", progress=False)
    g = zarr.open_group(str(out), mode="r")
    assert g["labels"].dtype == np.uint16
    assert g["palette"].shape == (300, 3)
    assert g["labels"][:].max() > 255
    for i, img in rebuilt(out).items():
        np.testing.assert_array_equal(img, store_image(store, i))
    old = export_attrs(out)["results"][0]["fit_fingerprint"]
    streamq.fit(store, seed=1, overwrite=True, **fit)
    streamq.quantize(store, scheduler="threads")
    new = zarr.open_group(store, mode="r").attrs["fit"]["fingerprint"]
    assert new != old  # what a reader compares to see the export is of an older palette
    with pytest.raises(StoreExistsError, match="made with another fit"):
        streamq.export(store, out, zarr=True, scheduler="threads")
    streamq.export(store, out, zarr=True, overwrite=True, scheduler="threads", progress=False)
    assert export_attrs(out)["results"][0]["fit_fingerprint"] == new
    for i, img in rebuilt(out).items():
        np.testing.assert_array_equal(img, store_image(store, i))
    # a refit while an export runs (readers take no lock) fails it instead of completing it
    ez = importlib.import_module("streamq.export.zarr")  # the module (streamq.export: a function)
    copy = ez.copy_task

    def refit_meanwhile(args):
        g = zarr.open_group(store, mode="r+")
        g.attrs["fit"] = {**g.attrs["fit"], "fingerprint": "refitted"}
        return copy(args)

    monkeypatch.setattr(ez, "copy_task", refit_meanwhile)
    with pytest.raises(StreamQError, match="refitted"):
        streamq.export(store, tmp_path / "during.zarr", zarr=True, scheduler="sync", progress=False)
    assert export_attrs(tmp_path / "during.zarr")["state"] == "writing"


def test_kill_mid_export_then_rerun_gives_the_same_arrays(photo_store, tmp_path):
    cfg = tmp_path / "small-chunks.yaml"
    cfg.write_text("export:\n  zarr_chunk_pixels: 4096\n")  # ~110 chunks
    ref = tmp_path / "ref.zarr"
    streamq.export(photo_store, ref, zarr=True, config=streamq.load_config(cfg), scheduler="threads",
                   progress=False)
    n_chunks = zarr.open_group(str(ref), mode="r")["label_records"].shape[0]
    assert n_chunks > 50
    out = tmp_path / "killed.zarr"
    cmd = streamq_cmd("-q", "export", photo_store, str(out), "--zarr", "--config", str(cfg),
                      "--scheduler", "threads")
    records = out / "label_records" / "c"

    def done() -> int:
        return len(os.listdir(records)) if records.is_dir() else 0

    for at in (0.1, 0.5):  # killed twice: once fresh, once while resuming
        assert run_until(cmd, lambda at=at: done() >= at * n_chunks) is None
        assert export_attrs(out)["state"] == "writing"
        assert 0 < done() < n_chunks
    streamq.export(photo_store, out, zarr=True, config=streamq.load_config(cfg),
                   scheduler="threads", progress=False)  # the rerun that finishes it
    a, b = contents(ref), contents(out)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    skip = {"timings", "runtime", "finished"}
    ra, rb = export_attrs(ref), export_attrs(out)
    assert {k: v for k, v in ra.items() if k not in skip} == \
        {k: v for k, v in rb.items() if k not in skip}


def test_other_contents_of_out_are_refused(photo_store, faces_store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match=r"is not a streamq Zarr export \(it holds 1 "
                                                   r"entries: 'mine.txt'\)"):
            streamq.export(photo_store, tmp_path / "full", zarr=True, overwrite=overwrite)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    before = files(faces_store)
    with pytest.raises(StoreExistsError, match="it holds a streamq store"):
        streamq.export(photo_store, faces_store, zarr=True, overwrite=True)
    assert files(faces_store) == before
    streamq.export(photo_store, tmp_path / "png", ids=[0], scheduler="threads", progress=False)
    with pytest.raises(StoreExistsError, match="it holds a streamq image export"):
        streamq.export(photo_store, tmp_path / "png", zarr=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreExistsError, match="is a file"):
        streamq.export(photo_store, tmp_path / "afile", zarr=True)
    with pytest.raises(StoreExistsError, match="overlaps the store"):
        streamq.export(photo_store, Path(photo_store) / "out.zarr", zarr=True)
    # another selection: refused, then replaced with --overwrite (no stray arrays left)
    out = tmp_path / "o.zarr"
    streamq.export(photo_store, out, zarr=True, ids="0-3", scheduler="threads", progress=False)
    with pytest.raises(StoreExistsError, match=r"another selection \(4 images\); pass --overwrite"):
        streamq.export(photo_store, out, zarr=True, ids="0-4", scheduler="threads")
    (out / "stray").mkdir()
    streamq.export(photo_store, out, zarr=True, ids="0-4", overwrite=True, scheduler="threads",
                   progress=False)
    assert list(zarr.open_group(str(out), mode="r")["images/id"][:]) == [0, 1, 2, 3, 4]
    assert not (out / "stray").exists()
    with pytest.raises(ConfigError, match="holds no image"):
        streamq.export(photo_store, tmp_path / "none.zarr", zarr=True, ids="")
    with pytest.raises(ConfigError, match="--format and --dither apply to image files"):
        streamq.export(photo_store, tmp_path / "d.zarr", zarr=True, dither=True)


def test_command_line_errors_are_one_line(photo_store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(cli, ["export", photo_store, str(tmp_path / "full"), "--zarr"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "is not a streamq Zarr export" in result.output
    assert result.output.strip().count("\n") == 0
    result = runner.invoke(cli, ["export", photo_store, str(tmp_path / "x.zarr"), "--zarr", "--dither"])
    assert result.exit_code == 2
    assert "--format, --dither and --png-level are for image files" in result.output
    assert not (tmp_path / "x.zarr").exists()


def test_run_writes_one_zarr_store_with_a_group_per_k(faces_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"store: faces.zarr\ndask:\n  scheduler: threads\n"
                   f"ingest:\n  source: {faces_dir}\n  chunk_pixels: 65536\n"
                   "per_image:\n  enabled: true\n  colors: [2, 3]\n"
                   "export:\n  out: faces-labels.zarr\n  zarr: true\n")
    report = streamq.run(cfg, progress=False)
    assert report.stages["export"].results == ["per-image K=2", "per-image K=3"]
    store, out = tmp_path / "faces.zarr", tmp_path / "faces-labels.zarr"
    for k in (2, 3):
        images = rebuilt(out, f"k{k}")
        assert len(images) == 48
        for i in (0, 47):
            np.testing.assert_array_equal(images[i], store_image(store, i, f"k{k}"))
    assert streamq.run(cfg, progress=False).stages["export"].status == "already complete"
