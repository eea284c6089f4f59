"""Zarr and OME-Zarr images as ingest inputs: what one holds, and its rows.

A directory named ``*.zarr`` (``*.ome.zarr`` included) in a source folder, a glob or a list
file is **one image**, never a folder of images (:func:`is_zarr_name`):

- a plain Zarr array (format 2 or 3) of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
  ``(H, W, 4)``: grey, RGB or RGBA;
- an OME-Zarr image (NGFF 0.4, Zarr format 2, or 0.5, format 3: a group whose attributes hold
  ``multiscales``): its full resolution, ``multiscales[0].datasets[0].path``, with the axes
  the metadata names (``c,y,x``, ``t,c,z,y,x``, ``y,x,c``...; a ``t`` or ``z`` axis, or any
  other, must have one plane). One channel is grey, three RGB, four RGBA.

Samples are uint8, or uint16 scaled as any 16-bit image (:func:`streamq.decode.scale16`).
Anything else (several timepoints or z-planes, two or more than four channels, float
samples, a group without ``multiscales``) is a skipped input, its reason saying what was
found and what was expected. The header comes from the metadata alone (:func:`open_image`);
the pixels are read by the write tasks a band of rows at a time (:mod:`streamq.ingest.bands`),
whatever the image's size, so only the chunks of those rows are ever read.

A directory has no single size and modification time: its fingerprint
(:func:`dir_fingerprint`) is the bytes of every metadata document in it (``zarr.json``,
``.zarray``, ``.zattrs``, ``.zgroup``) and the relative path, size and modification time of
every file under it, so a rewritten chunk, an added level or changed metadata is another
input, and the same directory untouched resumes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["NODE_META", "ZarrImage", "dir_fingerprint", "is_zarr_dir", "is_zarr_name", "open_image"]

SUFFIX = ".zarr"
NODE_META = ("zarr.json", ".zarray", ".zgroup")  # a folder holding one of these is a Zarr node
_META = (*NODE_META, ".zattrs")  # every metadata document (v3, and v2 with its attributes)
_SAMPLES = (np.dtype(np.uint8), np.dtype(np.uint16))
_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
_KEPT = ("y", "x", "c")  # the axes a row band keeps, in the order it returns them
_PLANE_AXES = {"t": "timepoints", "z": "z-planes"}


def is_zarr_name(name: str) -> bool:
    """Whether the input ``name`` (a path, a URL or a stored name) is a Zarr image by its
    name: it ends in ``.zarr``."""
    return name.rstrip("/").lower().endswith(SUFFIX)


def is_zarr_dir(path: str) -> bool:
    """Whether ``path`` is a local directory named as a Zarr image."""
    return is_zarr_name(path) and os.path.isdir(path)


def dir_fingerprint(path: str) -> bytes:
    """What identifies the Zarr directory ``path`` (see the module docstring): its metadata
    documents' bytes, and the path, size and mtime of every file in it, in sorted order."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path).replace(os.sep, "/")
            st = os.stat(full)
            h.update(os.fsencode(rel) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            if name in _META:
                with open(full, "rb") as fh:
                    h.update(fh.read())
    return h.digest()


@dataclass(frozen=True)
class ZarrImage:
    """An opened Zarr image: its full-resolution ``array`` and what each of its axes is
    (``y``, ``x``, ``c``, or another axis of one plane, read at index 0)."""

    array: Any  # zarr.Array
    axes: tuple[str, ...]
    height: int
    width: int
    channels: int

    @property
    def mode(self) -> str:
        """The mode of the image as :mod:`streamq.decode` names it (``RGB``, ``I;16``...)."""
        base = _CHANNELS[self.channels]
        if np.dtype(self.array.dtype) == np.uint16:
            return "I;16" if base == "L" else base + ";16"
        return base

    @property
    def chunk_rows(self) -> int:
        """Rows of one chunk: band reads aligned to it read every chunk once."""
        chunks = getattr(self.array, "chunks", None)
        return int(chunks[self.axes.index("y")]) if chunks else 1

    def rows(self, top: int, bottom: int) -> np.ndarray:
        """Rows ``[top, bottom)`` as stored: ``(n, W)`` or ``(n, W, C)``, uint8 or uint16;
        only the chunks holding them are read."""
        index = tuple(slice(top, bottom) if a == "y" else slice(None) if a in _KEPT else 0
                      for a in self.axes)
        data = np.asarray(self.array[index])
        kept = [a for a in self.axes if a in _KEPT]
        data = np.transpose(data, [kept.index(a) for a in _KEPT if a in kept])
        return data[..., 0] if data.ndim == 3 and self.channels == 1 else data


def open_image(path: str, options: Mapping[str, Any] | None = None) -> ZarrImage | str:
    """The Zarr image at ``path`` (a local path, or a URL read with the fsspec ``options``)
    from its metadata, or the one-line reason it cannot be ingested. Errors of reading are
    raised (the caller tells transient faults from bad inputs)."""
    import zarr

    try:
        node = zarr.open(path, mode="r", storage_options=dict(options) if options else None)
    except FileNotFoundError:
        return "not a Zarr array or group: no zarr.json, .zarray or .zgroup found"
    if isinstance(node, zarr.Array):
        if node.ndim == 2 or (node.ndim == 3 and node.shape[2] in _CHANNELS):
            return _checked(node, ("y", "x", "c")[:node.ndim], "Zarr array")
        return (f"a Zarr array of shape {tuple(node.shape)}: expected (H, W), (H, W, 1), "
                "(H, W, 3) or (H, W, 4), or an OME-Zarr image")
    attrs: dict[str, Any] = dict(node.attrs)
    meta: dict[str, Any] = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    multiscales: Any = meta.get("multiscales")
    if not multiscales:
        return ("a Zarr group without OME-Zarr 'multiscales' metadata: expected an image "
                "array or an OME-Zarr image")
    try:
        first = multiscales[0]
        dataset = str(first["datasets"][0]["path"])
    except (KeyError, IndexError, TypeError):
        return "OME-Zarr 'multiscales' without datasets[0].path"
    array = node.get(dataset)
    if not isinstance(array, zarr.Array):
        return f"OME-Zarr dataset {dataset!r} (full resolution) is not an array in the group"
    axes = _axes(first.get("axes"), array.ndim)
    if isinstance(axes, str):
        return axes
    return _checked(array, axes, "OME-Zarr image")


def _axes(given: Any, ndim: int) -> tuple[str, ...] | str:
    """The axis names of an OME-Zarr array: dicts (0.4, 0.5) or strings (0.3); without any,
    NGFF before 0.3 fixes them as ``t, c, z, y, x``."""
    if given is None:
        if ndim == 5:
            return ("t", "c", "z", "y", "x")
        return f"OME-Zarr without axes for an array of {ndim} dimensions: expected 5 (t,c,z,y,x)"
    names = []
    for a in given:
        if isinstance(a, dict):
            kind = str(a.get("type", "")).lower()
            name = {"channel": "c", "time": "t"}.get(kind, str(a.get("name", "")).lower())
        else:
            name = str(a).lower()
        names.append(name)
    if len(names) != ndim:
        return f"OME-Zarr axes {names} do not match an array of {ndim} dimensions"
    return tuple(names)


def _checked(array: Any, axes: tuple[str, ...], what: str) -> ZarrImage | str:
    """The image, or why its axes, planes, channels or samples cannot be ingested."""
    shape = dict(zip(axes, (int(n) for n in array.shape), strict=True))
    if "y" not in shape or "x" not in shape or len(set(axes)) != len(axes):
        return f"{what} with axes {','.join(axes)}: expected one y and one x axis"
    for a in axes:
        if a not in _KEPT and shape[a] != 1:
            what_a = _PLANE_AXES.get(a, f"planes along axis {a!r}")
            return f"{what} with {shape[a]} {what_a}: expected one"
    channels = shape.get("c", 1)
    if channels not in _CHANNELS:
        return f"{what} with {channels} channels: expected 1 (grey), 3 (RGB) or 4 (RGBA)"
    dtype = np.dtype(array.dtype)
    if dtype not in _SAMPLES:
        return f"{what} with samples of {dtype}: expected uint8 or uint16"
    return ZarrImage(array=array, axes=axes, height=shape["y"], width=shape["x"],
                     channels=channels)
