"""PNGs over max_pixels read in strips (streamq.ingest.png_rows): one write task owns every
chunk of such a PNG and writes them in turn while it reads the rows; the store is that of
the same files decoded whole by Pillow (and pypng for 16-bit samples)."""

from __future__ import annotations

import functools
import tracemalloc

import numpy as np
import png
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from helpers import assert_same_store, kill_when, soft_mask, stage_progress, streamq_cmd
from PIL import Image

import streamq
from streamq.cli.main import cli
from streamq.decode import decode_rgba, premultiply, scale16
from streamq.examples import source_photos
from streamq.ingest import bands, png_rows
from streamq.ingest.plan import plan_tasks

LIMIT = 20_000  # max_pixels of the strip path
CHUNK = 4096  # chunk_pixels: a PNG of the collection spans many shards
BIG = 10**9


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A crop of a bundled photo (RGB uint8)."""
    photos = [p for p in source_photos().values() if p.shape[0] >= h and p.shape[1] >= w]
    rng = np.random.default_rng(seed)
    p = photos[int(rng.integers(len(photos)))]
    y, x = int(rng.integers(p.shape[0] - h + 1)), int(rng.integers(p.shape[1] - w + 1))
    return np.ascontiguousarray(p[y:y + h, x:x + w])


def _write16(path, data: np.ndarray, **kw) -> None:
    """A 16-bit PNG by pypng: ``data`` ``(H, W)`` or ``(H, W, C)`` uint16."""
    h, w = data.shape[:2]
    kw.setdefault("greyscale", False)
    png.Writer(w, h, bitdepth=16, **kw).write(open(path, "wb"),  # noqa: SIM115
                                              data.reshape(h, -1).tolist())


def _to16(rgb: np.ndarray, seed: int) -> np.ndarray:
    """8-bit samples widened to 16 bits with low bytes that change the rounding."""
    low = np.random.default_rng(seed).integers(0, 256, rgb.shape)
    return (rgb.astype(np.uint16) * 256 + low).astype(np.uint16)


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    """Photo crops as PNGs of every layout, most over LIMIT, small ones between them (they
    share the big ones' first and last chunks), an interlaced PNG and a JPEG over LIMIT."""
    root = tmp_path_factory.mktemp("pngs")
    rgb = _photo(230, 310, 1)
    Image.fromarray(rgb).save(root / "a_rgb.png")
    Image.fromarray(_photo(60, 70, 2)).save(root / "b_small.png")  # under the limit
    Image.fromarray(_photo(150, 190, 3)).convert("L").save(root / "c_grey.png")
    Image.fromarray(_photo(170, 160, 4)).quantize(60).save(root / "d_palette.png")
    Image.fromarray(_photo(140, 150, 5)).quantize(12).save(root / "e_palette4.png", bits=4)
    pal = Image.fromarray(_photo(150, 140, 6)).quantize(30)
    pal.info["transparency"] = bytes([0, 60, 128] + [255] * 27)
    pal.save(root / "f_palette_trns.png", transparency=bytes([0, 60, 128] + [255] * 27))
    Image.fromarray(_photo(50, 60, 7)).save(root / "g_small.png")
    _write16(root / "h_grey16.png", _to16(_photo(160, 150, 8)[..., 1], 8), greyscale=True)
    _write16(root / "i_rgb16.png", _to16(_photo(150, 170, 9), 9))
    rgba = np.dstack([_photo(160, 170, 10), soft_mask(160, 170, 10)])
    Image.fromarray(rgba, "RGBA").save(root / "j_rgba.png")
    _write16(root / "k_rgba16.png", _to16(rgba, 11), alpha=True)
    grey = Image.fromarray(_photo(150, 160, 12)).convert("L")
    grey.save(root / "l_grey_key.png", transparency=int(np.asarray(grey)[0, 0]))
    keyed = _photo(140, 170, 13)
    Image.fromarray(keyed).save(root / "m_rgb_key.png", transparency=tuple(int(v) for v in keyed[5, 5]))
    inter = _photo(160, 150, 14)
    png.Writer(150, 160, greyscale=False, interlace=True).write(
        open(root / "n_interlaced.png", "wb"), inter.reshape(160, -1).tolist())  # noqa: SIM115
    Image.fromarray(_photo(150, 170, 15)).save(root / "o_big.jpg", quality=90)
    Image.fromarray(_photo(40, 60, 16)).save(root / "p_small_last.png")
    Image.fromarray(_photo(150, 140, 17)).convert("1").save(root / "q_bilevel.png")
    Image.fromarray(_photo(140, 150, 18)).quantize(4).save(root / "r_palette2.png", bits=2)
    Image.fromarray(rgba[:, :150], "RGBA").convert("LA").save(root / "s_grey_alpha.png")
    return root


STREAMED = ["a_rgb.png", "c_grey.png", "d_palette.png", "e_palette4.png", "f_palette_trns.png",
            "h_grey16.png", "i_rgb16.png", "j_rgba.png", "k_rgba16.png", "l_grey_key.png",
            "m_rgb_key.png", "q_bilevel.png", "r_palette2.png", "s_grey_alpha.png"]


def _ingest(src, path, **kw):
    return streamq.ingest(src, path, scheduler="threads", progress=False, chunk_pixels=CHUNK,
                          block_pixels=1024, **kw)


@pytest.fixture(scope="module")
def whole_store(png_dir, tmp_path_factory):
    """Every file decoded whole (no limit in the way), the reference."""
    path = tmp_path_factory.mktemp("whole") / "w.zarr"
    _ingest(png_dir, path)
    return path


@pytest.fixture(scope="module")
def strips(png_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("strips") / "s.zarr"
    return path, _ingest(png_dir, path, max_pixels=LIMIT)


def test_strips_store_equals_whole_decode(png_dir, whole_store, strips):
    path, summary = strips
    skipped = dict(summary.skipped_first)
    assert set(skipped) == {"n_interlaced.png", "o_big.jpg"}
    assert "max_pixels=20000" in skipped["o_big.jpg"]  # JPEG: no strip decoding
    assert "interlaced (Adam7)" in skipped["n_interlaced.png"]
    coll, whole = streamq.open_store(path), streamq.open_store(whole_store)
    assert sorted(coll.paths) == sorted(set(whole.paths) - set(skipped))
    assert sum(h * w > LIMIT for h, w in coll.shapes) == len(STREAMED)
    assert sorted(p for p, (h, w) in zip(coll.paths, coll.shapes, strict=True)
                  if h * w > LIMIT) == STREAMED
    # each image as its file decoded whole (premultiplied colours, alpha kept), and as the
    # store of the whole decodes holds it, mode and colour table included
    g, gw = zarr.open_group(str(path), mode="r"), zarr.open_group(str(whole_store), mode="r")
    for i, name in enumerate(coll.paths):
        j = whole.paths.index(name)
        rgb, alpha = decode_rgba(str(png_dir / name), BIG)
        np.testing.assert_array_equal(coll.read(i), rgb, err_msg=name)
        np.testing.assert_array_equal(coll.read(i), whole.read(j), err_msg=name)
        np.testing.assert_array_equal(
            coll.read_alpha(i), np.full(rgb.shape[:2], 255) if alpha is None else alpha,
            err_msg=name)
        assert g["images/mode"][i] == gw["images/mode"][j], name
        assert bool(g["images/has_alpha"][i]) == (alpha is not None), name
    # colour counts of the stored pixels: the whole store's minus the two skipped files'
    kept = [whole.paths.index(p) for p in coll.paths]
    codes = [(whole.read(j).astype(np.int64) @ [65536, 256, 1]).ravel() for j in kept]
    want = np.unique(np.concatenate(codes), return_counts=True)
    got = (np.asarray(g["colors/code"][:]), np.asarray(g["colors/count"][:]))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_one_task_owns_every_chunk_of_a_png_read_in_strips(strips):
    """No task boundary inside a streamed PNG's chunks: one task each (or one for two that
    share a chunk), and its neighbours' shared chunks with it."""
    path = strips[0]
    g = zarr.open_group(str(path), mode="r")
    starts = np.asarray(g["ingest/tasks/chunk_start"][:])
    stops = np.asarray(g["ingest/tasks/chunk_stop"][:])
    coll = streamq.open_store(path)
    shard = int(g["pixels"].shards[0])
    assert shard == CHUNK
    # the plan flags the PNGs read in strips, and only them (their tasks stream their shards)
    flags = dict(zip(g["ingest/plan/path"][:], g["ingest/plan/sequential"][:], strict=True))
    assert sorted(p for p, f in flags.items() if f) == STREAMED
    for i, (h, w) in enumerate(coll.shapes):
        if h * w <= LIMIT:
            continue
        first, last = int(coll.offsets[i]) // shard, (int(coll.offsets[i]) + h * w - 1) // shard
        t = int(np.searchsorted(starts, first, side="right")) - 1
        assert stops[t] > last, f"{coll.paths[i]}: chunks {first}..{last} in task {t} {starts[t]}..{stops[t]}"
    # every record of the run vouches for its pixels
    reports = [r for r in g["ingest/tasks/report"][:]]
    assert all(reports)


def test_plan_tasks_without_sequential_images_is_unchanged():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9000, 300)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    before = plan_tasks(offsets, sizes, n, 4096)
    none = plan_tasks(offsets, sizes, n, 4096, sequential=np.zeros(300, bool))
    np.testing.assert_array_equal(before[0], none[0])
    np.testing.assert_array_equal(before[1], none[1])
    seq = np.zeros(300, bool)
    seq[[10, 11, 200]] = True  # two neighbours sharing a chunk, one on its own
    starts, stops = plan_tasks(offsets, sizes, n, 4096, sequential=seq)
    for group in ([10, 11], [200]):
        lo = int(offsets[group[0]]) // 4096
        hi = -(-(int(offsets[group[-1]]) + int(sizes[group[-1]])) // 4096)
        t = list(starts).index(lo)
        assert stops[t] == hi
    assert starts[0] == 0
    assert stops[-1] == -(-n // 4096)
    np.testing.assert_array_equal(starts[1:], stops[:-1])


def test_png_rows_are_read_with_bounded_memory(tmp_path):
    """Strips read forward hold a band of rows, never the image: peak allocation well under
    it; rows behind those read are refused."""
    tall = np.vstack([_photo(300, 600, s) for s in range(20)])
    src = str(tmp_path / "tall.png")
    Image.fromarray(tall).save(src)
    with bands.png_strips(src) as rows:  # imports and the kernel's compilation first
        next(bands.read_rows(rows, 0, 1, False, (255, 255, 255)))
    tracemalloc.start()
    try:
        got = []
        with bands.png_strips(src) as rows:
            for top, rgb, alpha in bands.read_rows(rows, 500, 5000, False, (255, 255, 255),
                                                   band_pixels=30_000):
                assert alpha is None
                assert rgb.shape[0] * 600 <= 30_000
                np.testing.assert_array_equal(rgb, tall[top:top + rgb.shape[0]])
                got.append(top + rgb.shape[0])
            with pytest.raises(ValueError, match="read forward"):
                rows.read(10, 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got[-1] == 5000
    assert peak < tall.nbytes / 6, f"peak {peak} bytes for an image of {tall.nbytes}"


def test_grey_alpha_16_bit_is_scaled(tmp_path):
    """16-bit grey with alpha, against pypng's rows scaled as any 16-bit image is."""
    data = _to16(np.dstack([_photo(70, 90, 4)[..., 0], soft_mask(70, 90, 4)]), 4)
    _write16(tmp_path / "la16.png", data, greyscale=True, alpha=True)
    with bands.png_strips(str(tmp_path / "la16.png")) as rows:
        (_, rgb, alpha), = bands.read_rows(rows, 0, 70, True, (255, 255, 255))
    ref = scale16(np.asarray(list(png.Reader(filename=str(tmp_path / "la16.png")).asDirect()[2]),
                             np.uint16).reshape(70, 90, 2))
    np.testing.assert_array_equal(alpha, ref[..., 1])
    np.testing.assert_array_equal(rgb, premultiply(np.dstack([ref[..., :1]] * 3 + [ref[..., 1:]])))


def test_png_layout_reasons(tmp_path):
    """A truncated PNG fails the read with a reason; an EXIF orientation is refused."""
    src = tmp_path / "t.png"
    Image.fromarray(_photo(200, 200, 3)).save(src)
    data = src.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with open(tmp_path / "cut.png", "rb") as fh:
        rows = png_rows.PngRows(fh)
        with pytest.raises(ValueError, match="truncated PNG"):
            rows.read(0, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo(200, 200, 3)).save(tmp_path / "rot.png", exif=exif)
    assert "EXIF orientation 6" in bands.band_header(str(tmp_path / "rot.png"), "over")


def test_quantize_and_export_of_a_store_with_strips(strips, whole_store, png_dir, tmp_path):
    """Quantized with one palette, the strips store has the whole store's labels; the export
    writes each streamed PNG as a tiled palette BigTIFF of those labels."""
    path = strips[0]
    pal = tmp_path / "palette.hex"
    pal.write_text("#000000\n#ffffff\n#808080\n#c04030\n#30a050\n#3050c0\n#e0c060\n")
    for store in (path, whole_store):
        streamq.quantize(store, palette=str(pal), scheduler="threads", progress=False,
                         ssim=False)
    coll, whole = streamq.open_store(path), streamq.open_store(whole_store)
    lab = zarr.open_group(str(path), mode="r")["quantize/labels"]
    ref = zarr.open_group(str(whole_store), mode="r")["quantize/labels"]
    for i, name in enumerate(coll.paths):
        j = whole.paths.index(name)
        a, b = int(coll.offsets[i]), int(whole.offsets[j])
        n = coll.shapes[i][0] * coll.shapes[i][1]
        np.testing.assert_array_equal(np.asarray(lab[a:a + n]), np.asarray(ref[b:b + n]),
                                      err_msg=name)
    out = tmp_path / "out"
    summary = streamq.export(path, out, scheduler="threads", progress=False)
    assert len(summary.tiled) == len(STREAMED)
    name = "a_rgb.png"
    i = coll.paths.index(name)
    h, w = coll.shapes[i]
    with tifffile.TiffFile(out / "a_rgb.tif") as tf:
        assert tf.pages[0].is_tiled
        got = tf.pages[0].asarray()
    a = int(coll.offsets[i])
    colors = np.array([[int(c[k:k + 2], 16) for k in (1, 3, 5)]
                       for c in pal.read_text().split()], np.uint8)
    labels = np.asarray(lab[a:a + h * w]).reshape(h, w)
    # an RGBA file (the collection keeps alpha), this opaque image's alpha all 255
    np.testing.assert_array_equal(got[..., :3], colors[labels])
    np.testing.assert_array_equal(got[..., 3], 255)


def _kill_source(root):
    """A 4 Mpx PNG (62 shards of 65536 pixels, one task) between two small ones."""
    src = root / "src"
    src.mkdir()
    Image.fromarray(_photo(40, 50, 1)).save(src / "a.png")
    big = np.vstack([np.hstack([_photo(400, 500, 10 * r + c) for c in range(4)])
                     for r in range(5)])  # 2000 x 2000
    Image.fromarray(big).save(src / "b.png")
    Image.fromarray(_photo(40, 50, 2)).save(src / "c.png")
    return src


def _shards_written(store, n: int):
    """A predicate: ``n`` shards of ``pixels`` on disk and no task recorded (the PNG's task
    is the only one): inside that task."""
    shards = store / "pixels" / "c"

    def written() -> bool:
        stage, done = stage_progress(store)
        return stage == "ingest" and done == 0 and shards.is_dir() \
            and len(list(shards.iterdir())) >= n

    return written


def _assert_same_ingest(ref, store) -> None:
    assert_same_store(ref, store)
    g, gr = zarr.open_group(str(store), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ("colors/code", "colors/count", "ingest/tasks/report"):
        np.testing.assert_array_equal(g[name][:], gr[name][:], err_msg=name)


@pytest.mark.slow
def test_kill_during_a_streamed_png_then_rerun(tmp_path):
    """kill -9 of the ingest once the task of a PNG read in strips has written some of its
    shards (their files seen) and before its record, then the same command: the store of a
    run never killed."""
    src = _kill_source(tmp_path)
    args = ["-q", "ingest", str(src), "", "--max-pixels", str(LIMIT), "--chunk-pixels",
            "65536", "--scheduler", "threads"]
    ref = tmp_path / "ref.zarr"
    args[3] = str(ref)
    ran = CliRunner().invoke(cli, args)
    assert ran.exit_code == 0, ran.output
    killed = tmp_path / "killed.zarr"
    args[3] = str(killed)
    kill = kill_when(streamq_cmd(*args), _shards_written(killed, 8),
                     progress=functools.partial(stage_progress, killed))
    assert kill.seen == ("ingest", 0), kill.seen
    assert len(list((killed / "pixels" / "c").iterdir())) < -(-(2000 * 2000 + 4000) // 65536)
    ran = CliRunner().invoke(cli, args)  # the same command, in this process
    assert ran.exit_code == 0, ran.output
    _assert_same_ingest(ref, killed)


@pytest.mark.distributed
def test_worker_killed_during_a_streamed_png(tmp_path):
    """kill -9 of the worker running the PNG's task once it has written some shards: the
    task runs again on another worker, and the store is that of a run never killed."""
    import threading

    from helpers import ProcessCluster, wait_until

    src = _kill_source(tmp_path)
    settings = {"max_pixels": LIMIT, "chunk_pixels": 65536, "progress": False}
    ref = tmp_path / "ref.zarr"
    streamq.ingest(src, ref, scheduler="threads", **settings)
    store = tmp_path / "killed.zarr"
    errors: list[BaseException] = []
    with ProcessCluster(tmp_path / "dask", n_workers=2) as procs, procs.client() as client:
        names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}

        def run() -> None:
            try:
                streamq.ingest(src, store, scheduler=procs.address, **settings)
            except BaseException as exc:  # reported below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        wait_until(lambda: _shards_written(store, 8)() or not thread.is_alive(), timeout=300,
                   interval=0.005)
        busy = [names[a] for a, keys in client.processing().items()
                if a in names and any(str(k).startswith("_write_task") for k in keys)]
        assert busy, "no worker was running the PNG's task when its shards were seen"
        assert _shards_written(store, 8)(), "the task ended before the kill point"
        procs.kill_worker(busy[0])  # mid-task
        procs.add_worker()
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert not errors, errors
    _assert_same_ingest(ref, store)


def test_pngs_in_strips_from_a_bucket(png_dir, strips, s3):
    """The same PNGs read in strips from a bucket (moto on loopback; ranges of the objects
    read by the tasks): the store of the local folder."""
    import boto3
    from helpers import BUCKET

    client = boto3.client("s3", endpoint_url=s3["endpoint_url"], aws_access_key_id=s3["key"],
                          aws_secret_access_key=s3["secret"], region_name="us-east-1")
    for p in sorted(png_dir.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"pngs/{p.name}", Body=p.read_bytes())
    store = png_dir.parent / "bucket.zarr"
    summary = _ingest(f"s3://{BUCKET}/pngs/", store, max_pixels=LIMIT, source_options=s3)
    assert {p for p, _ in summary.skipped_first} == {"n_interlaced.png", "o_big.jpg"}
    local = streamq.open_store(strips[0])
    coll = streamq.open_store(store)
    assert list(coll.paths) == list(local.paths)
    flags = zarr.open_group(str(store), mode="r")["ingest/plan/sequential"][:]
    assert int(flags.sum()) == len(STREAMED)
    for i, name in enumerate(coll.paths):
        np.testing.assert_array_equal(coll.read(i), local.read(i), err_msg=name)
        np.testing.assert_array_equal(coll.read_alpha(i), local.read_alpha(i), err_msg=name)
