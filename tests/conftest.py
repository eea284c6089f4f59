"""Shared fixtures: one Dask cluster and one set of test collections per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

# Dask's monitoring, which the tests never read, is the larger part of an idle cluster's CPU: a
# worker samples its threads' stacks every 10 ms for the dashboard's profile and every process
# checks its event loop every 20 ms. An idle two-worker LocalCluster took 5.8 CPU-s a minute
# (its two workers and the test process), 1.5 with these; the session's clusters idle most of
# the run. Set before any process of the session imports dask (subprocesses inherit them).
for _key, _value in (("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False"),
                     ("DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL", "1s"),
                     ("DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL", "2s")):
    os.environ.setdefault(_key, _value)
if "dask" in sys.modules:  # imported by a plugin first: read the environment again
    import dask.config

    dask.config.refresh()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import BUCKET, PER_PHOTO, PHOTOS, SECRET, free_port  # noqa: E402
from PIL import Image  # noqa: E402

from streamq.examples import make_collection  # noqa: E402

# gcsfs (2026.10) asks a bucket's type through Google's gRPC storage-control API before its
# first request, and waits 60 s for an answer that the GCS emulator of the tests never gives.
# Set before any process of the session (cluster workers included) imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

# -- before the first test: compiled kernels, a browser ------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    """In the session's first process (the xdist controller, or the only process): compile
    streamq's kernels into numba's cache with the product's own `streamq warmup`, in two
    processes that share the work, and start installing Chromium if the machine has none.

    On a fresh clone every test process, cluster worker and job would otherwise compile the
    kernels it calls, many at once (a cold cache made the suite ~65 s slower on 2 cores); on a
    warm cache this only loads them (~1 s)."""
    if hasattr(config, "workerinput") or config.option.collectonly:
        return  # an xdist worker: the controller did it
    from helpers import start_chromium_install, streamq_cmd

    start_chromium_install()
    jobs = [subprocess.Popen(streamq_cmd("-q", "warmup"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for job in jobs:
        out, _ = job.communicate()
        if job.returncode != 0:
            raise pytest.UsageError(f"`streamq warmup` failed ({job.returncode}): {out.strip()}")


# -- how the suite spreads over ``pytest -n`` workers (pyproject: --dist loadgroup) ------------
#: A test of these marks runs real subprocesses or clusters.
_HEAVY_MARKS = ("slow", "distributed")


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        d.scope in ("module", "class", "package") for defs in info.name2fixturedefs.values()
        for d in defs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``pytest -n`` with ``--dist loadgroup``: the tests of a module that share a
    module-scoped fixture (a reference run, a fitted store, a cluster of processes) run on one
    worker, so the fixture is built once, not once per worker; and the heaviest units (such a
    group, or a test with real subprocesses) start first, so no worker is left with a long
    test at the end while the other idles. Order within a unit is kept."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        if _uses_module_fixture(item):
            group = item.nodeid.split("::", 1)[0]
            item.add_marker(pytest.mark.xdist_group(group))
        else:
            group = item.nodeid
        units.setdefault(group, []).append(item)

    def weight(unit: list[pytest.Item]) -> tuple[int, int]:
        heavy = sum(1 for item in unit if any(item.get_closest_marker(m) for m in _HEAVY_MARKS))
        return heavy, len(unit)

    items[:] = [item for unit in sorted(units.values(), key=weight, reverse=True) for item in unit]


@pytest.fixture(autouse=True)
def _no_leftover_distributed_default():
    """Each test starts on dask's default scheduler: Dask clients closed in another order
    than they were opened (each puts back the configuration it found) can leave
    ``scheduler: dask.distributed`` set with no client, which depends on the tests a worker
    ran before. A test that wants a client opens one."""
    import dask

    if dask.config.get("scheduler", None) == "dask.distributed":
        from distributed import default_client

        try:
            default_client()
        except ValueError:  # no client: a leftover
            dask.config.config.pop("scheduler", None)


@pytest.fixture(scope="session")
def cluster_address():
    """A real LocalCluster with two worker processes, shared by the whole session."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit="2GiB") as cluster:
        yield cluster.scheduler_address


