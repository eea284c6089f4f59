"""Images out of a store: an image's pixels, its palette labels or its quantized pixels, one
at a time (:func:`read_image`) or as lazy Dask arrays that read rows of the store when
computed (:func:`dask_images`); also methods of :class:`~streamq.store.Collection`.

Part of the store layer: labels are read only when current
(:func:`streamq.store.results.ready_labels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamq.errors import ConfigError
from streamq.fs import Location
from streamq.store.layout import PIXELS, Collection, Store, open_array
from streamq.store.results import load_fit, ready_labels

__all__ = ["KINDS", "dask_images", "read_image"]

KINDS = ("pixels", "labels", "quantized")


def _kind_check(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")


def _labels_source(coll: Collection, per_image: int | None) -> tuple[str, str, np.ndarray]:
    """``(array name, identity, palettes)`` of up-to-date labels: the shared palette
    ``(K, 3)`` or the per-image palettes ``(N, K, 3)``; missing or stale labels are refused."""
    st = Store.open(coll.store.location)  # as it is now: quantize may have run since
    identity = ready_labels(st, per_image)
    if per_image is None:
        return "quantize/labels", identity, load_fit(st.location).palette
    return (f"per_image/k{per_image}/labels", identity,
            np.asarray(st.array(f"per_image/k{per_image}/palette")[:], dtype=np.uint8))


class _ImageRows:
    """Rows of one image of a store, for ``dask.array.from_array``: small and picklable (a
    location, numbers and a palette); each chunk opens the array and reads its rows."""

    def __init__(self, loc: Location, name: str, offset: int, h: int, w: int,
                 dtype: np.dtype, palette: np.ndarray | None) -> None:
        self.loc, self.name, self.offset, self.w = loc, name, offset, w
        self.palette = palette
        rgb = name == PIXELS or palette is not None
        self.shape = (h, w, 3) if rgb else (h, w)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8) if palette is not None else np.dtype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        r0, r1, _ = key[0].indices(self.shape[0])
        a, b = self.offset + r0 * self.w, self.offset + max(r1, r0) * self.w
        flat = np.asarray(open_array(self.loc, self.name)[a:b])
        rows = flat.reshape(max(r1 - r0, 0), self.w, *flat.shape[1:])
        if self.palette is not None:
            rows = self.palette[rows]
        return rows[(slice(None),) + tuple(key[1:])]


def _source_of(coll: Collection, kind: str, per_image: int | None
               ) -> tuple[str, str, np.ndarray | None, np.dtype]:
    _kind_check(kind)
    if kind == "pixels":
        return PIXELS, "", None, np.dtype(np.uint8)
    name, identity, palettes = _labels_source(coll, per_image)
    return (name, identity, palettes if kind == "quantized" else None,
            open_array(coll.store.location, name).dtype)


def read_image(coll: Collection, i: int, kind: str = "pixels",
               per_image: int | None = None) -> np.ndarray:
    """Image ``i`` of ``coll``: its ``pixels`` (``(H, W, 3)`` uint8), palette ``labels``
    (``(H, W)``, uint8 for K <= 256, else uint16) or ``quantized`` pixels (``(H, W, 3)`` uint8,
    each pixel its palette colour); labels of the shared palette, or with ``per_image`` = K of
    the image's own K-colour palette. Missing or stale labels are a one-line error."""
    n = len(coll)
    if not -n <= i < n:
        raise IndexError(f"image id {i} out of range for a collection of {n} images")
    i %= n
    name, _, palettes, dtype = _source_of(coll, kind, per_image)
    palette = palettes if palettes is None or palettes.ndim == 2 else palettes[i]
    rows = _ImageRows(coll.store.location, name, int(coll.offsets[i]), int(coll.heights[i]),
                      int(coll.widths[i]), dtype, palette)
    return rows[slice(None)]


def dask_images(coll: Collection, kind: str = "pixels", *, per_image: int | None = None,
                stack: bool = False, chunk_pixels: int | None = None) -> Any:
    """Lazy Dask arrays of every image of ``coll`` (``kind`` and ``per_image`` as
    :func:`read_image`): a list of ``(H, W[, 3])`` arrays, or with ``stack`` one
    ``(N, H, W[, 3])`` array (all images must have one shape). Chunks are whole rows, about
    ``chunk_pixels`` pixels each (default: the store's shard); computing one reads those rows
    of the store, wherever Dask runs it."""
    import dask.array as da
    from dask.base import tokenize

    name, identity, palettes, dtype = _source_of(coll, kind, per_image)
    if stack and len(set(coll.shapes)) > 1:
        shapes = sorted({f"{h}x{w}" for h, w in coll.shapes})
        raise ConfigError(f"{coll.path}: stack=True needs images of one shape, these have "
                          f"{len(shapes)} ({', '.join(shapes[:3])}, ...); use the list")
    budget = chunk_pixels or coll.store.pixel_layout()[0]
    loc = coll.store.location
    out = []
    for i in range(len(coll)):
        h, w = int(coll.heights[i]), int(coll.widths[i])
        palette = palettes if palettes is None or palettes.ndim == 2 else palettes[i]
        rows = _ImageRows(loc, name, int(coll.offsets[i]), h, w, dtype, palette)
        chunks = (max(1, budget // max(w, 1)),) + rows.shape[1:]
        token = tokenize(loc.url, name, identity, kind, i, chunks)
        out.append(da.from_array(rows, chunks=chunks, name=f"streamq-{kind}-{token}",
                                 inline_array=True, meta=np.empty((0,) * rows.ndim, rows.dtype)))
    if stack:
        if not out:
            raise ConfigError(f"{coll.path}: no images to stack")
        return da.stack(out)
    return out
