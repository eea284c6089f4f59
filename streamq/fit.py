"""Fit one palette for a whole collection: exact K-Means over every pixel.

An RGB8 collection of any size has at most ``2**24`` distinct colours, so K-Means over every
pixel is K-Means over the collection's colour histogram (``streamq.histogram``: each distinct
colour weighted by its pixel count) — a bounded problem whatever the number of pixels. The
fit runs in two phases:

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

Both phases checkpoint in the store (``streamq.checkpoint``, JSON): the mini-batch state
every ``checkpoint_steps`` steps or ``checkpoint_seconds`` seconds, and each Lloyd start in
its own slot of ``fit/starts`` as often. Rerunning the same command after ``kill -9`` gives
a bit-identical palette. The summary's MSE is exact: over every pixel, from the histogram.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq.batches import STREAM_INIT, STREAM_TRAIN, PixelSource, draw_sample, draw_task
from streamq.checkpoint import (
    clear_checkpoint,
    decode_state,
    encode_state,
    estimator_state,
    read_checkpoint,
    restore_estimator,
    write_checkpoint,
)
from streamq.colorspace import to_rgb8, to_space
from streamq.config import FitConfig, StreamQConfig, differences, fingerprint, parse_config, to_dict
from streamq.console import timer
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fixed import FixedColors, read_fixed_colors
from streamq.fs import Location, check_access, location
from streamq.histogram import histogram
from streamq.lock import store_lock
from streamq.metrics import psnr
from streamq.minibatch import LoopSettings, LoopState, new_model, step_limit, stream_partial_fit
from streamq.scheduler import Runner, runner
from streamq.stage import Task, run_tasks
from streamq.store import Collection, Store, open_array, store_location

__all__ = ["FitResult", "collection_mse", "fit", "load_fit"]

log = logging.getLogger(__name__)

FIT = "fit"
CHECKPOINT = "fit/checkpoint"
STARTS = "fit/starts"  # one slot per exact Lloyd start: its checkpoint, then its result
HISTORY_KEYS = ("step", "pixels_seen", "shift", "inertia")
# Keys that change how fast a fit runs or how often it saves, not what it computes.
_NON_SEMANTIC = {"prefetch", "checkpoint_steps", "checkpoint_seconds", "client_threads"}


@dataclass
class FitResult:
    """A fitted palette; ``str()`` is the one-line summary the CLI prints."""

    store: str
    k: int
    algorithm: str
    color_space: str
    centers: np.ndarray  # (K, 3) float64 in the fit's colour space
    palette: np.ndarray  # (K, 3) uint8 sRGB
    counts: np.ndarray  # (K,) int64, pixels per colour (exact)
    history: dict[str, np.ndarray]
    steps: int
    pixels_seen: int
    stop_reason: str
    mse: float  # exact, over every pixel, in uint8 RGB units (mean over pixels and channels)
    psnr: float
    seconds: float
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "fitted"
    # A given palette (quantize --palette): where it came from (streamq.palettes); None: k-means
    palette_source: dict[str, Any] | None = None
    # fit --quality: the target, the K range searched and every K tried (streamq.quality)
    quality: dict[str, Any] | None = None
    n_fixed: int = 0  # the first n_fixed colours are fixed colours (streamq.fixed), kept exactly
    # (K,) uint8 alpha of each colour for a collection with alpha (streamq.fit_alpha): then
    # ``centers`` are (K, 4) premultiplied RGBA in [0, 1], ``palette`` straight colours, and
    # MSE/PSNR over premultiplied RGBA; None for an opaque collection
    alpha: np.ndarray | None = None

    def label_space(self) -> tuple[str, np.ndarray]:
        """The colour space and centres quantize labels pixels in: the fit's, except for a
        given palette's own colours in RGB, compared in integer uint8 units (``rgb8``) so
        that colours at equal distances tie exactly (and the lowest index wins)."""
        if self.color_space == "rgb" and (self.palette_source or {}).get("centers") == "palette":
            return "rgb8", self.palette.astype(np.float64)
        return self.color_space, self.centers

    def estimator(self) -> Any:
        """The palette as a fitted scikit-learn ``KMeans`` (predict works on ``to_space`` pixels)."""
        from sklearn.cluster import KMeans

        est = KMeans(n_clusters=self.k, init=self.centers, n_init=1)
        est.cluster_centers_ = self.centers.copy()
        est.n_features_in_ = self.centers.shape[1]
        est._n_features_out = self.k
        est._n_threads = 1
        est.labels_ = np.zeros(0, dtype=np.int32)
        est.inertia_ = float("nan")
        est.n_iter_ = self.steps
        return est

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("centers", "palette", "counts"):
            d[key] = np.asarray(d[key]).tolist()
        if self.alpha is not None:
            d["alpha"] = np.asarray(self.alpha).tolist()
        d["history"] = {k: np.asarray(v).tolist() for k, v in self.history.items()}
        return d

    def __str__(self) -> str:
        if self.palette_source is not None:
            from streamq.palettes import describe_source

            return (f"{self.status}: K={self.k} given palette ({self.color_space}): "
                    f"{describe_source(self.palette_source)}; MSE {self.mse:.2f} / PSNR "
                    f"{self.psnr:.2f} dB over every pixel")
        fixed = f", {self.n_fixed} fixed" if self.n_fixed else ""
        line = (f"{self.status}: K={self.k} ({self.algorithm}, {self.color_space}{fixed}), "
                f"{self.steps} steps, {self.pixels_seen / 1e6:.2f} Mpx seen, "
                f"MSE {self.mse:.2f} / PSNR {self.psnr:.2f} dB over every pixel, "
                f"stopped: {self.stop_reason}, {self.seconds:.1f} s")
        if self.quality is not None:
            from streamq.quality import describe_quality

            line += f"; {describe_quality(self.quality)}"
        return line


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
        the smallest reaching MAX dB (:mod:`streamq.quality`; below MIN it raises
        :class:`streamq.quality.QualityError`).
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
    cfg = cfg.replace(**{f"fit.{k}": v for k, v in options.items()}, **{"dask.scheduler": sched})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="fit", config=cfg.lock):
        return _fit(loc, cfg, overwrite, progress)


def _fit(store: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None) -> FitResult:
    fcfg = cfg.fit
    if fcfg.quality is not None and fcfg.fixed_colors is not None:
        raise ConfigError("key 'fit.fixed_colors' does not go with 'fit.quality' (the K search "
                          "fits without fixed colours); give --colors K with --fixed-colors")
    if fcfg.quality is not None:  # a K search: exact Lloyd at each K (streamq.quality)
        from streamq.quality import search_config

        fcfg = search_config(fcfg)
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    if coll.n_pixels == 0:
        raise ConfigError(f"{st.path}: the collection has no pixels to fit")
    if fcfg.algorithm == "minibatch" and fcfg.batch_size < fcfg.colors:
        raise ConfigError(f"key 'fit.batch_size' has value {fcfg.batch_size}, expected at least "
                          f"colors={fcfg.colors} (each step needs a pixel per centre)")
    fixed = (read_fixed_colors(fcfg.fixed_colors, fcfg.colors,
                               storage_options=cfg.storage_options or None)
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
            from streamq.palettes import describe_source

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
        from streamq.fit_alpha import fit_rgba

        return fit_rgba(st, coll, cfg, fp, bool(prev and overwrite), progress)
    started = time.perf_counter()
    source = PixelSource.of_collection(coll)
    timings: dict[str, float] = {}
    from threadpoolctl import threadpool_limits

    # The model update runs on the client: keep its OpenMP/BLAS threads from fighting the
    # workers for the same cores (k=64 partial_fit drops from ~8 to ~1.4 Mpx/s when they do).
    with runner(cfg.dask) as run, threadpool_limits(limits=fcfg.client_threads or 1):
        run.check_paths(st.path)
        facts = run.facts()
        # Everything is checked and the cluster reached: only now touch the stored fit.
        if prev and overwrite:
            _clear(st)
        st.set_section(FIT, {"state": "running", "fingerprint": fp, "config": to_dict(fcfg)})
        st.mark_stale(fp)  # labels and image groups of the old palette: say so
        with timer("histogram", timings):
            codes, counts = histogram(run, st, source, progress)
        if fcfg.quality is not None:  # the smallest K reaching a PSNR target
            from streamq.quality import fit_quality

            return fit_quality(run, st, fcfg, fp, codes, counts, timings, facts, started, progress)
        if len(codes) < fcfg.colors:
            raise ConfigError(
                f"the collection has only {len(codes)} distinct colours, fewer than "
                f"colors={fcfg.colors}; choose --colors {len(codes)} or fewer")
        x = _points(codes, fcfg.color_space)
        held = None if fixed is None else fixed.centres(fcfg.color_space)
        ckpt = read_checkpoint(st, CHECKPOINT, fp, "fit")
        mb_centres, info = None, {"history": {k: np.zeros(0) for k in HISTORY_KEYS}, "steps": 0,
                                  "pixels_seen": 0, "stop_reason": ""}
        if fcfg.algorithm == "minibatch":
            if ckpt is not None and ckpt.get("phase") == "exact":
                mb_centres, info = ckpt["minibatch_centres"], ckpt["minibatch_info"]
            else:
                with timer("mini-batch fit", timings):
                    mb_centres, info = _fit_minibatch(run, st, source, fcfg, fp, ckpt, x, counts,
                                                      progress, held)
                write_checkpoint(st, CHECKPOINT, {"fingerprint": fp, "phase": "exact",
                                                  "minibatch_centres": mb_centres,
                                                  "minibatch_info": info})
        with timer("exact lloyd", timings):
            best = _fit_exact(run, st, fcfg, fp, mb_centres, progress, held)
    centres = _ensure_distinct(best["centers"], x, fcfg.color_space)
    palette = to_rgb8(centres, fcfg.color_space)
    if fixed is not None:  # held by every step; stored as the given uint8 values
        assert np.array_equal(centres[:fixed.n], held), "fixed centres moved"
        palette[:fixed.n] = fixed.rgb
    mse, pixel_counts = _exact_mse(x, codes, counts, centres, palette)
    info = _join_history(info, best, int(counts.sum()), fcfg)
    result = FitResult(
        store=st.path, k=fcfg.colors, algorithm=fcfg.algorithm, color_space=fcfg.color_space,
        centers=centres, palette=palette, counts=pixel_counts, history=info["history"],
        steps=info["steps"], pixels_seen=info["pixels_seen"], stop_reason=info["stop_reason"],
        mse=mse, psnr=psnr(mse), seconds=round(time.perf_counter() - started, 3),
        seed=fcfg.seed, config=to_dict(fcfg), n_fixed=0 if fixed is None else fixed.n)
    extra: dict[str, Any] = {"starts": best["results"]}
    if fixed is not None:
        extra["fixed_colors"] = fixed.record()
    if mb_centres is not None:  # the mini-batch phase's palette, before the exact phase
        extra["minibatch_centers"] = np.asarray(mb_centres).tolist()
    _save_result(st, result, fp, timings, facts, extra)
    log.info("%s", result)
    return result


def _points(codes: np.ndarray, space: str) -> np.ndarray:
    """The distinct colours ``codes`` as float64 points of the fit's colour space."""
    from streamq.kmeans.codes import codes_to_rgb

    return to_space(codes_to_rgb(codes), space).astype(np.float64)


