"""Export as arrays: the quantized collection as a stand-alone Zarr v3 store.

``export_zarr(STORE, OUT)`` (``streamq export STORE OUT.zarr --zarr``) copies out of a store
what downstream code needs to rebuild every quantized image -- labels, palettes and the image
table -- and nothing else: no pixels, no working state, no image files. Layout
(format_version 1, described in ``docs/store-format.md``)::

    OUT.zarr/
      zarr.json                       attribute "streamq_export": format, state, source, results
      images/{id,path,label,height,width,offset}   one row per exported image
      palette, centers, labels        the shared palette's result (K,3) uint8, (K,3) float, (P,)
                                      (a palette with alpha: (K,4) straight RGBA uint8 and
                                      (K,4) premultiplied RGBA float centres)
      images/{mse,psnr[,ssim]}        its per-image errors (and SSIM), when quantize wrote them
      k{K}/{palette,centers,labels,images/{mse,psnr[,ssim]}}   or one group per per-image K:
                                      (n,K,3) palettes and centres, one row per exported image
                                      (with alpha: (n,K,4), as the shared palette's)
      k{HI}/quality/{k,mse,psnr,met,reason}   a per-image quality fit: each image's own K
                                      (its palette row is padded to HI), its error, why below MIN
      label_records, k{K}/label_records   completion record of each chunk of a labels array

Labels are re-packed: the exported images lie back to back from offset 0, in id order, so
image ``j`` is ``palette[labels[offset[j]:offset[j] + height[j] * width[j]]]``.

Each Dask task owns one chunk (shard) of one output labels array: it reads the matching
ranges of the store's labels, writes its chunk, then its completion record, so a rerun after
``kill -9`` runs only chunks without a record and a finished export is left untouched.
Tables and palettes are small and written by the client before any task starts (a kill then
makes the rerun write them again). An OUT that holds anything but an export of the same
store, palette and selection is refused; ``overwrite`` replaces an earlier export, never
other data.

This module is the stage's driver (:func:`export_zarr`): what the export holds is planned by
:mod:`streamq.export.zarr_plan`, OUT checked and created by :mod:`streamq.export.zarr_out`, the
image table and palettes written by :mod:`streamq.export.zarr_tables` and the labels copied by
the tasks of :mod:`streamq.export.zarr_copy`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq._version import __version__
from streamq.clock import timestamp
from streamq.config import StreamQConfig, fingerprint, parse_config, replaced
from streamq.console import timer
from streamq.errors import ConfigError, LabelsChangedError, StoreExistsError, StreamQError
from streamq.export.common import check_out, labels_changed_message
from streamq.export.zarr_copy import chunk_segments, copy_task
from streamq.export.zarr_out import create_export, difference, open_export, read_existing
from streamq.export.zarr_plan import (
    ATTR,
    FORMAT_VERSION,
    id_ranges,
    labels_layout,
    per_image_ks,
    plan_results,
)
from streamq.export.zarr_tables import write_tables
from streamq.fs import Location, check_access, location
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import Collection, Store, compressors, store_location
from streamq.store.results import default_per_image, labels_identity, ready_labels
from streamq.store.selection import parse_ids, select_images

__all__ = ["FORMAT_VERSION", "ZarrExportSummary", "export_zarr"]

log = logging.getLogger(__name__)


@dataclass
class ZarrExportSummary:
    out: str
    results: list[str]
    n_images: int
    n_pixels: int
    n_chunks: int  # label chunks in the export, over all results
    n_written: int  # label chunks written by this run
    n_existing: int  # label chunks found complete
    status: str
    format: str = "zarr"
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.status}: {self.n_images} images ({self.n_pixels / 1e6:.2f} Mpx, "
                f"{', '.join(self.results)}) as Zarr arrays in {self.out} ({self.n_written} label "
                f"chunks written, {self.n_existing} already there)")


def export_zarr(store: str | Location, out: str | Location, *, labels: list[str] | None = None,
                ids: str | list[int] | None = None, per_image: int | Sequence[int] | None = None,
                overwrite: bool = False, config: StreamQConfig | dict[str, Any] | None = None,
                scheduler: str | None = None, progress: bool | None = None,
                storage_options: dict[str, Any] | None = None) -> ZarrExportSummary:
    """Write the labels, palettes and image table of ``store`` as a Zarr store at ``out``.

    Parameters
    ----------
    store, out : str or Location
        Local paths or URLs (``s3://bucket/faces-labels.zarr``); ``storage_options`` (default:
        ``config``'s, else the store's) reach both.
    labels, ids : optional
        Export only the images with these labels / ids (``"0,5,10-20"`` or a list); their
        labels are re-packed back to back and their offsets re-numbered from 0.
    per_image : int or list of int, optional
        Export the per-image palettes and labels of these K (one group ``k{K}`` each)
        instead of the shared palette's. Default: the shared palette's, or when the store
        has none but a per-image quality fit, that fit's one group ``k{HI}``.
    overwrite : bool
        Replace an earlier export at ``out`` made from another store, palette or selection.
        Anything at ``out`` that is not a streamq Zarr export is never replaced.

    Returns
    -------
    ZarrExportSummary
        Status ``exported``, or ``already complete`` when ``out`` held this export finished
        (then nothing is written).
    """
    cfg = replaced(parse_config(config), {"dask.scheduler": scheduler})
    st = Store.open(store_location(store, storage_options, cfg.storage_options))
    coll = Collection(st)
    if per_image is None:  # a per-image quality fit and no shared palette: its one K group
        per_image = default_per_image(st)
    results = plan_results(st, per_image_ks(per_image))
    parsed = parse_ids(ids, len(coll))
    chosen = np.asarray(select_images(coll, labels, parsed), dtype=np.int64)
    if not len(chosen):
        raise ConfigError("the selection (--ids / --label) holds no image; nothing to export")
    out_loc = location(out, storage_options if storage_options is not None
                       else (cfg.storage_options or st.location.options))
    check_access(out_loc)
    check_out(out_loc, st)

    sizes = coll.heights[chosen] * coll.widths[chosen]
    offsets = np.zeros(len(chosen), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    n_pixels = int(sizes.sum())
    shard, block = labels_layout(st, n_pixels, cfg.export.zarr_chunk_pixels)
    n_chunks = -(-n_pixels // shard)
    ingest = st.section("ingest")
    source = {"path": st.path, "source_root": ingest.get("root"),
              "source_fingerprint": ingest.get("source_fingerprint"),
              "settings_fingerprint": ingest.get("settings_fingerprint"), "n_images": len(coll)}
    selection = {"ids": None if parsed is None else id_ranges(parsed), "labels": labels or None,
                 "ids_sha256": hashlib.sha256(chosen.astype("<i8").tobytes()).hexdigest()}
    fp = fingerprint({"format_version": FORMAT_VERSION,
                      "data": [source["source_fingerprint"], source["settings_fingerprint"]],
                      "results": [[r.group, r.info["fit_fingerprint"]] for r in results],
                      "ids": selection["ids_sha256"], "layout": [shard, block]})
    attrs: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "state": "writing", "fingerprint": fp,
        "created_with": __version__, "store": source, "selection": selection,
        "n_images": len(chosen), "n_pixels": n_pixels, "chunk_pixels": shard,
        "block_pixels": block, "results": [r.info for r in results]}
    names = [("shared" if not r.group else "per-image") + f" K={r.info['k']}" for r in results]

    old = read_existing(out_loc)
    if old is not None and old.get("fingerprint") != fp and not overwrite:
        raise StoreExistsError(f"{out_loc.url} holds a Zarr export {difference(old, attrs)}; "
                               "pass --overwrite to replace it")
    same = old is not None and old.get("fingerprint") == fp
    total = n_chunks * len(results)
    if same and old is not None and old.get("state") == "complete":
        log.info("%s already holds this export; nothing to do", out_loc.url)
        return ZarrExportSummary(out=out_loc.url, results=names, n_images=len(chosen),
                                 n_pixels=n_pixels, n_chunks=total, n_written=0, n_existing=total,
                                 status="already complete", timings={})
    timings: dict[str, float] = {}
    if same and old is not None and old.get("state") == "writing":
        group = open_export(out_loc)
    else:
        with timer("writing tables", timings):
            group = create_export(out_loc, fp, replace=old is not None)
            dest = Store(out_loc, group)
            write_tables(st, coll, dest, results, chosen, offsets)
            settings = ingest.get("settings", {})
            for r in results:
                dest.create_array(r.name("labels"), shape=(n_pixels,), dtype=r.info["labels_dtype"],
                                  shards=(shard,) if shard > block else None, chunks=(block,),
                                  fill_value=0, dimension_names=["pixel"],
                                  compressors=compressors(settings.get("codec", "lz4"),
                                                          settings.get("level")))
                dest.create_records(r.name("label_records"), n_chunks)
            dest.set_section(ATTR, attrs)  # the plan is complete: from here on, resume
    dest = Store(out_loc, group)
    src_offsets = coll.offsets[chosen]
    done = written = 0

    def count(task: Task, result: dict[str, Any]) -> None:
        nonlocal done, written
        if result.get("status") == "verified":
            done += 1
        else:
            written += 1

    with timer("copying labels", timings), runner(cfg.dask) as run:
        run.check_paths(st.path, out_loc.url)
        facts = run.facts()
        tasks = []
        for r in results:
            records = dest.records(r.name("label_records"))
            for c in range(n_chunks):  # recorded chunks too: each task checks its record first
                lo, hi = c * shard, min((c + 1) * shard, n_pixels)
                segments, n_img = chunk_segments(src_offsets, offsets, sizes, lo, hi)
                tasks.append(Task(copy_task, {
                    "store": st.location, "out": out_loc, "source": r.labels,
                    "labels": r.name("labels"), "records": r.name("label_records"),
                    "chunk_index": c, "lo": lo, "hi": hi, "segments": segments,
                    "n_images": n_img, "per_image": r.k, "identity": r.identity,
                    "expect": json.loads(records[c]) if records[c] else None}))
        run_tasks(run, tasks, "exporting labels", "chunk", progress, on_result=count)
    now = Store.open(st.location)  # attributes as they are now, not as first read
    for r in results:
        if any(not rec for rec in dest.records(r.name("label_records"))):
            raise StreamQError(f"{out_loc.url}: some label chunks of {r.name('labels')} have no "
                               "completion record; rerun the export")
        # readers do not lock the store: a refit meanwhile would have mixed two palettes
        if ready_labels(now, r.k) != r.info["fit_fingerprint"]:
            raise StreamQError(f"{st.path} was refitted during the export to {out_loc.url}; "
                               "rerun the export with --overwrite")
        if labels_identity(now, r.k) != r.identity:  # quantized again meanwhile
            raise LabelsChangedError(labels_changed_message(st.path))
    dest.set_section(ATTR, {**dest.section(ATTR), "state": "complete", "timings": timings,
                            "runtime": facts, "finished": timestamp()})
    summary = ZarrExportSummary(out=out_loc.url, results=names, n_images=len(chosen),
                                n_pixels=n_pixels, n_chunks=total, n_written=written,
                                n_existing=done, status="exported", timings=timings)
    log.info("%s", summary)
    return summary
