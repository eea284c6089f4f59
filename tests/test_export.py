"""Export: files decode back to palette[labels], paths stay inside OUT, reruns skip files."""

from __future__ import annotations

import json
import os
import shutil
import unicodedata

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import GLOB_NAMES, write_glob_collection
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.errors import ConfigError, StoreExistsError
from streamq.export import output_names, safe_output_path


@pytest.fixture(scope="module")
def quantized(faces_dir, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("e") / "e.zarr")
    streamq.ingest(faces_dir, path, chunk_pixels=30_000, scheduler="threads", progress=False)
    streamq.fit(path, colors=12, max_steps=30, scheduler="threads")
    streamq.quantize(path, scheduler="threads")
    return path


def _expected(store, i):
    coll = streamq.open_store(store)
    labels = zarr.open_array(f"{store}/quantize/labels", mode="r")
    a, (h, w) = int(coll.offsets[i]), coll.shapes[i]
    return streamq.load_fit(store).palette[np.asarray(labels[a:a + h * w])].reshape(h, w, 3)


def test_png_decodes_to_palette_of_labels(quantized, tmp_path, cluster_address):
    out = tmp_path / "out"
    s = streamq.export(quantized, out, scheduler=cluster_address)
    coll = streamq.open_store(quantized)
    assert s.n_written == len(coll)
    for i, rel in enumerate(coll.paths):
        path = out / (os.path.splitext(rel)[0] + ".png")
        with Image.open(path) as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), _expected(quantized, i))
    again = streamq.export(quantized, out, scheduler="threads")
    assert again.n_written == 0
    assert again.n_existing == len(coll)


def test_other_formats_dither_and_selection(quantized, tmp_path):
    coll = streamq.open_store(quantized)
    label = coll.labels[0]
    s = streamq.export(quantized, tmp_path / "jpg", format="jpeg", labels=[label], scheduler="threads")
    assert s.n_images == coll.labels.count(label)
    files = sorted((tmp_path / "jpg").rglob("*.jpg"))
    assert len(files) == s.n_images
    assert all(f.parent.name == label for f in files)
    streamq.export(quantized, tmp_path / "webp", format="webp", ids="0,2-3", scheduler="threads")
    assert len(list((tmp_path / "webp").rglob("*.webp"))) == 3
    streamq.export(quantized, tmp_path / "dith", dither=True, ids=[0], scheduler="threads")
    with Image.open(tmp_path / "dith" / (os.path.splitext(coll.paths[0])[0] + ".png")) as im:
        dithered = np.asarray(im.convert("RGB"))
    pal = {tuple(c) for c in streamq.load_fit(quantized).palette}
    assert {tuple(c) for c in dithered.reshape(-1, 3)} <= pal  # palette colours only
    assert not np.array_equal(dithered, _expected(quantized, 0))
    with pytest.raises(ConfigError, match="--label 'Nobody'"):
        streamq.export(quantized, tmp_path / "x", labels=["Nobody"])
    with pytest.raises(ConfigError, match="ids run from 0"):
        streamq.export(quantized, tmp_path / "y", ids="99999")


def test_other_export_into_same_folder_refused(quantized, tmp_path):
    out = tmp_path / "o"
    streamq.export(quantized, out, ids=[0], scheduler="threads")
    with pytest.raises(StoreExistsError, match="made differently"):
        streamq.export(quantized, out, format="jpeg", ids=[0], scheduler="threads")
    s = streamq.export(quantized, out, format="jpeg", ids=[0], overwrite=True, scheduler="threads")
    assert s.n_written == 1
    assert len(list(out.rglob("*.jpg"))) == 1
    assert len(list(out.rglob("*.png"))) == 1  # overwrite removes only what it rewrites
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    Image.new("RGB", (4, 4)).save(tmp_path / "full" / "holiday.png")
    with pytest.raises(StoreExistsError, match="not empty"):
        streamq.export(quantized, tmp_path / "full")
    streamq.export(quantized, tmp_path / "full", ids=[0], overwrite=True, scheduler="threads")
    assert (tmp_path / "full" / "mine.txt").exists()
    assert (tmp_path / "full" / "holiday.png").exists()


