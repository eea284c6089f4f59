"""Sources at URLs: images in a bucket (moto's S3 server on loopback) and lists of URLs (also
served by a real HTTP server), read by the workers themselves, give the same store as the
same files on disk; a killed worker and a killed job change nothing; access problems are one
line; transient answers (503) are retried."""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from helpers import (
    BUCKET,
    SECRET,
    ProcessCluster,
    assert_same_store,
    free_port,
    kill_when,
    stage_progress,
    store_content,
    streamq_cmd,
)
from PIL import Image

import streamq
from streamq import redact
from streamq.cli.main import cli
from streamq.examples import make_collection, source_photos

N_JPEG, N_PNG = 300, 8  # a few hundred objects, tiny: every object costs requests to the server
PREFIX = "photos"  # the key prefix in the bucket, and the local folder's name
URL = f"s3://{BUCKET}/{PREFIX}/"
SETTINGS = dict(chunk_pixels=2048, block_pixels=1024, max_pixels=4000)
BAD = {"bad/empty.jpg": "empty file (0 bytes)",
       "bad/not_an_image.png": "not an image Pillow can identify",
       "bad/big.jpg": "image has 4096 pixels, over the limit max_pixels=4000"}


@pytest.fixture(scope="module", autouse=True)
def _pillow_limit():
    """An ingest run in this process (``scheduler="threads"``) sets Pillow's process-wide
    ``MAX_IMAGE_PIXELS`` to its ``max_pixels``: put it back for the tests that follow."""
    before = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = before


def _write_photos(root: Path) -> list[str]:
    """Small real photo crops: JPEGs (8-16 px a side) in one folder per photo, PNGs in
    ``png/``, and a few bad files; their names relative to ``root``."""
    make_collection(root, N_JPEG, seed=15, min_side=8, max_side=16)
    photos = source_photos()
    rng = np.random.default_rng(15)
    (root / "png").mkdir()
    for j in range(N_PNG):
        photo = photos[sorted(photos)[j % len(photos)]]
        h, w = (int(v) for v in rng.integers(20, 41, size=2))
        y, x = int(rng.integers(0, photo.shape[0] - h)), int(rng.integers(0, photo.shape[1] - w))
        Image.fromarray(photo[y:y + h, x:x + w]).save(root / "png" / f"crop_{j:03d}.png")
    (root / "bad").mkdir()
    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/not_an_image.png").write_text("hello, I am text")
    # over max_pixels: a JPEG (a PNG would be read in strips)
    Image.fromarray(photos[sorted(photos)[0]][:64, :64]).save(root / "bad/big.jpg")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _client(opts):
    import boto3

    return boto3.client("s3", endpoint_url=opts["endpoint_url"], aws_access_key_id=opts["key"],
                        aws_secret_access_key=opts["secret"], region_name="us-east-1")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, s3) -> tuple[Path, list[str]]:
    """The photos in a local folder named like the bucket's prefix, and the same files as
    objects under ``s3://bucket/photos/``."""
    root = tmp_path_factory.mktemp("remote") / PREFIX
    root.mkdir()
    names = _write_photos(root)
    client = _client(s3)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{n}",
                                                  Body=(root / n).read_bytes()), names))
    return root, names


@pytest.fixture(scope="module")
def local_ref(photos, tmp_path_factory, cluster_address) -> Path:
    """The photos ingested from the local folder: what every URL ingest must equal."""
    store = tmp_path_factory.mktemp("remote_ref") / "local.zarr"
    streamq.ingest(photos[0], store, scheduler=cluster_address, progress=False, **SETTINGS)
    return store


def _flags(opts, flag="--storage-option"):
    return [x for k, v in (("endpoint_url", opts["endpoint_url"]), ("key", opts["key"]),
                           ("secret", opts["secret"]), ("client_kwargs.region_name", "us-east-1"))
            for x in (flag, f"{k}={v}")]


