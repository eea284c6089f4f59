"""Fit one palette for a whole collection: exact K-Means over every pixel.

An RGB8 collection of any size has at most ``2**24`` distinct colours, so K-Means over every
pixel is K-Means over the collection's colour histogram (``streamq.store.histogram``: each
distinct colour weighted by its pixel count) — a bounded problem whatever the number of
pixels. The fit runs in two phases:

1. ``minibatch`` only: a scikit-learn ``MiniBatchKMeans`` on the client is updated with
   ``partial_fit`` on pixel batches that Dask workers draw collection-wide
   (``streamq.batches``, ``streamq.minibatch``), from k-means on an initial sample. Sampling
   tasks run ahead in a bounded window and are consumed in a fixed order, so the result
   depends only on the seed. It gives a good start after seeing a fraction of the pixels.
2. **Exact Lloyd** (``streamq.kmeans.bounded``) on the full histogram to convergence, from the
   mini-batch centres (when there are any) and from ``n_init`` weighted k-means++ starts,
   each start a Dask task on the workers; the lowest exact inertia wins (the first start on
   ties). ``--algorithm lloyd`` is this phase alone.

With fixed colours (``fixed_colors``, :mod:`streamq.fixed`) the palette's first ``F``
centres are those colours in both phases: the mini-batch model's are put back after every
step, and every Lloyd start holds them (k-means++ starts from them); the other ``K - F``
move.

Both phases checkpoint in the store (``streamq.store.checkpoint``, JSON): the mini-batch state
every ``checkpoint_steps`` steps or ``checkpoint_seconds`` seconds, and each Lloyd start in
its own slot of ``fit/starts`` as often. Rerunning the same command after ``kill -9`` gives
a bit-identical palette. The summary's MSE is exact: over every pixel, from the histogram.

This module is the driver (checks, fingerprint, the phases in order, the result saved); the
phases live beside it: phase 1 in :mod:`streamq.fit.minibatch`, phase 2 in
:mod:`streamq.fit.lloyd`, the fit of a collection with alpha in :mod:`streamq.fit.alpha`
and a quality target instead of K in :mod:`streamq.fit.quality`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from streamq.batches import PixelSource
from streamq.colorspace import to_rgb8
from streamq.config import (
    FitConfig,
    StreamQConfig,
    differences,
    fingerprint,
    parse_config,
    replaced,
    to_dict,
)
from streamq.console import timer
from streamq.describe import describe_source
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fit.lloyd import (
    FitInfo,
    ensure_distinct,
    exact_mse,
    fit_exact,
    join_history,
    points,
    prepare_exact,
    release_points,
    release_workers,
    share_points,
)
from streamq.fit.minibatch import fit_minibatch
from streamq.fixed import FixedColors, read_fixed_colors
from streamq.fs import Location, check_access
from streamq.lock import store_lock
from streamq.metrics import psnr
from streamq.scheduler import runner
from streamq.store import Collection, Store, store_location
from streamq.store.checkpoint import read_checkpoint, write_checkpoint
from streamq.store.histogram import histogram
from streamq.store.results import (
    CHECKPOINT,
    FIT,
    HISTORY_KEYS,
    FitResult,
    clear_fit,
    load_fit,
    save_fit,
)

__all__ = ["fit"]

log = logging.getLogger(__name__)

# Keys that change how fast a fit runs or how often it saves, not what it computes.
_NON_SEMANTIC = {"prefetch", "checkpoint_steps", "checkpoint_seconds", "client_threads"}


def _fit_fingerprint(st: Store, fcfg: FitConfig, fixed: FixedColors | None = None) -> str:
    ingest = st.section("ingest")
    semantic = {k: v for k, v in to_dict(fcfg).items() if k not in _NON_SEMANTIC}
    if fcfg.quality is None:  # fits of a given K keep the fingerprints they had
        semantic = {k: v for k, v in semantic.items() if k not in ("quality", "k_range")}
    if semantic.get("fixed_colors") is None:
        semantic.pop("fixed_colors", None)  # as before there were fixed colours
    else:  # the colours themselves, wherever the file is
        semantic["fixed_colors"] = fixed.sha256 if fixed is not None else semantic["fixed_colors"]
    return fingerprint({"data": [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")],
                        "fit": semantic})


def fit(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
        overwrite: bool = False, progress: bool | None = None,
        storage_options: dict[str, Any] | None = None, **options: Any) -> FitResult:
    """Fit a K-colour palette for the collection in ``store``.

    Parameters
    ----------
    store : str
        A store with a finished ingest: a local folder or a URL (``s3://bucket/x.zarr``).
    config : StreamQConfig or dict, optional
        Full configuration; ``options`` override its ``fit`` keys (``colors=64``,
        ``algorithm="lloyd"``, ``seed=1``, ...) and ``scheduler=...`` its ``dask.scheduler``.
        ``quality=(MIN, MAX)`` (and ``k_range=(LO, HI)``) chooses K instead of ``colors``:
        the smallest reaching MAX dB (:mod:`streamq.fit.quality`; below MIN it raises
        :class:`streamq.fit.quality.QualityError`).
    overwrite : bool, default=False
        Start a new fit, replacing any palette or checkpoint in the store. Without it, a
        finished fit with the same parameters is returned as is, an interrupted one is
        resumed, and one with other parameters is refused.
    storage_options : dict, optional
        Options of the store's filesystem when it is a URL; default: ``config``'s.

    Returns
    -------
    FitResult
    """
    cfg = parse_config(config)
    sched = options.pop("scheduler", None)
    cfg = replaced(cfg, {**{f"fit.{k}": v for k, v in options.items()}, "dask.scheduler": sched})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="fit", config=cfg.lock):
        try:
            return _fit(loc, cfg, overwrite, progress)
        finally:  # the default workers are threads of this process, which lives on
            release_points()


def _fit(store: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None) -> FitResult:
    fcfg = cfg.fit
    if fcfg.quality is not None and fcfg.fixed_colors is not None:
        raise ConfigError("key 'fit.fixed_colors' does not go with 'fit.quality' (the K search "
                          "fits without fixed colours); give --colors K with --fixed-colors")
    if fcfg.quality is not None:  # a K search: exact Lloyd at each K (streamq.fit.quality)
        from streamq.fit.quality import search_config

        fcfg = search_config(fcfg)
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    if coll.n_pixels == 0:
        raise ConfigError(f"{st.path}: the collection has no pixels to fit")
    if fcfg.algorithm == "minibatch" and fcfg.batch_size < fcfg.colors:
        raise ConfigError(f"key 'fit.batch_size' has value {fcfg.batch_size}, expected at least "
                          f"colors={fcfg.colors} (each step needs a pixel per centre)")
    fixed = (read_fixed_colors(fcfg.fixed_colors, fcfg.colors,
                               storage_options=cfg.storage_options or None,
                               with_alpha=bool(coll.n_alpha))
             if fcfg.fixed_colors is not None else None)
    fp = _fit_fingerprint(st, fcfg, fixed)
    prev = st.section(FIT)
    if prev and not overwrite:
        if prev.get("fingerprint") == fp and prev.get("state") == "complete":
            log.info("Palette in %s already fitted with these parameters; nothing to do", st.path)
            result = load_fit(st.location)
            result.status = "already complete"
            return result
        if prev.get("fingerprint") != fp and prev.get("palette_source"):
            raise StoreMismatchError(
                f"{st.path} already has a given palette ({describe_source(prev['palette_source'])}"
                "); pass --overwrite to replace it with a fit")
        if prev.get("fingerprint") != fp:
            what = "palette" if prev.get("state") == "complete" else "unfinished fit"
            raise StoreMismatchError(
                f"{st.path} already has a {what} with other parameters "
                f"({differences(prev.get('config', {}), to_dict(fcfg), _NON_SEMANTIC)}); "
                "pass --overwrite to replace it")

    if coll.n_alpha:  # images with alpha: k-means on premultiplied RGBA
        from streamq.fit.alpha import fit_rgba

        return fit_rgba(st, coll, cfg, fcfg, fp, bool(prev and overwrite), progress, fixed)
    started = time.perf_counter()
    source = PixelSource.of_collection(coll)
    timings: dict[str, float] = {}
    from streamq.minibatch import client_threads, import_model_early

    minibatch = fcfg.algorithm == "minibatch" and fcfg.quality is None
    if minibatch:
        import_model_early()  # while the cluster starts
    with (runner(cfg.dask, threads=True) as run,
          client_threads(fcfg.client_threads or 1, model=minibatch)):
        run.check_paths(st.path)
        facts = run.facts()
        # Everything is checked and the cluster reached: only now touch the stored fit.
        if prev and overwrite:
            clear_fit(st)
        st.set_section(FIT, {"state": "running", "fingerprint": fp, "config": to_dict(fcfg)})
        with timer("histogram", timings):
            codes, counts = histogram(run, st, source, progress)
        if fcfg.quality is not None:  # the smallest K reaching a PSNR target
            from streamq.fit.quality import fit_quality

            found = fit_quality(run, st, fcfg, fp, codes, counts, timings, facts, started,
                                progress)
            release_workers(run)  # (only once it ended well: a lost cluster is not waited for)
            return found
        if len(codes) < fcfg.colors:
            raise ConfigError(
                f"the collection has only {len(codes)} distinct colours, fewer than "
                f"colors={fcfg.colors}; choose --colors {len(codes)} or fewer")
        x = points(codes, fcfg.color_space)
        share_points(st, codes, counts, x, fcfg.color_space)  # (workers that are threads of this process)
        held = None if fixed is None else fixed.centers(fcfg.color_space)
        ckpt = read_checkpoint(st, CHECKPOINT, fp, "fit")
        mb_centers: np.ndarray | None = None
        info: FitInfo = {"history": {k: np.zeros(0) for k in HISTORY_KEYS}, "steps": 0,
                         "pixels_seen": 0, "stop_reason": ""}
        if fcfg.algorithm == "minibatch":
            if ckpt is not None and ckpt.get("phase") == "exact":
                mb_centers, info = ckpt["minibatch_centers"], ckpt["minibatch_info"]
            else:
                asking = prepare_exact(run, st, fcfg)  # the workers, while the client steps
                with timer("mini-batch fit", timings):
                    mb_centers, info = fit_minibatch(run, st, source, fcfg, fp, ckpt, x, counts,
                                                     progress, held)
                if asking is not None:
                    asking.join(timeout=5)  # answered long since (not left waiting on a closed client)
                write_checkpoint(st, CHECKPOINT, {"fingerprint": fp, "phase": "exact",
                                                  "minibatch_centers": mb_centers,
                                                  "minibatch_info": info})
        with timer("exact lloyd", timings):
            best = fit_exact(run, st, fcfg, fp, mb_centers, progress, held)
        release_workers(run)  # worker processes would keep their points
    centers = ensure_distinct(best["centers"], x, fcfg.color_space)
    palette = to_rgb8(centers, fcfg.color_space)
    if fixed is not None:  # held by every step; stored as the given uint8 values
        assert held is not None, "the fixed colours' centres are held"
        assert np.array_equal(centers[:fixed.n], held), "fixed centres moved"
        palette[:fixed.n] = fixed.rgb
    mse, pixel_counts = exact_mse(x, codes, counts, centers, palette)
    info = join_history(info, best, int(counts.sum()), fcfg)
    result = FitResult(
        store=st.path, k=fcfg.colors, algorithm=fcfg.algorithm, color_space=fcfg.color_space,
        centers=centers, palette=palette, counts=pixel_counts, history=info["history"],
        steps=info["steps"], pixels_seen=info["pixels_seen"], stop_reason=info["stop_reason"],
        mse=mse, psnr=psnr(mse), seconds=round(time.perf_counter() - started, 3),
        seed=fcfg.seed, config=to_dict(fcfg), n_fixed=0 if fixed is None else fixed.n)
    extra: dict[str, Any] = {"starts": best["results"]}
    if fixed is not None:
        extra["fixed_colors"] = fixed.record()
    if mb_centers is not None:  # the mini-batch phase's palette, before the exact phase
        extra["minibatch_centers"] = np.asarray(mb_centers).tolist()
    save_fit(st, result, fp, timings, facts, extra)
    log.info("%s", result)
    return result
