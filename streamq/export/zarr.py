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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr

from streamq._version import __version__
from streamq.clock import timestamp
from streamq.config import StreamQConfig, fingerprint, parse_config
from streamq.console import timer
from streamq.durable import checksum
from streamq.errors import ConfigError, LabelsChangedError, StoreExistsError, StreamQError
from streamq.export.common import MANIFEST, check_out, labels_changed_message, listing
from streamq.fs import Location, check_access, location, storage_errors
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import (
    Collection,
    Store,
    compressors,
    open_array,
    store_location,
    write_record,
    write_rows,
    zarr_root,
)
from streamq.store.names import image_errors_path, labels_path, per_image_centers, per_image_palette
from streamq.store.results import labels_identity, load_fit, read_identity, ready_labels
from streamq.store.selection import parse_ids, select_images

__all__ = ["FORMAT_VERSION", "ZarrExportSummary", "export_zarr"]

log = logging.getLogger(__name__)

ATTR = "streamq_export"
FORMAT_VERSION = 1
ROW_CHUNK = 4096  # rows per chunk of the per-image palette arrays (and per client write)


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


@dataclass(frozen=True)
class _Result:
    """One labelling of the store to export: the shared palette's, or per-image K's."""

    group: str  # "" (shared palette, at the root) or "k{K}"
    labels: str  # the store's labels array
    errors: str | None  # prefix of the store's images/{mse,psnr[,ssim]}, when written
    info: dict[str, Any]  # what the export's attributes say about it
    identity: str  # the labels it was planned from (streamq.store.results.labels_identity)

    @property
    def k(self) -> int | None:
        """The per-image K (None: the shared palette)."""
        return int(self.info["k"]) if self.group else None

    def name(self, array: str) -> str:
        return f"{self.group}/{array}" if self.group else array


def _per_image_ks(per_image: int | Sequence[int] | None) -> list[int] | None:
    if per_image is None:
        return None
    ks = [per_image] if isinstance(per_image, int) else [int(k) for k in per_image]
    if not ks:
        raise ConfigError("--per-image names no K")
    return sorted(set(ks))


def _results(st: Store, ks: list[int] | None) -> list[_Result]:
    """What to export: the shared palette's labels, or those of each per-image K."""
    plan: list[tuple[str, int | None, dict[str, Any]]]
    if ks is None:
        fp = ready_labels(st, None)
        fit = load_fit(st.location)
        plan = [("", None, {"palette": "shared", "k": fit.k, "color_space": fit.color_space,
                                  "algorithm": fit.algorithm, "seed": fit.seed,
                                  "fit_fingerprint": fp,
                                  "palette_source": fit.palette_source})]
        if fit.alpha is not None:  # only then: an opaque collection's export is unchanged
            plan[0][2]["alpha"] = True
    else:
        pcfg = st.section("per_image").get("config", {})
        plan = [(f"k{k}", k, {
            "palette": "per-image", "k": k, "color_space": "rgb", "sample": pcfg.get("sample"),
            "seed": pcfg.get("seed"), "fit_fingerprint": ready_labels(st, k)}) for k in ks]
    results = []
    for group, k_of, info in plan:
        labels = labels_path(k_of)
        errors = image_errors_path(k_of)
        has_errors = st.has(f"{errors}/mse") and st.has(f"{errors}/psnr")
        has_ssim = has_errors and st.has(f"{errors}/ssim")  # quantize.ssim (streamq.ssim)
        pre = f"{group}/" if group else ""
        pal = f"{pre}palette[j]" if group else "palette"
        bands = 4 if info.get("alpha") else 3
        info = {"group": group, **info, "labels_dtype": str(open_array(st.location, labels).dtype),
                "errors": has_errors, "ssim": has_ssim,
                "read": f"image j = {pal}[{pre}labels[offset[j]:offset[j] + height[j] * width[j]]]"
                        f".reshape(height[j], width[j], {bands})"}
        k = int(info["k"]) if group else None
        results.append(_Result(group, labels, errors if has_errors else None, info,
                               labels_identity(st, k)))
    return results


