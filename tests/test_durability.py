"""Records vouch only for what is really there: an export beside a re-quantize records no file
made from changing labels, and a chunk or file torn after its record (a power loss) is found and
written again by a rerun of the same stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from helpers import (
    assert_histogram,
    assert_same_store,
    output_files,
    run_until,
    streamq_cmd,
    wait_until,
)
from PIL import Image

import streamq
from streamq.examples import make_collection

pytestmark = pytest.mark.slow  # real subprocesses, paused and killed at observed progress


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Many small images: a few hundred label reads and files for an export."""
    root = tmp_path_factory.mktemp("durable_src")
    make_collection(root, 160, seed=4, min_side=24, max_side=56)
    return root


@pytest.fixture(scope="module")
def fitted(small_dir, tmp_path_factory):
    """``small_dir`` ingested in small shards (many chunks), fitted with K = 8."""
    path = str(tmp_path_factory.mktemp("durable") / "f.zarr")
    streamq.ingest(small_dir, path, chunk_pixels=8192, block_pixels=2048, scheduler="threads",
                   progress=False)
    streamq.fit(path, colors=8, max_steps=10, batch_size=2048, scheduler="threads")
    return path


@pytest.fixture(scope="module")
def quantized(fitted, tmp_path_factory):
    """``fitted``, quantized."""
    path = str(tmp_path_factory.mktemp("durable") / "q.zarr")
    shutil.copytree(fitted, path)
    streamq.quantize(path, scheduler="threads", progress=False)
    return path


def _attrs(store) -> dict:
    try:
        with open(os.path.join(store, "zarr.json")) as fh:
            return json.load(fh)["attributes"]
    except (OSError, ValueError, KeyError):
        return {}


def _pngs(out) -> list[str]:
    """The exported files under ``out`` (relative, ``/``-separated; records left out)."""
    found = []
    for folder, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if not d.startswith(".streamq-")]
        rel = os.path.relpath(folder, out)
        found += [n if rel == "." else f"{rel}/{n}" for n in files if n.endswith(".png")]
    return found


def _exported_ok(store, out, rel: str) -> bool:
    """Whether ``out/rel`` decodes to the store's palette[labels] of its image, as they are now."""
    coll = streamq.open_store(store)
    i = [os.path.splitext(p)[0] + ".png" for p in coll.paths].index(rel)
    labels = zarr.open_array(f"{store}/quantize/labels", mode="r")
    a, (h, w) = int(coll.offsets[i]), coll.shapes[i]
    want = streamq.load_fit(store).palette[np.asarray(labels[a:a + h * w])].reshape(h, w, 3)
    try:
        with Image.open(os.path.join(out, rel)) as im:
            return np.array_equal(np.asarray(im.convert("RGB")), want)
    except OSError:
        return False


@pytest.mark.parametrize("change", ["quantize --overwrite", "refit and quantize"])
def test_export_beside_a_requantize_records_no_wrong_file(quantized, tmp_path, change):
    """A real export process and a real quantize process on one store: the export is paused
    once its first file exists, the quantize once it has re-created the labels (all fill
    values then), the export resumed; it must fail with one line, or have written only
    correct files. Then a rerun gives what a fresh export gives."""
    store = str(tmp_path / "s.zarr")
    shutil.copytree(quantized, store)
    n = len(streamq.open_store(store))
    ids = ",".join(str(i) for i in range(0, n, 2))  # one label read per image
    out = tmp_path / "out"
    export = subprocess.Popen(streamq_cmd("-q", "export", store, str(out), "--ids", ids,
                                          "--scheduler", "threads"),
                              start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: export.poll() is not None or (out.is_dir() and _pngs(out)),
                   timeout=120, interval=0.001)
        assert export.poll() is None, "the export finished before it could be paused"
        os.killpg(export.pid, signal.SIGSTOP)
        assert len(_pngs(out)) < n // 2
        if change == "refit and quantize":  # in this process: the export is paused meanwhile
            streamq.fit(store, colors=8, seed=1, max_steps=10, batch_size=2048, overwrite=True,
                        scheduler="threads")
            quantize = streamq_cmd("-q", "quantize", store, "--scheduler", "threads")
        else:
            quantize = streamq_cmd("-q", "quantize", store, "--overwrite", "--scheduler", "threads")
        q = subprocess.Popen(quantize, start_new_session=True)
        try:  # "complete" (or "stale" after the refit) until the labels are created again
            wait_until(lambda: q.poll() is not None
                       or _attrs(store).get("quantize", {}).get("state") == "running",
                       timeout=120, interval=0.001)
            assert q.poll() is None, "the quantize finished before it could be paused"
            os.killpg(q.pid, signal.SIGSTOP)  # labels re-created, hardly any written yet
            os.killpg(export.pid, signal.SIGCONT)
            _, err = export.communicate(timeout=120)
        finally:
            os.killpg(q.pid, signal.SIGCONT)
            assert q.wait(timeout=120) == 0
    finally:
        if export.poll() is None:
            os.killpg(export.pid, signal.SIGCONT)
            export.kill()
    if export.returncode == 0:  # it may only claim files that are right
        bad = [rel for rel in _pngs(out) if not _exported_ok(store, out, rel)]
        assert not bad, f"{len(bad)} wrong files exported as done, e.g. {bad[:3]}"
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert "the labels changed under this export" in lines[0]
    from streamq.export import recorded_files

    recorded = recorded_files(out)
    assert all(_exported_ok(store, out, rel) for rel in recorded)
    # once the quantize is done, the same export finishes correctly
    again = change == "refit and quantize"  # the palette changed: --overwrite
    streamq.export(store, out, ids=ids, overwrite=again, scheduler="threads", progress=False)
    fresh = tmp_path / "fresh"
    streamq.export(store, fresh, ids=ids, scheduler="threads", progress=False)
    assert output_files(out) == output_files(fresh)
    assert len(output_files(fresh)) == len(range(0, n, 2))


