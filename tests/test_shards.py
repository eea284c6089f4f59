"""Blocks read straight from local shard files equal Zarr's reads of the same rows."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from streamq.batches import PixelSource, draw_pixels
from streamq.errors import StreamQError
from streamq.fs import location
from streamq.store.arrays import compressors
from streamq.store.shards import LocalShards

BLOCK, SHARD = 1024, 4096


def _pixels(root, codec: str, n: int = 5 * SHARD + 700) -> tuple[zarr.Array, np.ndarray]:
    """A pixel array laid out as a store's (shards of 4 blocks, streamq's codecs), with a block
    of zeros (no bytes in its shard), a whole shard of zeros (no file) and a short last block."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    data[:, 1] //= 7  # some redundancy for the compressors
    data[BLOCK:2 * BLOCK] = 0
    data[2 * SHARD:3 * SHARD] = 0
    arr = zarr.create_array(f"{root}/pixels", shape=data.shape, shards=(SHARD, 3),
                            chunks=(BLOCK, 3), dtype="uint8", fill_value=0,
                            compressors=compressors(codec, None), overwrite=True)
    arr[:] = data
    return arr, data


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_every_block_equals_zarrs_rows(tmp_path, codec):
    arr, data = _pixels(tmp_path, codec)
    assert not (tmp_path / "pixels" / "c" / "2" / "0").exists()  # the shard of zeros: no file
    reader = LocalShards.of(location(str(tmp_path)), "pixels", arr)
    assert reader is not None
    n_blocks = -(-data.shape[0] // BLOCK)
    for c in range(n_blocks):
        got = reader.read(c)
        want = np.asarray(arr[c * BLOCK:(c + 1) * BLOCK])
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, data[c * BLOCK:(c + 1) * BLOCK])
    assert reader.read(n_blocks - 1).shape == (700, 3)  # the short last block
    with pytest.raises(IndexError):
        reader.read(n_blocks)
    # into this thread's reused buffers: the same rows, each read until the next one
    for c in [*range(n_blocks), 0, n_blocks - 1, 1]:
        np.testing.assert_array_equal(reader.read(c, scratch=True), data[c * BLOCK:(c + 1) * BLOCK])


def test_layouts_it_does_not_read_go_through_zarr(tmp_path):
    plain = zarr.create_array(f"{tmp_path}/plain", shape=(4096, 3), chunks=(1024, 3),
                              dtype="uint8", fill_value=0)  # no shards
    assert LocalShards.of(location(str(tmp_path)), "plain", plain) is None
    wide = zarr.create_array(f"{tmp_path}/wide", shape=(4096, 3), shards=(4096, 3),
                             chunks=(1024, 3), dtype="float32", fill_value=0)  # 4-byte values
    assert LocalShards.of(location(str(tmp_path)), "wide", wide) is None


