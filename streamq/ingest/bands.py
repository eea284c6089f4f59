"""Images too large to decode whole, read in bands of rows.

An image with more pixels than ``ingest.max_pixels`` is skipped, as Pillow decodes a file
whole -- unless it is a TIFF or BigTIFF (tiled or in strips) and ``ingest.large`` is
``bands`` (the default). Such an image is then planned like any other (its place in the flat
``pixels`` array), and each write task reads, through tifffile's Zarr interface to the first
page, only the rows of the image that fall into the shards it owns, a band of at most
:data:`BAND_PIXELS` pixels at a time. No process ever holds the whole image.

The pixels are those a whole decode gives (:mod:`streamq.decode`): 8-bit RGB as stored,
16-bit samples scaled by ``round(v * 255 / 65535)``, grey repeated on three channels, and
an alpha channel (unassociated alpha only) kept premultiplied or composited on the
background as for any other image. A TIFF whose layout Pillow would convert otherwise (an
orientation tag other than 1, planar samples, palette, CMYK, YCbCr, associated alpha, float
samples...) stays skipped, with the reason saying so. PNG and JPEG files over the limit stay
skipped: Pillow decodes them whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from streamq.decode import Header, ImageSource, composite, openable, premultiply, scale16
from streamq.faults import is_transient

__all__ = ["BAND_PIXELS", "LARGE", "band_header", "is_tiff", "over_limit", "read_rows"]

#: What ``ingest.large`` may be.
LARGE = ("bands", "skip")
#: Pixels of image per read of a banded image (rows: at least one).
BAND_PIXELS = 1 << 22
_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
_PHOTOMETRIC = {1: "L", 2: "RGB"}  # MINISBLACK, RGB
_UNASSALPHA = 2


def is_tiff(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a TIFF or BigTIFF."""
    return head[:4] in _MAGIC


def over_limit(reason: str) -> bool:
    """Whether a skip reason of :mod:`streamq.decode` says the image is over ``max_pixels``."""
    return "max_pixels=" in reason


@contextlib.contextmanager
def _page(src: ImageSource) -> Iterator[Any]:
    import tifffile

    with tifffile.TiffFile(openable(src)) as tf:
        yield tf.pages[0]


def _layout(page: Any) -> str:
    """The mode of a TIFF page read in bands (``RGB``, ``RGBA;16``, ...), or the reason it
    cannot be."""
    photometric = int(page.photometric)
    samples = int(page.samplesperpixel)
    extra = tuple(int(e) for e in page.extrasamples)
    orientation = page.tags.get(274)
    if orientation is not None and int(orientation.value) != 1:
        return f"orientation {int(orientation.value)}"
    if photometric not in _PHOTOMETRIC:
        return f"photometric {photometric}"
    if samples > 1 and int(page.planarconfig) != 1:
        return "planar samples"
    if np.dtype(page.dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return f"samples of {np.dtype(page.dtype)}"
    base = _PHOTOMETRIC[photometric]
    if samples == len(base) + 1 and extra == (_UNASSALPHA,):
        mode = base + "A"
    elif samples == len(base) and not extra:
        mode = base
    else:
        return f"{samples} samples per pixel, extra samples {list(extra)}"
    if mode == "LA":
        return "grey with alpha"
    if np.dtype(page.dtype) == np.uint16:
        return "I;16" if mode == "L" else mode + ";16"
    return mode


def band_header(src: ImageSource, reason: str) -> Header | str:
    """The :class:`Header` of a TIFF to read in bands, or ``reason`` (why it was skipped)
    when the file is not a TIFF, and ``reason`` with why not when its layout cannot be.

    Raises the error of a transient fault."""
    try:
        stream = openable(src)
        if isinstance(stream, str):
            with open(stream, "rb") as fh:
                head = fh.read(4)
        else:
            head = stream.read(4)
        if not is_tiff(head):
            return reason
        with _page(src) as page:
            layout = _layout(page)
            h, w = int(page.imagelength), int(page.imagewidth)
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"{reason}; cannot read it in bands: {type(exc).__name__}: {exc}"
    if layout not in ("L", "I;16", "RGB", "RGBA", "RGB;16", "RGBA;16"):
        return f"{reason}; a TIFF with {layout} cannot be read in bands"
    return Header(width=w, height=h, mode=layout, alpha=layout.startswith("RGBA"))


def _convert(data: np.ndarray, keep_alpha: bool, background: tuple[int, int, int]
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows as decoded by :mod:`streamq.decode`: RGB uint8 and, for an alpha kept, its plane."""
    if data.dtype == np.uint16:
        data = scale16(data)
    if data.ndim == 2:
        data = np.repeat(data[..., None], 3, axis=2)
    if data.shape[2] == 4:
        if keep_alpha:
            return premultiply(data), np.ascontiguousarray(data[..., 3])
        return composite(data, background), None
    return np.ascontiguousarray(data, dtype=np.uint8), None


def read_rows(src: ImageSource, r0: int, r1: int, keep_alpha: bool,
              background: tuple[int, int, int], band_pixels: int = BAND_PIXELS
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Rows ``[r0, r1)`` of the TIFF ``src`` as ``(first row, (n, W, 3) RGB uint8, alpha or
    None)`` bands of at most ``band_pixels`` pixels (at least one row each), read through
    tifffile's Zarr store of its first page: only the tiles or strips of those rows."""
    import zarr

    with _page(src) as page:
        arr = zarr.open(page.aszarr(), mode="r")
        assert isinstance(arr, zarr.Array), "the Zarr store of one TIFF page holds one array"
        w = int(page.imagewidth)
        step = max(1, band_pixels // max(w, 1))
        for top in range(r0, r1, step):
            rgb, alpha = _convert(np.asarray(arr[top:min(top + step, r1)]), keep_alpha,
                                  background)
            yield top, rgb, alpha


@contextlib.contextmanager
def opened(source: Any, rel: str) -> Iterator[ImageSource]:
    """The image ``rel`` of ``source`` (a :class:`streamq.ingest.sources.SourceRoot`) to read in
    bands: its path, or for a URL source a file object reading ranges of the object."""
    path = source.path(rel)
    if source.is_local:
        yield path
        return
    from streamq.ingest.sources import HEADER_BLOCK, filesystem

    fs, target = filesystem(path, source.options)
    with fs.open(target, "rb", block_size=HEADER_BLOCK) as f:
        yield f
