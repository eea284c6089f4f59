"""A PNG read row by row from its first row: the strips of a PNG over ``max_pixels``.

Pillow decodes a PNG whole, and pypng reads it row by row but in pure Python (0.7 Mpx/s on
a photo, against Pillow's 17 Mpx/s whole decode: ``docs/benchmarks.md``). This reader parses
the chunks itself, inflates the ``IDAT`` stream with :func:`zlib.decompressobj` (bounded
output: never more than the rows asked for) and undoes the row filters in a numba kernel
(:func:`_unfilter`), so a band of rows costs about what Pillow spends on it.

A PNG is one zlib stream whose row filters refer to the row above: its rows can only be read
in order, from the first one (:class:`PngRows` reads forward; rows skipped are still
decoded). An Adam7-interlaced PNG stores seven sub-images one after the other, so none of
its rows is whole before the last pass: it cannot be read in strips at all
(:func:`read_layout` says so).

The rows are given as :mod:`streamq.decode` sees them after Pillow's decode, before its
common conversions (:func:`rows_as_decoded`): grey 8-bit as ``(n, W)``, 16-bit samples as
uint16 (scaled to 8 bits later, as a whole decode scales them), a palette looked up, a
``tRNS`` colour key or palette alpha turned into an alpha channel. Bit depths 1, 2 and 4
are unpacked as Pillow does (grey scaled to 0..255, palette indices as they are).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numba
import numpy as np

__all__ = ["MAGIC", "PngLayout", "PngRows", "is_png", "read_layout", "rows_as_decoded"]

MAGIC = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_READ = 1 << 18  # bytes of IDAT read at a time
_EXIF_ORIENTATION = 0x0112


def is_png(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a PNG."""
    return head[:8] == MAGIC


