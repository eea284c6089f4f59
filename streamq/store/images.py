"""A finished collection read back: :class:`Collection` (its image table, an image's pixels,
its palette labels or its quantized pixels) and :func:`open_store`; one image at a time
(:func:`read_image`) or as lazy Dask arrays that read rows of the store when computed
(:func:`dask_images`).

Part of the store layer: labels are read only when current
(:func:`streamq.store.results.ready_labels`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamq.errors import ConfigError, StoreLayoutError
from streamq.fs import Location
from streamq.store.arrays import open_array, runs_by_weight
from streamq.store.layout import Store, StoreTarget
from streamq.store.names import (
    HAS_ALPHA,
    IMAGE_COLUMNS,
    IMAGES,
    PIXELS,
    SKIP_COLUMNS,
    SKIPPED,
    labels_path,
    per_image_palette,
)
from streamq.store.results import load_fit, ready_labels

__all__ = ["KINDS", "Collection", "Skipped", "dask_images", "open_store", "read_image"]

KINDS = ("pixels", "labels", "quantized")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


class Collection:
    """A finished collection: ``len()``, ``read(i)``, ``paths``, ``labels``, ``shapes``;
    after quantize ``pixel_labels(i)`` and ``quantized(i)``; ``to_dask()`` for lazy arrays.

    Examples
    --------
    >>> coll = open_store("faces.zarr")            # doctest: +SKIP
    >>> coll.read(0).shape                         # doctest: +SKIP
    (250, 250, 3)
    """

    def __init__(self, store: Store) -> None:
        state = store.section("ingest").get("state")
        if state != "complete":
            raise StoreLayoutError(
                f"{store.path} has no finished ingest (state: {state or 'none'}); "
                "run `streamq ingest` to finish it"
            )
        self.store = store
        t = store.read_table(IMAGES, IMAGE_COLUMNS)
        self.paths: list[str] = [str(p) for p in t["path"]]
        self.labels: list[str] = [str(v) for v in t["label"]]
        self.modes: list[str] = [str(v) for v in t["mode"]]
        self.offsets: np.ndarray = t["offset"].astype(np.int64)
        self.heights: np.ndarray = t["height"].astype(np.int64)
        self.widths: np.ndarray = t["width"].astype(np.int64)
        s = store.read_table(SKIPPED, SKIP_COLUMNS)
        self.skipped: list[Skipped] = [Skipped(str(p), str(r)) for p, r in zip(s["path"], s["reason"], strict=True)]
        self._pixels = store.pixels()
        self._alpha = store.alpha() if store.has(HAS_ALPHA) else None
        #: (N,) bool: which images have a transparent pixel (alpha kept, see read_alpha)
        self.has_alpha: np.ndarray = (np.asarray(store.array(HAS_ALPHA)[:], dtype=bool)
                                      if self._alpha is not None else np.zeros(len(self.paths), bool))

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(h), int(w)) for h, w in zip(self.heights, self.widths, strict=True)]

    @property
    def n_pixels(self) -> int:
        return int((self.heights * self.widths).sum())

    def __len__(self) -> int:
        return len(self.paths)

    def groups_by_pixels(self, ids: Sequence[int], budget: int) -> list[list[int]]:
        """Split ``ids`` (in order) into runs of about ``budget`` pixels: one task each."""
        ids = list(ids)
        sizes = [int(self.heights[i] * self.widths[i]) for i in ids]
        return [[ids[j] for j in run] for run in runs_by_weight(sizes, budget)]

    def overlapping(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(id, offset, n_pixels)`` of every image with pixels in ``[lo, hi)``."""
        sizes = self.heights * self.widths
        i0 = int(np.searchsorted(self.offsets + sizes, lo, side="right"))
        i1 = int(np.searchsorted(self.offsets, hi, side="left"))
        return [(i, int(self.offsets[i]), int(sizes[i])) for i in range(i0, i1) if sizes[i]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    @property
    def n_alpha(self) -> int:
        """Number of images with a transparent pixel (0: an opaque collection)."""
        return int(self.has_alpha.sum())

    def _span(self, i: int) -> tuple[int, int, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image id {i} out of range for a collection of {n} images")
        i %= n
        return int(self.offsets[i]), int(self.heights[i]), int(self.widths[i])

    def read(self, i: int) -> np.ndarray:
        """Pixels of image ``i`` as an ``(H, W, 3)`` uint8 array (for an image with alpha:
        its colours premultiplied by alpha, see :meth:`read_alpha`)."""
        start, h, w = self._span(i)
        return np.asarray(self._pixels[start:start + h * w]).reshape(h, w, 3)

    def pixel_labels(self, i: int, per_image: int | None = None) -> np.ndarray:
        """Palette labels of image ``i`` as an ``(H, W)`` array (after ``quantize``; with
        ``per_image`` = K those of the image's own K-colour palette)."""
        return read_image(self, i, "labels", per_image)

    def quantized(self, i: int, per_image: int | None = None) -> np.ndarray:
        """Image ``i`` quantized: each pixel its palette colour, ``(H, W, 3)`` uint8."""
        return read_image(self, i, "quantized", per_image)

    def to_dask(self, kind: str = "pixels", *, per_image: int | None = None,
                stack: bool = False, chunk_pixels: int | None = None) -> Any:
        """Lazy Dask arrays of every image's ``pixels``, ``labels`` or ``quantized`` pixels:
        a list, or with ``stack`` one ``(N, H, W[, 3])`` array (see
        :func:`streamq.store.images.dask_images`)."""
        return dask_images(self, kind, per_image=per_image, stack=stack, chunk_pixels=chunk_pixels)

    def read_alpha(self, i: int) -> np.ndarray:
        """Alpha of image ``i`` as an ``(H, W)`` uint8 array (255 everywhere for an image
        without transparent pixels)."""
        start, h, w = self._span(i)
        if self._alpha is None or not self.has_alpha[i]:
            return np.full((h, w), 255, np.uint8)
        return np.asarray(self._alpha[start:start + h * w]).reshape(h, w)

    def __repr__(self) -> str:
        alpha = f", {self.n_alpha} with alpha" if self.n_alpha else ""
        return (f"<Collection {self.path}: {len(self)} images{alpha}, {self.n_pixels} pixels, "
                f"{len(set(self.labels))} labels, {len(self.skipped)} skipped>")


def open_store(path: StoreTarget, storage_options: Mapping[str, Any] | None = None) -> Collection:
    """Open a finished store for reading (``storage_options`` for URLs such as ``s3://``)."""
    return Collection(Store.open(path, storage_options=storage_options))


def _kind_check(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")


def _labels_source(coll: Collection, per_image: int | None) -> tuple[str, str, np.ndarray]:
    """``(array name, identity, palettes)`` of up-to-date labels: the shared palette
    ``(K, 3)`` or the per-image palettes ``(N, K, 3)``; missing or stale labels are refused."""
    st = Store.open(coll.store.location)  # as it is now: quantize may have run since
    identity = ready_labels(st, per_image)
    if per_image is None:
        return labels_path(), identity, load_fit(st.location).palette
    return (labels_path(per_image), identity,
            np.asarray(st.array(per_image_palette(per_image))[:], dtype=np.uint8))


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