def _serve(cmd: list[str], port: int, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a local server process on ``port`` (127.0.0.1) and wait until it accepts."""
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{cmd[0]} did not start: see {log_path}") from None
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A Google Cloud Storage emulator (``gcp-storage-emulator``, in memory) in its own process on
    127.0.0.1, with one bucket; yields the gcsfs storage options that reach it."""
    import gcsfs

    port = free_port()
    folder = tmp_path_factory.mktemp("gcs")
    proc = _serve([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                   "--port", str(port), "--in-memory"], port, folder / "server.log")
    try:
        opts = {"endpoint_url": f"http://127.0.0.1:{port}", "token": "anon", "project": "streamq-test"}
        gcsfs.GCSFileSystem(**opts, skip_instance_cache=True).mkdir(BUCKET)
        yield opts
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server in its own process on 127.0.0.1, with one bucket; yields the storage
    options that reach it (passed explicitly to every stage, so Dask workers get them too)."""
    import boto3

    port = free_port()
    folder = tmp_path_factory.mktemp("moto")
    # where moto's request recorder writes (test_s3._requests_to), not the working folder
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(folder / "recording")}
    server = Path(__file__).with_name("s3_server.py")  # moto's S3, without its per-request
    proc = _serve([sys.executable, str(server), str(port)], port, folder / "server.log", env)
    endpoint = f"http://127.0.0.1:{port}"
    old = os.environ.get("AWS_EC2_METADATA_DISABLED")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never look for instance credentials
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="streamq-test",
                     aws_secret_access_key=SECRET, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "key": "streamq-test", "secret": SECRET,
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        _stop(proc)
        if old is None:
            os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        else:
            os.environ["AWS_EC2_METADATA_DISABLED"] = old


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory) -> Path:
    """An LFW-shaped tree of mixed-size JPEG crops of bundled photos."""
    root = tmp_path_factory.mktemp("faces")
    make_collection(root, 48, seed=1, min_side=30, max_side=160)
    return root


@pytest.fixture(scope="session")
def lock_src(tmp_path_factory) -> Path:
    """12 small crops for the tests of a store's write lock (test_s3.LOCK_SOURCE): session-
    scoped, so those tests are not tied to one ``pytest -n`` worker as a module's would be;
    enough ingest tasks that a job stopped at its first record has most of its work left."""
    root = tmp_path_factory.mktemp("locksrc")
    make_collection(root, 12, seed=5, min_side=40, max_side=90)
    return root


def _odd_images(root: Path) -> dict[str, str]:
    """Write one file per odd mode and per kind of bad input; return {relpath: kind}."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(7)
    photo = load_sample_image("flower.jpg")[100:160, 200:290]  # 60x90 RGB
    (root / "modes").mkdir(parents=True)
    (root / "bad").mkdir()
    kinds = {}

    def save(name: str, im: Image.Image, **kw: object) -> None:
        im.save(root / name, **kw)
        kinds[name] = "ok"

    rgb = Image.fromarray(photo)
    save("modes/rgb.png", rgb)
    save("modes/l.png", rgb.convert("L"))
    save("modes/one_bit.png", rgb.convert("1"))
    save("modes/p.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    p_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("modes/p_transparent.png", p_t, transparency=3)
    alpha = rng.integers(0, 256, size=photo.shape[:2], dtype=np.uint8)
    save("modes/la.png", Image.fromarray(np.dstack([np.asarray(rgb.convert("L")), alpha])).convert("LA"))
    save("modes/rgba.png", Image.fromarray(np.dstack([photo, alpha])))
    g16 = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    save("modes/i16.png", Image.fromarray(g16))
    save("modes/cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("modes/cmyk.tif", rgb.convert("CMYK"))
    save("modes/rgb.webp", rgb, lossless=True)
    save("modes/rgb.bmp", rgb)
    frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE), rgb.rotate(90).convert("P")]
    frames[0].save(root / "modes/anim.gif", save_all=True, append_images=frames[1:])
    kinds["modes/anim.gif"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    save("modes/exif_rot.jpg", rgb, exif=exif.tobytes(), quality=95)
    import tifffile

    rgb16 = rng.integers(0, 65536, size=(20, 30, 3), dtype=np.uint16)
    tifffile.imwrite(root / "modes/rgb16.tif", rgb16, photometric="rgb")
    kinds["modes/rgb16.tif"] = "ok"
    import png

    png.from_array(rgb16.reshape(20, 90), mode="RGB;16").save(str(root / "modes/rgb16.png"))
    kinds["modes/rgb16.png"] = "ok"
    save("modes/f32.tif", Image.fromarray(rng.random((10, 10), dtype=np.float32)))
    kinds["modes/f32.tif"] = "bad"

    (root / "bad/empty.jpg").write_bytes(b"")
    (root / "bad/not_an_image.png").write_text("hello, I am text")
    good = (root / "modes/rgb.png").read_bytes()
    (root / "bad/truncated.png").write_bytes(good[: len(good) // 2])
    jpg = root / "bad/truncated.jpg"
    rgb.save(jpg, quality=90)
    jpg.write_bytes(jpg.read_bytes()[:400])
    # over max_pixels: a JPEG (a PNG would be read in strips, tests/test_png_strips.py)
    Image.new("RGB", (300, 200)).save(root / "bad/too_big.jpg")
    for name in ("bad/empty.jpg", "bad/not_an_image.png", "bad/truncated.png",
                 "bad/truncated.jpg", "bad/too_big.jpg"):
        kinds[name] = "bad"
    (root / "notes.txt").write_text("not an image extension: ignored by folder listing")
    return kinds


@pytest.fixture(scope="session")
def odd_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("odd")
    return root, _odd_images(root)


@pytest.fixture(scope="session")
def faces_store(faces_dir, tmp_path_factory, cluster_address) -> str:
    """The faces collection ingested once on the real cluster, with small chunks."""
    import streamq

    path = str(tmp_path_factory.mktemp("stores") / "faces.zarr")
    streamq.ingest(faces_dir, path, chunk_pixels=20_000, scheduler=cluster_address, progress=False)
    return path


@pytest.fixture(scope="session")
def faces_300_store(faces_store, tmp_path_factory) -> str:
    """The faces collection with a 300-colour palette (more than a palette PNG holds: uint16
    labels), quantized, once per session: few starts and iterations, as the count of colours
    is what its tests need. Tests that change it work on a copy."""
    import streamq

    path = str(tmp_path_factory.mktemp("stores") / "big.zarr")
    shutil.copytree(faces_store, path)
    streamq.fit(path, colors=300, max_steps=5, batch_size=4096, init_size=20_000, n_init=2,
                max_iter=20, scheduler="threads")
    streamq.quantize(path, scheduler="threads")
    return path


@pytest.fixture(scope="session")
def faces_per_image_store(faces_store, tmp_path_factory, cluster_address) -> str:
    """The faces collection with per-image palettes for K = 2, 6, 30 (the tutorial), quantized,
    both on the session cluster. Tests that change it work on a copy."""
    import streamq

    path = str(tmp_path_factory.mktemp("stores") / "faces_per_image.zarr")
    shutil.copytree(faces_store, path)
    streamq.fit_per_image(path, colors=[2, 6, 30], sample=0.7, seed=3, pixels_per_task=200_000,
                          scheduler=cluster_address, progress=False)
    streamq.quantize(path, scheduler=cluster_address, progress=False)
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Crops of four bundled photos (a quarter of their size, then half to all of that),
    in one folder per photo: the folder (label) names the group an image belongs to."""
    from streamq.examples import source_photos

    root = tmp_path_factory.mktemp("photos")
    photos = source_photos()
    rng = np.random.default_rng(5)
    for name in PHOTOS:
        im = Image.fromarray(photos[name])
        small = np.asarray(im.resize((im.width // 4, im.height // 4), Image.Resampling.BOX))
        (root / name).mkdir()
        ph, pw = small.shape[:2]
        for j in range(PER_PHOTO):
            h, w = int(rng.integers(ph // 2, ph + 1)), int(rng.integers(pw // 2, pw + 1))
            y, x = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
            Image.fromarray(small[y:y + h, x:x + w]).save(root / name / f"{name}_{j:04d}.jpg",
                                                          quality=90)
    return root


@pytest.fixture(scope="session")
def photo_store(photo_dir, tmp_path_factory, cluster_address) -> str:
    """The photos ingested on the session cluster (small shards: images straddle them), a
    12-colour palette and its labels. Tests that change it work on a copy."""
    import streamq

    path = str(tmp_path_factory.mktemp("groups") / "photos.zarr")
    streamq.ingest(photo_dir, path, chunk_pixels=20_000, scheduler=cluster_address, progress=False)
    streamq.fit(path, colors=12, max_steps=40, batch_size=4096,
                scheduler="threads")
    streamq.quantize(path, scheduler=cluster_address, progress=False)
    return path


def pillow_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Independent reference: Pillow's own RGB conversion, orientation applied."""
    from PIL import ImageOps

    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what collection left alive (imported modules, test items) out of the cyclic
    garbage collector's reach: a test session's heap is large, and every full collection
    walked all of it again."""
    import gc

    gc.collect()
    gc.freeze()
