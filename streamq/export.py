"""Export: rebuild every image from its labels and the palette, as files under OUT.

Files mirror the source tree (``Person/Person_0001.jpg`` -> ``OUT/Person/Person_0001.png``):
a palette PNG (mode ``P``) for K <= 256, else RGB; ``--format jpeg|webp`` writes RGB;
``--dither`` re-quantizes the stored pixels to the palette with Floyd-Steinberg error
diffusion (Pillow's, nearest colour in RGB). Output paths never leave OUT, whatever the
stored names contain. Each file is written under a temporary name and renamed, so a file
that exists is complete: a rerun skips it. ``OUT/.streamq-export.json`` records what made
the files; a different export into the same OUT is refused unless ``overwrite``.
``--zarr`` writes labels + palette + image table as a compact Zarr store instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq._version import __version__
from streamq.config import StreamQConfig, parse_config
from streamq.console import progress_bar, timer
from streamq.errors import ConfigError, StoreExistsError, StreamQError
from streamq.scheduler import runner
from streamq.store import Collection, Store

__all__ = ["ExportSummary", "export", "safe_output_path"]

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MANIFEST = ".streamq-export.json"
TMP_DIR = ".streamq-tmp-files"  # half-written files live here until renamed; emptied at every start
PIXELS_PER_TASK = 16_000_000
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class ExportSummary:
    out: str
    format: str
    n_images: int
    n_written: int
    n_existing: int
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"exported {self.n_images} images as {self.format} to {self.out} "
                f"({self.n_written} written, {self.n_existing} already there)")


def safe_output_path(out: str, rel: str, ext: str, fallback: str) -> str:
    """``out/rel`` with its extension replaced, guaranteed to stay inside ``out``.

    Absolute paths lose their root, ``..`` and ``.`` components become ``_`` or vanish,
    control characters become ``_``; if the result still escapes (a symlink), ``fallback``
    (a name made from the image id) is used under ``out/_unsafe``.
    """
    parts = []
    for p in re.split(r"[/\\]+", rel):
        if p in ("", "."):
            continue
        parts.append("_" if p == ".." else _BAD_CHARS.sub("_", p))
    if not parts:
        parts = [fallback]
    stem, _ = os.path.splitext(parts[-1])
    parts[-1] = (stem or fallback) + ext
    root = os.path.realpath(out)
    path = os.path.join(root, *parts)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root:
        return os.path.join(root, "_unsafe", fallback + ext)
    return path


def _write_atomic(img: Any, path: str, tmp_dir: str, fmt: str, options: dict[str, Any]) -> None:
    import uuid

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}{os.path.splitext(path)[1]}")
    try:
        img.save(tmp, format=fmt.upper() if fmt != "jpeg" else "JPEG", **options)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _contiguous_runs(images: list[tuple[int, str, int, int, int]]
                     ) -> Iterator[list[tuple[int, str, int, int, int]]]:
    """Split ``(id, path, offset, h, w)`` rows into runs whose pixels lie back to back."""
    run: list[tuple[int, str, int, int, int]] = []
    for item in images:
        if run and item[2] != run[-1][2] + run[-1][3] * run[-1][4]:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


def _export_task(args: dict[str, Any]) -> tuple[int, int]:
    import zarr
    from PIL import Image

    fmt = args["format"]
    k_img = args["per_image"]
    labels_name = f"per_image/k{k_img}/labels" if k_img else "quantize/labels"
    todo = [item for item in args["images"] if not os.path.exists(item[1])]
    existing = len(args["images"]) - len(todo)
    if not todo:
        return 0, existing
    # One read per run of neighbouring images, not one per image: a small image would
    # otherwise decode a whole inner chunk of the shard for a few of its pixels.
    source = zarr.open_array(f"{args['store']}/{'pixels' if args['dither'] else labels_name}",
                             mode="r")
    palettes = (zarr.open_array(f"{args['store']}/per_image/k{k_img}/palette", mode="r")
                if k_img else None)
    written = 0
    for run in _contiguous_runs(todo):
        start = run[0][2]
        block = np.asarray(source[start:run[-1][2] + run[-1][3] * run[-1][4]])
        run_palettes = (np.asarray(palettes[run[0][0]:run[-1][0] + 1])
                        if palettes is not None else None)
        for image_id, path, off, h, w in run:
            palette = np.asarray(run_palettes[image_id - run[0][0]] if run_palettes is not None
                                 else args["palette"], dtype=np.uint8)
            k = len(palette)
            flat_pal = palette.reshape(-1).tolist()
            data = block[off - start:off - start + h * w]
            if args["dither"]:
                pal_img = Image.new("P", (1, 1))
                pal_img.putpalette(flat_pal + flat_pal[-3:] * (256 - k))
                img = Image.fromarray(data.reshape(h, w, 3)).quantize(
                    palette=pal_img, dither=Image.Dither.FLOYDSTEINBERG)
                if fmt != "png":
                    img = img.convert("RGB")
            elif fmt == "png" and k <= 256:
                img = Image.fromarray(data.reshape(h, w).astype(np.uint8, copy=False))  # mode L ...
                img.putpalette(flat_pal)  # ... becomes P with the palette
            else:
                img = Image.fromarray(palette[data.reshape(h, w)])
            _write_atomic(img, path, args["tmp_dir"], fmt, args["options"])
            written += 1
    return written, existing


def _parse_ids(ids: str | list[int] | None, n: int) -> list[int] | None:
    if ids is None:
        return None
    if isinstance(ids, list):
        out = ids
    else:
        out = []
        for part in ids.split(","):
            part = part.strip()
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"--ids value {part!r} is not an id or a range like 10-20")
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            out.extend(range(a, b + 1))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--ids names image {bad[0]}, but ids run from 0 to {n - 1}")
    return sorted(set(out))


def export(store: str, out: str, *, format: str = "png", dither: bool = False,
           labels: list[str] | None = None, ids: str | list[int] | None = None,
           per_image: int | None = None, png_level: int = 1, quality: int = 95, overwrite: bool = False,
           config: StreamQConfig | dict[str, Any] | None = None, scheduler: str | None = None,
           progress: bool | None = None) -> ExportSummary:
    """Write the quantized images of ``store`` under ``out`` (see the module docstring)."""
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    cfg = parse_config(config).replace(**{"dask.scheduler": scheduler})
    st = Store.open(store)
    coll = Collection(st)
    if per_image is None:
        q = st.section("quantize")
        fit_fp = st.section("fit").get("fingerprint")
        ok = q.get("state") == "complete" and q.get("fit_fingerprint") == fit_fp
        from streamq.fit import load_fit

        palette = load_fit(st.path).palette.tolist() if ok else None
    else:
        from streamq.per_image import load_per_image

        load_per_image(st.path, per_image)  # checks they exist
        q = st.section(f"per_image_quantize_k{per_image}")
        fit_fp = st.section("per_image").get("fingerprint")
        ok = q.get("state") == "complete" and q.get("fingerprint") == fit_fp
        palette = None
    if not ok:
        state = q.get("state", "missing")
        state = "stale (the palette was refitted)" if state in ("stale", "complete") else state
        raise StreamQError(f"{st.path}: labels are {state}; run `streamq quantize` first")
    k = len(palette) if palette is not None else per_image
    if dither and k is not None and k > 256:
        raise ConfigError(f"--dither needs a palette of at most 256 colours, this one has {k}")
    chosen = _select(coll, labels, _parse_ids(ids, len(coll)))
    out = os.path.abspath(out)
    manifest = {"store": st.path, "fit_fingerprint": fit_fp, "per_image": per_image,
                "format": format, "dither": dither,
                "png_level": png_level, "quality": quality, "streamq": __version__}
    _check_out(out, st)
    ext = FORMATS[format]
    options = {"compress_level": png_level} if format == "png" else {"quality": quality}
    paths = [safe_output_path(out, coll.paths[i], ext, f"{i:08d}") for i in chosen]
    seen: set[str] = set()
    for n, (i, p) in enumerate(zip(chosen, paths, strict=True)):
        if p in seen:  # photo.jpg and photo.png both become photo.png: keep both
            p = safe_output_path(out, coll.paths[i] + ext, ext, f"{i:08d}")
            if p in seen:  # names equal once cleaned: fall back to the id
                p = os.path.join(os.path.realpath(out), "_unsafe", f"{i:08d}{ext}")
            paths[n] = p
        seen.add(paths[n])
    _check_manifest(out, manifest, overwrite, paths)
    timings: dict[str, float] = {}
    path_of = dict(zip(chosen, paths, strict=True))
    tasks = [[(i, path_of[i], int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i]))
              for i in group] for group in coll.groups_by_pixels(chosen, PIXELS_PER_TASK)]
    tmp_dir = os.path.join(out, TMP_DIR)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a killed run
    os.makedirs(tmp_dir)
    common = {"store": st.path, "palette": palette, "per_image": per_image, "format": format,
              "dither": dither, "options": options, "tmp_dir": tmp_dir}
    written = existing = 0
    with timer("exporting", timings), runner(cfg.dask) as run:
        run.check_paths(st.path, out)
        futures = {run.submit(_export_task, {**common, "images": t}): len(t) for t in tasks}
        with progress_bar(len(chosen), "exporting", "image", progress) as bar:
            for fut in run.as_completed(futures):
                w, e = fut.result()
                written += w
                existing += e
                bar.update(futures[fut])
    shutil.rmtree(tmp_dir, ignore_errors=True)
    summary = ExportSummary(out=out, format=format, n_images=len(chosen), n_written=written,
                            n_existing=existing, timings=timings)
    log.info("%s", summary)
    return summary


def _select(coll: Collection, labels: list[str] | None, ids: list[int] | None) -> list[int]:
    chosen = list(range(len(coll))) if ids is None else ids
    if labels:
        known = set(coll.labels)
        missing = [lab for lab in labels if lab not in known]
        if missing:
            raise ConfigError(f"--label {missing[0]!r} is not a label of this collection")
        wanted = set(labels)
        chosen = [i for i in chosen if coll.labels[i] in wanted]
    return chosen


def _check_out(out: str, st: Store) -> None:
    """Refuse an output folder that is, holds or sits inside the store or the source tree."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise StoreExistsError(f"output folder {out} is a file; choose a folder")
    real = os.path.realpath(out)
    for what, other in (("the store", st.path), ("the ingested source folder", st.section("ingest").get("root"))):
        if not other or "://" in other:
            continue
        o = os.path.realpath(other)
        if os.path.commonpath([real, o]) in (real, o):
            raise StoreExistsError(f"output folder {out} overlaps {what} {other}; choose another folder")


def _check_manifest(out: str, manifest: dict[str, Any], overwrite: bool,
                    planned: list[str]) -> None:
    """Refuse an export into a folder holding a different one, unless ``overwrite``.

    With ``overwrite``, only the files this export is about to write are removed (never
    anything else in the folder), *before* the new manifest is written: a rerun after a kill
    then skips only files that this export wrote.
    """
    path = os.path.join(out, MANIFEST)
    old: dict[str, Any] | None = None
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = {}
    elif os.path.isdir(out) and set(os.listdir(out)) - {TMP_DIR} and not overwrite:
        raise StoreExistsError(f"{out} is not empty and holds no streamq export; choose another "
                               "folder or pass --overwrite")
    same = old is not None and {k: old.get(k) for k in manifest if k != "streamq"} == \
        {k: v for k, v in manifest.items() if k != "streamq"}
    if old is not None and not same and not overwrite:
        raise StoreExistsError(
            f"{out} holds an export made differently ({old.get('format')}, palette "
            f"{old.get('fit_fingerprint')}); pass --overwrite to replace it")
    if overwrite:
        for p in planned:
            if os.path.exists(p):
                os.remove(p)
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
