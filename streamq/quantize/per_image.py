"""Labels with the per-image palettes: every pixel labelled with its image's own palette,
chunk by chunk on Dask, for every K that ``fit --per-image`` fitted (:mod:`streamq.per_image`).

Each task owns one chunk of ``pixels`` and writes the same chunk of ``per_image/k{K}/labels``,
then its completion record: the squared error of every image it touches and (with SSIM) the
sums of each image's SSIM map over its pixels in the chunk. A rerun keeps the chunks whose
record and labels are intact; new palettes make old labels stale. :func:`quantize` runs it
after the shared-palette labels when the store has per-image palettes.

An image with alpha (its palette RGBA, ``per_image/k{K}/alpha``) is labelled by exact nearest
centre in premultiplied RGBA (:class:`streamq.rgba.RgbaLabels`, ties to the lowest index) and
its errors are over premultiplied RGBA, four channels, and its SSIM is the mean of those on
black and on white (:mod:`streamq.ssim`); an opaque image beside it as in a store without
alpha.

Layout: ``per_image/k{K}/labels`` the ``(P,)`` labels, ``per_image/k{K}/label_records`` one
record per chunk, ``per_image/k{K}/images/{sse,mse,psnr,ssim}`` the per-image errors, section
``per_image_quantize_k{K}`` the state.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.config import StreamQConfig, parse_config, replaced
from streamq.console import timer
from streamq.durable import checksum
from streamq.errors import StageNotReadyError
from streamq.faults import retrying
from streamq.fs import Location, check_access
from streamq.lock import store_lock
from streamq.metrics import errors_from_records
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
from streamq.store.names import (
    PER_IMAGE,
    image_errors_path,
    label_records_path,
    labels_path,
    per_image_alpha,
    per_image_centers,
    per_image_palette,
)
from streamq.store.results import labels_state
from streamq.store.summaries import PerImageSummary, per_image_summary

__all__ = ["quantize_per_image"]

log = logging.getLogger(__name__)


def _label_task(args: dict[str, Any]) -> dict[str, Any]:
    from streamq.kmeans.table import label_pixels

    store, c, chunk, k = args["store"], args["chunk_index"], args["chunk"], args["k"]
    pixels = open_array(store, PIXELS)
    lo = c * chunk
    hi = min(lo + chunk, pixels.shape[0])
    name = labels_path(k)
    want_ssim = args.get("ssim", False)
    expect = args.get("expect")
    verified = False  # labels recorded and intact, their SSIM missing (labelled with --no-ssim)
    if expect is not None:  # recorded by an earlier run: keep it if its labels are intact
        from streamq.store.results import recorded_labels_ok

        if recorded_labels_ok(store, name, lo, hi, expect, args["fit"], args.get("retry")):
            if not want_ssim or "ssim" in expect:
                return {**expect, "status": "verified"}
            verified = True
    start, stop = lo, hi  # the pixels read: the chunk, and the rows around it SSIM needs
    if want_ssim:
        from streamq.ssim import halo

        start, stop = halo(args["images"], args["shapes"], lo, hi)
    ext = np.asarray(pixels[start:stop])
    rgb = ext[lo - start:hi - start]
    labels = np.zeros(hi - lo, dtype=labels_dtype(k))
    centers = open_array(store, per_image_centers(k))
    palettes = open_array(store, per_image_palette(k))
    ids = [i for i, _, _ in args["images"]]
    cen = np.asarray(centers[min(ids):max(ids) + 1]) if ids else None
    pal = np.asarray(palettes[min(ids):max(ids) + 1]) if ids else None
    with_alpha = set(args.get("with_alpha") or ())  # images with alpha: RGBA palettes
    alpha = ext_alpha = pal_alpha = None
    if with_alpha:  # (with SSIM: the rows around the chunk too)
        ext_alpha = np.asarray(open_array(store, ALPHA)[start:stop])
        alpha = ext_alpha[lo - start:hi - start]
        pal_alpha = np.asarray(open_array(store, per_image_alpha(k))[min(ids):max(ids) + 1])

    def one(image: tuple[int, int, int]) -> list[int]:
        assert cen is not None, "read for the images of this chunk"
        assert pal is not None, "read for the images of this chunk"
        image_id, off, size = image
        a, b = max(off, lo) - lo, min(off + size, hi) - lo
        j = image_id - min(ids)
        if image_id in with_alpha:  # exact nearest centre in premultiplied RGBA
            from streamq.rgba import RgbaLabels

            assert alpha is not None, "read for the images with alpha"
            assert pal_alpha is not None, "read for the images with alpha"
            rgba = RgbaLabels(cen[j], pal[j], pal_alpha[j], table=False)  # one image: no table
            lab, sse = rgba.labels_sse(rgb[a:b], alpha[a:b], labels.dtype,
                                       np.zeros(0, np.int64))
            labels[a:b] = lab
            return [int(image_id), int(sse[0])]
        lab, err, _ = label_pixels(rgb[a:b], cen[j][:, :3], pal[j])  # exact nearest centre
        labels[a:b] = lab
        return [int(image_id), err]

    threads = min(args.get("threads", 1), len(ids), os.cpu_count() or 1)
    if threads > 1:  # fewer chunks than workers: this task uses the idle cores (no GIL held)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            sse = list(pool.map(one, args["images"]))
    else:
        sse = [one(image) for image in args["images"]]
    retry = args.get("retry")
    if verified:
        report = dict(expect or {})
    else:
        out = open_array(store, name, mode="r+")

        def write_labels() -> None:
            write_rows(store, name, out, lo, hi, labels)  # durable before the record

        retrying(write_labels, "write", store.join(name).url, retry, write=True)
        report = {"sse": sse, "crc32": checksum(labels), "fit": args["fit"]}
    if want_ssim:
        from streamq.ssim import chunk_ssim, composite_luts, luma

        assert cen is not None, "a chunk overlaps at least one image"
        assert pal is not None, "a chunk overlaps at least one image"

        def relabel(image_id: int, a: int, b: int) -> np.ndarray:
            """The pixels ``ext[a:b]`` of ``image_id`` labelled with its palette."""
            j = image_id - min(ids)
            if image_id in with_alpha:
                from streamq.rgba import RgbaLabels

                assert ext_alpha is not None, "read for the images with alpha"
                assert pal_alpha is not None, "read for the images with alpha"
                return RgbaLabels(cen[j], pal[j], pal_alpha[j], table=False).labels_sse(
                    ext[a:b], ext_alpha[a:b], labels.dtype, np.zeros(0, np.int64))[0]
            return label_pixels(ext[a:b], cen[j][:, :3], pal[j])[0].astype(labels.dtype)

        def lut_of(image_id: int) -> np.ndarray:  # with alpha: on black and on white
            j = image_id - min(ids)
            if image_id in with_alpha:
                from streamq.rgba import premultiplied

                assert pal_alpha is not None, "read for the images with alpha"
                return composite_luts(premultiplied(pal[j], pal_alpha[j]))
            return luma(pal[j])

        parts = [labels]  # the rows around the chunk, labelled again with their image's palette
        if start < lo:
            parts.insert(0, relabel(args["images"][0][0], 0, lo - start))
        if stop > hi:
            parts.append(relabel(args["images"][-1][0], hi - start, stop - start))
        report["ssim"] = chunk_ssim(ext, np.concatenate(parts), start, lo, hi, args["images"],
                                    args["shapes"], lut_of, alpha=ext_alpha)
    records = label_records_path(k)
    retrying(lambda: write_record(store, records, c, report), "write", store.join(records).url,
             retry, write=True)  # the completion record, after the labels
    status = "ssim added" if verified else "redone" if expect is not None else "ran"
    return {**report, "status": status}


def quantize_per_image(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
                       progress: bool | None = None, scheduler: str | None = None,
                       storage_options: dict[str, Any] | None = None,
                       overwrite: bool = False) -> PerImageSummary:
    """Label every pixel with its image's own palette, for every fitted K (resumable;
    ``overwrite`` labels again even the K whose labels are up to date)."""
    cfg = replaced(parse_config(config), {"dask.scheduler": scheduler})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="quantize --per-image", config=cfg.lock):
        return _quantize_per_image(loc, cfg, progress, overwrite)


def _quantize_per_image(store: Location, cfg: StreamQConfig, progress: bool | None,
                        overwrite: bool = False) -> PerImageSummary:
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    sec = st.section(PER_IMAGE)
    if sec.get("state") != "complete":
        raise StageNotReadyError(f"{st.path} has no per-image palettes", "streamq fit --per-image")
    fp = sec["fingerprint"]
    pixels = st.pixels()
    chunk, _ = st.pixel_layout()
    n_chunks = -(-int(pixels.shape[0]) // chunk)
    sizes = coll.heights * coll.widths
    timings: dict[str, float] = {}
    sections = {k: st.section(f"per_image_quantize_k{k}") for k in sec["colors"]}
    want_ssim = cfg.quantize.ssim
    # the errors of an image with alpha are over premultiplied RGBA, of an opaque one over RGB
    channels = np.where(coll.has_alpha, 4, 3) if coll.n_alpha else 3

    def up_to_date(k: int) -> bool:  # labels of these palettes (SSIM aside)
        return labels_state(st, k)[0] == "complete"

    pending = [k for k, q in sections.items() if overwrite or not up_to_date(k)
               or (want_ssim and not q.get("ssim"))]
    if not pending:  # nothing to do: no cluster to start
        log.info("Per-image labels in %s are up to date; nothing to do", st.path)
        return per_image_summary(st, "already complete", timings, len(coll))
    with timer("per-image labelling", timings), runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        for k in pending:
            name = f"per_image_quantize_k{k}"
            q = sections[k]
            started = time.perf_counter()
            keep = q.get("state") == "running" and q.get("fingerprint") == fp or up_to_date(k)
            if not keep or overwrite:  # (up to date: only their SSIM is missing)
                # a new labelling (see streamq.quantize.shared)
                new_id = uuid.uuid4().hex
                st.set_section(name, {"state": "starting", "fingerprint": fp,
                                      "labels_id": new_id})
                st.create_labels(labels_path(k), labels_dtype(k))
                st.create_records(label_records_path(k), n_chunks)
                st.set_section(name, {"state": "running", "fingerprint": fp,
                                      "labels_id": new_id})
            labels_id = st.section(name).get("labels_id")
            records = st.records(label_records_path(k))
            tasks = []
            todo = [c for c in range(n_chunks) if not records[c]]
            threads = max(1, run.n_workers // max(1, len(todo)))
            for c in range(n_chunks):  # recorded chunks too: each task checks its record first
                images = coll.overlapping(c * chunk, (c + 1) * chunk)
                shapes = [[int(coll.heights[i]), int(coll.widths[i])] for i, _, _ in images]
                tasks.append(Task(_label_task, {
                    "store": st.location, "chunk_index": c, "chunk": chunk, "k": k,
                    "images": images, "shapes": shapes, "ssim": want_ssim,
                    "threads": threads, "retry": cfg.retry,
                    **({"with_alpha": [i for i, _, _ in images if coll.has_alpha[i]]}
                       if coll.n_alpha else {}),
                    "fit": fp, "expect": json.loads(records[c]) if records[c] else None}))
            run_tasks(run, tasks, f"labelling K={k}", "chunk", progress)
            records = st.records(label_records_path(k))
            errors = errors_from_records(records, sizes, channels)
            stats: dict[str, Any] = {"ssim": want_ssim}
            if want_ssim:
                from streamq.ssim import ssim_from_records, ssim_stats

                errors["ssim"] = ssim_from_records(records,
                                                   np.stack([coll.heights, coll.widths], 1))
                stats.update(ssim_stats(errors["ssim"]))
            elif st.has(f"{image_errors_path(k)}/ssim"):  # of earlier labels: not these
                st.remove(f"{image_errors_path(k)}/ssim")
            st.write_table(image_errors_path(k), errors)
            finite = errors["psnr"][np.isfinite(errors["psnr"])]
            st.set_section(name, {"state": "complete", "fingerprint": fp, "labels_id": labels_id,
                                  "mean_psnr": float(finite.mean()) if len(finite) else 0.0,
                                  **stats,
                                  "timings": {"labelling": round(time.perf_counter() - started, 3)},
                                  "runtime": facts,
                                  "finished": timestamp()})
    return per_image_summary(st, "quantized", timings, len(coll))