def _records(path) -> list[int]:
    """Indices of the completion records written so far under records array ``path``."""
    folder = os.path.join(path, "c")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _tear(path) -> None:
    """What a power loss can leave of a file renamed before its data reached the disk."""
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def test_torn_pixel_chunk_is_found_and_rewritten(small_dir, fitted, tmp_path):
    ref, store = fitted, tmp_path / "torn.zarr"  # ref: an uninterrupted ingest, same chunks
    cmd = streamq_cmd("-q", "ingest", str(small_dir), str(store), "--chunk-pixels", "8192",
                      "--scheduler", "threads")
    reports = store / "ingest" / "tasks" / "report"
    n_tasks = zarr.open_array(f"{ref}/ingest/tasks/report", mode="r").shape[0]
    assert run_until(cmd, lambda: len(_records(reports)) >= 3) is None  # killed mid-ingest
    done = _records(reports)
    assert 3 <= len(done) < n_tasks
    task = done[1]
    chunk = int(zarr.open_array(str(store / "ingest/tasks/chunk_start"), mode="r")[task])
    _tear(store / "pixels" / "c" / str(chunk) / "0")
    streamq.ingest(small_dir, store, chunk_pixels=8192, scheduler="threads", progress=False)
    assert_same_store(ref, store)
    assert_histogram(store)


