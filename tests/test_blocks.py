"""Blocks read straight from local shard files equal Zarr's reads of the same rows."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from streamq.batches import PixelSource, draw_pixels
from streamq.errors import StreamQError
from streamq.fs import location
from streamq.store.arrays import compressors
from streamq.store.blocks import BlockReader

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
    reader = BlockReader.of(str(tmp_path), "pixels", arr)
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


def test_layouts_it_does_not_read_go_through_zarr(tmp_path):
    plain = zarr.create_array(f"{tmp_path}/plain", shape=(4096, 3), chunks=(1024, 3),
                              dtype="uint8", fill_value=0)  # no shards
    assert BlockReader.of(str(tmp_path), "plain", plain) is None
    wide = zarr.create_array(f"{tmp_path}/wide", shape=(4096, 3), shards=(4096, 3),
                             chunks=(1024, 3), dtype="uint16", fill_value=0)  # 2-byte values
    assert BlockReader.of(str(tmp_path), "wide", wide) is None


def test_a_torn_shard_index_is_an_error(tmp_path):
    arr, _ = _pixels(tmp_path, "lz4")
    shard = tmp_path / "pixels" / "c" / "1" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(raw))
    reader = BlockReader.of(str(tmp_path), "pixels", arr)
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
    reader = BlockReader.of(str(tmp_path), "pixels", arr)
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
        reader = BlockReader.of(str(tmp_path), name, arr)
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