def test_a_torn_shard_index_is_an_error(tmp_path):
    arr, _ = _pixels(tmp_path, "lz4")
    shard = tmp_path / "pixels" / "c" / "1" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(raw))
    reader = LocalShards.of(location(str(tmp_path)), "pixels", arr)
    with pytest.raises(StreamQError, match=r"c/1/0: the shard index's checksum does not match"):
        reader.read(SHARD // BLOCK)
    shard.write_bytes(b"\0" * 10)
    with pytest.raises(StreamQError, match="shorter than its index"):
        reader.read(SHARD // BLOCK)


def test_a_shard_cut_short_is_an_error(tmp_path):
    """An index (with its checksum intact) that points past the end of its file: an error
    naming the file (Zarr 3.1 would return fill values)."""
    arr, _ = _pixels(tmp_path, "none")
    shard = tmp_path / "pixels" / "c" / "1" / "0"
    raw = shard.read_bytes()
    index = raw[-(16 * (SHARD // BLOCK) + 4):]
    shard.write_bytes(raw[:100] + index)  # the data cut, the same index after it
    reader = LocalShards.of(location(str(tmp_path)), "pixels", arr)
    with pytest.raises(StreamQError, match=r"c/1/0: shard file ends inside inner chunk"):
        reader.read(SHARD // BLOCK + 3)


def test_one_block_per_shard_and_an_array_smaller_than_a_shard(tmp_path):
    one = zarr.create_array(f"{tmp_path}/one", shape=(3000, 3), shards=(1024, 3),
                            chunks=(1024, 3), dtype="uint8", fill_value=0,
                            compressors=compressors("lz4", None))
    small = zarr.create_array(f"{tmp_path}/small", shape=(1500, 3), shards=(4096, 3),
                              chunks=(1024, 3), dtype="uint8", fill_value=0,
                              compressors=compressors("zstd", None))
    rng = np.random.default_rng(1)
    for name, arr in (("one", one), ("small", small)):
        arr[:] = rng.integers(0, 256, arr.shape, dtype=np.uint8)
        reader = LocalShards.of(location(str(tmp_path)), name, arr)
        assert reader is not None
        for c in range(-(-arr.shape[0] // 1024)):
            np.testing.assert_array_equal(reader.read(c), arr[c * 1024:(c + 1) * 1024])


def test_draws_are_the_same_through_either_reader(tmp_path, monkeypatch):
    """The sampler's draws (streamq.batches) are the same pixels whichever way it reads."""
    from streamq import batches

    arr, data = _pixels(tmp_path, "lz4")
    offsets = np.array([0, 9000, 15000], np.int64)
    sizes = np.array([9000, 5000, data.shape[0] - 15000], np.int64)  # a gap of unused pixels
    n_blocks = -(-data.shape[0] // BLOCK)
    source = PixelSource.from_images(location(str(tmp_path)), BLOCK, n_blocks, offsets, sizes)
    assert batches._block_reader(source, arr) is not None
    other = PixelSource.from_images(location(str(tmp_path)), BLOCK // 2, 2 * n_blocks, offsets,
                                    sizes)  # chunks that are not the array's blocks
    assert batches._block_reader(other, arr) is None
    direct = [draw_pixels(source, 3, 2, i, 5000, 4) for i in range(6)]
    monkeypatch.setattr(batches, "_block_reader", lambda source, arr: None)
    through_zarr = [draw_pixels(source, 3, 2, i, 5000, 4) for i in range(6)]
    for a, b in zip(direct, through_zarr, strict=True):
        np.testing.assert_array_equal(a, b)


def _zarr_and_ours(tmp_path, shape, shards, chunks, dtype, codec, fill=0):
    """The same empty array twice: one Zarr writes, one LocalShards writes."""
    out = []
    for name in ("by_zarr", "by_us"):
        zarr.create_array(f"{tmp_path}/{name}", shape=shape, shards=shards, chunks=chunks,
                          dtype=dtype, fill_value=fill, compressors=compressors(codec, None))
        out.append(zarr.open_array(f"{tmp_path}/{name}", mode="r+"))
    return out


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "zarr.json"}


@pytest.mark.parametrize(("shape", "dtype", "codec"), [
    ((5 * SHARD + 700, 3), "uint8", "lz4"),    # pixels, a short last shard and block
    ((5 * SHARD + 700, 3), "uint8", "zstd"),
    ((3 * SHARD, 3), "uint8", "none"),
    ((4 * SHARD + 1500,), "uint8", "lz4"),     # labels, K <= 256
    ((4 * SHARD + 1500,), "uint16", "lz4"),    # labels, K > 256
    ((4 * SHARD + 1500,), "uint16", "zstd"),
])
def test_written_shards_are_the_files_zarr_writes(tmp_path, shape, dtype, codec):
    """Whole shards written by LocalShards are Zarr's files byte for byte (every block
    stored, zeros too, as the tasks' writer stores them), and read back the same."""
    from streamq.store.arrays import every_chunk

    rng = np.random.default_rng(2)
    top = 256 if dtype == "uint8" else 700
    data = rng.integers(0, top, shape).astype(dtype)
    data[BLOCK:2 * BLOCK] = 0  # a block of fill values: stored all the same
    by_zarr, by_us = _zarr_and_ours(tmp_path, shape, (SHARD, *shape[1:]), (BLOCK, *shape[1:]),
                                    dtype, codec)
    every_chunk(by_zarr)[:] = data
    shards = LocalShards.of(location(str(tmp_path)), "by_us", by_us)
    assert shards is not None
    assert shards.write(0, 2 * SHARD, data[:2 * SHARD])  # several shards at once
    assert shards.write(2 * SHARD, shape[0], data[2 * SHARD:])  # the rest, to the array's end
    assert _files(tmp_path / "by_us") == _files(tmp_path / "by_zarr")
    np.testing.assert_array_equal(by_us[:], data)


def test_rows_that_are_not_whole_shards_are_left_to_zarr(tmp_path):
    """write() refuses (writing nothing) anything but whole shards; write_rows then writes
    through Zarr, with the same values."""
    from streamq.fs import location
    from streamq.store.arrays import write_rows

    _, arr = _zarr_and_ours(tmp_path, (3 * SHARD, 3), (SHARD, 3), (BLOCK, 3), "uint8", "lz4")
    shards = LocalShards.of(location(str(tmp_path)), "by_us", arr)
    data = np.full((SHARD, 3), 7, np.uint8)
    for lo, hi in ((BLOCK, BLOCK + SHARD), (0, SHARD - 1), (SHARD, 3 * SHARD + 1)):
        assert not shards.write(lo, hi, data[:hi - lo] if hi - lo <= SHARD else
                                np.zeros((hi - lo, 3), np.uint8))
    assert not (tmp_path / "by_us" / "c").exists()
    write_rows(location(str(tmp_path)), "by_us", arr, BLOCK, BLOCK + SHARD, data)
    got = zarr.open_array(f"{tmp_path}/by_us", mode="r")[:]
    assert (got[BLOCK:BLOCK + SHARD] == 7).all()
    assert (got[:BLOCK] == 0).all()


@pytest.mark.parametrize("fill", [0, 255])
def test_big_blocks_written_from_the_main_thread_are_zarrs_files(tmp_path, fill):
    """Blocks of 3 MiB, far over Blosc's block size, written from the main thread (where
    numcodecs, left to itself, compresses on several threads, in an order that varies from
    call to call; Zarr's import turns that off), and labels whose fill value is not 0:
    Zarr's files, every time."""
    import threading

    from streamq.store.arrays import every_chunk

    assert threading.current_thread() is threading.main_thread()
    big = 1 << 20
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4, (4 * big, 3), dtype=np.uint8)  # compressible, as labels are
    data[::7] = rng.integers(0, 256, (len(data[::7]), 3))
    data[:big // 2] = fill
    by_zarr, by_us = _zarr_and_ours(tmp_path, data.shape, (2 * big, 3), (big, 3), "uint8",
                                    "lz4", fill)
    every_chunk(by_zarr)[:] = data
    want = _files(tmp_path / "by_zarr")
    shards = LocalShards.of(location(str(tmp_path)), "by_us", by_us)
    for _ in range(3):
        assert shards.write(0, data.shape[0], data)
        assert _files(tmp_path / "by_us") == want


def test_write_rows_replaces_a_torn_shard_whole(tmp_path):
    """write_rows on whole shards of a local array writes them directly: a longer, torn file
    in the way is replaced whole, no temporary file is left, and the rows read back."""
    from streamq.fs import location
    from streamq.store.arrays import write_rows

    by_zarr, arr = _zarr_and_ours(tmp_path, (2 * SHARD, 3), (SHARD, 3), (BLOCK, 3), "uint8",
                                  "lz4")
    shard = tmp_path / "by_us" / "c" / "1" / "0"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"\x07" * (20 * SHARD))  # torn: longer than any real shard
    data = np.random.default_rng(4).integers(0, 256, (2 * SHARD, 3), dtype=np.uint8)
    write_rows(location(str(tmp_path)), "by_us", arr, 0, 2 * SHARD, data)
    from streamq.store.arrays import every_chunk

    every_chunk(by_zarr)[:] = data
    assert _files(tmp_path / "by_us") == _files(tmp_path / "by_zarr")  # no .partial left
    np.testing.assert_array_equal(zarr.open_array(f"{tmp_path}/by_us", mode="r")[:], data)