def test_torn_label_chunk_is_found_and_rewritten(fitted, quantized, tmp_path):
    store = tmp_path / "torn.zarr"
    shutil.copytree(fitted, store)
    records = store / "quantize" / "records"
    n_chunks = len(_records(os.path.join(quantized, "quantize", "records")))
    cmd = streamq_cmd("-q", "quantize", str(store), "--scheduler", "threads")
    assert run_until(cmd, lambda: len(_records(records)) >= 3) is None  # killed mid-quantize
    done = _records(records)
    assert 3 <= len(done) < n_chunks
    _tear(store / "quantize" / "labels" / "c" / str(done[1]))
    streamq.quantize(str(store), scheduler="threads", progress=False)
    a, b = zarr.open_group(quantized, mode="r"), zarr.open_group(str(store), mode="r")
    for name in ("quantize/labels", "quantize/images/sse"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    assert b.attrs["quantize"]["state"] == "complete"


def test_torn_exported_file_is_found_and_rewritten(quantized, tmp_path):
    out = tmp_path / "out"
    streamq.export(quantized, out, scheduler="threads", progress=False)
    want = output_files(out)
    files = _pngs(out)
    _tear(out / files[3])
    (out / files[7]).write_bytes(b"")  # renamed, none of its data on disk
    summary = streamq.export(quantized, out, scheduler="threads", progress=False)
    assert output_files(out) == want
    assert (summary.n_written, summary.n_existing) == (2, len(files) - 2)


def test_torn_zarr_export_chunk_is_found_and_rewritten(quantized, tmp_path):
    cfg = tmp_path / "small-chunks.yaml"
    cfg.write_text("export:\n  zarr_chunk_pixels: 2048\n")
    ref, out = tmp_path / "ref.zarr", tmp_path / "torn.zarr"
    cmd = streamq_cmd("-q", "export", quantized, str(out), "--zarr", "--config", str(cfg),
                      "--scheduler", "threads")
    streamq.export(quantized, ref, zarr=True, config=streamq.load_config(cfg),
                   scheduler="threads", progress=False)
    records = out / "label_records"
    n_chunks = zarr.open_array(str(ref / "label_records"), mode="r").shape[0]
    assert run_until(cmd, lambda: len(_records(records)) >= 3) is None  # killed mid-export
    done = _records(records)
    assert 3 <= len(done) < n_chunks
    shard = zarr.open_array(str(out / "labels"), mode="r").shards
    c = done[1] * 2048 // (shard[0] if shard else 2048)
    _tear(out / "labels" / "c" / str(c))
    streamq.export(quantized, out, zarr=True, config=streamq.load_config(cfg),
                   scheduler="threads", progress=False)
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(a["labels"][:], b["labels"][:])
    assert b.attrs["streamq_export"]["state"] == "complete"


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    from streamq.clock import timestamp
    from streamq.fs import write_atomic

    long = tmp_path / "deep" / ("é" * 120 + ".png")  # 240 bytes: a temporary name still fits
    write_atomic(str(long), b"first")
    write_atomic(str(long), b"second", mode=0o600)
    assert long.read_bytes() == b"second"
    assert os.stat(long).st_mode & 0o777 == 0o600
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a folder with files cannot be replaced by a file
    with pytest.raises(IsADirectoryError):
        write_atomic(str(target), b"x")
    assert sorted(os.listdir(tmp_path)) == ["deep", "taken"]  # no temporary file left behind
    assert os.listdir(tmp_path / "deep") == [long.name]
    assert len(timestamp()) == 24
    assert (timestamp()[10], timestamp(readable=True)[10]) == ("T", " ")


def test_fsyncs_cover_every_new_name_once(tmp_path, monkeypatch):
    """One client call makes every file and folder it created durable, each once, and its
    name in every folder up to the store; a task's record fsyncs its file and the folders up
    to its array's own (the folders above are the client's, durable since it made the array,
    and a task adds nothing to them)."""
    from streamq import durable
    from streamq.store import TASK_REPORTS, Store, write_task_report

    root = tmp_path / "s.zarr"
    st = Store.create(root)
    synced: list[str] = []
    real = durable._fsync
    monkeypatch.setattr(durable, "_fsync", lambda p, directory=False: (
        synced.append(os.path.abspath(p)), real(p, directory))[1])
    st.create_task_table(np.array([0, 5]), np.array([5, 10]))
    made = {str(root / "ingest")} | {os.path.join(d, n) for d, dirs, files in
                                     os.walk(root / "ingest") for n in dirs + files}
    assert made | {str(root)} <= set(synced), sorted(made - set(synced))
    assert len(synced) == len(set(synced)), sorted(synced)
    synced.clear()
    write_task_report(st.location, 1, {"task": 1})
    rec = root.joinpath(*TASK_REPORTS.split("/"))
    assert sorted(synced) == sorted(map(str, (rec, rec / "c", rec / "c" / "1")))


def test_ingest_records_come_after_their_pixels_are_durable(small_dir, tmp_path, monkeypatch):
    """A write task writes its completion record only once its pixel shards are on disk,
    however slow the disk: every shard file of a task is fsynced before its record."""
    from streamq import durable
    from streamq.ingest import task as task_module
    from streamq.store import TASKS, Store

    events: list[tuple[str, object]] = []
    real_fsync, real_report = durable._fsync, task_module.write_task_report

    def slow_fsync(p: str, directory: bool = False) -> None:
        if os.sep + "pixels" + os.sep in p:
            time.sleep(0.01)  # a slow disk: a task that did not wait would record first
        real_fsync(p, directory)
        events.append(("fsync", os.path.abspath(p)))

    monkeypatch.setattr(durable, "_fsync", slow_fsync)
    monkeypatch.setattr(task_module, "write_task_report", lambda store, t, report: (
        events.append(("record", t)), real_report(store, t, report))[1])
    path = tmp_path / "s.zarr"
    streamq.ingest(small_dir, path, chunk_pixels=8192, block_pixels=2048, scheduler="sync",
                   progress=False)
    tasks = Store.open(path).read_table(TASKS, ("chunk_start", "chunk_stop"))
    assert len(tasks["chunk_start"]) > 3
    for t, (c0, c1) in enumerate(zip(tasks["chunk_start"], tasks["chunk_stop"], strict=True)):
        at = events.index(("record", t))
        before = {p for kind, p in events[:at] if kind == "fsync"}
        shards = {str(path / "pixels" / "c" / str(c) / "0") for c in range(int(c0), int(c1))}
        assert shards <= before, (t, sorted(shards - before))
