"""``streamq upgrade``: a store written before store format 3 (centres spelled ``center``) is
refused in one line naming the command, and the command renames its arrays in place, resumably,
into a store identical to one written today."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import as_older_format, tree_bytes

import streamq
from streamq.cli.main import cli
from streamq.errors import StoreLayoutError
from streamq.store import FORMAT_VERSION, Store
from streamq.store.checkpoint import decode_state, encode_state
from streamq.store.results import load_per_image
from streamq.store.upgrade import rename_array, renames_left

PER_IMAGE_K = 3


@pytest.fixture(scope="module")
def current(photo_store, tmp_path_factory):
    """A store of today's format with every renamed kind of array: a shared palette and its
    labels (the session's photo store), per-image palettes and their labels."""
    path = tmp_path_factory.mktemp("upgrade") / "current.zarr"
    shutil.copytree(photo_store, path)
    streamq.fit_per_image(str(path), colors=[PER_IMAGE_K], pixels_per_task=200_000,
                          scheduler="threads", progress=False)
    streamq.quantize(str(path), scheduler="threads", progress=False)
    return path


@pytest.fixture
def older(current, tmp_path):
    """A copy of ``current`` as the streamq before format 3 wrote it (format 1)."""
    path = tmp_path / "older.zarr"
    shutil.copytree(current, path)
    renamed = as_older_format(path)
    assert sorted(new for _, new in renamed) == [
        "fit/palette/centers_0", "fit/palette/centers_1", "fit/palette/centers_2",
        f"per_image/k{PER_IMAGE_K}/centers"]
    return path


def _message(path) -> str:
    return (f"{path} uses store format 1; run `streamq upgrade {path}` to rename its arrays "
            "(nothing is recomputed)")


def test_an_older_store_is_refused_in_one_line(older):
    for read in (streamq.load_fit, lambda p: load_per_image(p, PER_IMAGE_K),
                 streamq.open_store, streamq.collection_info):
        with pytest.raises(StoreLayoutError) as err:
            read(str(older))
        assert str(err.value) == _message(older)
    res = CliRunner().invoke(cli, ["info", str(older)])
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == [f"error: {_message(older)}"]


def test_upgrade_gives_the_store_of_today(current, older):
    before = tree_bytes(older)
    summary = streamq.upgrade(str(older))
    assert (summary.from_version, summary.to_version) == (1, FORMAT_VERSION)
    assert len(summary.renamed) == 4
    assert str(summary) == (f"upgraded {older} from store format 1 to {FORMAT_VERSION}: "
                            "4 arrays renamed (nothing recomputed)")
    assert tree_bytes(older) != before
    # every file, byte for byte: arrays, chunks, records, attributes; nothing left over
    assert tree_bytes(older) == tree_bytes(current)
    np.testing.assert_array_equal(streamq.load_fit(str(older)).centers,
                                  streamq.load_fit(str(current)).centers)


def test_upgrade_of_a_current_store_changes_nothing(older):
    streamq.upgrade(str(older))
    before = tree_bytes(older)
    res = CliRunner().invoke(cli, ["upgrade", str(older)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"{older} is already at store format {FORMAT_VERSION}"
    assert tree_bytes(older) == before


@pytest.mark.parametrize("stop", ["copied", "metadata removed", "one renamed", "all renamed"])
def test_upgrade_stopped_midway_is_finished_by_a_rerun(current, older, stop):
    """Each step of a rename left where a kill could leave it; the rerun (the CLI) ends with
    the same store as an upgrade that was never stopped."""
    st = Store.open(older, mode="r+", versions=(1,))
    pairs = renames_left(st)
    old, new = pairs[0]
    if stop == "copied":  # killed after the copy, before the old array's metadata went
        rename_array(st, old, new, step=1)
        assert st.has(old)
        assert st.has(new)
    elif stop == "metadata removed":  # killed before the old array's chunks went
        rename_array(st, old, new, step=2)
        assert not st.has(old)
        assert st.has(new)
        assert (older / old).is_dir()  # its chunks are still there
    elif stop == "one renamed":
        rename_array(st, old, new)
        assert not (older / old).exists()
    else:  # killed before the version was written
        for o, n in pairs:
            rename_array(st, o, n)
        assert renames_left(st) == []
    assert zarr.open_group(str(older), mode="r").attrs["streamq"]["format_version"] == 1
    with pytest.raises(StoreLayoutError, match="run `streamq upgrade"):
        streamq.load_fit(str(older))
    res = CliRunner().invoke(cli, ["upgrade", str(older)])
    assert res.exit_code == 0, res.output
    assert tree_bytes(older) == tree_bytes(current)


def test_a_partial_copy_is_made_again(current, older):
    """Killed during the copy: the new array is missing a chunk; the rerun copies it again."""
    st = Store.open(older, mode="r+", versions=(1,))
    old, new = f"per_image/k{PER_IMAGE_K}/center", f"per_image/k{PER_IMAGE_K}/centers"
    rename_array(st, old, new, step=1)
    chunk = next(p for p in sorted((older / new).rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    streamq.upgrade(str(older))
    assert tree_bytes(older) == tree_bytes(current)


def test_an_unfinished_fit_checkpoint_is_upgraded(current, tmp_path):
    """The fit checkpoint of a fit stopped after its mini-batch phase names the mini-batch
    centres ``minibatch_centres`` before format 3: renamed, the values the same."""
    path = tmp_path / "ckpt.zarr"
    shutil.copytree(current, path)
    centers = np.linspace(0, 1, 12).reshape(4, 3)
    state = {"fingerprint": "f", "phase": "exact", "minibatch_centers": centers,
             "minibatch_info": {"steps": 3}}
    zarr.open_array(str(path / "fit/checkpoint"), mode="r+")[0] = encode_state(state)
    as_older_format(path)
    assert "minibatch_centres" in str(zarr.open_array(str(path / "fit/checkpoint"), mode="r")[0])
    streamq.upgrade(str(path))
    got = decode_state(str(zarr.open_array(str(path / "fit/checkpoint"), mode="r")[0]))
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["minibatch_centers"], centers)
    assert streamq.load_fit(str(path)).k == streamq.load_fit(str(current)).k


def test_ingest_overwrite_replaces_an_older_store(older, photo_dir):
    """Without --overwrite a rerun of ingest is refused with the upgrade line; with it the
    store is replaced by one of today's format, whatever its inputs."""
    with pytest.raises(StoreLayoutError, match="run `streamq upgrade"):
        streamq.ingest(photo_dir, str(older), chunk_pixels=20_000, scheduler="threads",
                       progress=False)
    streamq.ingest(photo_dir, str(older), chunk_pixels=20_000, overwrite=True,
                   scheduler="threads", progress=False)
    g = zarr.open_group(str(older), mode="r")
    assert g.attrs["streamq"]["format_version"] == FORMAT_VERSION
    assert "fit" not in g  # a new store: the old results went with it
