"""Quantize: a palette label for every pixel, chunk by chunk on Dask.

Each task owns one chunk of ``pixels`` and writes the same chunk of ``quantize/labels``
(uint8 for K <= 256, uint16 above), so no chunk has two writers. A label is the nearest
palette centre in the fit's colour space (exact; first centre on ties), found through a
lazily filled 2**24 lookup table kept by each worker (:class:`streamq.kmeans.table.LabelTable`);
for a palette with alpha, the nearest centre in premultiplied RGBA of each distinct colour of
the chunk (:class:`streamq.rgba.RgbaLabels`), errors over the four channels.
Each task then writes its completion record: the squared error of every image it touches,
from which per-image and collection MSE/PSNR are consolidated, and (``quantize.ssim``, on by
default) the sums of each image's SSIM map over its pixels in the chunk
(:mod:`streamq.ssim`; the task reads the few rows around its chunk the window needs). A
rerun runs only tasks without a record (or, when SSIM is wanted, without SSIM in it); a new
palette makes old labels stale, and they are recomputed.

``palette=SRC`` first makes a given palette (a palette file, an image or another store) the
store's shared palette (:mod:`streamq.quantize.remap`); it is then labelled like a fitted one.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq.clock import timestamp
from streamq.config import StreamQConfig, parse_config, replaced
from streamq.console import timer
from streamq.durable import checksum
from streamq.errors import ConfigError, StageNotReadyError, StreamQError
from streamq.faults import retrying
from streamq.fs import Location
from streamq.lock import store_lock
from streamq.metrics import errors_from_records, psnr
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import (
    ALPHA,
    PIXELS,
    Collection,
    Store,
    labels_dtype,
    open_array,
    store_location,
    write_record,
    write_rows,
)
from streamq.store.names import QUANTIZE, image_errors_path, label_records_path, labels_path
from streamq.store.results import labels_state, load_fit, recorded_labels_ok

if TYPE_CHECKING:
    from streamq.store.summaries import PerImageSummary

__all__ = ["QuantizeSummary", "labels_dtype", "quantize"]

log = logging.getLogger(__name__)

LABELS = labels_path()
RECORDS = label_records_path()
_TABLES: dict[str, Any] = {}  # per worker process: fit fingerprint -> LabelTable


@dataclass
class QuantizeSummary:
    store: str
    k: int
    n_images: int
    n_pixels: int
    mse: float
    psnr: float
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    ssim: float | None = None  # mean per-image SSIM (None: not computed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = (f"{self.status}: {self.n_pixels / 1e6:.2f} Mpx of {self.n_images} images labelled "
                f"with K={self.k}; collection MSE {self.mse:.2f}, PSNR {self.psnr:.2f} dB")
        return text + (f", mean SSIM {self.ssim:.4f}" if self.ssim is not None else "")


def _table(args: dict[str, Any]) -> Any:
    from streamq.kmeans.table import LabelTable
    from streamq.rgba import RgbaLabels

    key = args["fit_fingerprint"]
    table = _TABLES.get(key)
    if table is None:
        _TABLES.clear()  # one palette at a time: the table is 64 MiB
        if args.get("alpha") is not None:  # a palette with alpha: premultiplied RGBA
            table = RgbaLabels(np.asarray(args["centers"]), np.asarray(args["palette"]),
                               np.asarray(args["alpha"]), exact=args["space"] == "rgba8")
        else:
            table = LabelTable(np.asarray(args["centers"]), np.asarray(args["palette"]),
                               args["space"])
        _TABLES[key] = table
    return table


def _ssim_sums(args: dict[str, Any], table: Any, ext: np.ndarray, start: int, lo: int, hi: int,
               labels: np.ndarray, ext_alpha: np.ndarray | None = None
               ) -> list[list[float | int]]:
    """SSIM sums of the images of chunk ``[lo, hi)`` (``labels``), from the pixels ``ext``
    (and, with a palette with alpha, their alpha ``ext_alpha``) read from ``start`` on: the
    rows around the chunk are labelled again here. An image is compared on black and on
    white (:mod:`streamq.ssim`) when it has alpha or the palette has a translucent colour."""
    from streamq.ssim import chunk_ssim, composite_luts, luma

    def relabel(a: int, b: int) -> np.ndarray:
        one = np.asarray([b - a], np.int64)
        if ext_alpha is not None:
            return table.labels_sse(ext[a:b], ext_alpha[a:b], labels.dtype, one)[0]
        return table.labels_sse(ext[a:b], labels.dtype, one)[0]

    parts = [labels]
    if start < lo:
        parts.insert(0, relabel(0, lo - start))
    if start + len(ext) > hi:
        parts.append(relabel(hi - start, len(ext)))
    palette = np.asarray(args["palette"], dtype=np.uint8)
    lut = luma(palette)
    both = None  # a palette with alpha: its luma on black and on white
    with_alpha = set(args.get("with_alpha") or ())
    if args.get("alpha") is not None:
        from streamq.rgba import premultiplied

        pal_alpha = np.asarray(args["alpha"], dtype=np.uint8)
        both = composite_luts(premultiplied(palette, pal_alpha))
        if (pal_alpha < 255).any():  # its quantized images may be translucent: every image
            with_alpha = {int(i) for i, _, _ in args["images"]}

    def lut_of(image_id: int) -> np.ndarray:
        return both if both is not None and image_id in with_alpha else lut
    return chunk_ssim(ext, np.concatenate(parts) if len(parts) > 1 else labels, start, lo, hi,
                      args["images"], args["shapes"], lut_of, alpha=ext_alpha)


def _quantize_task(args: dict[str, Any]) -> dict[str, Any]:
    c, chunk, store, retry = args["chunk_index"], args["chunk"], args["store"], args.get("retry")
    pixels = open_array(store, PIXELS)
    lo = c * chunk
    hi = min(lo + chunk, pixels.shape[0])
    want_ssim = args.get("ssim", False)
    start, stop = lo, hi  # the pixels read: the chunk, and the rows around it SSIM needs
    if want_ssim:
        from streamq.ssim import halo

        start, stop = halo(args["images"], args["shapes"], lo, hi)

    def read() -> np.ndarray:
        return retrying(lambda: np.asarray(pixels[start:stop]), "read", store.join(PIXELS).url,
                        retry)

    def read_alpha() -> np.ndarray | None:  # a palette with alpha: the pixels' alpha too
        if args.get("alpha") is None:
            return None
        return retrying(lambda: np.asarray(open_array(store, ALPHA)[start:stop]), "read",
                        store.join(ALPHA).url, retry)

    expect = args.get("expect")
    if expect is not None:  # recorded by an earlier run: keep it if its labels are intact
        if recorded_labels_ok(store, LABELS, lo, hi, expect, args["fit_fingerprint"], retry):
            if not want_ssim or "ssim" in expect:
                return {**expect, "status": "verified"}
            # labelled without SSIM (--no-ssim): the same labels again, in memory, for it
            ext, ext_alpha = read(), read_alpha()
            dtype = labels_dtype(len(args["palette"]))
            one = np.asarray([hi - lo], np.int64)
            own = ext[lo - start:hi - start]
            labels = (_table(args).labels_sse(own, dtype, one) if ext_alpha is None else
                      _table(args).labels_sse(own, ext_alpha[lo - start:hi - start], dtype,
                                              one))[0]
            report = {**expect, "ssim": _ssim_sums(args, _table(args), ext, start, lo, hi,
                                                   labels, ext_alpha)}
            retrying(lambda: write_record(store, RECORDS, c, report), "write",
                     store.join(RECORDS).url, retry, write=True)
            return {**report, "status": "ssim added"}
    ext, ext_alpha = read(), read_alpha()
    rgb = ext[lo - start:hi - start]
    out = open_array(store, LABELS, mode="r+")
    # Segments of this shard: each image's part of it, and the gaps between (skipped inputs).
    bounds, seg_of = [], []
    pos = 0
    for _, off, size in args["images"]:
        a, b = max(off, lo) - lo, min(off + size, hi) - lo
        if a > pos:
            bounds.append(a)  # a gap
        seg_of.append(len(bounds))
        bounds.append(b)
        pos = b
    if pos < hi - lo:
        bounds.append(hi - lo)
    if ext_alpha is not None:
        labels, seg_sse = _table(args).labels_sse(rgb, ext_alpha[lo - start:hi - start],
                                                  out.dtype, np.asarray(bounds, np.int64))
    else:
        labels, seg_sse, _ = _table(args).labels_sse(rgb, out.dtype, np.asarray(bounds, np.int64))

    def write_labels() -> None:
        write_rows(store, LABELS, out, lo, hi, labels)  # durable before the record

    retrying(write_labels, "write", store.join(LABELS).url, retry, write=True)
    sse = [[int(image_id), int(seg_sse[s])]
           for (image_id, _, _), s in zip(args["images"], seg_of, strict=True)]
    report = {"sse": sse, "pixels": int(hi - lo), "crc32": checksum(labels),
              "fit": args["fit_fingerprint"]}
    if want_ssim:
        report["ssim"] = _ssim_sums(args, _table(args), ext, start, lo, hi, labels, ext_alpha)
    retrying(lambda: write_record(store, RECORDS, c, report), "write", store.join(RECORDS).url,
             retry, write=True)  # the completion record, after the labels
    return {**report, "status": "redone" if expect is not None else "ran"}


def quantize(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
             progress: bool | None = None, scheduler: str | None = None,
             storage_options: dict[str, Any] | None = None,
             overwrite: bool = False, palette: str | os.PathLike[str] | None = None,
             color_space: str | None = None, ssim: bool | None = None
             ) -> QuantizeSummary | PerImageSummary:
    """Label every pixel of ``store`` with its nearest palette colour (resumable).

    Labels are computed for the shared palette and for per-image palettes, whichever are
    fitted. ``storage_options`` are those of the store's filesystem when it is a URL
    (default: ``config``'s). ``overwrite`` computes every label again, even up-to-date ones.

    ``palette`` (default: ``config``'s key ``quantize.palette``, and ``color_space`` its
    ``quantize.color_space``) labels with a given palette instead of a fitted one: a ``.gpl``, ``.act``,
    ``.json`` or ``.hex``/``.txt`` file, an image or another store (see
    :mod:`streamq.palettes`), which becomes the store's shared palette (see
    :mod:`streamq.quantize.remap`). ``color_space`` (``rgb`` or ``oklab``) is the space
    distances are measured in (default: the source store's fit's, else this store's fit's,
    else ``rgb``); ``overwrite`` replaces another palette of the store (a fit or another given
    palette). The same palette again changes nothing.

    ``ssim`` (default: ``config``'s ``quantize.ssim``, true) also computes each image's SSIM
    (:mod:`streamq.ssim`); labels recorded without it get it on the next run that wants it.

    Returns
    -------
    QuantizeSummary or PerImageSummary
        With the collection's exact MSE and PSNR (per-image values are in the store); a
        ``PerImageSummary`` when only per-image palettes are fitted.
    """
    from streamq.colorspace import SPACES

    cfg = replaced(parse_config(config), {"dask.scheduler": scheduler, "quantize.ssim": ssim})
    palette = palette if palette is not None else cfg.quantize.palette  # or key quantize.*
    color_space = color_space if color_space is not None else cfg.quantize.color_space
    if palette is None and color_space is not None:
        raise ConfigError("color_space applies to a given palette (--palette SRC, or key "
                          "'quantize.palette')")
    if color_space is not None and color_space not in SPACES:
        raise ConfigError(f"color_space {color_space!r} is not one of {', '.join(SPACES)}")
    loc = store_location(store, storage_options, cfg.storage_options)
    with store_lock(loc, operation="quantize", config=cfg.lock):
        if palette is not None:
            from streamq.quantize.remap import use_palette

            use_palette(Store.open(loc, mode="r+"), palette, cfg, color_space=color_space,
                        overwrite=overwrite, progress=progress, storage_options=storage_options)
        return _quantize(loc, cfg, progress, overwrite)


def _quantize(store: Location, cfg: StreamQConfig, progress: bool | None,
              overwrite: bool = False) -> QuantizeSummary | PerImageSummary:
    from streamq.quantize.per_image import quantize_per_image

    st = Store.open(store, mode="r+")
    shared = st.section("fit").get("state") == "complete"
    per_image = st.section("per_image").get("state") == "complete"
    if not shared and not per_image:
        raise StageNotReadyError(f"{st.path} has no fitted palette", "streamq fit")
    result: QuantizeSummary | PerImageSummary | None = (
        _quantize_shared(st, cfg, progress, overwrite) if shared else None)
    if per_image:
        summary = quantize_per_image(st.location, config=cfg, progress=progress,
                                     overwrite=overwrite)
        result = result or summary
    assert result is not None, "a store with a fitted palette has labels"
    return result


def _quantize_shared(st: Store, cfg: StreamQConfig, progress: bool | None,
                     overwrite: bool = False) -> QuantizeSummary:
    coll = Collection(st)
    fit_sec = st.section("fit")
    fit_fp = fit_sec["fingerprint"]
    sec = st.section(QUANTIZE)
    want_ssim = cfg.quantize.ssim
    if labels_state(st)[0] == "complete" and not overwrite:
        if sec.get("ssim") or not want_ssim:
            log.info("Labels in %s are up to date; nothing to do", st.path)
            return _summary(st, "already complete", sec.get("timings", {}))
        log.info("Labels in %s are up to date; computing their SSIM", st.path)
    result = load_fit(st.location)
    pixels = st.pixels()
    chunk, _ = st.pixel_layout()
    n_chunks = -(-int(pixels.shape[0]) // chunk)
    timings: dict[str, float] = {}

    def write(fn: Any) -> None:  # a step of the client that writes the store: retried whole
        retrying(fn, "write", st.path, cfg.retry, write=True)

    if sec.get("fit_fingerprint") != fit_fp or sec.get("state") not in ("running", "complete") \
            or overwrite:
        if sec and not overwrite:
            log.info("Palette changed since the last quantize: recomputing all labels")
        # A new labelling: readers (export) see that the labels they read may change under them
        labels_id = uuid.uuid4().hex

        def start() -> None:
            st.set_section(QUANTIZE, {"state": "starting", "fit_fingerprint": fit_fp,
                                      "labels_id": labels_id})
            st.create_labels(LABELS, labels_dtype(result.k))
            st.create_records(RECORDS, n_chunks)
            st.set_section(QUANTIZE, {"state": "running", "fit_fingerprint": fit_fp, "k": result.k,
                                      "labels_id": labels_id})

        write(start)
    records = st.records(RECORDS)
    space, centers = result.label_space()  # a given palette in RGB: integer distances
    common = {"store": st.location, "chunk": chunk, "fit_fingerprint": fit_fp, "space": space,
              "centers": centers.tolist(), "palette": result.palette.tolist(),
              "retry": cfg.retry, "ssim": want_ssim}
    if result.alpha is not None:  # a palette with alpha: errors over premultiplied RGBA
        common["alpha"] = result.alpha.tolist()
    # the images whose SSIM compares them on black and on white (streamq.ssim)
    with_alpha = ({int(i) for i in np.flatnonzero(coll.has_alpha)}
                  if result.alpha is not None and want_ssim else set())
    with timer("labelling", timings), runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        tasks = []
        for c in range(n_chunks):  # recorded chunks too: each task checks its record first
            images = coll.overlapping(c * chunk, (c + 1) * chunk)
            shapes = [[int(coll.heights[i]), int(coll.widths[i])] for i, _, _ in images]
            expect = json.loads(records[c]) if records[c] else None
            extra = ({"with_alpha": [i for i, _, _ in images if i in with_alpha]}
                     if with_alpha else {})
            tasks.append(Task(_quantize_task, {**common, "chunk_index": c, "images": images,
                                               "shapes": shapes, "expect": expect, **extra},
                              key=c))
        run_tasks(run, tasks, "quantizing", "chunk", progress, redone="label chunk(s)", logger=log,
                  on_result=lambda task, report: report.get("status") == "redone")
    with timer("consolidating", timings):
        channels = 3 if result.alpha is None else 4
        write(lambda: _consolidate(st, coll, fit_fp, result.k, timings, facts, want_ssim,
                                   channels))
    write(lambda: st.set_section(QUANTIZE, {**st.section(QUANTIZE), "timings": timings}))
    summary = _summary(st, "quantized", timings)
    log.info("%s", summary)
    return summary


def _consolidate(st: Store, coll: Collection, fit_fp: str, k: int, timings: dict[str, float],
                 facts: dict[str, Any], want_ssim: bool = False, channels: int = 3) -> None:
    records = st.records(RECORDS)
    if any(not r for r in records):
        raise StreamQError(f"{st.path}: some quantize tasks have no completion record; rerun quantize")
    sizes = coll.heights * coll.widths
    errors = errors_from_records(records, sizes, channels)
    stats: dict[str, Any] = {"ssim": want_ssim}
    if want_ssim:
        from streamq.ssim import ssim_from_records, ssim_stats

        errors["ssim"] = ssim_from_records(records, np.stack([coll.heights, coll.widths], 1))
        stats.update(ssim_stats(errors["ssim"]))
    elif st.has(f"{image_errors_path()}/ssim"):  # of earlier labels: not these
        st.remove(f"{image_errors_path()}/ssim")
    st.write_table(image_errors_path(), errors)
    total = float(errors["sse"].sum() / max(1, channels * sizes.sum()))
    st.set_section(QUANTIZE, {"state": "complete", "fit_fingerprint": fit_fp, "k": k,
                              "labels_id": st.section(QUANTIZE).get("labels_id"),
                              "mse": total, "psnr": psnr(total), **stats, "timings": timings,
                              "runtime": facts, "finished": timestamp()})


def _summary(st: Store, status: str, timings: dict[str, float]) -> QuantizeSummary:
    sec = st.section(QUANTIZE)
    coll = Collection(st)
    return QuantizeSummary(store=st.path, k=sec["k"], n_images=len(coll), n_pixels=coll.n_pixels,
                           mse=sec["mse"], psnr=sec["psnr"], status=status, timings=timings,
                           ssim=sec.get("ssim_mean") if sec.get("ssim") else None)