def test_output_folder_may_not_overlap_source_or_store(quantized, faces_dir):
    for out in (faces_dir, faces_dir / "sub", quantized, os.path.dirname(quantized)):
        with pytest.raises(StoreExistsError, match="overlaps"):
            streamq.export(quantized, out, overwrite=True)
    assert any(faces_dir.rglob("*.jpg"))  # nothing was deleted


@pytest.mark.parametrize("name", ["../../evil.jpg", "/etc/passwd", "a/../../b.png", "..",
                                  "ctrl\x01char.jpg", "./././x.jpg", "deep/../../../../up.jpg",
                                  "", "dir/.jpg"])
def test_safe_output_path_never_leaves_out(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    p = safe_output_path(str(out), name, ".png", "00000001")
    root = os.path.realpath(out)
    assert os.path.commonpath([root, os.path.realpath(p)]) == root
    assert p != root
    assert p.endswith(".png")
    assert "\x01" not in p


def test_hostile_names_in_a_store(quantized, tmp_path):
    store = tmp_path / "hostile.zarr"
    shutil.copytree(quantized, store)
    g = zarr.open_group(str(store), mode="r+")
    paths = np.asarray(g["images/path"][:], dtype=object)
    paths[0], paths[1], paths[2] = "../../../escape.jpg", "/tmp/absolute.jpg", "x/../../y.jpg"
    g["images/path"][:] = paths.astype(str)
    out = tmp_path / "out"
    s = streamq.export(str(store), out, ids="0-2", scheduler="threads")
    assert s.n_written == 3
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["_/_/_/escape.png", "tmp/absolute.png", "x/_/_/y.png"]
    assert not (tmp_path / "escape.png").exists()
    assert not os.path.exists("/tmp/absolute.png")


def test_more_than_256_colours_export_rgb(faces_300_store, tmp_path):
    store = faces_300_store  # fitted with 300 colours and quantized (read only here)
    assert streamq.load_fit(store).k == 300
    streamq.export(store, tmp_path / "out", ids=[0, 1], scheduler="threads")
    coll = streamq.open_store(store)
    for i in (0, 1):
        with Image.open(tmp_path / "out" / (os.path.splitext(coll.paths[i])[0] + ".png")) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), _expected(store, i))


def test_glob_characters_in_names_and_paths(tmp_path):
    """Names and paths with ``[ ] * ?`` on local disk: overwrites replace exactly the export's
    own files (``photo[1].png``), never what a pattern would match (the user's ``photo1.png``)."""
    src = tmp_path / "src"
    write_glob_collection(src)
    mine = {"glob1.zarr/zarr.json": "a user's store", "lab1.zarr/zarr.json": "another store",
            **{f"out[1]/{theirs}": theirs for theirs in GLOB_NAMES.values()}}
    for rel, text in mine.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    store, out = str(tmp_path / "glob[1].zarr"), tmp_path / "out[1]"
    for overwrite in (False, True):
        streamq.ingest(src, store, chunk_pixels=4096, overwrite=overwrite, scheduler="threads",
                       progress=False)
    streamq.fit(store, colors=4, max_steps=10, batch_size=1024, init_size=2000, scheduler="threads")
    streamq.quantize(store, scheduler="threads")
    coll = streamq.open_store(store)
    assert sorted(coll.paths) == sorted(GLOB_NAMES)
    first = streamq.export(store, out, overwrite=True, scheduler="threads", progress=False)
    for i in range(len(coll)):  # a stale file in place of each: the overwrite must replace it
        (out / (os.path.splitext(coll.paths[i])[0] + ".png")).write_bytes(b"stale")
    again = streamq.export(store, out, overwrite=True, scheduler="threads", progress=False)
    assert (first.n_written, again.n_written, again.n_existing) == (4, 4, 0)
    for i, rel in enumerate(coll.paths):
        with Image.open(out / (os.path.splitext(rel)[0] + ".png")) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), _expected(store, i))
    lab = tmp_path / "lab[1].zarr"
    streamq.export(store, lab, zarr=True, ids="0-1", scheduler="threads", progress=False)
    replaced = streamq.export(store, lab, zarr=True, ids="0-2", overwrite=True,
                              scheduler="threads", progress=False)
    assert replaced.n_images == len(zarr.open_group(str(lab), mode="r")["images/id"][:]) == 3
    for rel, text in mine.items():
        assert (tmp_path / rel).read_text() == text, rel


