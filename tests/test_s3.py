"""Stores and outputs on S3: a real moto S3 server on loopback, the real engine, compared with
the same pipeline on local disk (same palette bit for bit, same labels, same images)."""

from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import (
    BUCKET,
    GLOB_NAMES,
    SECRET,
    kill_when,
    reached,
    stage_progress,
    streamq_cmd,
    write_glob_collection,
)
from helpers import free_port as _free_port
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.errors import StoreError
from streamq.export import safe_output_path
from streamq.fs import location

FIT = dict(colors=8, max_steps=40, tol=1e-9, batch_size=4096, init_size=20_000, checkpoint_steps=3)
#: The pipeline pair's fit checkpoints less often: every checkpoint costs requests to the S3
#: server, and the pair compares finished results (the kill test resumes from checkpoints).
PAIR_FIT = {**FIT, "checkpoint_steps": 10}
#: Images of the collection the pipeline runs on, on local disk and on S3 (every request to the
#: S3 server costs time: the point is the comparison, not the size).
N_PAIR = 16


def _client(opts):
    """A boto3 client: an independent reader of what streamq wrote."""
    import boto3

    return boto3.client("s3", endpoint_url=opts["endpoint_url"], aws_access_key_id=opts["key"],
                        aws_secret_access_key=opts["secret"], region_name="us-east-1")