def _layout(st: Store, n_pixels: int, chunk_pixels: int | None) -> tuple[int, int]:
    """``(shard, block)`` of the exported labels: the store's, or shards of ``chunk_pixels``."""
    store_shard, store_block = st.pixel_layout()
    shard = chunk_pixels or store_shard
    block = max(1, min(store_block, shard, n_pixels))
    return -(-max(1, min(shard, n_pixels)) // block) * block, block


def _id_ranges(ids: list[int]) -> str:
    """``0,2-5,9`` for ids 0, 2, 3, 4, 5, 9 (sorted)."""
    parts, start = [], None
    for j, i in enumerate(ids):
        if start is None:
            start = i
        if j + 1 == len(ids) or ids[j + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)


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
        instead of the shared palette's.
    overwrite : bool
        Replace an earlier export at ``out`` made from another store, palette or selection.
        Anything at ``out`` that is not a streamq Zarr export is never replaced.

    Returns
    -------
    ZarrExportSummary
        Status ``exported``, or ``already complete`` when ``out`` held this export finished
        (then nothing is written).
    """
    cfg = parse_config(config).replace(**{"dask.scheduler": scheduler})
    st = Store.open(store_location(store, storage_options, cfg.storage_options))
    coll = Collection(st)
    results = _results(st, _per_image_ks(per_image))
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
    shard, block = _layout(st, n_pixels, cfg.export.zarr_chunk_pixels)
    n_chunks = -(-n_pixels // shard)
    ingest = st.section("ingest")
    source = {"path": st.path, "source_root": ingest.get("root"),
              "source_fingerprint": ingest.get("source_fingerprint"),
              "settings_fingerprint": ingest.get("settings_fingerprint"), "n_images": len(coll)}
    selection = {"ids": None if parsed is None else _id_ranges(parsed), "labels": labels or None,
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

    old = _existing(out_loc)
    if old is not None and old.get("fingerprint") != fp and not overwrite:
        raise StoreExistsError(f"{out_loc.url} holds a Zarr export {_difference(old, attrs)}; "
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
        group = _open(out_loc)
    else:
        with timer("writing tables", timings):
            group = _create(out_loc, fp, replace=old is not None)
            dest = Store(out_loc, group)
            _write_tables(st, coll, dest, results, chosen, offsets)
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
                segments, n_img = _segments(src_offsets, offsets, sizes, lo, hi)
                tasks.append(Task(_copy_task, {
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


def _write_tables(st: Store, coll: Collection, dest: Store, results: list[_Result],
                  chosen: np.ndarray, offsets: np.ndarray) -> None:
    """The image table, then each result's palettes and per-image errors (client writes)."""
    dest.write_table("images", {
        "id": chosen, "path": [coll.paths[i] for i in chosen],
        "label": [coll.labels[i] for i in chosen], "height": coll.heights[chosen],
        "width": coll.widths[chosen], "offset": offsets})
    for r in results:
        if not r.group:
            fit = load_fit(st.location)
            palette = np.asarray(fit.palette, dtype=np.uint8)
            if fit.alpha is not None:  # straight RGBA
                palette = np.concatenate([palette, fit.alpha.reshape(-1, 1)], axis=1)
            dest.write_array("palette", palette)
            dest.write_array("centers", np.asarray(fit.centers, dtype=np.float64))
        else:
            k = int(r.info["k"])
            for src, dst in ((per_image_palette(k), "palette"), (per_image_centers(k), "centers")):
                _copy_rows(st, src, dest, r.name(dst), chosen)
        if r.errors is not None:
            errors = st.read_table(r.errors, ("mse", "psnr", "ssim") if r.info.get("ssim")
                                   else ("mse", "psnr"))
            dest.write_table(r.name("images"), {k: v[chosen] for k, v in errors.items()})


def _copy_rows(st: Store, src: str, dest: Store, dst: str, rows: np.ndarray) -> None:
    """Rows ``rows`` of the store's array ``src`` as a new array ``dst``, a block at a time."""
    a = st.array(src)
    arr = dest.create_array(dst, shape=(len(rows),) + tuple(a.shape[1:]), dtype=a.dtype,
                            chunks=(max(1, min(len(rows), ROW_CHUNK)),) + tuple(a.shape[1:]),
                            fill_value=0)
    for r0 in range(0, len(rows), ROW_CHUNK):
        part = rows[r0:r0 + ROW_CHUNK]
        arr[r0:r0 + len(part)] = a.get_orthogonal_selection((part,))


def _segments(src_offsets: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, lo: int,
              hi: int) -> tuple[list[list[int]], int]:
    """Source ranges ``[start, stop, output position]`` that fill output pixels ``[lo, hi)``
    (neighbouring images merged into one read), and how many images they touch."""
    ends = offsets + sizes
    i0 = int(np.searchsorted(ends, lo, side="right"))
    i1 = int(np.searchsorted(offsets, hi, side="left"))
    segs: list[list[int]] = []
    for i in range(i0, i1):
        a, b = max(lo, int(offsets[i])), min(hi, int(ends[i]))
        s = int(src_offsets[i]) + a - int(offsets[i])
        if segs and segs[-1][1] == s:  # the output is contiguous: merge when the source is
            segs[-1][1] = s + b - a
        else:
            segs.append([s, s + b - a, a])
    return segs, i1 - i0


def _check_source(args: dict[str, Any]) -> None:
    """Stop unless the store's labels are still those the export was planned from."""
    if args.get("identity") is not None and \
            read_identity(args["store"], args.get("per_image")) != args["identity"]:
        raise LabelsChangedError(labels_changed_message(args["store"].url))


def _chunk_ok(out: Location, args: dict[str, Any]) -> bool:
    """Whether the chunk an earlier run recorded holds what its record says (its CRC-32; the
    export's fingerprint names the fit, and labels are a function of it): then the task has
    nothing to do."""
    expect = args["expect"]
    try:
        data = np.asarray(open_array(out, args["labels"])[args["lo"]:args["hi"]])
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return False
    return "crc32" not in expect or checksum(data) == expect["crc32"]


def _copy_task(args: dict[str, Any]) -> dict[str, Any]:
    """Fill one chunk of an exported labels array, then record it (its own chunk); a chunk
    recorded by an earlier run is read back and kept when its checksum matches."""
    out: Location = args["out"]
    with storage_errors(args["store"]), storage_errors(out):
        if args.get("expect") is not None and _chunk_ok(out, args):
            return {**args["expect"], "status": "verified"}
        try:
            src = open_array(args["store"], args["source"])
            lo, hi = args["lo"], args["hi"]
            dest = open_array(out, args["labels"], mode="r+")
            buf = np.zeros(hi - lo, dtype=dest.dtype)
            for s0, s1, o0 in args["segments"]:
                buf[o0 - lo:o0 - lo + s1 - s0] = src[s0:s1]
        except Exception:
            _check_source(args)  # replaced meanwhile: say so rather than what failed
            raise
        _check_source(args)  # what was read is what the export was planned from
        write_rows(out, args["labels"], dest, lo, hi, buf)  # durable before its record
        report = {"pixels": hi - lo, "images": args["n_images"], "crc32": checksum(buf)}
        write_record(out, args["records"], args["chunk_index"], report)
    return {**report, "status": "written"}


# -- what is at OUT --------------------------------------------------------------------------
def _existing(out_loc: Location) -> dict[str, Any] | None:
    """The export attributes at ``out_loc``; None when there is nothing there. Anything
    else than a streamq Zarr export is refused (never replaced, even with ``overwrite``)."""
    # zarr's temporary files (``*.partial``) are what a kill while creating the group leaves
    entries = [e for e in out_loc.listdir() if not e.endswith(".partial")]
    if not entries:
        return None
    meta: Any = None
    if "zarr.json" in entries:
        try:
            meta = json.loads(out_loc.join("zarr.json").read_bytes())
        except (OSError, ValueError):
            meta = None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    attrs = attrs if isinstance(attrs, dict) else {}
    if isinstance(attrs.get(ATTR), dict):
        return dict(attrs[ATTR])
    if "streamq" in attrs:
        what = "a streamq store"
    elif meta is not None:
        what = "another Zarr store"
    elif MANIFEST in entries:
        what = "a streamq image export"
    else:
        shown = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = f"{len(entries)} entries: {shown}"
    raise StoreExistsError(f"{out_loc.url} exists and is not a streamq Zarr export (it holds "
                           f"{what}); choose another OUT (--overwrite replaces only an earlier "
                           "export)")


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why an existing export is another one, for the refusal."""
    o_src, n_src = old.get("store") or {}, new["store"]
    key = ("source_fingerprint", "settings_fingerprint")
    if [o_src.get(k) for k in key] != [n_src.get(k) for k in key]:
        return f"of another store ({o_src.get('path')})"
    o_res = [(r.get("group"), r.get("fit_fingerprint")) for r in old.get("results") or []]
    n_res = [(r["group"], r["fit_fingerprint"]) for r in new["results"]]
    if [g for g, _ in o_res] != [g for g, _ in n_res]:
        shown = ", ".join(g or "shared palette" for g, _ in o_res) or "none"
        return f"of other results ({shown})"
    if o_res != n_res:
        return (f"made with another fit (fingerprint {', '.join(str(f) for _, f in o_res)}; the "
                f"store's is now {', '.join(f for _, f in n_res)})")
    if (old.get("selection") or {}).get("ids_sha256") != new["selection"]["ids_sha256"]:
        return f"of another selection ({old.get('n_images')} images)"
    if old.get("format_version") != FORMAT_VERSION:
        return f"of format_version {old.get('format_version')}"
    return f"with another chunk layout ({old.get('chunk_pixels')} pixels per chunk)"


def _create(out_loc: Location, fp: str, replace: bool) -> zarr.Group:
    """A new, empty export group at ``out_loc``, its plan not yet written (state planning).

    When replacing an earlier export, everything but its ``zarr.json`` goes first: a kill
    meanwhile leaves a recognisable export (refused or replaced again), never stray arrays
    without it.
    """
    if replace:
        if out_loc.is_local:
            for name in os.listdir(out_loc.url):
                path = os.path.join(out_loc.url, name)
                if name == "zarr.json":
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        else:
            root = out_loc.join("zarr.json").url
            out_loc.remove_files(sorted(k for k in listing(out_loc) if k != root))
    with storage_errors(out_loc):
        return zarr.create_group(zarr_root(out_loc), overwrite=True, zarr_format=3, attributes={
            ATTR: {"format_version": FORMAT_VERSION, "state": "planning", "fingerprint": fp}})


def _open(out_loc: Location) -> zarr.Group:
    with storage_errors(out_loc):
        return zarr.open_group(zarr_root(out_loc), mode="r+", zarr_format=3)
