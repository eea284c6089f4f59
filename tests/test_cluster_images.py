"""Image groups: recovered source photos, descriptors against numpy, resume, schedulers, staleness."""

from __future__ import annotations

import functools
import json
import random
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import PER_PHOTO, PHOTOS, kill_when, reached, stage_progress, streamq_cmd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import streamq
from streamq.cli.main import cli
from streamq.errors import ConfigError, StoreMismatchError, StreamQError

SMALL = {"rows_per_chunk": 8, "pixels_per_task": 30_000}  # several tasks over straddling images


@pytest.fixture
def store(photo_store, tmp_path):
    dst = tmp_path / "s.zarr"
    shutil.copytree(photo_store, dst)
    return str(dst)


def test_groups_recover_the_source_photos(store, cluster_address):
    res = streamq.cluster_images(store, groups=len(PHOTOS), scheduler=cluster_address, **SMALL)
    truth = np.asarray(streamq.open_store(store).labels)
    ari = adjusted_rand_score(truth, res.group)
    # Random groupings of the same sizes: the margin a real grouping must beat.
    rng = np.random.default_rng(0)
    random_ari = [adjusted_rand_score(truth, rng.permutation(res.group)) for _ in range(500)]
    assert max(random_ari) < 0.25
    assert ari > 0.9 > max(random_ari) + 0.6
    assert res.ari == pytest.approx(ari, abs=1e-12)
    assert res.nmi == pytest.approx(normalized_mutual_info_score(truth, res.group), abs=1e-12)
    # contingency: groups x labels, consistent with the sizes and the label counts
    assert res.label_names == sorted(PHOTOS)
    table = res.contingency
    assert table.shape == (len(PHOTOS), len(PHOTOS))
    np.testing.assert_array_equal(table.sum(1), res.sizes)
    np.testing.assert_array_equal(table.sum(0), [PER_PHOTO] * len(PHOTOS))
    for g in range(res.groups):
        for j, name in enumerate(res.label_names):
            assert table[g, j] == int(((res.group == g) & (truth == name)).sum())
    # members: the group's images, nearest to the centre first
    ids = res.members(0)
    assert set(ids) == set(np.flatnonzero(res.group == 0))
    assert np.all(np.diff(res.distance[ids]) >= 0)
    # the API reads back what the run returned
    again = streamq.load_groups(store)
    np.testing.assert_array_equal(again.group, res.group)
    assert again.ari == res.ari