def _exact_mse(x: np.ndarray, codes: np.ndarray, counts: np.ndarray, centres: np.ndarray,
               palette: np.ndarray) -> tuple[float, np.ndarray]:
    """MSE over every pixel (uint8 RGB units; nearest centre in the fit's space, compared with
    its palette colour, as quantize does) and the pixels of each palette colour."""
    from streamq.kmeans.codes import codes_to_rgb
    from streamq.kmeans.nearest import assign

    labels, _ = assign(x, centres, n_threads=os.cpu_count() or 1)
    err = ((codes_to_rgb(codes).astype(np.float64) - palette[labels].astype(np.float64)) ** 2).sum(1)
    n = float(counts.sum())
    pixel_counts = np.bincount(labels, weights=counts, minlength=len(centres)).astype(np.int64)
    return float((err * counts).sum() / (3 * n)), pixel_counts


def collection_mse(store: str | Location, centers: np.ndarray | None = None,
                   color_space: str | None = None, scheduler: str | None = "threads",
                   storage_options: dict[str, Any] | None = None) -> float:
    """Exact MSE (uint8 RGB units) of a palette over every pixel of the collection (for a
    collection with alpha: ``(K, 4)`` premultiplied RGBA centres, MSE over premultiplied RGBA).

    Each pixel goes to its nearest centre in the fit's colour space and is compared with that
    centre's RGB colour, as quantize does. Uses the store's colour histogram (computed once
    for a store ingested without one). Defaults to the store's fitted palette.
    """
    from streamq.config import DaskConfig

    loc = location(store, storage_options)
    check_access(loc)
    with store_lock(loc, operation="collection_mse"):  # may store the colour histogram
        st = Store.open(loc, mode="r+")
        if centers is None:
            res = load_fit(st.location)
            centers, color_space = res.centers, res.color_space
        space = color_space or "rgb"
        coll = Collection(st)
        with runner(DaskConfig(scheduler=scheduler)) as run:
            run.check_paths(st.path)
            if coll.n_alpha:  # premultiplied RGBA centres, errors over the four channels
                from streamq.fit_alpha import rgba_mse

                return rgba_mse(run, st, coll, np.asarray(centers, dtype=np.float64))
            codes, counts = histogram(run, st)
    centers = np.asarray(centers, dtype=np.float64)
    return _exact_mse(_points(codes, space), codes, counts, centers, to_rgb8(centers, space))[0]