@dataclass(frozen=True)
class PngLayout:
    """What a PNG's chunks before its pixels say: size, sample layout, palette and
    transparency, and the EXIF orientation of an ``eXIf`` chunk (1 without one)."""

    width: int
    height: int
    depth: int
    color_type: int
    interlace: int
    palette: bytes | None
    trns: bytes | None
    orientation: int

    @property
    def mode(self) -> str:
        """The mode a whole decode gives the image (:class:`streamq.decode.Header`)."""
        if self.color_type == 3:
            return "P"
        if self.color_type == 0:
            return {1: "1", 16: "I;16"}.get(self.depth, "L")
        base = {2: "RGB", 4: "LA", 6: "RGBA"}[self.color_type]
        return base + ";16" if self.depth == 16 and base != "LA" else base

    @property
    def alpha(self) -> bool:
        """Whether the image may hold transparent pixels (an alpha channel or a tRNS key)."""
        return self.color_type in (4, 6) or self.trns is not None

    @property
    def stride(self) -> int:
        """Bytes of one row, its filter byte left out."""
        return -(-self.width * _CHANNELS[self.color_type] * self.depth // 8)

    @property
    def bpp(self) -> int:
        """Bytes per whole pixel (at least 1): how far back the row filters look."""
        return max(1, _CHANNELS[self.color_type] * self.depth // 8)


def _chunk(fh: IO[bytes]) -> tuple[bytes, int]:
    """The type and data length of the chunk at the position of ``fh``."""
    head = fh.read(8)
    if len(head) < 8:
        raise ValueError("truncated PNG: a chunk header is missing")
    length, kind = struct.unpack(">I4s", head)
    return kind, length


def _orientation(data: bytes) -> int:
    from PIL import Image

    exif = Image.Exif()
    exif.load(data if data.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + data)
    return int(exif.get(_EXIF_ORIENTATION, 1))


def read_layout(fh: IO[bytes]) -> PngLayout | str:
    """The layout of the PNG ``fh`` (at its start), leaving ``fh`` at the header of its first
    ``IDAT`` chunk; or why its rows cannot be read in strips (interlaced, a bit depth or
    layout that is not valid PNG). A file that is not a PNG raises ValueError."""
    if fh.read(8) != MAGIC:
        raise ValueError("not a PNG file")
    kind, length = _chunk(fh)
    if kind != b"IHDR" or length != 13:
        raise ValueError("PNG without an IHDR chunk first")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", fh.read(13))
    fh.read(4)  # CRC
    palette = trns = None
    orientation = 1
    while True:
        start = fh.tell()
        kind, length = _chunk(fh)
        if kind == b"IDAT":
            fh.seek(start)
            break
        if kind == b"IEND":
            raise ValueError("PNG without image data (no IDAT chunk)")
        if kind in (b"PLTE", b"tRNS", b"eXIf"):
            data = fh.read(length)
            if kind == b"PLTE":
                palette = data
            elif kind == b"tRNS":
                trns = data
            else:
                orientation = _orientation(data)
            fh.read(4)
        else:
            fh.seek(length + 4, 1)
    if ctype not in _CHANNELS or depth not in _DEPTHS[ctype]:
        return f"colour type {ctype} at bit depth {depth} is not valid PNG"
    if interlace:
        return "an interlaced (Adam7) PNG cannot be read in strips: its rows are only whole " \
               "after the last pass"
    if ctype == 3 and not palette:
        return "a palette PNG without a PLTE chunk"
    if orientation != 1:
        return f"EXIF orientation {orientation}"
    if ctype == 0 and depth < 8 and trns is not None:
        return f"a {depth}-bit grey PNG with a transparent grey"
    return PngLayout(w, h, depth, ctype, interlace, palette, trns, orientation)


def _idat(fh: IO[bytes]) -> Iterator[bytes]:
    """The bytes of the consecutive ``IDAT`` chunks from the position of ``fh``, in pieces of
    at most :data:`_READ` bytes."""
    while True:
        kind, length = _chunk(fh)
        if kind != b"IDAT":
            return
        while length:
            piece = fh.read(min(length, _READ))
            if not piece:
                raise ValueError("truncated PNG: image data ends early")
            length -= len(piece)
            yield piece
        fh.read(4)  # CRC (the zlib stream carries its own checksum)


@numba.njit(nogil=True, cache=True)
def _unfilter(raw: np.ndarray, prev: np.ndarray, out: np.ndarray, bpp: int) -> int:  # pragma: no cover
    """Undo the PNG row filters of ``raw`` (``(n, 1 + stride)``: filter byte, filtered bytes)
    into ``out`` (``(n, stride)``), ``prev`` being the row above the first (zeros for the
    image's first row); return -1, or the index of a row with an unknown filter."""
    n, stride = out.shape
    for r in range(n):
        up = prev if r == 0 else out[r - 1]
        row = out[r]
        f = raw[r, 0]
        if f == 0:
            for i in range(stride):
                row[i] = raw[r, i + 1]
        elif f == 1:
            for i in range(min(bpp, stride)):
                row[i] = raw[r, i + 1]
            for i in range(bpp, stride):
                row[i] = (np.int32(raw[r, i + 1]) + np.int32(row[i - bpp])) & 0xFF
        elif f == 2:
            for i in range(stride):
                row[i] = (np.int32(raw[r, i + 1]) + np.int32(up[i])) & 0xFF
        elif f == 3:
            for i in range(min(bpp, stride)):
                row[i] = (raw[r, i + 1] + up[i] // 2) & 0xFF
            for i in range(bpp, stride):
                row[i] = (np.int32(raw[r, i + 1])
                          + (np.int32(row[i - bpp]) + np.int32(up[i])) // 2) & 0xFF
        elif f == 4:  # Paeth; for the first pixel the left and upper-left bytes are 0
            for i in range(min(bpp, stride)):
                row[i] = (raw[r, i + 1] + up[i]) & 0xFF
            for i in range(bpp, stride):
                a = np.int32(row[i - bpp])
                b = np.int32(up[i])
                c = np.int32(up[i - bpp])
                pa = abs(b - c)  # |p - a| with p = a + b - c
                pb = abs(a - c)
                pc = abs(a + b - 2 * c)
                if pa <= pb and pa <= pc:
                    pred = a
                elif pb <= pc:
                    pred = b
                else:
                    pred = c
                row[i] = (np.int32(raw[r, i + 1]) + pred) & 0xFF
        else:
            return r
    return -1


class PngRows:
    """The rows of a PNG, read forward from the first (:meth:`read`): a band of rows at a time
    held in memory, never the image. ``fh`` is at the start of the file."""

    def __init__(self, fh: IO[bytes]) -> None:
        layout = read_layout(fh)
        if isinstance(layout, str):
            raise ValueError(layout)
        self.layout = layout
        self.width, self.height = layout.width, layout.height
        self._data = _idat(fh)
        self._z = zlib.decompressobj()
        self._pending = b""  # compressed bytes not yet inflated
        self._prev = np.zeros(layout.stride, np.uint8)
        self.row = 0  # the next row to be decoded

    def _inflate(self, n: int) -> np.ndarray:
        """The next ``n`` rows, filter byte first, inflated (no more than they hold)."""
        need = n * (self.layout.stride + 1)
        out = bytearray()
        while len(out) < need:
            if not self._pending:
                self._pending = next(self._data, b"")
                if not self._pending:
                    raise ValueError(f"truncated PNG: image data ends before row {self.row + n}")
            out += self._z.decompress(self._pending, need - len(out))
            self._pending = self._z.unconsumed_tail
        return np.frombuffer(bytes(out), np.uint8).reshape(n, self.layout.stride + 1)

    def _next(self, n: int) -> np.ndarray:
        """The next ``n`` rows as bytes, unfiltered: ``(n, stride)`` uint8."""
        out = np.empty((n, self.layout.stride), np.uint8)
        if n == 0:
            return out
        bad = _unfilter(self._inflate(n), self._prev, out, self.layout.bpp)
        if bad >= 0:
            raise ValueError(f"PNG row {self.row + bad} has an unknown filter type")
        self._prev = out[-1].copy()
        self.row += n
        return out

    def read(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as :func:`rows_as_decoded` gives them; ``top`` at or after
        the rows read so far (rows between are decoded and dropped, a band at a time)."""
        if top < self.row:
            raise ValueError(f"PNG rows are read forward: row {top} is behind row {self.row}")
        if not 0 <= top <= bottom <= self.height:
            raise ValueError(f"rows [{top}, {bottom}) outside a PNG of {self.height} rows")
        band = max(1, bottom - top)  # rows skipped: decoded in bands of those asked for
        while self.row < top:
            self._next(min(band, top - self.row))
        return rows_as_decoded(self.layout, self._next(bottom - top))


def _samples(layout: PngLayout, data: np.ndarray) -> np.ndarray:
    """Unfiltered row bytes as ``(n, W, C)`` samples: uint8, or uint16 for 16-bit."""
    n = data.shape[0]
    c = _CHANNELS[layout.color_type]
    if layout.depth == 16:
        return data.view(">u2").astype(np.uint16).reshape(n, layout.width, c)
    if layout.depth == 8:
        return data.reshape(n, layout.width, c)
    per = 8 // layout.depth  # samples per byte, the first in the high bits
    shifts = np.arange(8 - layout.depth, -1, -layout.depth, dtype=np.uint8)
    vals = (data[..., None] >> shifts) & ((1 << layout.depth) - 1)
    return vals.reshape(n, data.shape[1] * per)[:, :layout.width, None].astype(np.uint8)


def _key(trns: bytes, n: int) -> np.ndarray:
    """The ``n`` samples of a tRNS colour key (16-bit big-endian each)."""
    return np.frombuffer(trns[:2 * n], ">u2").astype(np.int64)


def rows_as_decoded(layout: PngLayout, data: np.ndarray) -> np.ndarray:
    """Unfiltered rows of ``layout`` as Pillow's decode and :mod:`streamq.decode` leave them
    before their common conversions: ``(n, W)`` grey, ``(n, W, 3)`` RGB or ``(n, W, 4)``
    RGBA, uint8 or uint16 (16-bit samples, scaled later)."""
    s = _samples(layout, data)
    ct, trns = layout.color_type, layout.trns
    if ct == 3:
        pal = np.zeros((256, 4), np.uint8)
        pal[:, 3] = 255
        colors = np.frombuffer(layout.palette or b"", np.uint8)[:768].reshape(-1, 3)
        pal[:len(colors), :3] = colors
        if trns is None:
            return pal[s[..., 0], :3]
        alpha = np.frombuffer(trns, np.uint8)[:256]
        pal[:len(alpha), 3] = alpha
        return pal[s[..., 0]]
    if ct == 0:
        grey = s[..., 0]
        if layout.depth < 8:  # Pillow's "1", "L;2", "L;4": scaled to 0..255
            return (grey * (255 // ((1 << layout.depth) - 1))).astype(np.uint8)
        if trns is None or layout.depth == 16:  # a 16-bit grey key: not applied (I;16)
            return grey
        key = _key(trns, 1)[0]
        rgba = np.empty(grey.shape + (4,), np.uint8)
        rgba[..., :3] = grey[..., None]
        rgba[..., 3] = np.where(grey == key, 0, 255)
        return rgba
    if ct == 4:  # grey and alpha: as RGBA
        return np.concatenate([np.repeat(s[..., :1], 3, axis=2), s[..., 1:]], axis=2)
    if ct == 2 and trns is not None:  # an RGB colour key: opaque but for that colour
        full = np.iinfo(s.dtype).max
        alpha = np.where((s.astype(np.int64) == _key(trns, 3)).all(axis=2), 0, full)
        return np.concatenate([s, alpha[..., None].astype(s.dtype)], axis=2)
    return s
