"""Export: rebuild every image from its labels and the palette, as files under OUT.

Files mirror the source tree (``Person/Person_0001.jpg`` -> ``OUT/Person/Person_0001.png``):
a palette PNG (mode ``P``) for K <= 256, else RGB; ``--format jpeg|webp`` writes RGB;
``--dither`` re-quantizes the stored pixels to the palette with Floyd-Steinberg error
diffusion (with alpha: in premultiplied RGBA, :mod:`streamq.dither`); a palette with alpha gives ``tRNS`` palette PNGs, RGBA PNG and WebP files and JPEG
files composited on the ingest's ``background`` (:mod:`streamq.export.encode`). An image over
the ingest's ``max_pixels`` (read in bands) is never encoded whole: whatever ``format``, it
is a tiled BigTIFF (``name.tif``) written a row of tiles at a time (:mod:`streamq.export.tiff`),
a task of its own; with ``dither`` it is not written (error diffusion needs the whole image)
and listed in :attr:`ExportSummary.too_large`. Output paths
never leave OUT, whatever the stored names contain; a byte of a source name that is not UTF-8
is written ``%HH`` (:func:`streamq.names.output_name`), and names that some file system would
take for one file get distinct names, decided over the whole collection
(:mod:`streamq.export.paths`). Each task writes its files under a temporary name, renames
them (on an object store such as ``s3://bucket/out``: one PUT per file), makes them durable
and records them with their CRC-32 and the labels they were made from
(:mod:`streamq.export.write`, ``OUT/.streamq-records``); a rerun skips only files a record of
the current labels vouches for. Every task stops the export in one line when the store's labels
change under it (:class:`~streamq.errors.LabelsChangedError`). ``OUT/.streamq-export.json``
records what made the files; a different export into the same OUT is refused unless
``overwrite`` (:mod:`streamq.export.records`).

This module is the stage's driver: it checks the options, chooses the images, names their
files, plans the tasks and runs them (:func:`export`).
The compact form -- labels + palette + image table as arrays, no image files -- is
``export(..., zarr=True)`` (:mod:`streamq.export.zarr`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq._version import __version__
from streamq.config import StreamQConfig, parse_config, replaced
from streamq.console import timer
from streamq.errors import ConfigError, LabelsChangedError
from streamq.export.common import MANIFEST, check_out, labels_changed_message
from streamq.export.paths import inside, output_names
from streamq.export.records import check_manifest, merge_records, record_key, recorded_files
from streamq.export.tiff import EXT as TIFF_EXT
from streamq.export.write import export_task
from streamq.faults import retrying
from streamq.fs import Location, check_access, location
from streamq.names import output_name
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import Collection, Store, store_location
from streamq.store.names import per_image_alpha
from streamq.store.results import (
    default_per_image,
    labels_identity,
    load_fit,
    per_image_quality,
    read_identity,
    ready_labels,
)
from streamq.store.selection import parse_ids, select_images

if TYPE_CHECKING:
    from streamq.export.zarr import ZarrExportSummary

__all__ = ["FORMATS", "MANIFEST", "PIXELS_PER_TASK", "TMP_DIR", "ExportSummary", "export"]

log = logging.getLogger(__name__)

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
TMP_DIR = ".streamq-tmp-files"  # half-written files live here until renamed; emptied at every start
PIXELS_PER_TASK = 16_000_000


@dataclass
class ExportSummary:
    out: str
    format: str
    n_images: int
    n_written: int
    n_existing: int
    timings: dict[str, float] = field(default_factory=dict)
    #: exported images whose file is not named after them, as their names clash with others'
    #: (``{"id", "path", "file"}``); the manifest lists those of the whole collection
    renamed: list[dict[str, Any]] = field(default_factory=list)
    manifest: str = ""
    #: selected images over ``ingest.max_pixels`` (read in bands at ingest) not written: only
    #: with ``dither`` (error diffusion runs over the whole image); ``--zarr`` exports them
    too_large: list[int] = field(default_factory=list)
    #: selected images over ``ingest.max_pixels``, written (or found) as tiled BigTIFF files
    #: (:mod:`streamq.export.tiff`), whatever ``format``
    tiled: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        renamed = (f"; {len(self.renamed)} renamed as their names clash with others', listed in "
                   f"{self.manifest}" if self.renamed else "")
        tiled = (f"; {len(self.tiled)} over max_pixels as tiled BigTIFF (.tif)"
                 if self.tiled else "")
        large = (f"; {len(self.too_large)} image(s) over max_pixels not written (--dither "
                 "needs the whole image): export them without --dither or with --zarr"
                 if self.too_large else "")
        return (f"exported {self.n_images} images as {self.format} to {self.out} "
                f"({self.n_written} written, {self.n_existing} already there{renamed}{tiled}"
                f"{large})")


def export(store: str | Location, out: str | Location, *, zarr: bool = False,
           format: str | None = None, dither: bool = False, labels: list[str] | None = None,
           ids: str | list[int] | None = None, per_image: int | Sequence[int] | None = None,
           png_level: int = 1, quality: int = 95, overwrite: bool = False,
           config: StreamQConfig | dict[str, Any] | None = None, scheduler: str | None = None,
           progress: bool | None = None, storage_options: dict[str, Any] | None = None
           ) -> ExportSummary | ZarrExportSummary:
    """Write the quantized images of ``store`` under ``out`` (see the module docstring).

    ``store`` and ``out`` are local paths or URLs (``s3://bucket/out``); ``storage_options``
    (default: ``config``'s, else the store's) reach both. ``format`` is ``png`` (default),
    ``jpeg`` or ``webp``. With ``zarr=True``, ``out`` becomes a Zarr store of labels,
    palettes and the image table instead (:func:`streamq.export.zarr.export_zarr`; there
    ``per_image`` may list several K). Without ``per_image``, a store whose only palettes
    come from a per-image quality fit exports those (their one K group, HI).
    """
    if zarr:
        if format is not None or dither:
            raise ConfigError("--format and --dither apply to image files; --zarr writes the "
                              "labels and palettes themselves")
        from streamq.export.zarr import export_zarr

        return export_zarr(store, out, labels=labels, ids=ids, per_image=per_image,
                           overwrite=overwrite, config=config, scheduler=scheduler,
                           progress=progress, storage_options=storage_options)
    format = format or "png"
    if format not in FORMATS:
        raise ConfigError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if per_image is not None and not isinstance(per_image, int):
        ks = list(per_image)
        if len(ks) != 1:
            raise ConfigError(f"--per-image {','.join(map(str, ks))}: image files are exported "
                              "for one K at a time (several K in one output need --zarr)")
        per_image = int(ks[0])
    cfg = replaced(parse_config(config), {"dask.scheduler": scheduler})
    st = Store.open(store_location(store, storage_options, cfg.storage_options))
    coll = Collection(st)
    if per_image is None:  # a per-image quality fit and no shared palette: its one K group
        per_image = default_per_image(st)
    fit_fp = ready_labels(st, per_image)
    identity = labels_identity(st, per_image, labels=not dither)  # re-checked by every task
    alpha = None
    if per_image is None:
        fitted = load_fit(st.location)
        palette = fitted.palette.tolist()
        alpha = None if fitted.alpha is None else fitted.alpha.tolist()
    else:
        palette = None
    # per-image palettes with alpha (straight colours and their alpha, each image its own)
    rgba_per_image = per_image is not None and st.has(per_image_alpha(per_image))
    k = len(palette) if palette is not None else per_image
    if dither and k is not None and k > 256:
        raise ConfigError(f"--dither needs a palette of at most 256 colours, this one has {k}")
    chosen = select_images(coll, labels, parse_ids(ids, len(coll)))
    tiled_over, large = _large(st, coll)
    too_large = [i for i in chosen if large[i]] if dither else []
    chosen, tiled = _without_dithered(coll, chosen, too_large, tiled_over, large)
    out_loc = location(out, storage_options if storage_options is not None
                       else (cfg.storage_options or st.location.options))
    check_access(out_loc)
    out = out_loc.url
    manifest: dict[str, Any]
    manifest = {"store": st.path, "fit_fingerprint": fit_fp, "per_image": per_image,
                "format": format, "dither": dither,
                "png_level": png_level, "quality": quality, "streamq": __version__}
    if alpha is not None or rgba_per_image:  # only then: an opaque collection's is unchanged
        manifest["alpha"] = True
    given = st.section("fit").get("palette_source") if per_image is None else None
    if given:  # a palette given to quantize --palette: where it came from
        manifest["palette_source"] = given
    check_out(out_loc, st)
    ext = FORMATS[format]
    options = {"compress_level": png_level} if format == "png" else {"quality": quality}
    # an image over max_pixels is a tiled BigTIFF (unless dithered: then it is not written)
    exts = [TIFF_EXT if big and not dither else ext for big in large]
    # any source name makes a valid name: see streamq.names.output_name
    names, clashes = output_names([output_name(p) for p in coll.paths], exts)
    paths = [inside(out, names[i].split("/"), f"{i:08d}{exts[i]}") for i in chosen]
    manifest["renamed"] = [{"id": i, "path": coll.paths[i], "file": name}
                           for i, name in sorted(clashes.items())]
    renamed = [{"id": i, "path": coll.paths[i], "file": clashes[i]} for i in chosen
               if i in clashes]
    for r in renamed:
        log.debug("image %d (%s) is exported as %s: its name clashes with another's",
                  r["id"], r["path"], r["file"])
    retrying(lambda: check_manifest(out_loc, manifest, overwrite, paths), "write", out,
             cfg.retry, write=True)
    timings: dict[str, float] = {}
    path_of = dict(zip(chosen, paths, strict=True))
    root = os.path.realpath(out) if out_loc.is_local else out.rstrip("/")  # where paths start
    recorded = recorded_files(out_loc, fit_fp)
    # A file is done when a record of these labels names it with its checksum: locally each
    # task reads it back to compare; on an object store one listing of sizes does it here.
    todo = list(chosen)
    if not out_loc.is_local:
        sizes = out_loc.object_sizes()
        todo = [i for i in chosen if sizes.get(path_of[i]) != (
            recorded.get(record_key(root, path_of[i])) or (None, -1))[1]]
    # an image over max_pixels is a task of its own (a row of tiles at a time)
    groups = coll.groups_by_pixels([i for i in todo if not large[i]], PIXELS_PER_TASK)
    groups += [[i] for i in todo if large[i]]
    tasks = [[(i, path_of[i], int(coll.offsets[i]), int(coll.heights[i]), int(coll.widths[i]))
              for i in group] for group in groups]
    tmp_dir = os.path.join(out, TMP_DIR) if out_loc.is_local else None  # S3: one PUT per file
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a killed run
        os.makedirs(tmp_dir)
    n_colors = None  # a quality fit: each image's own K (its palette is padded to the largest)
    if per_image is not None and (chosen_k := per_image_quality(st)) is not None:
        n_colors = {i: int(chosen_k["k"][i]) for i in chosen}
    common = {"store": st.location, "out": out_loc, "palette": palette, "per_image": per_image,
              "format": format, "dither": dither, "options": options, "tmp_dir": tmp_dir,
              "retry": cfg.retry, "labels": identity, "fit": fit_fp, "root": root,
              "alpha": alpha, "tiled_over": None if dither else tiled_over,
              "tiff_level": png_level,
              **({"per_image_alpha": True} if rgba_per_image else {}),
              "background": st.section("ingest").get("settings", {}).get("background",
                                                                         [255, 255, 255])}
    written, existing = 0, len(chosen) - len(todo)

    def add(task: Task, result: tuple[int, int]) -> None:
        nonlocal written, existing
        written += result[0]
        existing += result[1]

    with timer("exporting", timings), runner(cfg.dask) as run:
        run.check_paths(st.path, out)
        run_tasks(run, [Task(export_task, {**common, "images": t, **_own_k(n_colors, t),
                                           "expect": {
                        r: recorded[r] for r in (record_key(root, item[1]) for item in t)
                        if r in recorded}}, len(t)) for t in tasks],
                  "exporting", "image", progress, on_result=add, total=len(chosen))
    if tmp_dir is not None:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    # The last check, before the summary: every record of this run names these labels.
    if read_identity(st.location, per_image, not dither) != identity:
        raise LabelsChangedError(labels_changed_message(st.path))
    retrying(lambda: merge_records(out_loc, fit_fp), "write", out, cfg.retry, write=True)
    summary = ExportSummary(out=out, format=format, n_images=len(chosen), n_written=written,
                            n_existing=existing, timings=timings, renamed=renamed,
                            manifest=out_loc.join(MANIFEST).url, too_large=too_large,
                            tiled=tiled)
    log.info("%s", summary)
    return summary


def _own_k(n_colors: dict[int, int] | None, images: list[Any]) -> dict[str, Any]:
    """The task argument ``n_colors`` (each image's own K) of a quality fit's images."""
    return {} if n_colors is None else {"n_colors": {item[0]: n_colors[item[0]] for item in images}}


def _large(st: Store, coll: Collection) -> tuple[int | None, list[bool]]:
    """``(the ingest's max_pixels, whether each image of the collection is over it)``: such an
    image was read in bands (:mod:`streamq.ingest.bands`) and is never encoded whole."""
    limit = st.section("ingest").get("settings", {}).get("max_pixels")
    if limit is None:
        return None, [False] * len(coll)
    sizes = coll.heights.astype(np.int64) * coll.widths.astype(np.int64)
    return int(limit), (sizes > int(limit)).tolist()


def _without_dithered(coll: Collection, chosen: list[int], too_large: list[int],
                      limit: int | None, large: list[bool]) -> tuple[list[int], list[int]]:
    """``(chosen images to write, those of them over max_pixels)``, less ``too_large``: with
    ``--dither`` an image over max_pixels is not written, as error diffusion runs over the
    whole image."""
    for i in too_large:
        log.warning("image %d (%s, %dx%d) is over max_pixels=%s: not written with --dither "
                    "(error diffusion needs the whole image); export it without --dither or "
                    "with --zarr", i, coll.paths[i], int(coll.widths[i]), int(coll.heights[i]),
                    limit)
    skip = set(too_large)
    chosen = [i for i in chosen if i not in skip]
    return chosen, [i for i in chosen if large[i]]