def _clear(st: Store) -> None:
    st.set_section(FIT, {})
    clear_checkpoint(st, CHECKPOINT)
    if st.has(STARTS):
        st.create_records(STARTS, 0)


# --- phase 1: the streamed mini-batch fit -------------------------------------------------------

def _initial_centres(run: Runner, source: PixelSource, fcfg: FitConfig, x_all: np.ndarray,
                     counts_all: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """k-means (one k-means++ start, to the default ``tol``) on the distinct colours of a
    collection-wide sample, or on the whole histogram when the sample has fewer than K colours:
    a start for the mini-batch steps, which only give a start for the exact phase. ``fixed``
    centres come first and stay."""
    from streamq.kmeans import kmeans
    from streamq.kmeans.codes import distinct_colours

    sample = draw_sample(run, source, fcfg.seed, STREAM_INIT, fcfg.init_size, fcfg.blocks_per_task)
    codes, counts = distinct_colours(sample)
    x, w = (_points(codes, fcfg.color_space), counts) if len(codes) >= fcfg.colors else (x_all, counts_all)
    res = kmeans(x, w, fcfg.colors, np.random.default_rng([fcfg.seed, STREAM_INIT]),
                 init=fcfg.init, n_init=1, max_iter=fcfg.max_iter, fixed=fixed)
    return res.centers.astype(np.float32)


def _fit_minibatch(run: Runner, st: Store, source: PixelSource, fcfg: FitConfig, fp: str,
                   ckpt: dict[str, Any] | None, x_all: np.ndarray, counts_all: np.ndarray,
                   progress: bool | None, fixed: np.ndarray | None = None
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    from streamq.kmeans.bounded import tolerance

    B, G = fcfg.batch_size, fcfg.batches_per_task
    if ckpt is not None and ckpt.get("phase") == "minibatch":
        model = restore_estimator(ckpt["model"])
        state = LoopState.from_dict(ckpt)
        log.info("Resuming the mini-batch fit at step %d", state.cursor)
    else:
        with timer("initial centres"):
            init = _initial_centres(run, source, fcfg, x_all, counts_all, fixed)
        model = new_model(fcfg.colors, init, B, fcfg.seed, fcfg.reassignment_ratio)
        state = LoopState(scale=tolerance(x_all, counts_all, 1.0))  # the pixels' variance
    max_steps, limit_name = step_limit(fcfg.max_steps, fcfg.max_epochs, source.n_valid, B,
                                       max_pixels=fcfg.max_pixels)

    def save() -> None:
        write_checkpoint(st, CHECKPOINT, {"fingerprint": fp, "phase": "minibatch",
                                          "model": estimator_state(model), **state.to_dict()})

    def task(i: int) -> tuple[Any, Any]:
        return draw_task, (source, fcfg.seed, STREAM_TRAIN, i, G * B, fcfg.blocks_per_task)

    stop_reason = stream_partial_fit(run, model, task, LoopSettings.of(fcfg), state, max_steps,
                                     limit_name, save, progress=progress,
                                     prepare=lambda x: to_space(x, fcfg.color_space), fixed=fixed)
    history = state.history_arrays()
    history["pixels_seen"] = history.pop("seen")
    info = {"history": {k: history[k] for k in HISTORY_KEYS}, "steps": state.cursor,
            "pixels_seen": state.seen, "stop_reason": f"mini-batch: {stop_reason}"}
    centres = model.cluster_centers_.astype(np.float64)
    if fixed is not None:  # exactly, not their float32 copies in the model
        centres[:len(fixed)] = fixed
    return centres, info


# --- phase 2: exact Lloyd on the histogram, several starts side by side -------------------------

GRID_BITS = 6  # the race runs on a 64-level-per-channel grid of the histogram
FINISHERS = 2  # starts finished on every distinct colour

_POINTS: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}


def _worker_points(store: Location, key: str, space: str) -> dict[str, np.ndarray]:
    """The histogram as weighted points, and its coarse grid, read once per process and fit."""
    from streamq.kmeans.codes import cell_means

    k = (store.url, key, space)
    if k not in _POINTS:
        _POINTS.clear()  # one histogram at a time
        codes = np.asarray(open_array(store, "colors/code")[:], dtype=np.int64)
        counts = np.asarray(open_array(store, "colors/count")[:], dtype=np.float64)
        x = _points(codes, space)
        gx, gw = cell_means(codes, counts, x, GRID_BITS)
        if 2 * len(gx) > len(x):  # a grid that saves little: race on the colours themselves
            gx, gw = x, counts
        _POINTS[k] = {"x": x, "w": counts, "gx": gx, "gw": gw}
    return _POINTS[k]


def _layout(p: dict[str, Any], which: str) -> tuple[np.ndarray, ...] | None:
    """The cell layout of the points ``which`` (``x`` or ``gx``), made once per process, for
    colour points only (:func:`streamq.kmeans.converge` and k-means++ use it)."""
    from streamq.kmeans.plusplus import cell_layout

    pts = p[which]
    if pts.shape[1] != 3:
        return None
    if "layout_" + which not in p:
        p["layout_" + which] = cell_layout(pts)
    return p["layout_" + which]


def _slot(args: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    slot = open_array(args["store"], STARTS, mode="r+")
    text = str(slot[args["start"]])
    state = decode_state(text) if text else None
    if state is not None and state.get("fingerprint") != args["fingerprint"]:
        state = None
    return slot, state


def _held(args: dict[str, Any]) -> np.ndarray | None:
    """The mask of a start's fixed centres (its first ones), or None."""
    from streamq.kmeans.starts import fixed_first

    fixed = args.get("fixed")
    return None if fixed is None else fixed_first(args["k"], len(fixed))


def _race_task(args: dict[str, Any]) -> dict[str, Any]:
    """One start (the given centres or k-means++) run to convergence on the coarse grid."""
    from streamq.kmeans import converge, initial_centers

    slot, state = _slot(args)
    if state is not None:
        return state
    p = _worker_points(args["store"], args["key"], args["space"])
    layout = _layout(p, "gx")
    init, fixed = args["init"], args.get("fixed")
    if init is None:  # k-means++ start j draws from its own generator
        init = initial_centers(p["gx"], p["gw"], args["k"], args["init_method"],
                               np.random.default_rng([args["seed"], 1000 + args["plusplus"]]),
                               layout, fixed)
    res = converge(p["gx"], p["gw"], init, layout=layout, tol=0, max_iter=args["max_iter"],
                   fixed=_held(args))  # to a fixed point
    state = {"fingerprint": args["fingerprint"], "start": args["start"], "done": False,
             "grid_inertia": res.inertia, "grid_iterations": res.n_iter,
             "centers": res.centers, "iteration": 0, "history": []}
    slot[args["start"]] = encode_state(state)
    return state


def _finish_task(args: dict[str, Any]) -> dict[str, Any]:
    """Exact Lloyd on every distinct colour from a start's grid result, checkpointed in its slot."""
    from streamq.kmeans import converge

    slot, state = _slot(args)
    assert state is not None, "a start is finished after its race"
    if state["done"]:
        return state
    p = _worker_points(args["store"], args["key"], args["space"])
    history: list[list[float]] = list(state["history"])
    last_save = [time.monotonic()]

    def on_iter(it: int, centers: np.ndarray, rows: list[tuple[int, float, int]]) -> None:
        if (it % args["checkpoint_steps"] == 0
                or time.monotonic() - last_save[0] > args["checkpoint_seconds"]):
            slot[args["start"]] = encode_state({**state, "centers": centers, "iteration": it,
                                                "history": history + [list(r) for r in rows]})
            last_save[0] = time.monotonic()

    res = converge(p["x"], p["w"], np.asarray(state["centers"]), layout=_layout(p, "x"),
                   tol=args["tol"], max_iter=args["max_iter"], start_iter=state["iteration"],
                   on_iter=on_iter, fixed=_held(args))
    history.extend(list(r) for r in res.history)
    done = {**state, "done": True, "centers": res.centers, "iteration": res.n_iter,
            "history": history, "inertia": res.inertia, "stop": res.stop}
    slot[args["start"]] = encode_state(done)
    return done


def _fit_exact(run: Runner, st: Store, fcfg: FitConfig, fp: str, mb_centres: np.ndarray | None,
               progress: bool | None, fixed: np.ndarray | None = None) -> dict[str, Any]:
    """The mini-batch centres (if any) and ``n_init`` k-means++ starts race to convergence on
    the coarse colour grid (one task each); the ``FINISHERS`` best run exact Lloyd on every
    distinct colour (one task each); the lowest exact inertia wins (the first start on ties).
    Every start holds the ``fixed`` centres (its first ones)."""
    inits: list[np.ndarray | None] = [] if mb_centres is None else [np.asarray(mb_centres)]
    inits += [None] * fcfg.n_init
    if not st.has(STARTS) or st.group[STARTS].shape[0] != len(inits):
        st.create_records(STARTS, len(inits))
    sec = st.section("colors")
    key = fingerprint([sec.get("data"), sec.get("n_distinct")])
    base = {"store": st.location, "fingerprint": fp, "key": key, "space": fcfg.color_space,
            "k": fcfg.colors, "init_method": fcfg.init, "seed": fcfg.seed, "tol": fcfg.tol,
            "max_iter": fcfg.max_iter, "checkpoint_steps": fcfg.checkpoint_steps,
            "checkpoint_seconds": fcfg.checkpoint_seconds, "fixed": fixed}
    first = len(inits) - fcfg.n_init  # slot of k-means++ start 0
    starts = [Task(_race_task, {**base, "start": s, "init": init, "plusplus": s - first})
              for s, init in enumerate(inits)]
    raced = sorted(run_tasks(run, starts, "lloyd starts", "start", progress),
                   key=lambda r: (r["grid_inertia"], r["start"]))
    finishers = [Task(_finish_task, {**base, "start": s})
                 for s in sorted(r["start"] for r in raced[:FINISHERS])]
    results = sorted(run_tasks(run, finishers, "exact lloyd", "start", progress),
                     key=lambda r: r["start"])
    best = min(results, key=lambda r: (r["inertia"], r["start"]))
    best["n_starts"] = len(inits)
    best["from_minibatch"] = mb_centres is not None and best["start"] == 0
    done = {r["start"]: r for r in results}
    best["results"] = [
        {"start": r["start"], "grid_inertia": r["grid_inertia"],
         "grid_iterations": r["grid_iterations"],
         **({"inertia": done[r["start"]]["inertia"], "iterations": done[r["start"]]["iteration"],
             "stop": done[r["start"]]["stop"]} if r["start"] in done else {})}
        for r in sorted(raced, key=lambda r: r["start"])]
    for r in best["results"]:
        log.debug("lloyd start %s", r)
    return best


def _join_history(info: dict[str, Any], best: dict[str, Any], n_px: int,
                  fcfg: FitConfig) -> dict[str, Any]:
    """The mini-batch history followed by the winning Lloyd start's iterations."""
    h = {k: np.asarray(v) for k, v in info["history"].items()}
    rows = np.asarray(best["history"], dtype=np.float64).reshape(-1, 3)
    steps0 = int(info["steps"])
    seen0 = int(info["pixels_seen"])
    h["step"] = np.concatenate([h["step"], steps0 + rows[:, 0]]).astype(np.int64)
    h["pixels_seen"] = np.concatenate([h["pixels_seen"], seen0 + rows[:, 0] * n_px]).astype(np.int64)
    h["shift"] = np.concatenate([h["shift"], rows[:, 1]])
    objective = np.full(len(rows), np.nan)  # Lloyd's objective: known at the end
    objective[-1:] = best["inertia"] / n_px
    h["inertia"] = np.concatenate([h["inertia"], objective])
    n_iter = int(best["iteration"])
    which = ("the mini-batch centres" if best["from_minibatch"]
             else f"k-means++ start {best['start'] - (best['n_starts'] - fcfg.n_init) + 1}")
    how = {"labels": "converged (no label changed)",
           "tol": f"converged (squared centre shift within tol={fcfg.tol:g} of the variance)",
           "max_iter": f"max_iter={fcfg.max_iter}"}[best["stop"]]
    lloyd = (f"exact Lloyd on every pixel, best of {best['n_starts']} starts raced on the "
             f"colour grid, {FINISHERS} finished ({which}): {how} after "
             f"{best['grid_iterations']} + {n_iter} iterations")
    reason = f"{info['stop_reason']}; {lloyd}" if info["stop_reason"] else lloyd
    return {"history": h, "steps": steps0 + n_iter, "pixels_seen": seen0 + n_iter * n_px,
            "stop_reason": reason}


def _ensure_distinct(centres: np.ndarray, points: np.ndarray, space: str) -> np.ndarray:
    """Make the uint8 palette hold K distinct colours where the data allows: every centre
    whose uint8 colour repeats an earlier centre's moves to a colour of the collection not in
    the palette yet, worst served first (:func:`streamq.kmeans.nearest.spread_duplicates`)."""
    from streamq.kmeans.nearest import spread_duplicates

    rgb_points: np.ndarray | None = None

    def colour(i: int) -> tuple[Any, ...]:
        nonlocal rgb_points
        if rgb_points is None:  # only once a colour repeats
            rgb_points = to_rgb8(points, space)
        return tuple(rgb_points[i])

    return spread_duplicates(centres, points, to_rgb8(centres, space), colour)


def _save_result(st: Store, r: FitResult, fp: str, timings: dict[str, float],
                 facts: dict[str, Any], extra: dict[str, Any]) -> None:
    columns = {f"center_{j}": r.centers[:, j] for j in range(r.centers.shape[1])}
    columns.update({"r": r.palette[:, 0], "g": r.palette[:, 1], "b": r.palette[:, 2]})
    if r.alpha is not None:  # a palette with alpha (streamq.fit_alpha)
        columns["a"] = r.alpha
    st.write_table("fit/palette", {**columns, "count": r.counts})
    st.write_table("fit/history", {k: np.asarray(v) for k, v in r.history.items()})
    summary = {k: v for k, v in asdict(r).items()
               if k not in ("centers", "palette", "counts", "history", "config", "status",
                            "palette_source", "alpha") and (k != "quality" or r.quality is not None)
               and (k != "n_fixed" or r.n_fixed)}
    st.set_section(FIT, {"state": "complete", "fingerprint": fp, "config": r.config,
                         "summary": summary, "timings": timings, "runtime": facts, **extra,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    clear_checkpoint(st, CHECKPOINT)  # the result is saved; the working state is not needed


def load_fit(store: str | Location, storage_options: dict[str, Any] | None = None) -> FitResult:
    """The palette saved in ``store`` by :func:`fit`."""
    st = Store.open(store, storage_options=storage_options)
    sec = st.section(FIT)
    if sec.get("state") != "complete":
        raise ConfigError(f"{st.path} has no fitted palette; run `streamq fit` first")
    rgba = st.has("fit/palette/a")  # a palette with alpha (streamq.fit_alpha)
    dims = 4 if rgba else 3
    p = st.read_table("fit/palette", tuple(f"center_{j}" for j in range(dims))
                      + ("r", "g", "b", "count") + (("a",) if rgba else ()))
    h = st.read_table("fit/history", HISTORY_KEYS)
    s = sec["summary"]
    return FitResult(
        store=st.path, k=s["k"], algorithm=s["algorithm"], color_space=s["color_space"],
        centers=np.stack([p[f"center_{j}"] for j in range(dims)], 1),
        palette=np.stack([p["r"], p["g"], p["b"]], 1).astype(np.uint8), counts=p["count"],
        history=h, steps=s["steps"], pixels_seen=s["pixels_seen"], stop_reason=s["stop_reason"],
        mse=s["mse"], psnr=s["psnr"], seconds=s["seconds"], seed=s["seed"], config=sec["config"],
        status="given" if sec.get("palette_source") else "fitted",
        palette_source=sec.get("palette_source"), quality=s.get("quality"),
        n_fixed=int(s.get("n_fixed", 0)), alpha=p["a"].astype(np.uint8) if rgba else None)
