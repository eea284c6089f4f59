"""One image over ``ingest.max_pixels`` as a tiled BigTIFF, written one row of tiles at a time.

Such an image was read in bands at ingest (:mod:`streamq.ingest.bands`) because no process
should hold it whole; Pillow encodes a PNG, JPEG or WebP whole, so the export writes it with
tifffile instead, from an iterator of label bands: each band is one row of tiles
(:func:`tile_shape`: at most about :data:`BAND_PIXELS` pixels, as ingest reads), turned
into colours and handed to tifffile tile by tile, so the file is never whole in memory either.

The file is always a BigTIFF (its size is not known before it is written, and a 179 Mpx RGB
image is past what a classic TIFF's 32-bit offsets may reach once compressed poorly), tiled,
deflate-compressed (Python's zlib: no extra package) at the export's ``png_level``:

* a palette TIFF (photometric PALETTE, 8-bit indices, the colormap the palette scaled to
  16 bits as the TIFF specification has it: ``v * 257``) for K <= 256 without alpha;
* RGB otherwise, RGBA with unassociated alpha for a palette with alpha (as the RGBA PNG: a
  TIFF colormap has no alpha).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO

import numpy as np

__all__ = ["BAND_PIXELS", "EXT", "TILE_WIDTH", "tile_shape", "write_tiff"]

EXT = ".tif"
#: Pixels of labels per band read (as ingest's ``streamq.ingest.bands.BAND_PIXELS``: a stage
#: does not import another).
BAND_PIXELS = 1 << 22
TILE_WIDTH = 256
_MIN_ROWS, _MAX_ROWS = 16, 256  # TIFF tiles are multiples of 16 each way


def tile_shape(width: int, band_pixels: int = BAND_PIXELS) -> tuple[int, int]:
    """``(tile length, tile width)`` for an image ``width`` wide: a row of tiles holds at most
    about ``band_pixels`` pixels (16 rows at least, 256 at most)."""
    rows = band_pixels // max(width, 1) // 16 * 16
    return min(max(rows, _MIN_ROWS), _MAX_ROWS), TILE_WIDTH


def write_tiff(fh: IO[bytes], bands: Iterable[np.ndarray], height: int, width: int,
               palette: np.ndarray, alpha: np.ndarray | None, tile: tuple[int, int],
               level: int = 1) -> None:
    """Write the tiled BigTIFF of an image to the seekable ``fh`` (see the module docstring).

    ``bands`` yields the image's labels as ``(rows, width)`` arrays of ``tile[0]`` rows each
    (the last may have fewer), top to bottom; ``palette`` is its ``(K, 3)`` uint8 colours,
    ``alpha`` their alpha or None. The output depends on nothing else: a rerun writes the
    same bytes.
    """
    import tifffile

    k = len(palette)
    samples: dict[str, object]
    if alpha is None and k <= 256:
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, :k] = palette.T.astype(np.uint16) * 257
        table = None
        samples = {"shape": (height, width), "photometric": "palette", "colormap": colormap}
    elif alpha is None:
        table = np.ascontiguousarray(palette, dtype=np.uint8)
        samples = {"shape": (height, width, 3), "photometric": "rgb"}
    else:
        table = np.concatenate([palette, alpha[:, None]], axis=1).astype(np.uint8)
        samples = {"shape": (height, width, 4), "photometric": "rgb",
                   "extrasamples": ("unassalpha",)}

    def tiles() -> Iterator[np.ndarray]:
        seen = 0
        for band in bands:
            px = band.astype(np.uint8, copy=False) if table is None else table[band]
            seen += px.shape[0]
            for x in range(0, width, tile[1]):
                yield px[:, x:x + tile[1]]  # edge tiles are zero-padded by tifffile
        if seen != height:
            raise ValueError(f"{seen} rows of labels for an image of {height}")

    with tifffile.TiffWriter(fh, bigtiff=True) as tw:
        tw.write(tiles(), dtype=np.uint8, tile=tile, compression="zlib",
                 compressionargs={"level": level}, metadata=None, software=False,
                 maxworkers=1, **samples)  # type: ignore[arg-type]
