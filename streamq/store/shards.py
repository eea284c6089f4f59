"""Local sharded arrays read and written straight from their shard files.

Zarr's sharding format stores a shard as one file: its inner chunks' encoded bytes, then the
shard's index (per inner chunk, its offset and length as little-endian uint64, ``2**64 - 1``
for a chunk of fill values that has no bytes), then the index's CRC-32C. Zarr 3.1 spends
more on its own machinery than on the data for the two things streamq does most with them:

- **reading one inner chunk ("block")**: the fit's sampling tasks read 64 random blocks of
  the pixel array for every 8 batches and keep ~3% of each. Through Zarr a read takes
  ~1.5 ms (an asyncio round trip to its I/O thread, the shard index and the chunk read in its
  thread pool, its codec pipeline) for ~0.1 ms of decompression; :meth:`LocalShards.read`
  takes ~0.3 ms;
- **writing whole shards**: every ingest, quantize and export task writes the shards it owns.
  Zarr encodes a 4 Mi-pixel shard and writes it in 16-36 ms (it varies between runs);
  :meth:`LocalShards.write` writes the same file, byte for byte, in 12-16 ms (mostly
  compression). Ingest on a running cluster went from 0.66 to 0.81-0.87 of a plain loop.

Only for what streamq writes on a local disk: one shard along the first axis of a 1-d or
2-d array of 1- or 2-byte values, inner codecs ``bytes`` (little-endian) then nothing,
Blosc or Zstd, the index at the end with its CRC-32C. For anything else (an object store,
other codecs) :meth:`LocalShards.of` returns None and the caller goes through Zarr.
``tests/test_shards.py`` compares every block read with Zarr's on every codec, on missing
chunks and shards and on a short last chunk, and every file written with the file Zarr
writes for the same rows. An index whose checksum does not match is an error, as in Zarr, and
so is an index entry that points past the end of the file (where Zarr 3.1 returns fill
values). Stored blocks come back read-only (views of the decoded bytes).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from typing import Any

import numpy as np

from streamq.durable import array_folder, chunk_files
from streamq.errors import StreamQError
from streamq.fs import Location

__all__ = ["LocalShards"]

_EMPTY = 2**64 - 1  # offset and length of an inner chunk that has no bytes
_UNSUPPORTED = object()  # (None is a codec here: the raw bytes)
_SCRATCH = threading.local()  # each thread's buffers for LocalShards.read(scratch=True)


def _scratch(name: str, size: int) -> np.ndarray:
    """This thread's reusable byte buffer ``name`` of at least ``size`` bytes (a view of
    exactly ``size``), grown when too small."""
    buf = getattr(_SCRATCH, name, None)
    if buf is None or len(buf) < size:
        buf = np.empty(size, np.uint8)
        setattr(_SCRATCH, name, buf)
    return buf[:size]


def _numcodecs(codecs: list[Any]) -> Any:
    """The numcodecs codec doing what Zarr's ``codecs`` (after ``bytes``) do, as Zarr makes it
    (``zarr.codecs.blosc``, ``zarr.codecs.zstd``): None for none, else
    :data:`_UNSUPPORTED`."""
    import numcodecs
    from zarr.codecs import BloscCodec, ZstdCodec

    if not codecs:
        return None
    c = codecs[0]
    if len(codecs) == 1 and isinstance(c, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[c.shuffle.value]
        config = {"cname": c.cname.value, "clevel": c.clevel, "shuffle": shuffle,
                  "blocksize": c.blocksize, "typesize": c.typesize}
        try:
            return numcodecs.Blosc(**config)
        except TypeError:  # numcodecs < 0.16 takes no typesize, nor does Zarr give it one
            config.pop("typesize")
            return numcodecs.Blosc(**config)
    if len(codecs) == 1 and isinstance(c, ZstdCodec):
        return numcodecs.Zstd(level=c.level, checksum=c.checksum)
    return _UNSUPPORTED


class LocalShards:
    """Block reads and whole-shard writes of one local sharded array (see the module)."""

    def __init__(self, root: str, name: str, arr: Any, codec: Any) -> None:
        self.root, self.name, self.arr = root, name, arr
        self.chunk = int(arr.metadata.codecs[0].chunk_shape[0])
        self.per_shard = int(arr.shards[0]) // self.chunk
        self.rows = int(arr.shape[0])
        self.row_shape = tuple(int(n) for n in arr.shape[1:])
        self.dtype = np.dtype(arr.dtype).newbyteorder("<")
        self._row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self.fill = arr.metadata.fill_value
        self._codec = codec  # numcodecs codec, or None for raw bytes
        self._index_bytes = 16 * self.per_shard + 4

    @classmethod
    def of(cls, store: Location, name: str, arr: Any) -> LocalShards | None:
        """The shards of array ``name`` (opened as ``arr``) of ``store``, or None when the
        store is not a local folder or the array's layout is not one this module reads and
        writes."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation

        if not store.is_local or not hasattr(os, "pread"):  # (no pread on Windows)
            return None
        root = store.url
        if not os.path.isfile(os.path.join(array_folder(root, name), "zarr.json")):
            return None  # not where this array lives: no guessing at its files
        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or arr.ndim not in (1, 2):
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
        dtype = np.dtype(arr.dtype)
        if (not isinstance(first, BytesCodec) or dtype.kind not in "ui" or dtype.itemsize > 2
                or (dtype.itemsize > 1 and (first.endian is None
                                            or first.endian.value != "little"))):
            return None
        codec = _numcodecs(rest)
        return None if codec is _UNSUPPORTED else cls(root, name, arr, codec)

    def _path(self, shard: int) -> str:
        row = shard * self.per_shard * self.chunk
        return chunk_files(self.root, self.name, self.arr, row, row + 1)[0]

    def write(self, lo: int, hi: int, data: np.ndarray) -> bool:
        """Write rows ``[lo, hi)`` (``data``) as whole shard files, each the file Zarr would
        write (every inner chunk stored, fill values or not); False, with nothing written,
        when ``[lo, hi)`` is not whole shards (the array's last may be short). As Zarr's
        local store does, each file is written under a temporary name and renamed over the
        shard (a reader sees the old file or the new one, whole); the caller makes the files
        durable and vouches for them by a record.

        Blosc compresses on one thread, as in Zarr: numcodecs would use several when called
        from the main thread, in an order that varies from call to call, but importing
        ``zarr.codecs`` (which :meth:`of` does) turns that off for the process
        (``numcodecs.blosc.use_threads = False``)."""
        rows = self.per_shard * self.chunk
        if not (0 <= lo < hi <= self.rows) or lo % rows or (hi % rows and hi != self.rows):
            return False
        data = np.asarray(data)
        if data.shape != (hi - lo, *self.row_shape):
            raise ValueError(f"{self.name}: {data.shape} rows given for rows {lo}..{hi}")
        data = np.ascontiguousarray(data, dtype=self.dtype)
        for s0 in range(lo, hi, rows):
            self._write_shard(s0 // rows, data[s0 - lo:min(s0 + rows, hi) - lo])
        return True

    def _write_shard(self, shard: int, rows: np.ndarray) -> None:
        import google_crc32c

        index = np.full((self.per_shard, 2), _EMPTY, dtype="<u8")
        parts, offset = [], 0
        for j in range(-(-len(rows) // self.chunk)):
            block = rows[j * self.chunk:(j + 1) * self.chunk]
            if len(block) < self.chunk:  # the array's last: padded with the fill value
                block = np.concatenate([block, np.full((self.chunk - len(block), *self.row_shape),
                                                       self.fill, dtype=self.dtype)])
            raw = block.reshape(-1).view(np.uint8)
            enc = bytes(raw) if self._codec is None else self._codec.encode(raw)
            parts.append(enc)
            index[j] = (offset, len(enc))
            offset += len(enc)
        table = index.tobytes()
        parts.append(table + np.array(google_crc32c.value(table), dtype="<u4").tobytes())
        path = self._path(shard)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as f:
                f.writelines(parts)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def read(self, c: int, scratch: bool = False) -> np.ndarray:
        """The rows of block ``c`` (fewer in the array's last block), as Zarr returns them.

        ``scratch``: read and decode into buffers this thread keeps for its next reads, and
        return a view of them, valid until this thread's next ``read`` with ``scratch`` (for
        a caller that takes a few rows of each block: a sampler reading 64 blocks a draw
        otherwise touches ~50 MB of new memory per draw)."""
        lo, hi = c * self.chunk, min((c + 1) * self.chunk, self.rows)
        if not 0 <= lo < hi:
            raise IndexError(f"block {c} is outside {self.name} ({self.rows} rows)")
        shard, pos = divmod(c, self.per_shard)
        path = self._path(shard)
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
            if not scratch or not hasattr(os, "preadv"):
                data: Any = os.pread(fd, length, offset)
                got = len(data)
            else:
                data = _scratch("raw", length)
                got = os.preadv(fd, [data], offset)
        finally:
            os.close(fd)
        if got != length:
            raise StreamQError(f"{path}: shard file ends inside inner chunk {pos} "
                               f"(expected {length} bytes at offset {offset})")
        if self._codec is None:
            out = np.frombuffer(data, dtype=self.dtype)
        else:
            into = _scratch("block", self.chunk * self._row_bytes) if scratch else None
            out = np.frombuffer(self._codec.decode(data, out=into), dtype=self.dtype)
        return out.reshape(-1, *self.row_shape)[: hi - lo]

    def _entry(self, raw: bytes, path: str, pos: int) -> tuple[int, int]:
        import google_crc32c

        index, crc = raw[:-4], raw[-4:]
        if (len(raw) != self._index_bytes
                or np.array(google_crc32c.value(index), dtype="<u4").tobytes() != crc):
            raise StreamQError(f"{path}: the shard index's checksum does not match (a torn or "
                               "foreign file)")
        entries = np.frombuffer(index, dtype="<u8").reshape(self.per_shard, 2)
        return int(entries[pos, 0]), int(entries[pos, 1])

    def _filled(self, n: int) -> np.ndarray:
        return np.full((n, *self.row_shape), self.fill, dtype=self.dtype)
