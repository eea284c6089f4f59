"""Reading one image file: its header (size, mode) and its pixels as RGB uint8.

The conversion rules (documented in ``docs/store-format.md``):

* EXIF orientation is applied first, so stored images are upright.
* ``1``, ``L``, ``P`` (opaque), ``RGB``, ``CMYK``, ``YCbCr``: Pillow's ``convert("RGB")``.
  CMYK uses Pillow's plain formula (no ICC colour management).
* 16-bit data (``I;16*``, ``I``, 16-bit RGB/RGBA PNG and TIFF) is *scaled*, not
  truncated: ``v8 = round(v16 * 255 / 65535)``. Pillow reads 16-bit RGB files as 8-bit
  by dropping the low byte, so those files are decoded with ``pypng`` / ``tifffile``.
* Anything with transparency (``LA``, ``PA``, ``RGBA``, ``P`` or ``L``/``RGB`` with a
  transparency key) is composited on ``background`` by :func:`decode_rgb`:
  ``out = (c * a + bg * (255 - a) + 127) // 255`` per channel. :func:`decode_rgba` keeps
  the alpha instead: an image with any pixel whose alpha is below 255 gives its colours
  *premultiplied* by alpha (the same formula with a black background) and its alpha plane;
  an image whose every pixel is opaque gives exactly what :func:`decode_rgb` gives.
* GIF, TIFF and other multi-frame files: the first frame.
* Float images (mode ``F``) are skipped with a reason: their value range is unknown.

A file that cannot be used is a *bad input*: the functions return the reason as a string.
An error of the machine rather than of the file (EIO, EMFILE, ENOSPC, ESTALE, EAGAIN,
``MemoryError``..., see :func:`streamq.faults.is_transient`) is raised instead, for the
caller to retry: it says nothing about the file.

An image is given as a path, or -- for sources read over a network (:mod:`streamq.ingest.sources`)
-- as the file's bytes or an open binary file object with a ``size`` attribute.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from streamq.faults import is_transient

__all__ = ["Header", "ImageSource", "composite", "decode_rgb", "decode_rgba", "openable",
           "premultiply", "read_header", "scale16"]

#: A path, the file's bytes, or an open binary file object with a ``size`` attribute.
ImageSource = str | bytes | IO[bytes]

#: Held while Pillow's process-wide pixel limit is ours (threads of one worker open images)
_PIL_LIMIT = threading.Lock()
_TRANSPOSING = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
_EXIF_TRANSPOSE = {  # the same table as PIL.ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Header:
    """What the file header says, before any pixel is decoded."""

    width: int  # after EXIF orientation
    height: int
    mode: str  # Pillow's mode of the file ("RGB", "P", "I;16", ...), "RGB;16" for 16-bit RGB
    alpha: bool = False  # the file may hold transparent pixels (an alpha band or a colour key)
    # its rows can only be read in order from the first (a PNG over max_pixels read in strips):
    # one write task owns every chunk of it (streamq.ingest.plan)
    sequential: bool = False


class _Skip(Exception):
    """Internal: the file is not usable; the message is the recorded reason."""


def _size(src: ImageSource) -> int:
    if isinstance(src, str):
        return os.path.getsize(src)
    if isinstance(src, bytes | bytearray | memoryview):
        return len(src)
    # IO[bytes] has no size; the file objects given here (fsspec files) carry one
    return int(src.size)  # type: ignore[attr-defined]


def openable(src: ImageSource) -> str | IO[bytes]:
    """What Pillow, pypng and tifffile open: the path, or a file object at its start."""
    if isinstance(src, str):
        return src
    if isinstance(src, bytes | bytearray | memoryview):
        return io.BytesIO(src)
    src.seek(0)
    return src


def _open(path: ImageSource, max_pixels: int) -> Image.Image:
    try:
        size = _size(path)
    except OSError as exc:
        if is_transient(exc):
            raise
        raise _Skip(f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise _Skip("empty file (0 bytes)")
    try:
        with warnings.catch_warnings(), _PIL_LIMIT:
            warnings.simplefilter("ignore")
            # Pillow's limit is process-wide: ours for this open only, the caller's kept
            old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                return Image.open(openable(path))
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except Image.DecompressionBombError:
        raise _Skip(f"image is larger than the limit max_pixels={max_pixels}") from None
    except UnidentifiedImageError:
        raise _Skip("not an image Pillow can identify") from None
    except OSError as exc:
        if is_transient(exc):
            raise
        raise _Skip(f"cannot open image: {exc}") from None


def _is_rgb16(im: Image.Image) -> bool:
    tile = getattr(im, "tile", None) or []
    if im.mode not in ("RGB", "RGBA") or not tile:
        return False
    args = tile[0].args if hasattr(tile[0], "args") else tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: Pillow ignores it when decoding too
        return 1


def _header_of(im: Image.Image, max_pixels: int) -> Header:
    rgb16 = _is_rgb16(im)  # before anything loads the image and drops its tile list
    w, h = im.size
    if w * h > max_pixels:
        raise _Skip(f"image has {w * h} pixels, over the limit max_pixels={max_pixels}")
    if w == 0 or h == 0:
        raise _Skip(f"image has no pixels ({w}x{h})")
    if _orientation(im) in _TRANSPOSING:
        w, h = h, w
    mode = im.mode + ";16" if rgb16 else im.mode
    if mode == "F":
        raise _Skip("floating-point image (mode F): value range unknown, convert it first")
    alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
    return Header(width=w, height=h, mode=mode, alpha=alpha)


def read_header(path: ImageSource, max_pixels: int) -> Header | str:
    """Return the image's :class:`Header`, or a one-line reason why it cannot be used.

    Raises the error of a transient fault (see the module docstring)."""
    try:
        with _open(path, max_pixels) as im:
            return _header_of(im, max_pixels)
    except _Skip as exc:
        return str(exc)
    except Exception as exc:  # a decoder error is a property of the file, not of streamq
        if is_transient(exc):
            raise
        return f"cannot read image header: {type(exc).__name__}: {exc}"


def scale16(a: np.ndarray) -> np.ndarray:
    """16-bit samples as uint8, rounded to the nearest of 0..255."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """``(..., 4)`` uint8 RGBA over the opaque ``background``: ``(..., 3)`` uint8, rounded."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    bg = np.asarray(background, dtype=np.uint32)
    return ((rgb * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def _read_rgb16(path: ImageSource, im: Image.Image) -> np.ndarray:
    """Full 16-bit RGB(A) samples of a PNG or TIFF that Pillow would truncate."""
    if im.format == "PNG":
        import png

        stream = openable(path)
        with open(stream, "rb") if isinstance(stream, str) else nullcontext(stream) as fh:
            w, h, rows, info = png.Reader(file=fh).asDirect()
            data = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
        data = data.reshape(h, w, info["planes"])
        if info.get("bitdepth", 16) != 16:
            raise _Skip(f"unexpected PNG bit depth {info.get('bitdepth')}")
        if info["planes"] == 2:  # grey + alpha, which Pillow opens as RGBA: grey on R, G, B
            data = data[..., [0, 0, 0, 1]]
        return data
    if im.format == "TIFF":
        import tifffile

        data = tifffile.imread(openable(path), key=0)
        if data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (3, 4):
            raise _Skip(f"unexpected 16-bit TIFF layout {data.dtype} {data.shape}")
        return data
    raise _Skip(f"16-bit RGB {im.format} files are not supported")


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """The colours of ``(..., 4)`` uint8 RGBA premultiplied by alpha, as uint8 RGB:
    ``(c * a + 127) // 255`` (the composite on black)."""
    return composite(rgba, (0, 0, 0))


def _to_array(path: ImageSource, im: Image.Image, header: Header) -> np.ndarray:
    """``(H, W, 3)`` RGB, or ``(H, W, 4)`` RGBA (straight, not premultiplied) for an image
    that may hold transparent pixels."""
    mode = im.mode
    # the table of ImageOps.exif_transpose, which also copies an image that is upright
    method = _EXIF_TRANSPOSE.get(_orientation(im))
    if header.mode in ("RGB;16", "RGBA;16"):
        data = scale16(_read_rgb16(path, im))
        if method is not None:
            data = np.asarray(Image.fromarray(data).transpose(method))
        return data
    if method is not None:
        im = im.transpose(method)
    if mode.startswith("I;16") or mode == "I":
        return np.repeat(scale16(np.asarray(im))[..., None], 3, axis=2)
    has_key = "transparency" in im.info
    if mode in _ALPHA_MODES or has_key:
        return np.asarray(im.convert("RGBA"))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _decode(path: ImageSource, max_pixels: int) -> np.ndarray:
    with _open(path, max_pixels) as im:
        header = _header_of(im, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        return _to_array(path, im, header)


def _decoded(path: ImageSource, max_pixels: int) -> np.ndarray | str:
    """:func:`_decode`, or the reason the file cannot be used; transient faults raised."""
    try:
        return _decode(path, max_pixels)
    except _Skip as exc:
        return str(exc)
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"cannot decode image: {type(exc).__name__}: {exc}"


def decode_rgb(path: ImageSource, max_pixels: int,
               background: tuple[int, int, int]) -> np.ndarray | str:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 array, or return the reason it cannot be
    (transparency composited on ``background``).

    Raises the error of a transient fault (see the module docstring)."""
    data = _decoded(path, max_pixels)
    if isinstance(data, str):
        return data
    rgb = composite(data, background) if data.shape[2] == 4 else data
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def decode_rgba(path: ImageSource, max_pixels: int
                ) -> tuple[np.ndarray, np.ndarray | None] | str:
    """Decode ``path`` keeping its alpha: ``(rgb, alpha)``, or the reason it cannot be.

    For an image with any pixel whose alpha is below 255, ``rgb`` is ``(H, W, 3)`` uint8 of
    colours premultiplied by alpha (:func:`premultiply`) and ``alpha`` its ``(H, W)`` uint8
    alpha; for any other image ``alpha`` is None and ``rgb`` is what :func:`decode_rgb`
    gives. Raises the error of a transient fault (see the module docstring)."""
    data = _decoded(path, max_pixels)
    if isinstance(data, str):
        return data
    alpha = None
    if data.shape[2] == 4:
        if int(data[..., 3].min()) < 255:
            alpha = np.ascontiguousarray(data[..., 3], dtype=np.uint8)
        rgb = premultiply(data)  # all opaque: the colours themselves, as decode_rgb's
    else:
        rgb = data
    return np.ascontiguousarray(rgb, dtype=np.uint8), alpha