def test_descriptors_and_assignment_equal_numpy(store, cluster_address):
    res = streamq.cluster_images(store, groups=3, descriptor="histogram+moments",
                                 moments_weight=0.5, scheduler=cluster_address, **SMALL)
    coll = streamq.open_store(store)
    g = zarr.open_group(store, mode="r")
    k = streamq.load_fit(store).k
    desc = g["groups/descriptors"]
    assert desc.shape == (len(coll), k + 6)
    assert desc.chunks == (8, k + 6)
    assert g["groups/describe_records"].shape[0] > 1  # several tasks
    shard = g["pixels"].shards[0] if g["pixels"].shards else g["pixels"].chunks[0]
    ends = coll.offsets + coll.heights * coll.widths
    assert np.any(coll.offsets // shard != (ends - 1) // shard)  # images straddle label shards
    labels = np.asarray(g["quantize/labels"][:])
    ref = np.zeros(desc.shape)
    for i in range(len(coll)):
        a, n = int(coll.offsets[i]), int(coll.heights[i] * coll.widths[i])
        ref[i, :k] = np.bincount(labels[a:a + n], minlength=k) / n
        x = coll.read(i).reshape(-1, 3) / 255
        ref[i, k:k + 3], ref[i, k + 3:] = x.mean(0), x.std(0)
    np.testing.assert_allclose(np.asarray(desc[:]), ref, rtol=1e-12, atol=1e-14)
    assert np.allclose(ref[:, :k].sum(1), 1)
    # every image in its nearest group, at that distance (in the weighted space)
    x = ref * np.r_[np.ones(k), np.full(6, 0.5)]
    d = np.sqrt(((x[:, None, :] - res.centers[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(res.group, d.argmin(1))
    np.testing.assert_allclose(res.distance, d.min(1), rtol=1e-9)
    np.testing.assert_array_equal(res.sizes, np.bincount(res.group, minlength=3))


def test_same_seed_same_groups_whatever_the_scheduler(photo_store, tmp_path, cluster_address):
    kw = dict(groups=4, batch_size=16, max_steps=40, tol=1e-12, seed=3, **SMALL)
    out = {}
    for sched in ("threads", cluster_address):
        dst = tmp_path / f"{len(out)}.zarr"
        shutil.copytree(photo_store, dst)
        out[sched] = streamq.cluster_images(str(dst), scheduler=sched, **kw)
    a, b = out.values()
    assert a.steps == b.steps == 40
    np.testing.assert_array_equal(a.centers, b.centers)  # bit-identical
    np.testing.assert_array_equal(a.group, b.group)
    np.testing.assert_array_equal(a.distance, b.distance)
    ha = zarr.open_group(a.store)["groups/history/shift"][:]
    hb = zarr.open_group(b.store)["groups/history/shift"][:]
    np.testing.assert_array_equal(ha, hb)


def test_kill_then_rerun_gives_the_same_groups(photo_store, tmp_path):
    """kill -9 inside the description of the images, then inside the clustering; the same
    command then finishes with the groups of an uninterrupted run. One thread runs the tasks
    (``n_workers: 1``), one at a time, so the description (ten tasks) is still running
    when a kill early in it lands, also on a loaded machine."""
    cfg = tmp_path / "groups.yaml"
    cfg.write_text("dask:\n  scheduler: threads\n  n_workers: 1\n"
                   "cluster_images:\n  groups: 4\n  descriptor: histogram+moments\n"
                   "  batch_size: 8\n  max_steps: 120\n  max_epochs: 100\n  tol: 1.0e-12\n"
                   "  rows_per_chunk: 4\n  pixels_per_task: 30000\n  checkpoint_steps: 7\n")
    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    shutil.copytree(photo_store, ref)
    shutil.copytree(photo_store, killed)
    conf = streamq.load_config(cfg)
    streamq.cluster_images(str(ref), config=conf, progress=False)  # uninterrupted
    n_describe = zarr.open_group(str(ref), mode="r")["groups/describe_records"].shape[0]
    assert n_describe >= 8
    rng = random.Random(31)
    # kill -9 inside the description of the images (in its first quarter: the rest of it must
    # still be running when the kill lands), then inside the clustering (its step,
    # checkpointed every 7), resuming in between
    for stage, n in (("groups:describe", rng.randint(1, n_describe // 4)),
                     ("groups:cluster", 7 * rng.randint(2, 10))):
        kill = kill_when(streamq_cmd("-q", "cluster-images", str(killed), "--config", str(cfg)),
                         reached(killed, stage, n),
                         progress=functools.partial(stage_progress, killed))
        assert kill.seen[0] == stage, kill.seen  # killed inside the stage
    streamq.cluster_images(str(killed), config=conf, progress=False)  # the same command again
    a, b = streamq.load_groups(str(ref)), streamq.load_groups(str(killed))
    assert a.steps == b.steps == 120
    np.testing.assert_array_equal(a.centers, b.centers)  # bit-identical
    np.testing.assert_array_equal(a.group, b.group)
    np.testing.assert_array_equal(a.distance, b.distance)
    ga, gb = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(killed), mode="r")
    for name in ("groups/descriptors", "groups/history/shift", "groups/history/inertia"):
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)


def test_tasks_without_a_record_run_again_and_only_they(store):
    """A task killed after its rows but before its record (or before its rows) runs again;
    tasks with a record are not rerun."""
    first = streamq.cluster_images(store, groups=4, scheduler="threads", **SMALL)
    g = zarr.open_group(store, mode="r+")
    stop = int(g["groups/tasks/row_stop"][0])
    assert stop < len(first.group)
    sec = dict(g.attrs["groups"])
    good = np.asarray(g["groups/descriptors"][:])
    # descriptors: the first task's rows lost, and its record
    g["groups/descriptors"][:stop] = 7.0
    g["groups/describe_records"][0] = ""
    g.attrs["groups"] = {**sec, "state": "describing", "described": False}
    again = streamq.cluster_images(store, groups=4, scheduler="threads", **SMALL)
    np.testing.assert_array_equal(np.asarray(g["groups/descriptors"][:]), good)
    np.testing.assert_array_equal(again.centers, first.centers)
    np.testing.assert_array_equal(again.group, first.group)
    # assignment: the first task's rows and record lost; one row of a finished task altered
    g["groups/images/group"][:stop] = 99
    g["groups/assign_records"][0] = ""
    g["groups/images/group"][stop] = 99
    g.attrs["groups"] = {**dict(g.attrs["groups"]), "state": "assigning"}
    streamq.cluster_images(store, groups=4, scheduler="threads", **SMALL)
    group = np.asarray(g["groups/images/group"][:])
    np.testing.assert_array_equal(group[:stop], first.group[:stop])
    assert group[stop] == 99  # its task has a record: not rerun


def test_rerun_is_a_noop_other_settings_refused_refit_makes_stale(store):
    runner = CliRunner()
    first = streamq.cluster_images(store, groups=4, scheduler="threads")
    assert first.status == "grouped"
    assert streamq.cluster_images(store, groups=4, scheduler="threads").status == "already complete"
    with pytest.raises(StoreMismatchError, match=r"groups=4 \(now 3\)"):
        streamq.cluster_images(store, groups=3, scheduler="threads")
    info = json.loads(runner.invoke(cli, ["info", store, "--json"]).output)["groups"]
    assert info["state"] == "complete"
    assert info["sizes"] == first.sizes.tolist()
    assert info["ari"] == first.ari
    text = runner.invoke(cli, ["info", store]).output
    assert "groups       4 (histogram, K=12), images per group: " + " ".join(map(str, first.sizes)) in text
    streamq.fit(store, colors=6, max_steps=20, scheduler="threads",
                overwrite=True)
    assert "groups       stale" in runner.invoke(cli, ["info", store]).output
    with pytest.raises(StreamQError, match="stale"):
        streamq.load_groups(store)
    with pytest.raises(StreamQError, match="run `streamq quantize` first"):
        streamq.cluster_images(store, groups=4, scheduler="threads")
    streamq.quantize(store, scheduler="threads")
    again = streamq.cluster_images(store, groups=4, scheduler="threads")  # no --overwrite needed
    assert again.status == "grouped"
    assert again.k == 6
    assert zarr.open_group(store, mode="r")["groups/descriptors"].shape[1] == 6


def test_clear_errors(store, faces_store, tmp_path):
    with pytest.raises(StreamQError, match=r"no shared palette; run `streamq fit`"):
        streamq.cluster_images(faces_store, groups=2, scheduler="threads")
    with pytest.raises(ConfigError, match="has only 48 images; choose --groups 48 or fewer"):
        streamq.cluster_images(store, groups=49, scheduler="threads")
    runner = CliRunner()
    result = runner.invoke(cli, ["cluster-images", store, "-g", "3", "--batch-size", "2",
                                 "--scheduler", "threads"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "key 'cluster_images.batch_size' has value 2, expected at least groups=3" in result.output
    result = runner.invoke(cli, ["cluster-images", store, "-g", "3", "--descriptor", "colour"])
    assert result.exit_code == 2
    assert "'colour' is not one of 'histogram', 'histogram+moments'" in result.output


def test_cli_json(store):
    result = CliRunner().invoke(cli, ["cluster-images", store, "-g", "4", "--scheduler", "threads",
                                      "--json", "--max-steps", "5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["groups"] == 4
    assert sum(data["sizes"]) == len(PHOTOS) * PER_PHOTO
    assert data["steps"] <= 5
    assert data["ari"] == streamq.load_groups(store).ari


def test_run_groups_the_images_when_enabled(photo_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    text = (f"store: run.zarr\ndask:\n  scheduler: threads\ningest:\n  source: {photo_dir}\n"
            "fit:\n  colors: 12\n  max_steps: 30\n"
            "cluster_images:\n  enabled: true\n  groups: 4\n")
    cfg.write_text(text)
    report = streamq.run(cfg)
    assert report.stages["groups"].status == "grouped"
    assert report.stages["groups"].ari > 0.9
    assert streamq.run(cfg).stages["groups"].status == "already complete"
    cfg.write_text(text + "per_image:\n  enabled: true\n")
    with pytest.raises(ConfigError, match="'cluster_images.enabled' needs the shared palette"):
        streamq.run(cfg)
