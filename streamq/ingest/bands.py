"""Images read in bands of rows: TIFFs and PNGs too large to decode whole, and Zarr images.

One seam for every image that is never decoded whole: a write task opens the image
(:func:`opened`, a :class:`Rows`) and reads only the rows that fall into the shards it owns,
a band of at most :data:`BAND_PIXELS` pixels at a time (:func:`read_rows`). No process ever
holds the whole image. Three kinds of image come this way:

- **Zarr and OME-Zarr images** (a directory named ``*.zarr``, :mod:`streamq.ingest.zarr_images`),
  whatever their size: the header from the metadata (:func:`header_of`), the rows from the
  chunks that hold them.
- **TIFFs over max_pixels.** An image with more pixels than ``ingest.max_pixels`` is skipped,
  as Pillow decodes a file whole -- unless it is a TIFF or BigTIFF (tiled or in strips) and
  ``ingest.large`` is ``bands`` (the default). Such an image is then planned like any other
  (its place in the flat ``pixels`` array), its header read by :func:`band_header` and its
  rows through tifffile's Zarr interface to the first page (:func:`tiff_rows`).
- **PNGs over max_pixels**, likewise, but read in strips from the first row
  (:func:`png_strips`, :mod:`streamq.ingest.png_rows`): a PNG is one zlib stream whose row
  filters refer to the row above, so a row deep in the image costs every row above it. Its
  header is ``sequential``: the plan gives one task every chunk it touches
  (:func:`streamq.ingest.plan.plan_tasks`), which reads it once, in order. An interlaced PNG
  cannot be read so (no row is whole before the last pass) and stays skipped, saying why.

The pixels are those a whole decode gives (:mod:`streamq.decode`): 8-bit RGB as stored,
16-bit samples scaled by ``round(v * 255 / 65535)``, grey repeated on three channels, and
an alpha channel (unassociated alpha only) kept premultiplied or composited on the
background as for any other image. A TIFF whose layout Pillow would convert otherwise (an
orientation tag other than 1, planar samples, palette, CMYK, YCbCr, associated alpha, float
samples...) stays skipped, with the reason saying so. JPEG files over the limit stay
skipped: Pillow decodes them whole, and has no strip decoding of a JPEG.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamq.decode import Header, ImageSource, composite, openable, premultiply, scale16
from streamq.faults import is_transient
from streamq.ingest import png_rows, zarr_images

__all__ = ["BAND_PIXELS", "LARGE", "Rows", "band_header", "header_of", "is_banded", "is_tiff",
           "opened", "over_limit", "png_strips", "read_rows", "tiff_rows"]

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
    """The :class:`Header` of a TIFF to read in bands or of a PNG to read in strips
    (``sequential``), or ``reason`` (why it was skipped) when the file is neither, and
    ``reason`` with why not when its layout cannot be.

    Raises the error of a transient fault."""
    try:
        stream = openable(src)
        with open(stream, "rb") if isinstance(stream, str) else contextlib.nullcontext(stream) as fh:
            head = fh.read(8)
            if png_rows.is_png(head):
                fh.seek(0)
                png = png_rows.read_layout(fh)
                if isinstance(png, str):
                    return f"{reason}; {png}"
                return Header(width=png.width, height=png.height, mode=png.mode,
                              alpha=png.alpha, sequential=True)
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


def is_banded(rel: str, height: int, width: int, max_pixels: int) -> bool:
    """Whether the planned image ``rel`` (a stored name) is read in bands by the write tasks:
    a Zarr image always, any other over ``max_pixels`` (the scan planned it only so)."""
    return zarr_images.is_zarr_name(rel) or height * width > max_pixels


def header_of(source: Any, rel: str, max_pixels: int, large: str) -> Header | str:
    """The :class:`Header` of the Zarr image ``rel`` of ``source`` (a
    :class:`streamq.ingest.sources.SourceRoot`) from its metadata, or the reason it cannot be
    ingested (also: over ``max_pixels`` with ``large`` other than ``bands``).

    Raises the error of a transient fault."""
    try:
        image = zarr_images.open_image(source.path(rel), None if source.is_local
                                       else source.options)
    except Exception as exc:
        if is_transient(exc):
            raise
        return f"cannot read Zarr image: {type(exc).__name__}: {exc}"
    if isinstance(image, str):
        return image
    if large != "bands" and image.height * image.width > max_pixels:
        return f"image is larger than the limit max_pixels={max_pixels}"
    return Header(width=image.width, height=image.height, mode=image.mode,
                  alpha=image.channels == 4)


@dataclass(frozen=True)
class Rows:
    """An opened image read in bands: its ``width``, the rows of one of its tiles, strips or
    chunks (``block``: bands aligned to it read each once) and ``read(top, bottom)``, its rows
    as stored, ``(n, W)`` or ``(n, W, C)`` uint8 or uint16."""

    width: int
    block: int
    read: Callable[[int, int], np.ndarray]


@contextlib.contextmanager
def tiff_rows(src: ImageSource) -> Iterator[Rows]:
    """The rows of the TIFF ``src``, read through tifffile's Zarr store of its first page:
    only the tiles or strips of the rows read."""
    import zarr

    with _page(src) as page:
        arr = zarr.open(page.aszarr(), mode="r")
        assert isinstance(arr, zarr.Array), "the Zarr store of one TIFF page holds one array"
        block = int(page.tilelength if page.is_tiled else page.rowsperstrip or 1)
        yield Rows(int(page.imagewidth), max(1, block),
                   lambda top, bottom: np.asarray(arr[top:bottom]))


def zarr_rows(path: str, options: Any = None) -> Rows:
    """The rows of the Zarr image at ``path`` (:mod:`streamq.ingest.zarr_images`); a
    ValueError saying why when it cannot be read (it changed since the scan)."""
    image = zarr_images.open_image(path, options)
    if isinstance(image, str):
        raise ValueError(image)
    return Rows(image.width, image.chunk_rows, image.rows)


def read_rows(rows: Rows, r0: int, r1: int, keep_alpha: bool,
              background: tuple[int, int, int], band_pixels: int | None = None
              ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Rows ``[r0, r1)`` of the image ``rows`` as ``(first row, (n, W, 3) RGB uint8, alpha
    or None)`` bands of at most ``band_pixels`` pixels (default :data:`BAND_PIXELS`, read at
    the call) and at least one row each, converted as
    :mod:`streamq.decode` converts a whole image. A band is a whole number of the image's
    blocks when a block fits in it, on the grid of the band height."""
    step = max(1, (band_pixels or BAND_PIXELS) // max(rows.width, 1))
    if step >= rows.block > 1:
        step -= step % rows.block
    top = r0
    while top < r1:
        bottom = min(r1, (top // step + 1) * step)
        rgb, alpha = _convert(np.asarray(rows.read(top, bottom)), keep_alpha, background)
        yield top, rgb, alpha
        top = bottom


@contextlib.contextmanager
def png_strips(src: ImageSource) -> Iterator[Rows]:
    """The rows of the PNG ``src`` (:class:`streamq.ingest.png_rows.PngRows`): read forward
    only, each row once; a read of rows behind those read is a ValueError."""
    stream = openable(src)
    with open(stream, "rb") if isinstance(stream, str) else contextlib.nullcontext(stream) as fh:
        png = png_rows.PngRows(fh)
        yield Rows(png.width, 1, png.read)


@contextlib.contextmanager
def opened(source: Any, rel: str) -> Iterator[Rows]:
    """The image ``rel`` of ``source`` (a :class:`streamq.ingest.sources.SourceRoot`) to read in
    bands: a Zarr image through zarr (a URL with the source's options), a TIFF or a PNG (read
    forward, :func:`png_strips`) from its path or, for a URL source, a file object reading
    ranges of the object."""
    path = source.path(rel)
    if zarr_images.is_zarr_name(rel):
        yield zarr_rows(path, None if source.is_local else source.options)
        return
    with tiff_stream(source, rel) as src:
        stream = openable(src)
        with open(stream, "rb") if isinstance(stream, str) else contextlib.nullcontext(stream) as fh:
            head = fh.read(8)
        with (png_strips if png_rows.is_png(head) else tiff_rows)(src) as rows:
            yield rows


@contextlib.contextmanager
def tiff_stream(source: Any, rel: str) -> Iterator[ImageSource]:
    """The TIFF ``rel`` of ``source``: its path, or for a URL source a file object reading
    ranges of the object."""
    path = source.path(rel)
    if source.is_local:
        yield path
        return
    from streamq.ingest.sources import HEADER_BLOCK, filesystem

    fs, target = filesystem(path, source.options)
    with fs.open(target, "rb", block_size=HEADER_BLOCK) as f:
        yield f