def test_bucket_ingest_equals_local_ingest(photos, local_ref, s3, cluster_address, tmp_path):
    store = tmp_path / "bucket.zarr"
    summary = streamq.ingest(URL, store, scheduler=cluster_address, progress=False,
                             storage_options=s3, **SETTINGS)
    assert summary.status == "ingested"
    assert summary.n_images == N_JPEG + N_PNG
    assert_same_store(local_ref, store)  # pixels, names, labels, modes, shapes, skip reasons
    coll = streamq.open_store(store)
    assert {s.path: s.reason for s in coll.skipped} == BAD
    assert zarr.open_group(str(store), mode="r").attrs["ingest"]["root"] == f"s3://{BUCKET}/{PREFIX}"
    again = streamq.ingest(URL, store, scheduler="threads", progress=False, storage_options=s3,
                           **SETTINGS)
    assert again.status == "already complete"
    assert not [p for p in store.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    # An object that changed since the store was made: refused as changed files are on disk.
    _client(s3).put_object(Bucket=BUCKET, Key=f"{PREFIX}/{photos[1][0]}", Body=b"changed")
    try:
        with pytest.raises(streamq.StoreMismatchError, match="was ingested from other inputs"):
            streamq.ingest(URL, store, scheduler="threads", progress=False, storage_options=s3,
                           **SETTINGS)
    finally:
        _client(s3).put_object(Bucket=BUCKET, Key=f"{PREFIX}/{photos[1][0]}",
                               Body=(photos[0] / photos[1][0]).read_bytes())


@pytest.mark.distributed
def test_worker_and_job_killed_mid_ingest_then_rerun(photos, local_ref, s3, tmp_path):
    """Real ``dask scheduler``/``dask worker`` processes read the bucket. Once a write task has
    recorded its work, the worker running another one is killed -9, then the whole job; the
    same command, run again, resumes and ends with the store of the local ingest."""
    store = tmp_path / "killed.zarr"
    cmd = streamq_cmd("ingest", URL, str(store), "--chunk-pixels", str(SETTINGS["chunk_pixels"]),
                      "--max-pixels", str(SETTINGS["max_pixels"]),
                      "--config", str(_config(tmp_path, block_pixels=SETTINGS["block_pixels"])),
                      *_flags(s3, "--source-option"))
    killed: list[str] = []
    with ProcessCluster(tmp_path / "dask", n_workers=2) as procs, procs.client() as client:
        names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}

        def worker_killed() -> bool:
            stage, n = stage_progress(store)
            if stage != "ingest" or n < 1:
                return False
            for addr, keys in client.processing().items():
                if addr in names and any(str(k).startswith("_write_task") for k in keys):
                    procs.kill_worker(names[addr])  # mid-task
                    killed.append(names[addr])
                    return True
            return False

        kill = kill_when([*cmd, "--scheduler", procs.address], worker_killed, interval=0.01,
                         progress=functools.partial(stage_progress, store))
        assert killed, "no worker was killed"
        assert kill.seen[0] == "ingest", kill.seen  # the job too, inside the write tasks
        n_tasks = len(zarr.open_group(str(store), mode="r")["ingest/tasks/report"][:])
        assert kill.seen[1] < n_tasks
        procs.add_worker()
        procs.wait_for_workers(2)
        done = subprocess.run([*cmd, "--scheduler", procs.address], capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed: {N_JPEG + N_PNG} images" in done.stdout
    assert "stale lock" in done.stderr  # left by the killed job, taken over
    assert SECRET not in done.stderr + done.stdout
    assert_same_store(local_ref, store)


def _config(tmp_path, **ingest) -> Path:
    path = tmp_path / "ingest.yaml"
    lines = ["ingest:"] + [f"  {k}: {v}" for k, v in ingest.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def by_path(photos, tmp_path_factory) -> tuple[list[str], Path]:
    """Every ninth photo, listed by path in a text file, and its store."""
    root, names = photos
    tmp = tmp_path_factory.mktemp("by_path")
    chosen = [n for n in names if not n.startswith("bad/")][::9]
    (tmp / "paths.txt").write_text("".join(f"{root / n}\n" for n in chosen))
    streamq.ingest(tmp / "paths.txt", tmp / "paths.zarr", scheduler="threads", progress=False,
                   **SETTINGS)
    return chosen, tmp / "paths.zarr"


def _assert_same_images(a, b) -> None:
    a, b = store_content(a), store_content(b)
    for name in ("pixels", "images/path", "images/label", "images/mode", "images/offset",
                 "images/height", "images/width"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_list_of_urls_equals_list_of_paths(photos, by_path, s3, tmp_path):
    """A local text file of s3:// URLs (one missing: skipped with its reason) against the same
    files listed by path; and ``file://``, which is a local path."""
    chosen, reference = by_path
    (tmp_path / "urls.txt").write_text("# photos in the bucket\n" + "".join(
        f"s3://{BUCKET}/{PREFIX}/{n}\n" for n in [*chosen, "nope/missing.jpg"]))
    kw = dict(scheduler="threads", progress=False, **SETTINGS)
    by_url = streamq.ingest(tmp_path / "urls.txt", tmp_path / "urls.zarr", source_options=s3,
                            **kw)
    assert by_url.n_images == len(chosen)
    _assert_same_images(reference, tmp_path / "urls.zarr")
    skipped = store_content(tmp_path / "urls.zarr")
    assert list(skipped["skipped/path"]) == ["nope/missing.jpg"]
    assert list(skipped["skipped/reason"]) == [
        f"object not found (404): s3://{BUCKET}/{PREFIX}/nope/missing.jpg"]
    via_file = streamq.ingest(f"file://{photos[0]}/png", tmp_path / "file.zarr", **kw)
    assert via_file.n_images == N_PNG
    attrs = zarr.open_group(str(tmp_path / "file.zarr"), mode="r").attrs["ingest"]
    assert attrs["root"] == str(photos[0] / "png")


class _Server:
    """A real HTTP server on loopback serving ``root``: ``/flaky/NAME`` answers 503 to the
    first request for each NAME, then the file; ``/down/NAME`` always 503; ``/denied/NAME``
    403."""

    def __init__(self, root: Path) -> None:
        self.seen: dict[str, int] = {}
        seen, lock = self.seen, threading.Lock()

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw) -> None:
                super().__init__(*args, directory=str(root), **kw)

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                kind, _, rest = self.path.lstrip("/").partition("/")
                with lock:
                    seen[self.path] = seen.get(self.path, 0) + 1
                    first = seen[self.path] == 1
                if kind == "denied":
                    self.send_error(403, "Forbidden")
                elif kind == "down" or (kind == "flaky" and first):
                    self.send_error(503, "Service Unavailable")
                else:
                    self.path = "/" + rest
                    super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def http(photos):
    server = _Server(photos[0])
    yield server
    server.close()


def test_url_list_over_http_with_transient_errors_retried(photos, by_path, http, tmp_path):
    """A list at an http:// URL naming files relative to it; every first request answers 503
    (the list's too): each is retried, and the store equals that of the same files on disk."""
    chosen, reference = by_path
    (photos[0] / "list.txt").write_text("".join(f"{n}\n" for n in chosen))
    try:
        cfg = {"retry": {"attempts": 3, "wait": 0.01}, "ingest": SETTINGS}
        summary = streamq.ingest(f"{http.url}/flaky/list.txt", tmp_path / "http.zarr",
                                 config=cfg, scheduler="threads", progress=False)
    finally:
        (photos[0] / "list.txt").unlink()
    assert summary.n_images == len(chosen)
    _assert_same_images(reference, tmp_path / "http.zarr")
    assert http.seen["/flaky/list.txt"] == 2
    assert all(http.seen[f"/flaky/{n}"] >= 2 for n in chosen)


def _one_line_error(args) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_access_errors_are_one_line(photos, s3, http, tmp_path):
    store = str(tmp_path / "x.zarr")
    common = ["--scheduler", "threads", "--config", str(_config(tmp_path, max_pixels=4000))]
    line = _one_line_error(["ingest", "s3://no-such-bucket/photos/", store, *common, *_flags(s3)])
    assert (f"bucket 'no-such-bucket' of s3://no-such-bucket/photos does not exist at "
            f"{s3['endpoint_url']}: check the URL and source option 'endpoint_url'") in line
    line = _one_line_error(["ingest", f"s3://{BUCKET}/nothing-here/", store, *common,
                            *_flags(s3)])
    assert f"source s3://{BUCKET}/nothing-here/ does not exist" in line
    closed = free_port()
    line = _one_line_error(["ingest", URL, store, *common, "--source-option",
                            f"endpoint_url=http://127.0.0.1:{closed}", "--source-option",
                            "key=k", "--source-option", f"secret={SECRET}"])
    assert f"cannot reach http://127.0.0.1:{closed} for s3://{BUCKET}/{PREFIX}" in line
    assert "check source option 'endpoint_url'" in line
    line = _one_line_error(["ingest", "foo://bucket/photos/", store, *common])
    assert "unsupported URL scheme 'foo'" in line
    assert not Path(store).exists()  # refused at listing: nothing written
    name = photos[1][0]
    (tmp_path / "denied.txt").write_text(f"{http.url}/denied/{name}\n")
    line = _one_line_error(["ingest", str(tmp_path / "denied.txt"), store, *common])
    assert line.startswith(f"error: access to {http.url}/denied/{name} was denied (")
    assert "check source options (--source-option, key 'source_options')" in line
    retry = tmp_path / "retry.yaml"
    retry.write_text("retry:\n  attempts: 2\n  wait: 0.01\n")
    (tmp_path / "down.txt").write_text(f"{http.url}/down/{name}\n")
    line = _one_line_error(["ingest", str(tmp_path / "down.txt"), store, "--scheduler", "threads",
                            "--config", str(retry)])
    assert line.startswith(f"error: cannot read {http.url}/down/{name}: ClientResponseError "
                           "(HTTP 503)")
    assert "still failing after 2 attempts" in line
    (tmp_path / "query.txt").write_text(f"{http.url}/{name}?X-Amz-Signature=abc\n")
    line = _one_line_error(["ingest", str(tmp_path / "query.txt"), store, *common])
    assert "line 1" in line
    assert "has a query string" in line
    assert "X-Amz-Signature" not in line


def test_fault_classification():
    """Network faults are transient, answers about the object are not."""
    import aiohttp
    from botocore.exceptions import EndpointConnectionError

    from streamq.faults import is_transient

    def answer(status):
        return aiohttp.ClientResponseError(None, (), status=status)

    assert all(is_transient(answer(s)) for s in (408, 429, 500, 502, 503, 504))
    assert not any(is_transient(answer(s)) for s in (400, 401, 403, 404, 410))
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(TimeoutError("read timed out"))
    assert not is_transient(FileNotFoundError("no such key"))
    assert not is_transient(PermissionError("access denied"))


def test_source_options_never_shown():
    argv = ["ingest", URL, "out.zarr", "--source-option", f"secret={SECRET}",
            f"--source-option=key={SECRET}", "--source-option", "endpoint_url=http://h:9000"]
    shown = redact.argv(argv)
    assert SECRET not in " ".join(shown)
    assert "secret=***" in shown
    assert "--source-option=key=***" in shown
    assert "endpoint_url=http://h:9000" in shown
    assert SECRET not in redact.command(" ".join(argv))
    with pytest.raises(streamq.ConfigError) as err:
        streamq.load_config(None, **{"source_options": 5})
    assert "not shown" in str(err.value)


def test_gcs_bucket_ingest_equals_local_ingest(photos, gcs, cluster_address, tmp_path):
    """``gs://`` (gcsfs, on a Google Cloud Storage emulator on loopback): the same store as the
    same files on disk, read by the cluster's workers; the rerun finds it complete. (Thirty of
    the JPEGs, the PNGs and the bad files: the emulator answers slowly.)"""
    import gcsfs

    root, names = photos
    jpegs = [n for n in names if n.endswith(".jpg") and not n.startswith("bad/")]
    subset = sorted(jpegs[:30] + [n for n in names if n not in jpegs])
    local = tmp_path / PREFIX
    for n in subset:
        (local / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / n, local / n)
    ref = tmp_path / "local.zarr"
    streamq.ingest(local, ref, scheduler="threads", progress=False, **SETTINGS)
    fs = gcsfs.GCSFileSystem(**gcs, skip_instance_cache=True)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: fs.pipe(f"{BUCKET}/{PREFIX}/{n}", (root / n).read_bytes()), subset))
    url, store = f"gs://{BUCKET}/{PREFIX}/", tmp_path / "gcs.zarr"
    summary = streamq.ingest(url, store, scheduler=cluster_address, progress=False,
                             storage_options=gcs, **SETTINGS)
    assert (summary.status, summary.n_images) == ("ingested", 30 + N_PNG)
    assert_same_store(ref, store)
    assert {s.path: s.reason for s in streamq.open_store(store).skipped} == BAD
    assert zarr.open_group(str(store), mode="r").attrs["ingest"]["root"] == f"gs://{BUCKET}/{PREFIX}"
    again = streamq.ingest(url, store, scheduler="threads", progress=False, storage_options=gcs,
                           **SETTINGS)
    assert again.status == "already complete"
