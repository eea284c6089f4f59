"""Fit one palette for a whole collection.

``minibatch`` (default): scikit-learn's ``MiniBatchKMeans`` on the client is updated with
``partial_fit`` on pixel batches that Dask workers draw collection-wide (``streamq.batches``).
Sampling tasks run ahead in a bounded window and are consumed in a fixed order, so the
palette depends only on the seed, and client memory stays bounded. The initial centres
come from k-means (``k-means++`` or ``random`` starts) on an initial sample drawn across
the whole collection. Stopping: no centre moves more than ``tol`` for ``patience``
consecutive steps, or ``max_steps`` / ``max_pixels``.

``lloyd``: exact K-Means over every pixel, via the collection's colour histogram
(``streamq.lloyd``), from weighted k-means++ starts (best of ``n_init``) or, with
``refine``, from the mini-batch palette.

Both checkpoint their whole state in the store (``streamq.checkpoint``) every
``checkpoint_steps`` steps or ``checkpoint_seconds`` seconds: rerunning the same command
after ``kill -9`` gives a bit-identical palette.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq.batches import (
    STREAM_INIT,
    STREAM_POLISH,
    STREAM_TRAIN,
    STREAM_VALIDATION,
    PixelSource,
    draw_sample,
    draw_task,
)
from streamq.checkpoint import (
    clear_checkpoint,
    estimator_state,
    read_checkpoint,
    restore_estimator,
    write_checkpoint,
)
from streamq.colorspace import codes_to_rgb, rgb_to_codes, to_rgb8, to_space
from streamq.config import FitConfig, StreamQConfig, differences, fingerprint, parse_config, to_dict
from streamq.console import progress_bar, timer
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fs import Location, check_access, location
from streamq.lloyd import (
    collection_histogram,
    grid_points,
    kmeans_plusplus_weighted,
    weighted_lloyd,
)
from streamq.lock import store_lock
from streamq.metrics import psnr
from streamq.minibatch import (
    LoopSettings,
    LoopState,
    kmeans_start,
    new_model,
    step_limit,
    stream_partial_fit,
)
from streamq.scheduler import Runner, runner
from streamq.store import Collection, Store, store_location

__all__ = ["FitResult", "collection_mse", "fit", "load_fit"]


def assign(x: np.ndarray, centers: np.ndarray, n_threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """:func:`streamq.kernels.assign`, imported on first use (numba is slow to import)."""
    from streamq.kernels import assign as _assign

    return _assign(x, centers, n_threads)

log = logging.getLogger(__name__)

FIT = "fit"
CHECKPOINT = "fit/checkpoint"
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
    counts: np.ndarray  # (K,) int64, estimated pixels per colour (validation sample)
    history: dict[str, np.ndarray]
    steps: int
    pixels_seen: int
    stop_reason: str
    mse: float  # estimated, in uint8 RGB units, on the validation sample
    psnr: float
    seconds: float
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "fitted"

    def estimator(self) -> Any:
        """The palette as a fitted scikit-learn ``KMeans`` (predict works on ``to_space`` pixels)."""
        from sklearn.cluster import KMeans

        est = KMeans(n_clusters=self.k, init=self.centers, n_init=1)
        est.cluster_centers_ = self.centers.copy()
        est.n_features_in_ = 3
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
        d["history"] = {k: np.asarray(v).tolist() for k, v in self.history.items()}
        return d

    def __str__(self) -> str:
        return (f"{self.status}: K={self.k} ({self.algorithm}, {self.color_space}), "
                f"{self.steps} steps, {self.pixels_seen / 1e6:.2f} Mpx seen, "
                f"estimated MSE {self.mse:.2f} / PSNR {self.psnr:.2f} dB, "
                f"stopped: {self.stop_reason}, {self.seconds:.1f} s")


def _fit_fingerprint(st: Store, fcfg: FitConfig) -> str:
    ingest = st.section("ingest")
    semantic = {k: v for k, v in to_dict(fcfg).items() if k not in _NON_SEMANTIC}
    return fingerprint({"data": [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")],
                        "fit": semantic})


def _source(coll: Collection) -> PixelSource:
    arr = coll.store.pixels()
    _, block = coll.store.pixel_layout()
    n_blocks = max(1, -(-int(arr.shape[0]) // block))
    return PixelSource.from_images(coll.store.location, block, n_blocks,
                                   coll.offsets, coll.heights * coll.widths)


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
    with store_lock(loc.url, operation="fit", config=cfg.lock):
        return _fit(loc, cfg, overwrite, progress)


def _fit(store: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None) -> FitResult:
    fcfg = cfg.fit
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    if coll.n_pixels == 0:
        raise ConfigError(f"{st.path}: the collection has no pixels to fit")
    if fcfg.algorithm == "minibatch" or fcfg.refine:
        if fcfg.batch_size < fcfg.colors:
            raise ConfigError(f"key 'fit.batch_size' has value {fcfg.batch_size}, expected at least "
                              f"colors={fcfg.colors} (each step needs a pixel per centre)")
    fp = _fit_fingerprint(st, fcfg)
    prev = st.section(FIT)
    if prev and not overwrite:
        if prev.get("fingerprint") == fp and prev.get("state") == "complete":
            log.info("Palette in %s already fitted with these parameters; nothing to do", st.path)
            result = load_fit(st.location)
            result.status = "already complete"
            return result
        if prev.get("fingerprint") != fp:
            what = "palette" if prev.get("state") == "complete" else "unfinished fit"
            raise StoreMismatchError(
                f"{st.path} already has a {what} with other parameters "
                f"({differences(prev.get('config', {}), to_dict(fcfg), _NON_SEMANTIC)}); "
                "pass --overwrite to replace it")

    started = time.perf_counter()
    source = _source(coll)
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
        ckpt = read_checkpoint(st, CHECKPOINT, fp, "fit")
        centres = None
        resuming_lloyd = ckpt is not None and ckpt.get("phase") == "lloyd"
        if fcfg.algorithm == "minibatch" or (fcfg.refine and not resuming_lloyd):
            with timer("mini-batch fit", timings):
                centres, info = _fit_minibatch(run, st, source, fcfg, fp, ckpt, progress)
        if fcfg.algorithm == "lloyd":
            with timer("lloyd fit", timings):
                centres, info = _fit_lloyd(run, st, source, fcfg, fp, ckpt, progress,
                                           start=centres if fcfg.refine else None)
        with timer("validation", timings):
            val = draw_sample(run, source, fcfg.seed, STREAM_VALIDATION, fcfg.validation_size,
                             fcfg.blocks_per_task)
    centres = _ensure_distinct(centres, to_space(val, fcfg.color_space), fcfg.color_space)
    palette = to_rgb8(centres, fcfg.color_space)
    labels, _ = assign(to_space(val, fcfg.color_space), centres)
    err = val.astype(np.float64) - palette[labels].astype(np.float64)
    mse = float((err ** 2).mean())
    counts = np.round(np.bincount(labels, minlength=len(centres)) * (coll.n_pixels / len(val))).astype(np.int64)
    result = FitResult(
        store=st.path, k=fcfg.colors, algorithm=fcfg.algorithm, color_space=fcfg.color_space,
        centers=centres, palette=palette, counts=counts, history=info["history"],
        steps=info["steps"], pixels_seen=info["pixels_seen"], stop_reason=info["stop_reason"],
        mse=mse, psnr=psnr(mse), seconds=round(time.perf_counter() - started, 3),
        seed=fcfg.seed, config=to_dict(fcfg))
    _save_result(st, result, fp, timings, facts)
    log.info("%s", result)
    return result


def histogram(run: Runner, st: Store, source: PixelSource, progress: bool | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The collection's distinct colours and counts, computed once and kept in the store."""
    ingest = st.section("ingest")
    data = [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")]
    sec = st.section("colors")
    if sec.get("state") == "complete" and sec.get("data") == data:
        t = st.read_table("colors", ("code", "count"))
        return t["code"].astype(np.int64), t["count"].astype(np.int64)
    with progress_bar(len(source.weights), "histogram", "chunk", progress) as bar:
        codes, counts = collection_histogram(run, source, bar.update)
    st.write_table("colors", {"code": codes, "count": counts})
    st.set_section("colors", {"state": "complete", "data": data, "n_distinct": len(codes)})
    return codes, counts


def collection_mse(store: str | Location, centers: np.ndarray | None = None,
                   color_space: str | None = None, scheduler: str | None = "threads",
                   storage_options: dict[str, Any] | None = None) -> float:
    """Exact MSE (uint8 RGB units) of a palette over every pixel of the collection.

    Each pixel goes to its nearest centre in the fit's colour space and is compared with that
    centre's RGB colour, as quantize does. Uses the store's colour histogram (computed once).
    Defaults to the store's fitted palette.
    """
    from streamq.config import DaskConfig

    loc = location(store, storage_options)
    check_access(loc)
    with store_lock(loc.url, operation="collection_mse"):  # may store the colour histogram
        st = Store.open(loc, mode="r+")
        if centers is None:
            res = load_fit(st.location)
            centers, color_space = res.centers, res.color_space
        space = color_space or "rgb"
        with runner(DaskConfig(scheduler=scheduler)) as run:
            run.check_paths(st.path)
            codes, counts = histogram(run, st, _source(Collection(st)))
    rgb = codes_to_rgb(codes)
    palette = to_rgb8(np.asarray(centers), space).astype(np.float64)
    labels, _ = assign(to_space(rgb, space), centers, n_threads=2)
    err = ((rgb.astype(np.float64) - palette[labels]) ** 2).sum(1)
    return float((err * counts).sum() / (3 * counts.sum()))


def _clear(st: Store) -> None:
    st.set_section(FIT, {})
    clear_checkpoint(st, CHECKPOINT)


def _save_checkpoint(st: Store, state: dict[str, Any]) -> None:
    write_checkpoint(st, CHECKPOINT, state)


def _initial_centres(run: Runner, st: Store, source: PixelSource, fcfg: FitConfig) -> np.ndarray:
    sample = draw_sample(run, source, fcfg.seed, STREAM_INIT, fcfg.init_size, fcfg.blocks_per_task)
    codes = np.unique(rgb_to_codes(sample))
    k = fcfg.colors
    if len(codes) < k:
        # Too few distinct colours in the sample: look at the whole collection.
        hist_codes, counts = histogram(run, st, source)
        if len(hist_codes) < k:
            raise ConfigError(
                f"the collection has only {len(hist_codes)} distinct colours, fewer than "
                f"colors={k}; choose --colors {len(hist_codes)} or fewer")
        x = to_space(codes_to_rgb(hist_codes), fcfg.color_space).astype(np.float64)
        return kmeans_plusplus_weighted(x, counts, k, fcfg.seed).astype(np.float32)
    # k-means on the sample's coarse colour grid: the same basin as on the raw sample at a
    # fraction of the cost (see streamq.lloyd.grid_points); mini-batch steps refine it.
    gx, gw = grid_points(sample, fcfg.color_space, k)
    return kmeans_start(gx, k, fcfg.init, fcfg.n_init, fcfg.seed, sample_weight=gw).astype(np.float32)


def _fit_minibatch(run: Runner, st: Store, source: PixelSource, fcfg: FitConfig, fp: str,
                   ckpt: dict[str, Any] | None, progress: bool | None) -> tuple[np.ndarray, dict[str, Any]]:
    B, G = fcfg.batch_size, fcfg.batches_per_task
    if ckpt is not None and ckpt.get("phase") == "minibatch-done":
        return ckpt["minibatch_centres"], ckpt["minibatch_info"]
    if ckpt is not None and ckpt.get("phase") == "minibatch":
        model = restore_estimator(ckpt["model"])
        state = LoopState.from_dict(ckpt)
        log.info("Resuming the mini-batch fit at step %d", state.cursor)
    else:
        with timer("initial centres"):
            init = _initial_centres(run, st, source, fcfg)
        model = new_model(fcfg.colors, init, B, fcfg.seed, fcfg.reassignment_ratio)
        state = LoopState()
    max_steps, limit_name = step_limit(fcfg.max_steps, fcfg.max_epochs, source.n_valid, B,
                                       max_pixels=fcfg.max_pixels)

    def save() -> None:
        _save_checkpoint(st, {"fingerprint": fp, "phase": "minibatch",
                              "model": estimator_state(model), **state.to_dict()})

    def task(i: int) -> tuple[Any, Any]:
        return draw_task, (source, fcfg.seed, STREAM_TRAIN, i, G * B, fcfg.blocks_per_task)

    stop_reason = stream_partial_fit(run, model, task, LoopSettings.of(fcfg), state, max_steps,
                                     limit_name, save, progress=progress,
                                     prepare=lambda x: to_space(x, fcfg.color_space))
    history = state.history_arrays()
    history["pixels_seen"] = history.pop("seen")
    info = {"history": {k: history[k] for k in HISTORY_KEYS}, "steps": state.cursor,
            "pixels_seen": state.seen, "stop_reason": stop_reason}
    centres = model.cluster_centers_.astype(np.float64)
    if fcfg.algorithm == "lloyd":  # --refine: keep the mini-batch result through a restart
        _save_checkpoint(st, {"fingerprint": fp, "phase": "minibatch-done",
                              "minibatch_centres": centres, "minibatch_info": info})
    elif fcfg.polish_size:
        with timer("polish"):
            centres, n_iter = _polish(run, source, fcfg, centres)
        info["stop_reason"] += (f"; polished by {n_iter} Lloyd iterations on {fcfg.polish_size} "
                                f"pixels (best of {fcfg.polish_starts} starts)")
        info["polish_iterations"] = n_iter
    return centres, info


POLISH_FINALS = 3  # polish starts finished by exact Lloyd after the race on the colour grid


def _polish(run: Runner, source: PixelSource, fcfg: FitConfig, centres: np.ndarray) -> tuple[np.ndarray, int]:
    """Lloyd iterations on a collection-wide sample, from the mini-batch centres and from
    ``polish_starts - 1`` weighted k-means++ starts; the lowest exact inertia wins.

    Mini-batch updates leave centres where the decaying learning rate froze them, a few %
    above a Lloyd optimum in MSE, and the basin they end in depends on the initial sample;
    Lloyd steps on a large uniform sample, from several starts, close that gap at a cost
    that does not grow with the collection. The starts first run to convergence on the
    sample's coarse colour grid (:func:`streamq.lloyd.grid_points`, ~20x cheaper per
    iteration); the grid ranks starts only roughly (measured on 200 Mpx of photos: the start
    ranked last of 3 on the grid ended best), so the best ``POLISH_FINALS`` of them are each
    finished by exact Lloyd on the sample's distinct colours, and the lowest inertia there wins.
    """
    with timer("polish sample"):
        sample = draw_sample(run, source, fcfg.seed, STREAM_POLISH, fcfg.polish_size,
                            fcfg.blocks_per_task)
    threads = _lloyd_threads(fcfg)
    gx, gw = grid_points(sample, fcfg.color_space, fcfg.colors)
    raced: list[tuple[float, int, np.ndarray]] = []
    for s in range(fcfg.polish_starts):
        if s == 0:
            start = centres
        elif len(gx) >= fcfg.colors:
            start = kmeans_plusplus_weighted(gx, gw, fcfg.colors, fcfg.seed + 1000 + s)
        else:
            break
        polished, inertia, n_iter, _ = weighted_lloyd(gx, gw, start, fcfg.tol, fcfg.polish_iter,
                                                      n_threads=threads)
        log.debug("polish start %d: grid inertia %.6g after %d iterations", s, inertia, n_iter)
        raced.append((inertia, s, polished))
    raced.sort(key=lambda r: (r[0], r[1]))
    codes, counts = np.unique(rgb_to_codes(sample), return_counts=True)
    x = to_space(codes_to_rgb(codes), fcfg.color_space).astype(np.float64)
    best, best_inertia, best_iter = centres, math.inf, 0
    for _, s, start in raced[:POLISH_FINALS]:
        polished, inertia, n_iter, _ = weighted_lloyd(x, counts, start, fcfg.tol, fcfg.polish_iter,
                                                      n_threads=threads)
        log.debug("polish start %d: exact inertia %.6g after %d iterations", s, inertia, n_iter)
        if inertia < best_inertia:
            best, best_inertia, best_iter = polished, inertia, n_iter
    return best, best_iter


def _fit_lloyd(run: Runner, st: Store, source: PixelSource, fcfg: FitConfig, fp: str,
               ckpt: dict[str, Any] | None, progress: bool | None,
               start: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
    codes, counts = histogram(run, st, source, progress)
    x = to_space(codes_to_rgb(codes), fcfg.color_space).astype(np.float64)
    k = fcfg.colors
    if len(codes) < k:
        raise ConfigError(f"the collection has only {len(codes)} distinct colours, fewer than "
                          f"colors={k}; choose --colors {len(codes)} or fewer")
    n_starts = 1 if start is not None else fcfg.n_init
    state = ckpt if ckpt is not None and ckpt.get("phase") == "lloyd" else None
    if state is None:
        state = {"fingerprint": fp, "phase": "lloyd", "start": 0, "iteration": 0, "centres": None,
                 "best_centres": None, "best_inertia": math.inf, "history": [],
                 "best_history": []}
    else:
        log.info("Resuming Lloyd at start %d, iteration %d", state["start"], state["iteration"])
    last_save = [time.monotonic()]
    while state["start"] < n_starts:
        s = state["start"]
        if state["centres"] is None:
            init = start if start is not None else kmeans_plusplus_weighted(x, counts, k, fcfg.seed + s)
            state["centres"], state["iteration"], state["history"] = np.asarray(init, np.float64), 0, []
        # A checkpoint taken at the converging iteration: do not iterate again on resume.
        done = bool(state["history"]) and state["history"][-1][1] < fcfg.tol
        limit = state["iteration"] if done else fcfg.max_iter

        def on_iter(it: int, centres: np.ndarray, shift: float, inertia: float) -> None:
            state["history"].append([it, shift, inertia])
            state["centres"], state["iteration"] = centres, it
            if it % fcfg.checkpoint_steps == 0 or time.monotonic() - last_save[0] > fcfg.checkpoint_seconds:
                _save_checkpoint(st, state)
                last_save[0] = time.monotonic()

        centres, inertia, n_iter, converged = weighted_lloyd(
            x, counts, state["centres"], fcfg.tol, limit, on_iter,
            start_iter=state["iteration"], n_threads=_lloyd_threads(fcfg))
        converged = converged or done
        if inertia < state["best_inertia"]:
            state.update(best_centres=centres, best_inertia=inertia,
                         best_history=list(state["history"]), best_converged=converged)
        state.update(start=s + 1, centres=None)
        _save_checkpoint(st, state)
    hist = np.asarray(state["best_history"], dtype=np.float64).reshape(-1, 3)
    n_px = float(counts.sum())
    info = {
        "history": {"step": hist[:, 0].astype(np.int64),
                    "pixels_seen": (hist[:, 0] * n_px).astype(np.int64),
                    "shift": hist[:, 1], "inertia": hist[:, 2] / n_px},
        "steps": int(hist[-1, 0]) if len(hist) else 0,
        "pixels_seen": int(n_px * (hist[-1, 0] if len(hist) else 0)),
        "stop_reason": (f"converged (no centre moved more than tol={fcfg.tol:g})"
                        if state.get("best_converged") else "max_iter"),
        "exact_mse": float(state["best_inertia"] / n_px),
    }
    return np.asarray(state["best_centres"], dtype=np.float64), info


def _lloyd_threads(fcfg: FitConfig) -> int:
    """Lloyd runs on the client while the workers wait: all cores, unless limited."""
    import os

    return fcfg.client_threads or os.cpu_count() or 1


def _ensure_distinct(centres: np.ndarray, val: np.ndarray, space: str) -> np.ndarray:
    """Make the uint8 palette hold K distinct colours where the data allows.

    Every centre whose uint8 colour repeats an earlier centre's is moved to a held-out pixel
    whose colour is not in the palette yet, taking the pixels worst served by the palette
    first (one assignment pass, whatever the number of duplicates).
    """
    rgb = to_rgb8(centres, space)
    _, first = np.unique(rgb, axis=0, return_index=True)
    dup = np.setdiff1d(np.arange(len(centres)), first)
    if not len(dup):
        return centres
    centres = centres.copy()
    _, d = assign(val, centres)
    used = {tuple(c) for c in rgb[first]}
    val_rgb = to_rgb8(val, space)
    todo = list(dup)
    for i in np.argsort(-d, kind="stable"):
        if not todo:
            break
        colour = tuple(val_rgb[i])
        if colour not in used:
            used.add(colour)
            centres[todo.pop(0)] = val[i]
    return centres


def _save_result(st: Store, r: FitResult, fp: str, timings: dict[str, float],
                 facts: dict[str, Any]) -> None:
    st.write_table("fit/palette", {"center_0": r.centers[:, 0], "center_1": r.centers[:, 1],
                                   "center_2": r.centers[:, 2], "r": r.palette[:, 0],
                                   "g": r.palette[:, 1], "b": r.palette[:, 2], "count": r.counts})
    st.write_table("fit/history", {k: np.asarray(v) for k, v in r.history.items()})
    summary = {k: v for k, v in asdict(r).items()
               if k not in ("centers", "palette", "counts", "history", "config", "status")}
    st.set_section(FIT, {"state": "complete", "fingerprint": fp, "config": r.config,
                         "summary": summary, "timings": timings, "runtime": facts,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    clear_checkpoint(st, CHECKPOINT)  # the result is saved; the working state is not needed


def load_fit(store: str | Location, storage_options: dict[str, Any] | None = None) -> FitResult:
    """The palette saved in ``store`` by :func:`fit`."""
    st = Store.open(store, storage_options=storage_options)
    sec = st.section(FIT)
    if sec.get("state") != "complete":
        raise ConfigError(f"{st.path} has no fitted palette; run `streamq fit` first")
    p = st.read_table("fit/palette", ("center_0", "center_1", "center_2", "r", "g", "b", "count"))
    h = st.read_table("fit/history", HISTORY_KEYS)
    s = sec["summary"]
    return FitResult(
        store=st.path, k=s["k"], algorithm=s["algorithm"], color_space=s["color_space"],
        centers=np.stack([p["center_0"], p["center_1"], p["center_2"]], 1),
        palette=np.stack([p["r"], p["g"], p["b"]], 1).astype(np.uint8), counts=p["count"],
        history=h, steps=s["steps"], pixels_seen=s["pixels_seen"], stop_reason=s["stop_reason"],
        mse=s["mse"], psnr=s["psnr"], seconds=s["seconds"], seed=s["seed"], config=sec["config"])