def _objects(opts, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/``, by key below it (read a few at a time: each read is a
    round trip to the server)."""
    from concurrent.futures import ThreadPoolExecutor

    client = _client(opts)
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix + "/") for obj in page.get("Contents", [])]
    with ThreadPoolExecutor(8) as pool:
        bodies = pool.map(lambda key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read(), keys)
        return {key[len(prefix) + 1:]: body for key, body in zip(keys, bodies, strict=True)}


def _local_files(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same_images(local: dict[str, bytes], remote: dict[str, bytes], n: int) -> None:
    local = {k: v for k, v in local.items() if not k.startswith(".streamq")}
    remote = {k: v for k, v in remote.items() if not k.startswith(".streamq")}
    assert sorted(local) == sorted(remote)
    assert len(local) == n
    for name, data in local.items():
        with Image.open(io.BytesIO(data)) as a, Image.open(io.BytesIO(remote[name])) as b:
            assert a.mode == b.mode == "P", name
            assert a.getpalette() == b.getpalette(), name
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


@pytest.fixture(scope="module")
def pair(s3, tmp_path_factory, cluster_address):
    """A faces pipeline (ingest -> fit -> quantize -> export) of ``N_PAIR`` mixed-size crops
    on local disk and on S3, on the session's Dask cluster (its worker processes open the S3
    store themselves)."""
    from streamq.examples import make_collection

    root = tmp_path_factory.mktemp("s3pair")
    faces_dir = root / "faces"
    make_collection(faces_dir, N_PAIR, seed=1, min_side=30, max_side=160)
    local, remote = str(root / "faces.zarr"), f"s3://{BUCKET}/faces.zarr"
    out_local, out_remote = root / "faces-out", f"s3://{BUCKET}/faces-out"
    results = {}
    for name, store, out in (("local", local, str(out_local)), ("s3", remote, out_remote)):
        kw = dict(scheduler=cluster_address, progress=False, storage_options=s3)
        streamq.ingest(faces_dir, store, chunk_pixels=65_536, **kw)
        fitted = streamq.fit(store, seed=3, **PAIR_FIT, **kw)
        quantized = streamq.quantize(store, **kw)
        exported = streamq.export(store, out, **kw)
        results[name] = (fitted, quantized, exported)
    return {"local": local, "s3": remote, "out_local": out_local, "out_s3": out_remote,
            "results": results, "options": s3}


def test_pipeline_on_s3_matches_local(pair):
    opts = pair["options"]
    (fit_l, q_l, e_l), (fit_s, q_s, e_s) = pair["results"]["local"], pair["results"]["s3"]
    assert np.array_equal(fit_l.centers, fit_s.centers)  # bit-equal
    assert np.array_equal(fit_l.palette, fit_s.palette)
    assert fit_l.steps == fit_s.steps > PAIR_FIT["max_steps"]  # mini-batch steps + exact iterations
    assert np.array_equal(fit_l.history["step"], fit_s.history["step"])
    assert q_l.mse == q_s.mse
    assert e_s.n_written == e_l.n_written == N_PAIR
    # Read the S3 store with zarr's own URL handling, not streamq's.
    gl = zarr.open_group(pair["local"], mode="r")
    gs = zarr.open_group(pair["s3"], mode="r", storage_options=opts)
    for name in ("pixels", "images/path", "images/offset", "quantize/labels", "fit/palette/r",
                 "fit/palette/centers_0", "quantize/images/sse"):
        np.testing.assert_array_equal(gl[name][:], gs[name][:], err_msg=name)
    assert gs.attrs["quantize"]["state"] == "complete"
    # Every exported image: the same pixels and palette, read back with boto3.
    _assert_same_images(_local_files(pair["out_local"]), _objects(opts, "faces-out"), N_PAIR)
    # No credential was written anywhere in the store or the export.
    for prefix in ("faces.zarr", "faces-out"):
        assert not [k for k, v in _objects(opts, prefix).items() if SECRET.encode() in v]


def test_info_on_s3(pair):
    opts = pair["options"]
    info_l = streamq.collection_info(pair["local"])
    info_s = streamq.collection_info(pair["s3"], storage_options=opts)
    for key in ("n_images", "n_pixels", "labels_top", "shapes_top", "labels"):
        assert info_l[key] == info_s[key], key
    drop = ("store", "seconds")
    assert ({k: v for k, v in info_l["fit"].items() if k not in drop}
            == {k: v for k, v in info_s["fit"].items() if k not in drop})
    assert info_s["stored_bytes"] == info_l["stored_bytes"] > 0  # same compressed shards
    args = ["info", pair["s3"], "--storage-option", f"endpoint_url={opts['endpoint_url']}",
            "--storage-option", f"key={opts['key']}", "--storage-option", f"secret={opts['secret']}",
            "--storage-option", "client_kwargs.region_name=us-east-1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"images       {N_PAIR}" in result.output
    assert "palette      K=8" in result.output


def test_palettes_travel_through_s3(pair, tmp_path):
    """A store on S3 as the palette of a local store gives that store's labels; palette files
    are written to and read from S3."""
    from streamq.palettes import read_palette, write_palette

    opts = pair["options"]
    copy = tmp_path / "copy.zarr"
    shutil.copytree(pair["local"], copy)
    streamq.quantize(copy, palette=pair["s3"], overwrite=True, scheduler="threads",
                     storage_options=opts)
    given = zarr.open_group(str(copy), mode="r").attrs["fit"]["palette_source"]
    assert given["path"] == pair["s3"]
    assert given["kind"] == "store"
    np.testing.assert_array_equal(zarr.open_array(f"{copy}/quantize/labels", mode="r")[:],
                                  zarr.open_array(f"{pair['local']}/quantize/labels", mode="r")[:])
    palette = streamq.load_fit(pair["s3"], storage_options=opts).palette
    url = f"s3://{BUCKET}/palettes/faces.gpl"
    write_palette(url, palette, name="faces", storage_options=opts)
    body = _client(opts).get_object(Bucket=BUCKET, Key="palettes/faces.gpl")["Body"].read()
    assert body.startswith(b"GIMP Palette\nName: faces\n")
    back = read_palette(url, storage_options=opts)
    np.testing.assert_array_equal(back.colors, palette)
    assert back.source["path"] == url


def test_export_to_s3_rerun_skips_and_overwrite_keeps_other_objects(pair, cluster_address):
    opts = pair["options"]
    again = streamq.export(pair["s3"], pair["out_s3"], scheduler=cluster_address, progress=False,
                           storage_options=opts)
    assert (again.n_written, again.n_existing) == (0, N_PAIR)
    client = _client(opts)
    client.put_object(Bucket=BUCKET, Key="faces-out/notes.txt", Body=b"mine")
    first = sorted(k for k in _objects(opts, "faces-out") if k.endswith(".png"))[0]
    client.put_object(Bucket=BUCKET, Key=f"faces-out/{first}", Body=b"broken")
    redo = streamq.export(pair["s3"], pair["out_s3"], scheduler="threads", progress=False,
                          storage_options=opts, ids="0-4", overwrite=True)
    assert (redo.n_written, redo.n_existing) == (5, 0)
    after = _objects(opts, "faces-out")
    assert after["notes.txt"] == b"mine"  # not an export file: left alone
    _assert_same_images(_local_files(pair["out_local"]),
                        {k: v for k, v in after.items() if k != "notes.txt"}, N_PAIR)


def test_glob_characters_in_names_and_urls(s3, tmp_path):
    """Image names and URLs with ``[ ] * ?``: every delete names its keys, never a pattern.
    Objects the patterns would match (a user's ``photo1.png`` beside ``photo[1].png``, a
    store ``glob1.zarr`` beside ``glob[1].zarr``) survive every overwrite."""
    src = tmp_path / "src"
    write_glob_collection(src)
    client = _client(s3)
    mine = {"glob1.zarr/zarr.json": b"a user's store", "out1/photo1.png": b"a user's image",
            "lab1.zarr/zarr.json": b"another user's store",
            **{f"out[1]/{theirs}": theirs.encode() for theirs in GLOB_NAMES.values()}}
    for key, body in mine.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    kw = dict(scheduler="threads", progress=False, storage_options=s3)
    fit = dict(colors=4, max_steps=10, batch_size=1024, init_size=2000, seed=1)
    local, remote = str(tmp_path / "glob[1].zarr"), f"s3://{BUCKET}/glob[1].zarr"
    for store in (local, remote):
        for overwrite in (False, True):
            streamq.ingest(src, store, chunk_pixels=4096, overwrite=overwrite, **kw)
        streamq.fit(store, **fit, **kw)
        streamq.quantize(store, **kw)
    assert sorted(streamq.open_store(remote, storage_options=s3).paths) == sorted(GLOB_NAMES)
    streamq.export(local, tmp_path / "out", **kw)
    out = f"s3://{BUCKET}/out[1]"
    first = streamq.export(remote, out, overwrite=True, **kw)  # OUT holds the user's files
    again = streamq.export(remote, out, overwrite=True, **kw)  # replaces exactly its own files
    assert (first.n_written, again.n_written, again.n_existing) == (4, 4, 0)
    objects = _objects(s3, "out[1]")
    for theirs in GLOB_NAMES.values():
        assert objects.pop(theirs) == theirs.encode()
    _assert_same_images(_local_files(tmp_path / "out"), objects, len(GLOB_NAMES))
    lab = f"s3://{BUCKET}/lab[1].zarr"
    streamq.export(remote, lab, zarr=True, ids="0-1", **kw)
    replaced = streamq.export(remote, lab, zarr=True, ids="0-2", overwrite=True, **kw)
    assert (replaced.status, replaced.n_images) == ("exported", 3)
    g = zarr.open_group(lab, mode="r", storage_options=s3)
    assert len(g["images/id"][:]) == 3
    for key, body in mine.items():
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body, key


def test_zarr_export_on_s3_matches_local(pair, cluster_address, tmp_path):
    opts = pair["options"]
    out_s3, out_local = f"s3://{BUCKET}/faces-labels.zarr", tmp_path / "faces-labels.zarr"
    s = streamq.export(pair["s3"], out_s3, zarr=True, ids="0-11", scheduler=cluster_address,
                       progress=False, storage_options=opts)
    streamq.export(pair["local"], out_local, zarr=True, ids="0-11", scheduler="threads",
                   progress=False)
    assert (s.status, s.n_images) == ("exported", 12)
    gl = zarr.open_group(str(out_local), mode="r")
    gs = zarr.open_group(out_s3, mode="r", storage_options=opts)  # zarr's own URL handling
    names = sorted(n for n, a in gl.members(max_depth=None) if isinstance(a, zarr.Array))
    assert "labels" in names
    assert names == sorted(n for n, a in gs.members(max_depth=None) if isinstance(a, zarr.Array))
    for name in names:
        np.testing.assert_array_equal(gl[name][:], gs[name][:], err_msg=name)
    assert gs.attrs["streamq_export"]["state"] == "complete"
    before = _objects(opts, "faces-labels.zarr")
    again = streamq.export(pair["s3"], out_s3, zarr=True, ids="0-11", scheduler="threads",
                           progress=False, storage_options=opts)
    assert again.status == "already complete"
    assert _objects(opts, "faces-labels.zarr") == before
    assert not [k for k, v in before.items() if SECRET.encode() in v]
    with pytest.raises(streamq.StoreExistsError, match="it holds a streamq image export"):
        streamq.export(pair["s3"], pair["out_s3"], zarr=True, overwrite=True, storage_options=opts)


def test_per_image_on_s3_matches_local(pair, cluster_address):
    opts = pair["options"]
    for store in (pair["local"], pair["s3"]):
        streamq.fit_per_image(store, colors=[4], pixels_per_task=100_000, scheduler=cluster_address,
                              progress=False, storage_options=opts)
        streamq.quantize(store, scheduler=cluster_address, progress=False, storage_options=opts)
    gl = zarr.open_group(pair["local"], mode="r")
    gs = zarr.open_group(pair["s3"], mode="r", storage_options=opts)
    for k in (4,):
        for name in ("centers", "palette", "labels", "images/sse"):
            np.testing.assert_array_equal(gl[f"per_image/k{k}/{name}"][:], gs[f"per_image/k{k}/{name}"][:],
                                          err_msg=f"k{k}/{name}")


def test_upgrade_on_s3(s3, photo_store):
    """A store of an older format on S3 is refused in one line; ``streamq upgrade`` stopped
    midway (a rename's copy made and the old array's metadata removed) and run again leaves
    the objects of the store of today, byte for byte."""
    from helpers import as_older_format, tree_bytes

    from streamq.store import Store
    from streamq.store.upgrade import rename_array, renames_left

    url = f"s3://{BUCKET}/upgrade.zarr"
    fs = location(url, s3).filesystem()
    current = tree_bytes(photo_store)
    fs.pipe({f"{BUCKET}/upgrade.zarr/{name}": data for name, data in current.items()})
    assert len(as_older_format(url, storage_options=s3)) == 3  # fit/palette/centers_{0,1,2}
    message = (f"{url} uses store format 1; run `streamq upgrade {url}` to rename its arrays "
               "(nothing is recomputed)")
    with pytest.raises(streamq.StoreLayoutError) as err:
        streamq.load_fit(url, storage_options=s3)
    assert str(err.value) == message
    st = Store.open(url, mode="r+", storage_options=s3, versions=(1,))
    old, new = renames_left(st)[0]
    rename_array(st, old, new, step=2)
    assert _objects(s3, f"upgrade.zarr/{old}")  # its chunks, left for the rerun
    res = CliRunner().invoke(cli, ["upgrade", url, *_flags(s3)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == (f"upgraded {url} from store format 1 to 3: 3 arrays renamed "
                                  "(nothing recomputed)")
    assert _objects(s3, "upgrade.zarr") == current
    res = CliRunner().invoke(cli, ["upgrade", url, *_flags(s3)])
    assert res.output.strip() == f"{url} is already at store format 3"


def test_colour_histogram_cache_on_s3(pair, cluster_address):
    opts = pair["options"]
    centers = streamq.load_fit(pair["local"]).centers
    mse_l = streamq.collection_mse(pair["local"], centers, "rgb", scheduler=cluster_address)
    mse_s = streamq.collection_mse(pair["s3"], centers, "rgb", scheduler=cluster_address,
                                   storage_options=opts)
    assert mse_l == mse_s
    assert mse_l == pytest.approx(pair["results"]["local"][1].mse, rel=1e-9)  # = quantize's MSE
    gs = zarr.open_group(pair["s3"], mode="r", storage_options=opts)
    assert gs.attrs["colors"]["state"] == "complete"
    np.testing.assert_array_equal(zarr.open_group(pair["local"], mode="r")["colors/code"][:],
                                  gs["colors/code"][:])


def test_image_groups_and_report_on_s3(pair, cluster_address, tmp_path):
    opts = pair["options"]
    local, remote = (streamq.cluster_images(store, groups=3, max_steps=20, scheduler=cluster_address,
                                            progress=False, storage_options=opts)
                     for store in (pair["local"], pair["s3"]))
    np.testing.assert_array_equal(local.group, remote.group)
    np.testing.assert_array_equal(local.centers, remote.centers)
    assert streamq.load_groups(pair["s3"], storage_options=opts).groups == 3
    on_disk = streamq.report(pair["local"], tmp_path / "local.html")
    on_s3 = streamq.report(pair["s3"], tmp_path / "s3.html", storage_options=opts)
    assert on_s3.sections == on_disk.sections  # every section the local store gives
    assert on_s3.missing == on_disk.missing
    assert f"s3://{BUCKET}/faces.zarr" in (tmp_path / "s3.html").read_text(encoding="utf-8")


def _run_config(path, src, store, out, opts):
    lines = [f"store: {store}", "dask:\n  scheduler: threads",
             f"ingest:\n  source: {src}\n  chunk_pixels: 32768",
             "fit:\n" + "".join(f"  {k}: {v}\n" for k, v in {**FIT, "colors": 6, "max_steps": 48,
                                                           "tol": "1.0e-9"}.items()),
             f"export:\n  out: {out}"]
    if opts is not None:
        lines.insert(1, "storage_options: " + json.dumps(opts))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_run_on_s3_killed_and_rerun(s3, tmp_path):
    """kill -9 inside the fit's mini-batch steps, then inside the export (points chosen by a
    seeded RNG, observed in the bucket), then the same command: the same store and images as
    the pipeline on local disk (an uninterrupted run, in this process)."""
    from streamq.examples import make_collection

    src, n_images = tmp_path / "faces", 24
    make_collection(src, n_images, seed=1, min_side=30, max_side=120)
    streamq.run(_run_config(tmp_path / "ref.yaml", src, "ref.zarr", "ref-out", None), progress=False)
    store, out = f"s3://{BUCKET}/resume.zarr", f"s3://{BUCKET}/resume-out"
    cfg = _run_config(tmp_path / "s3.yaml", src, store, out, s3)
    rng = random.Random(41)
    client = _client(s3)
    progress = functools.partial(stage_progress, store, out, s3)
    # in the first third of the 48 mini-batch steps and the first half of the images: a poll
    # of the bucket takes tens of ms, so a late target can be overtaken by the end of the phase
    # on a busy machine
    for stage, n in (("fit:minibatch", 3 * rng.randint(1, 5)),
                     ("export", rng.randint(1, n_images // 2))):
        kill = kill_when(streamq_cmd("-q", "run", str(cfg)), reached(store, stage, n, out, s3),
                         interval=0.05, progress=progress)
        assert kill.seen[0] == stage, kill.seen  # killed inside the stage
        assert stage != "export" or kill.seen[1] < n_images, kill.seen  # before its end
        if stage.startswith("fit"):
            root = json.loads(client.get_object(Bucket=BUCKET, Key="resume.zarr/zarr.json")["Body"].read())
            assert root["attributes"]["fit"]["state"] == "running"
    # The last run takes its storage options from flags instead of the file.
    bare = _run_config(tmp_path / "bare.yaml", src, store, out, None)
    flags = [x for k, v in (("endpoint_url", s3["endpoint_url"]), ("key", s3["key"]),
                            ("secret", s3["secret"]), ("client_kwargs.region_name", "us-east-1"))
             for x in ("--storage-option", f"{k}={v}")]
    # the same command, in this process (the rerun is not about the process; the kills are)
    done = CliRunner().invoke(cli, ["run", str(bare), *flags])
    assert done.exit_code == 0, done.output
    gl = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")
    gs = zarr.open_group(store, mode="r", storage_options=s3)
    for name in ("pixels", "images/path", "fit/palette/centers_0", "fit/palette/centers_1",
                 "fit/palette/centers_2", "fit/palette/r", "fit/history/shift", "quantize/labels"):
        np.testing.assert_array_equal(gl[name][:], gs[name][:], err_msg=name)
    _assert_same_images(_local_files(tmp_path / "ref-out"), _objects(s3, "resume-out"), n_images)


# -- failures: one line, saying what to check ------------------------------------------------------
def _one_line_error(args):
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0], time.monotonic() - t0


@pytest.mark.parametrize(("url", "message"), [
    ("foo://bucket/x.zarr", "unsupported URL scheme 'foo'"),
    ("s3:/bucket/x.zarr", "'s3:/bucket/x.zarr' is not a valid URL"),
    ("s3://", "names no bucket"),
])
def test_bad_urls(url, message, faces_dir):
    for args in (["info", url], ["ingest", str(faces_dir), url, "--scheduler", "sync"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1
        assert len(result.output.strip().splitlines()) == 1
        assert result.output.startswith("error: ")
        assert message in result.output
        assert "s3://BUCKET/PATH" in result.output
    with pytest.raises(StoreError, match="unsupported URL scheme|not a valid URL|names no bucket"):
        streamq.open_store(url)


def test_config_url_is_not_made_relative(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("store: s3:/bucket/x.zarr\nexport:\n  out: s3://bucket/out\n")
    loaded = streamq.load_config(cfg)
    assert (loaded.store, loaded.export.out) == ("s3:/bucket/x.zarr", "s3://bucket/out")
    with pytest.raises(StoreError, match="not a valid URL"):
        location(loaded.store)


def test_unreachable_endpoint(s3):
    closed = _free_port()
    line, seconds = _one_line_error(["info", f"s3://{BUCKET}/faces.zarr", "--storage-option",
                                     f"endpoint_url=http://127.0.0.1:{closed}",
                                     "--storage-option", "key=k", "--storage-option", "secret=s"])
    assert f"cannot reach http://127.0.0.1:{closed} for s3://{BUCKET}/faces.zarr" in line
    assert "check storage option 'endpoint_url'" in line
    assert seconds < 20  # few retries, not the provider's full schedule


def test_missing_bucket(pair, faces_dir):
    s3 = pair["options"]
    flags = [x for k in ("endpoint_url", "key", "secret") for x in ("--storage-option", f"{k}={s3[k]}")]
    line, _ = _one_line_error(["ingest", str(faces_dir), "s3://no-such-bucket/x.zarr", *flags])
    assert ("bucket 'no-such-bucket' of s3://no-such-bucket/x.zarr does not exist at "
            f"{s3['endpoint_url']}: create it, or check the URL and storage option 'endpoint_url'") in line
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' of s3://no-such-bucket/out"):
        streamq.export(pair["local"], "s3://no-such-bucket/out", scheduler="sync", storage_options=s3)


def test_missing_store_and_not_a_store(s3, faces_dir):
    with pytest.raises(streamq.StoreLayoutError, match="does not exist"):
        streamq.open_store(f"s3://{BUCKET}/nothing-here.zarr", storage_options=s3)
    _client(s3).put_object(Bucket=BUCKET, Key="not-a-store/readme.txt", Body=b"x")
    with pytest.raises(streamq.StoreLayoutError, match="is not a streamq store"):
        streamq.open_store(f"s3://{BUCKET}/not-a-store", storage_options=s3)
    with pytest.raises(streamq.StoreExistsError, match="already exists"):
        streamq.ingest(faces_dir, f"s3://{BUCKET}/not-a-store", storage_options=s3, scheduler="sync")


def test_no_credentials(s3, tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("AWS_") and k != "AWS_EC2_METADATA_DISABLED"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    line, _ = _one_line_error(["info", f"s3://{BUCKET}/faces.zarr", "--storage-option",
                               f"endpoint_url={s3['endpoint_url']}"])
    assert f"no credentials for s3://{BUCKET}/faces.zarr" in line
    assert "'key' and 'secret'" in line


def test_missing_s3fs(faces_dir):
    code = ("import sys; sys.modules['s3fs'] = None; from streamq.cli.main import main; "
            f"sys.argv = ['streamq', 'ingest', {str(faces_dir)!r}, 's3://bucket/x.zarr']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: s3://bucket/x.zarr needs the s3fs package: pip install 'streamq[s3]' (or pip install s3fs)"]


# -- small parts ---------------------------------------------------------------------------------------
def test_urls_keep_outputs_inside_out():
    out = "s3://bucket/out"
    assert safe_output_path(out, "Ann/Ann_0001.jpg", ".png", "00000001") == "s3://bucket/out/Ann/Ann_0001.png"
    for rel in ("../../etc/passwd", "/abs/x.jpg", "a/../../b.jpg", "..\\..\\c.jpg", "x\x00y/z\n.jpg"):
        p = safe_output_path(out, rel, ".png", "00000007")
        assert p.startswith(out + "/"), p
        assert ".." not in p.split("/"), p
        assert not any(ord(c) < 32 for c in p), p


def test_location_hides_options_and_parses():
    loc = location("s3://bucket/x.zarr/", {"secret": "hush"})
    assert (loc.url, loc.bucket, loc.is_local) == ("s3://bucket/x.zarr", "bucket", False)
    assert "hush" not in repr(loc)
    assert "hush" not in repr({"store": loc})
    assert location("file:///tmp/a.zarr").url == "/tmp/a.zarr"
    assert location("rel.zarr").url == os.path.abspath("rel.zarr")
    assert location("odd:name").is_local  # a colon without a slash is a file name


def test_access_denied_is_one_line():
    from streamq.fs import storage_errors

    loc = location("s3://bucket/x.zarr", {"endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(StoreError, match=r"^access to s3://bucket/x.zarr was denied \(Access Denied\): "
                                         "check storage options 'key'/'secret'"), storage_errors(loc):
        raise PermissionError("Access Denied")
    with pytest.raises(KeyError), storage_errors(loc):  # anything else goes through untouched
        raise KeyError("x")


def test_zarr_deletes_on_a_store_url_with_glob_characters(s3):
    """Zarr deletes a chunk that becomes all fill value: the chunk's own key, not what the
    store URL read as a pattern matches."""
    from streamq.store import zarr_root

    client = _client(s3)
    client.put_object(Bucket=BUCKET, Key="z1.zarr/a/c/0", Body=b"a user's object")
    root = zarr_root(location(f"s3://{BUCKET}/z[1].zarr", s3))
    arr = zarr.create_array(root, name="a", shape=(8,), chunks=(4,), dtype="uint8", fill_value=0)
    arr[:4] = 1
    assert "a/c/0" in _objects(s3, "z[1].zarr")
    arr[:4] = 0  # an empty chunk: zarr deletes its key
    assert np.array_equal(zarr.open_array(root, path="a", mode="r")[:], np.zeros(8, np.uint8))
    assert client.get_object(Bucket=BUCKET, Key="z1.zarr/a/c/0")["Body"].read() == b"a user's object"
    zarr.create_array(root, name="a", shape=(8,), chunks=(4,), dtype="uint8", overwrite=True)
    assert client.get_object(Bucket=BUCKET, Key="z1.zarr/a/c/0")["Body"].read() == b"a user's object"


def _requests_to(s3, call, listings: bool = False) -> list[tuple[str, str]]:
    """``(method, key)`` of every request that ``call()`` sends to the moto server (its
    request recorder); with ``listings``, only the bucket listings, as ``("LIST", prefix)``."""
    import urllib.request

    api = s3["endpoint_url"] + "/moto-api/recorder/"
    for step in ("reset-recording", "start-recording"):
        urllib.request.urlopen(urllib.request.Request(api + step, method="POST")).close()
    try:
        call()
    finally:
        urllib.request.urlopen(urllib.request.Request(api + "stop-recording", method="POST")).close()
    with urllib.request.urlopen(api + "download-recording") as answer:
        lines = [json.loads(line) for line in answer.read().decode().splitlines() if line.strip()]
    if listings:
        from urllib.parse import parse_qs, urlsplit

        queries = [parse_qs(urlsplit(r["url"]).query) for r in lines if r["method"] == "GET"]
        return [("LIST", q.get("prefix", [""])[0]) for q in queries if "list-type" in q]
    return [(r["method"], r["url"].split("?")[0].partition(f"/{BUCKET}/")[2]) for r in lines]


def test_creating_a_table_on_s3_reads_each_group_once(s3):
    """Zarr checks every group above each array it creates: the columns of one table ask the
    bucket once per group, not once per column; and a group removed in between is made
    again by the next table below it."""
    from streamq.store import Store, zarr_root

    url = f"s3://{BUCKET}/tables.zarr"
    st = Store.create(url, storage_options=s3)
    columns = {name: np.arange(10) for name in "uvwxyz"}
    sent = _requests_to(s3, lambda: st.write_table("a/b", columns, chunk=4))
    for group in ("tables.zarr/zarr.json", "tables.zarr/a/zarr.json", "tables.zarr/a/b/zarr.json"):
        assert sent.count(("GET", group)) <= 1, (group, sent)
        assert sent.count(("HEAD", group)) <= 1, (group, sent)
    st.write_table("a/b", {name: np.arange(3) for name in "uv"}, chunk=4)  # rewritten shorter
    st.remove("a")
    st.write_table("a/b", {"u": np.arange(3)}, chunk=4)
    keys = _objects(s3, "tables.zarr")
    assert {"a/zarr.json", "a/b/zarr.json", "a/b/u/c/0"} <= set(keys)
    assert not [k for k in keys if k.startswith(("a/b/u/c/1", "a/b/v/"))]
    group = zarr.open_group(zarr_root(location(url, s3), read_only=True), mode="r")
    assert list(group["a"].group_keys()) == ["b"]
    np.testing.assert_array_equal(group["a/b/u"][:], np.arange(3))


def test_arrays_of_a_new_s3_store_skip_listing_what_cannot_be_there(s3):
    """In a store this call created where nothing was, Zarr's deletion before each array
    created with ``overwrite`` (a listing of its prefix) is skipped: nothing can be there. An
    array created again at a name the store has written still replaces what was there, and a
    store replaced with ``--overwrite`` keeps every deletion."""
    from streamq.store import Store

    url = f"s3://{BUCKET}/fresh.zarr"
    st = Store.create(url, storage_options=s3)
    listed = _requests_to(s3, lambda: st.write_table("t", {n: np.arange(10) for n in "uvw"},
                                                     chunk=4), listings=True)
    assert not [p for _, p in listed if p.startswith(("fresh.zarr/t/u", "fresh.zarr/t/v",
                                                       "fresh.zarr/t/w"))], listed
    listed = _requests_to(s3, lambda: st.write_table("t", {"u": np.arange(3)}, chunk=4),
                          listings=True)
    assert ("LIST", "fresh.zarr/t/u/") in listed, listed  # t/u was written: listed, deleted
    keys = _objects(s3, "fresh.zarr")
    assert "t/u/c/0" in keys
    assert not [k for k in keys if k.startswith(("t/u/c/1", "t/u/c/2"))]
    assert "t/v/c/2" in keys
    again = Store.create(url, overwrite=True, storage_options=s3)
    listed = _requests_to(s3, lambda: again.write_table("t", {"v": np.arange(2)}, chunk=4),
                          listings=True)
    assert ("LIST", "fresh.zarr/t/v/") in listed, listed  # a store replaced: deletions kept
    assert not [k for k in _objects(s3, "fresh.zarr") if k.startswith(("t/u/", "t/v/c/1"))]


def test_version_marker_in_url_is_refused():
    # s3fs would read the rest as an object version and write or delete another key
    with pytest.raises(StoreError, match=r"holds '\?versionId=', which s3fs reads as an object "
                                         "version"):
        location("s3://bucket/a?versionId=1.zarr")


# -- the write lock of a store on S3 -------------------------------------------------------------
LOCK_SOURCE = 12  # images of conftest's lock_src: about 12 ingest tasks of 4096 pixels


def _flags(opts) -> list[str]:
    return [x for k, v in (("endpoint_url", opts["endpoint_url"]), ("key", opts["key"]),
                           ("secret", opts["secret"]), ("client_kwargs.region_name", "us-east-1"))
            for x in ("--storage-option", f"{k}={v}")]


def _ingest_cmd(src, name: str, opts, *extra: str) -> list[str]:
    return streamq_cmd("ingest", str(src), f"s3://{BUCKET}/{name}", "--chunk-pixels", "4096",
                       "--scheduler", "sync", *_flags(opts), *extra)


def _lock_record(opts, name: str) -> dict | None:
    client = _client(opts)
    try:
        body = client.get_object(Bucket=BUCKET, Key=f"{name}.lock")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    assert SECRET.encode() not in body
    return json.loads(body)


def _keys(opts, prefix: str) -> list[str]:
    pages = _client(opts).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _n_records(opts, name: str) -> int:
    return len(_keys(opts, f"{name}/ingest/tasks/report/c/"))


def _start_job(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _until(condition, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended first: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _signal(proc: subprocess.Popen, sig) -> None:
    import signal

    os.killpg(proc.pid, getattr(signal, sig))


def _finished_ingest(opts, name: str) -> None:
    coll = streamq.open_store(f"s3://{BUCKET}/{name}", storage_options=opts)
    assert len(coll) == LOCK_SOURCE
    assert _lock_record(opts, name) is None  # released
    assert _keys(opts, f"{name}.lock") == []  # nor a probe object left beside it


@pytest.mark.slow
def test_second_job_on_an_s3_store_is_refused_and_a_killed_one_taken_over(s3, lock_src):
    name = "locked.zarr"
    cmd = _ingest_cmd(lock_src, name, s3)
    job = _start_job(cmd)
    try:
        _until(lambda: _n_records(s3, name) >= 1, job)  # it holds the lock and writes
        _signal(job, "SIGSTOP")  # frozen mid-ingest: alive, silent
        rec = _lock_record(s3, name)
        assert rec["pid"] == job.pid
        assert rec["host"] == socket.gethostname()
        assert rec["operation"] == "ingest"
        assert rec["boot_id"]
        assert rec["pid_ns"]
        assert rec["process_start"]
        assert rec["token"]
        assert "secret=***" in rec["command"]
        before = _n_records(s3, name)

        second = subprocess.run(streamq_cmd("-q", *cmd[3:]), capture_output=True, text=True)
        assert second.returncode == 1
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"error: s3://{BUCKET}/{name} is locked by another job: "
                                        f"\"streamq ingest {lock_src} s3://{BUCKET}/{name} "), \
            second.stderr
        assert f"(ingest, pid {job.pid} on host {socket.gethostname()}, " in second.stderr
        assert f"lock object s3://{BUCKET}/{name}.lock" in second.stderr
        assert SECRET not in second.stderr
        line, _ = _one_line_error(["unlock", f"s3://{BUCKET}/{name}", *_flags(s3)])
        assert "the job holding the lock is still running on this host" in line
        assert _lock_record(s3, name)["token"] == rec["token"]
        assert _n_records(s3, name) == before  # the refused jobs wrote nothing
    finally:
        _signal(job, "SIGKILL")
        job.wait()
    assert _lock_record(s3, name)["token"] == rec["token"]  # left behind by the killed job

    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"Took over the stale lock s3://{BUCKET}/{name}.lock of \"streamq ingest" in done.stderr
    assert f"pid {job.pid} is not running on this host" in done.stderr
    _finished_ingest(s3, name)


# Started ahead (imports done), tries once to take the lock when told to, and says how it went.
S3_CHECKER = r"""
import json, sys
from streamq.errors import StoreLockedError
from streamq.lock import StoreLock