# Names one case-insensitive or normalising file system takes for one file: two that differ
# only by case, one name composed (NFC) and decomposed (NFD), two extensions of one stem, and
# a file whose output name is a folder of another image.
CLASHING = ["Face.jpg", "face.JPG", "caf\u00e9.png", "cafe\u0301.png", "x.jpg", "x.png",
            "X.PNG/in.png"]


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def test_names_that_clash_on_some_file_systems(tmp_path):
    from sklearn.datasets import load_sample_image

    photo = load_sample_image("china.jpg")
    src = tmp_path / "src"
    for j, name in enumerate(CLASHING):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[50 * j:50 * j + 30, 70 * j:70 * j + 40]).save(
            src / name, format="PNG" if name.lower().endswith(".png") else "JPEG")
    store = str(tmp_path / "clash.zarr")
    streamq.ingest(src, store, scheduler="threads", progress=False)
    streamq.fit(store, colors=4, max_steps=10, batch_size=1024, init_size=2000, scheduler="threads")
    streamq.quantize(store, scheduler="threads")
    coll = streamq.open_store(store)
    assert sorted(coll.paths) == sorted(CLASHING)
    # Expected: by folded output name, the lowest id keeps it; x.png is also a folder: both go.
    natural = [os.path.splitext(p)[0] + ".png" for p in coll.paths]
    keep = {}
    for i, n in enumerate(natural):
        keep.setdefault(_fold(n), i)
    expect_renamed = {i for i, n in enumerate(natural)
                      if keep[_fold(n)] != i or _fold(n) == "x.png"}
    assert len(expect_renamed) == 4
    out = tmp_path / "out"
    s = streamq.export(store, out, scheduler="threads", progress=False)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                   and not p.relative_to(out).parts[0].startswith(".streamq-"))
    assert s.n_written == len(files) == len(coll)
    folded = [_fold(f) for f in files]
    folders = {f.rsplit("/", 1)[0] for f in folded if "/" in f}
    assert len(set(folded)) == len(files)  # one file each, even where case and form are ignored
    assert not folders & set(folded)
    assert {r["id"] for r in s.renamed} == expect_renamed
    file_of = {i: natural[i] for i in range(len(coll))} | {r["id"]: r["file"] for r in s.renamed}
    assert sorted(file_of.values()) == files
    for i, f in file_of.items():
        assert (f in {r["file"] for r in s.renamed}) == ("~" in f)
        with Image.open(out / f) as im:
            np.testing.assert_array_equal(np.asarray(im.convert("RGB")), _expected(store, i))
    manifest = json.loads((out / ".streamq-export.json").read_text())
    assert manifest["renamed"] == sorted(s.renamed, key=lambda r: r["id"])
    assert f"{len(expect_renamed)} renamed" in str(s)
    assert str(s).endswith(f"listed in {out / '.streamq-export.json'})")
    # A rerun, a selection and the CLI give each image the same name.
    again = streamq.export(store, out, scheduler="threads", progress=False)
    assert (again.n_written, again.n_existing) == (0, len(coll))
    one = min(expect_renamed)
    streamq.export(store, tmp_path / "one", ids=[one], scheduler="threads", progress=False)
    assert [p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.png")] \
        == [file_of[one]]
    result = CliRunner().invoke(cli, ["export", store, str(tmp_path / "cli"), "--scheduler",
                                      "threads", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [str(s).replace(str(out), str(tmp_path / "cli"))]
    # An export made before names were compared this way lists no renames: redone on request.
    del manifest["renamed"]
    (out / ".streamq-export.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreExistsError, match="other names for the images whose names clash"):
        streamq.export(store, out, scheduler="threads", progress=False)
    redo = streamq.export(store, out, overwrite=True, scheduler="threads", progress=False)
    assert redo.n_written == len(coll)


def test_output_names_never_take_another_images_name():
    names, renamed = output_names(["a.jpg", "A.png", "a~2.jpg", "d/b.jpg", "D/B.jpg",
                                   "s3?versionId=7.jpg"], ".png")
    assert names == ["a.png", "A~3.png", "a~2.png", "d/b.png", "D/B~2.png", "s3_versionId=7.png"]
    assert renamed == {1: "A~3.png", 4: "D/B~2.png"}
    assert output_names(["D/B.jpg", "d/b.jpg"], ".png")[0] == ["D/B.png", "d/b~2.png"]
