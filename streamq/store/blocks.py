"""Single inner chunks ("blocks") of a local sharded array, read straight from the shard file.

The fit's sampling tasks read 64 random blocks of the pixel array for every 8 batches
(:mod:`streamq.batches`) and keep ~3% of each. Zarr 3.1 spends ~1.5 ms on each such read (an
asyncio round trip to its I/O thread, the shard index and the chunk read in its thread pool,
its codec pipeline) for ~0.1 ms of decompression: most of a sampling task. A
:class:`BlockReader` reads a block as Zarr's sharding format lays it out -- the shard's index
at the end of its file (per inner chunk, its offset and length as little-endian uint64,
``2**64 - 1`` for a chunk of fill values that has no bytes, then the index's CRC-32C) and
the chunk's bytes at that offset, decoded by numcodecs -- in ~0.5 ms.

Only for what streamq writes on a local disk: one shard along the first axis of a 2-d array,
inner codecs ``bytes`` then nothing, Blosc or Zstd, the index at the end with its CRC-32C.
For anything else (an object store, other codecs) :meth:`BlockReader.of` returns None and
the caller reads through Zarr. The values are Zarr's own, bit for bit
(``tests/test_blocks.py`` compares them on every codec, on missing chunks and shards and on
a short last chunk); an index whose checksum does not match is an error, as in Zarr, and so
is an index entry that points past the end of the file (where Zarr 3.1 returns fill values).
Stored blocks come back read-only (views of the decoded bytes).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from streamq.durable import array_folder, chunk_files
from streamq.errors import StreamQError

__all__ = ["BlockReader"]

_EMPTY = 2**64 - 1  # offset and length of an inner chunk that has no bytes


class BlockReader:
    """Reads block ``c`` (rows ``[c * chunk, (c + 1) * chunk)``) of one local sharded array."""

    def __init__(self, root: str, name: str, arr: Any, decode: Any) -> None:
        self.root, self.name, self.arr = root, name, arr
        self.chunk = int(arr.metadata.codecs[0].chunk_shape[0])
        self.per_shard = int(arr.shards[0]) // self.chunk
        self.rows = int(arr.shape[0])
        self.row_shape = tuple(int(n) for n in arr.shape[1:])
        self.dtype = np.dtype(arr.dtype)
        self.fill = arr.metadata.fill_value
        self._decode = decode
        self._index_bytes = 16 * self.per_shard + 4

    @classmethod
    def of(cls, root: str, name: str, arr: Any) -> BlockReader | None:
        """A reader of array ``name`` (opened as ``arr``) of the local store folder ``root``,
        or None when its layout is not one this module reads."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        if not hasattr(os, "pread"):  # (not on Windows)
            return None
        if not os.path.isfile(os.path.join(array_folder(root, name), "zarr.json")):
            return None  # not where this array lives: no guessing at its files
        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or arr.ndim != 2:
            return None
        sharding = codecs[0]
        shard, inner = arr.shards, sharding.chunk_shape
        if shard[1:] != arr.shape[1:] or inner[1:] != arr.shape[1:] or shard[0] % inner[0]:
            return None
        index = sharding.index_codecs
        if (sharding.index_location != ShardingCodecIndexLocation.end or len(index) != 2
                or not isinstance(index[0], BytesCodec) or index[0].endian is None
                or index[0].endian.value != "little" or not isinstance(index[1], Crc32cCodec)):
            return None
        first, *rest = sharding.codecs
        if not isinstance(first, BytesCodec) or np.dtype(arr.dtype).itemsize != 1:
            return None  # (one-byte values: no byte order to undo)
        if not rest:
            decode = bytes
        elif len(rest) == 1 and isinstance(rest[0], BloscCodec | ZstdCodec):
            import numcodecs

            decode = (numcodecs.Blosc() if isinstance(rest[0], BloscCodec)
                      else numcodecs.Zstd()).decode
        else:
            return None
        return cls(root, name, arr, decode)

    def read(self, c: int) -> np.ndarray:
        """The rows of block ``c`` (fewer in the array's last block), as Zarr returns them."""
        lo, hi = c * self.chunk, min((c + 1) * self.chunk, self.rows)
        if not 0 <= lo < hi:
            raise IndexError(f"block {c} is outside {self.name} ({self.rows} rows)")
        shard, pos = divmod(c, self.per_shard)
        path = chunk_files(self.root, self.name, self.arr, shard * self.per_shard * self.chunk,
                           shard * self.per_shard * self.chunk + 1)[0]
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # a shard of fill values only
            return self._filled(hi - lo)
        try:
            size = os.fstat(fd).st_size
            if size < self._index_bytes:
                raise StreamQError(f"{path}: shard file of {size} bytes is shorter than its "
                                   f"index ({self._index_bytes} bytes)")
            raw = os.pread(fd, self._index_bytes, size - self._index_bytes)
            offset, length = self._entry(raw, path, pos)
            if offset == _EMPTY:
                return self._filled(hi - lo)
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise StreamQError(f"{path}: shard file ends inside inner chunk {pos} "
                               f"(expected {length} bytes at offset {offset})")
        out = np.frombuffer(self._decode(data), dtype=self.dtype)
        return out.reshape(-1, *self.row_shape)[: hi - lo]

    def _entry(self, raw: bytes, path: str, pos: int) -> tuple[int, int]:
        import google_crc32c

        index, crc = raw[:-4], raw[-4:]
        if len(raw) != self._index_bytes or np.uint32(google_crc32c.value(index)).tobytes() != crc:
            raise StreamQError(f"{path}: the shard index's checksum does not match (a torn or "
                               "foreign file)")
        entries = np.frombuffer(index, dtype="<u8").reshape(self.per_shard, 2)
        return int(entries[pos, 0]), int(entries[pos, 1])

    def _filled(self, n: int) -> np.ndarray:
        return np.full((n, *self.row_shape), self.fill, dtype=self.dtype)
