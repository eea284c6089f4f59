"""Digests of an opaque collection run through every stage, to check that keeping alpha left
opaque collections as they were: byte for byte the same arrays, records and exported files.

``tests/data/opaque_reference.json`` was made by the streamq that composited every image on
the background (before alpha was kept), with this file run as a script::

    PYTHONPATH=/path/to/that/checkout python tests/opaque_reference.py tests/data/opaque_reference.json

Only the public API of that version is used. The collection mixes JPEG crops with files that
*may* hold alpha but do not (an RGBA PNG whose alpha is all 255, an LA PNG likewise, a
palette PNG without a transparent entry): the plan of a streamq that keeps alpha makes an
alpha array for them, which must be gone again once every image is found opaque.

What varies between any two runs is left out: times, and the fingerprints of the inputs,
which cover the source folder's path and the files' mtimes (``plan``, ``fit`` and
``fingerprint`` keys of JSON records; ``ingest/plan`` and ``images`` tables hold no such key).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

VOLATILE = {"plan", "fit", "fingerprint"}  # keys of JSON records that name the run's inputs


def make_opaque_collection(root) -> None:
    """JPEG crops of bundled photos, and PNGs whose mode allows alpha but whose every pixel
    is opaque."""
    from streamq.examples import make_collection, source_photos

    root = Path(root)
    make_collection(root, 10, seed=4, min_side=24, max_side=70)
    photos = source_photos()
    (root / "png").mkdir()
    rgb = photos["Coffee"][200:250, 300:360]
    opaque = np.full(rgb.shape[:2], 255, np.uint8)
    Image.fromarray(np.dstack([rgb, opaque])).save(root / "png/rgba_opaque.png")
    grey = np.asarray(Image.fromarray(photos["Coins"][:40, :50]).convert("L"))
    Image.fromarray(np.dstack([grey, opaque[:40, :50]])).convert("LA").save(root / "png/la_opaque.png")
    Image.fromarray(photos["Flower"][100:140, 100:150]).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=24).save(root / "png/palette.png")


#: bytes of an array read at a time for its digest
_SLAB = 1 << 24


def _feed(h, arr, prefix: tuple[int, ...] = ()) -> None:
    """Hash the bytes of ``arr[prefix]`` in C order, reading at most about :data:`_SLAB` bytes
    at a time: the same digest as hashing ``arr[:].tobytes()``, without holding a mostly empty
    array (a histogram over 2**24 colours is 268 MB) in memory twice."""
    rest = arr.shape[len(prefix):]
    per_index = int(np.prod(rest[1:], dtype=np.int64)) * arr.dtype.itemsize
    if not rest or per_index * rest[0] <= _SLAB:
        h.update(np.ascontiguousarray(arr[prefix] if prefix else arr[...]).tobytes())
    elif per_index > _SLAB:
        for i in range(rest[0]):
            _feed(h, arr, (*prefix, i))
    else:
        step = _SLAB // per_index
        for a in range(0, rest[0], step):
            h.update(np.ascontiguousarray(arr[(*prefix, slice(a, a + step))]).tobytes())


def _array_digest(arr) -> str:
    if arr.dtype.kind not in "OUT" and arr.nbytes > _SLAB:
        h = hashlib.sha256(f"{arr.dtype.kind}{arr.dtype.itemsize}{arr.shape}".encode())
        _feed(h, arr)
        return h.hexdigest()
    data = np.asarray(arr[:])
    h = hashlib.sha256(f"{data.dtype.kind}{data.dtype.itemsize}{data.shape}".encode())
    if data.dtype.kind in "OUT":
        for v in data.reshape(-1):
            text = str(v)
            if text.startswith("{"):  # a JSON record: without what names the run's inputs
                rec = json.loads(text)
                text = json.dumps({k: v for k, v in rec.items() if k not in VOLATILE},
                                  sort_keys=True)
            h.update(text.encode() + b"\0")
    else:
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


def store_digest(path) -> dict[str, str]:
    """``{array name: digest}`` of every array of the Zarr store at ``path``."""
    g = zarr.open_group(str(path), mode="r")
    return {name: _array_digest(arr) for name, arr in sorted(g.arrays(), key=lambda x: x[0])} | {
        f"{group}/{name}": digest
        for group, sub in sorted(g.groups(), key=lambda x: x[0])
        for name, digest in store_digest(Path(path) / group).items()}


def files_digest(out) -> dict[str, str]:
    """``{file relative to out: sha256}`` of the exported files (not the .streamq-* ones)."""
    out = Path(out)
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.relative_to(out).parts[0].startswith(".streamq-")}


def attributes(path) -> dict:
    """The store's attributes that do not vary between runs."""
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    ingest = attrs["ingest"]
    return {"streamq": attrs["streamq"]["format_version"],
            "settings": ingest["settings"], "settings_fingerprint": ingest["settings_fingerprint"],
            "ingest_keys": sorted(ingest), "n_tasks": ingest["n_tasks"],
            "colors": {k: attrs["colors"][k] for k in ("n_distinct", "n_pixels", "computed")},
            "fit_summary": {k: v for k, v in attrs["fit"]["summary"].items()
                            if k not in ("seconds", "store")},
            "quantize": {k: attrs["quantize"][k] for k in ("k", "mse", "psnr")},
            "top_level": sorted(attrs)}


def run_all(src, work, scheduler: str = "threads") -> dict:
    """Ingest ``src``, fit 8 colours, quantize, export palette PNGs, RGB WebPs and Zarr arrays;
    return every digest."""
    import streamq

    work = Path(work)
    store = work / "opaque.zarr"
    streamq.ingest(src, store, chunk_pixels=4096, scheduler=scheduler, progress=False)
    streamq.fit(store, colors=8, max_steps=10, batch_size=512, n_init=2, scheduler="threads")
    # without SSIM, which came after the reference (it adds its sums to quantize's records)
    import inspect

    ssim = {"ssim": False} if "ssim" in inspect.signature(streamq.quantize).parameters else {}
    streamq.quantize(store, scheduler=scheduler, progress=False, **ssim)
    streamq.export(store, work / "png", scheduler=scheduler, progress=False)
    streamq.export(store, work / "webp", format="webp", scheduler=scheduler, progress=False)
    streamq.export(store, work / "arrays.zarr", zarr=True, scheduler=scheduler, progress=False)
    manifest = json.loads((work / "png" / ".streamq-export.json").read_text())
    return {"store": store_digest(store), "attributes": attributes(store),
            "png": files_digest(work / "png"), "webp": files_digest(work / "webp"),
            "zarr_export": store_digest(work / "arrays.zarr"),
            "manifest_keys": sorted(manifest)}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        make_opaque_collection(Path(tmp) / "src")
        result = run_all(Path(tmp) / "src", tmp)
    Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[1]}: {len(result['store'])} arrays, {len(result['png'])} PNGs")