lock = StoreLock(sys.argv[1], command="checker", storage_options=json.loads(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
try:
    lock.acquire()
except StoreLockedError as exc:
    print("refused " + str(exc), flush=True)
else:
    print("won", flush=True)
    lock.release()
"""


LEASE = 5.0  # s: the lease of the killed job in the next test (its checker answers in ~0.3 s)


@pytest.mark.slow
def test_a_killed_job_in_another_pid_namespace_is_taken_over_when_its_lease_expires(
        s3, lock_src, tmp_path):
    """Its pid says nothing here (a container sharing the host name): only the lease does."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid is not permitted here: {probe.stderr.decode().strip()}")
    name = "lease.zarr"
    cfg = tmp_path / "lease.yaml"
    # a lease long enough that a loaded machine still asks within it
    cfg.write_text(f"lock:\n  heartbeat: 1.0\n  stale_after: {LEASE}\n")
    cmd = _ingest_cmd(lock_src, name, s3, "--config", str(cfg))
    checker = subprocess.Popen([sys.executable, "-c", S3_CHECKER, f"s3://{BUCKET}/{name}",
                                json.dumps(s3)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    job = _start_job(["unshare", "--pid", "--fork", "--mount-proc", *cmd])
    try:
        assert checker.stdout.readline() == "ready\n", checker.stderr.read()
        _until(lambda: _n_records(s3, name) >= 1, job)
    finally:
        _signal(job, "SIGKILL")
        job.wait()
    killed = time.time()
    try:
        checker.stdin.write("go\n")  # at once: within the lease of the killed job
        checker.stdin.flush()
        line = checker.stdout.readline()
        assert time.time() - killed < LEASE
    finally:
        checker.stdin.close()
        checker.wait(timeout=60)
    rec = _lock_record(s3, name)
    assert rec["pid_ns"] != os.readlink("/proc/self/ns/pid")
    assert rec["stale_after"] == LEASE
    assert line.startswith(f"refused s3://{BUCKET}/{name} is locked by another job: "
                           "\"streamq ingest "), line
    assert f"pid {rec['pid']} on host {socket.gethostname()}, another pid namespace" in line
    assert ", last heartbeat " in line

    time.sleep(max(0.0, rec["heartbeat"] + rec["stale_after"] + 0.2 - time.time()))
    done = subprocess.run(cmd, capture_output=True, text=True)  # the same command, after it
    assert done.returncode == 0, done.stderr
    assert f"Took over the stale lock s3://{BUCKET}/{name}.lock" in done.stderr
    assert "another pid namespace or boot for " in done.stderr
    _finished_ingest(s3, name)


# Waits for "go", then makes the lock look like that of a host whose heartbeat stopped an hour
# ago (a conditional PUT on the ETag it read, as a frozen host's lock would look after its
# lease) and takes it over; says when it holds it and keeps it until stdin closes.
S3_INTRUDER = r"""
import json, sys, time
import fsspec
from streamq.lock import StoreLock

url, opts = sys.argv[1], json.loads(sys.argv[2])
fs = fsspec.filesystem("s3", **opts)
bucket, key = url.split("://", 1)[1].split("/", 1)
print("ready", flush=True)
sys.stdin.readline()
got = fs.call_s3("get_object", Bucket=bucket, Key=key + ".lock")
from fsspec.asyn import sync
rec = json.loads(sync(fs.loop, got["Body"].read))
rec.update(heartbeat=time.time() - 3600, host="frozen-host.example")
fs.call_s3("put_object", Bucket=bucket, Key=key + ".lock", Body=json.dumps(rec).encode(),
           IfMatch=got["ETag"])
lock = StoreLock(url, command="intruder-job --take-over", storage_options=opts)
lock.acquire()
print("won", flush=True)
sys.stdin.readline()
lock.release()
"""


@pytest.mark.slow
def test_a_job_whose_s3_lock_is_taken_over_stops_with_one_line(s3, lock_src, tmp_path):
    name = "taken.zarr"
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("lock:\n  heartbeat: 0.5\n  stale_after: 2.0\n")
    intruder = subprocess.Popen([sys.executable, "-c", S3_INTRUDER, f"s3://{BUCKET}/{name}",
                                 json.dumps(s3)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    job = _start_job(_ingest_cmd(lock_src, name, s3, "--config", str(cfg)))
    try:
        assert intruder.stdout.readline() == "ready\n"
        _until(lambda: _n_records(s3, name) >= 1, job)
        _signal(job, "SIGSTOP")  # its host freezes ...
        frozen = time.time()
        written = _n_records(s3, name)
        intruder.stdin.write("go\n")
        intruder.stdin.flush()
        assert intruder.stdout.readline() == "won\n", intruder.stderr.read()
        time.sleep(max(0.0, frozen + 1.0 - time.time()))  # longer than the job's lease of 0.75 s
        _signal(job, "SIGCONT")  # ... and wakes up
        _, err = job.communicate(timeout=120)
        assert job.returncode == 1
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: s3://{BUCKET}/{name}: this job's write lock was taken over "
                              f"by 'intruder-job --take-over' (write, pid {intruder.pid} on host "
                              f"{socket.gethostname()}"), err
        assert _n_records(s3, name) <= written + 1  # at most the write past its check
        assert _lock_record(s3, name)["pid"] == intruder.pid  # left to its new owner
    finally:
        if job.poll() is None:
            _signal(job, "SIGKILL")
            job.wait()
        intruder.stdin.close()
        intruder.wait(timeout=60)
    assert intruder.returncode == 0, intruder.stderr.read()
    assert _lock_record(s3, name) is None


class _Proxy:
    """An S3 endpoint that ignores some conditional headers: a real HTTP proxy in front of the
    moto server that drops them from the requests it forwards (as servers without conditional
    writes do)."""

    def __init__(self, target: str, drop: set[tuple[str, str]]) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        host, port = urlsplit(target).hostname, urlsplit(target).port

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if (self.command, k.lower()) not in drop and k.lower() != "host"}
                conn = http.client.HTTPConnection(host, port, timeout=60)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_an_endpoint_without_conditional_writes_is_refused_unless_no_lock(s3, tmp_path):
    from streamq.examples import make_collection

    src = tmp_path / "src"
    make_collection(src, 3, seed=6, min_side=30, max_side=50)
    proxy = _Proxy(s3["endpoint_url"], {("PUT", "if-none-match"), ("PUT", "if-match"),
                                        ("DELETE", "if-match")})
    try:
        opts = {**s3, "endpoint_url": proxy.url}
        name = "nolock.zarr"
        # refused in this process (the CLI's one line), done by a job of its own
        refused, _ = _one_line_error(_ingest_cmd(src, name, opts)[3:])
        assert refused.startswith(
            f"error: s3://{BUCKET}/{name}: the object store at {proxy.url} does not honour "
            "conditional writes (a PUT with If-None-Match: * replaced an existing object)")
        assert "pass --no-lock (config key lock.enabled: false)" in refused
        assert _keys(s3, name) == []  # nothing written: no store, no lock, no probe object
        done = subprocess.run(_ingest_cmd(src, name, opts, "--no-lock"), capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        assert f"s3://{BUCKET}/{name}: written without its lock" in done.stderr
        assert len(streamq.open_store(f"s3://{BUCKET}/{name}", storage_options=s3)) == 3
        assert _keys(s3, f"{name}.lock") == []
    finally:
        proxy.close()


def test_lock_release_and_unlock_on_s3(s3):
    """Release and ``streamq unlock`` delete a lock only if it is still the one they judged:
    with ``If-Match`` where the server honours it on DELETE, else by read-compare-delete."""
    from streamq.lock import StoreLock, read_lock, store_lock, unlock

    client = _client(s3)
    client.put_object(Bucket=BUCKET, Key="unlock.zarr/zarr.json", Body=b"{}")
    proxy = _Proxy(s3["endpoint_url"], {("DELETE", "if-match")})
    try:
        for opts in (s3, {**s3, "endpoint_url": proxy.url}):
            store = f"s3://{BUCKET}/unlock.zarr"
            with store_lock(store, command="me", storage_options=opts) as lk:
                assert read_lock(store, opts).token == lk.token
                with pytest.raises(streamq.StoreLockedError, match="still running on this host"):
                    unlock(store, force=True, storage_options=opts)
            assert read_lock(store, opts) is None
            # A lock taken over meanwhile is never deleted by the job that lost it.
            a = StoreLock(store, command="a", storage_options=opts)
            a.acquire()
            rec = _lock_record(s3, "unlock.zarr")
            client.put_object(Bucket=BUCKET, Key="unlock.zarr.lock", Body=json.dumps(
                {**rec, "token": "b" * 32, "command": "b"}).encode())
            a.release()
            assert _lock_record(s3, "unlock.zarr")["command"] == "b"
            with pytest.raises(streamq.StoreLockedError, match=f"pid {os.getpid()} "):
                StoreLock(store, storage_options=opts).acquire()
            # `streamq unlock`: another host's live lock only with --force.
            client.put_object(Bucket=BUCKET, Key="unlock.zarr.lock", Body=json.dumps(
                {**rec, "token": "c" * 32, "host": "far.example", "pid": 4242,
                 "heartbeat": time.time()}).encode())
            args = ["unlock", store, "--storage-option", f"endpoint_url={opts['endpoint_url']}",
                    "--storage-option", f"key={opts['key']}", "--storage-option",
                    f"secret={opts['secret']}"]
            line, _ = _one_line_error(args)
            assert "pid 4242 on host far.example" in line
            assert "rerun with --force" in line
            result = CliRunner().invoke(cli, [*args, "--force"])
            assert result.exit_code == 0, result.output
            assert "removed the lock of" in result.output
            assert "far.example" in result.output
            assert read_lock(store, opts) is None
            result = CliRunner().invoke(cli, args)
            assert result.output.strip() == f"{store} is not locked"
    finally:
        proxy.close()
    assert _keys(s3, "unlock.zarr.lock") == []
