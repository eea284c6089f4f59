"""Phase 1 of the shared fit: the streamed mini-batch fit (``algorithm: minibatch``).

A scikit-learn ``MiniBatchKMeans`` on the client starts from k-means on a collection-wide
sample of distinct colours (:func:`initial_centers`) and is updated with ``partial_fit`` on
pixel batches that Dask workers draw collection-wide (:mod:`streamq.batches`, the loop of
:mod:`streamq.minibatch`). Its state is checkpointed as JSON (:mod:`streamq.store.checkpoint`), so
a rerun after a kill resumes at the step it stopped at with the same model. Its centres are
only a start for the exact phase (:mod:`streamq.fit.lloyd`); :mod:`streamq.fit.driver` runs
both.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from streamq.batches import STREAM_INIT, STREAM_TRAIN, PixelSource, draw_sample, draw_task
from streamq.colorspace import to_space
from streamq.config import FitConfig
from streamq.console import timer
from streamq.fit.lloyd import FitInfo, points
from streamq.minibatch import LoopSettings, LoopState, new_model, step_limit, stream_partial_fit
from streamq.scheduler import Runner
from streamq.store import Store
from streamq.store.checkpoint import estimator_state, restore_estimator, write_checkpoint
from streamq.store.results import CHECKPOINT, HISTORY_KEYS

__all__ = ["fit_minibatch", "initial_centers"]

log = logging.getLogger(__name__)


def initial_centers(run: Runner, source: PixelSource, fcfg: FitConfig, x_all: np.ndarray,
                    counts_all: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """k-means (one k-means++ start, to the default ``tol``) on the distinct colours of a
    collection-wide sample, or on the whole histogram when the sample has fewer than K colours:
    a start for the mini-batch steps, which only give a start for the exact phase. ``fixed``
    centres come first and stay."""
    from streamq.kmeans import kmeans
    from streamq.kmeans.codes import distinct_colours

    sample = draw_sample(run, source, fcfg.seed, STREAM_INIT, fcfg.init_size, fcfg.blocks_per_task)
    codes, counts = distinct_colours(sample)
    x, w = (points(codes, fcfg.color_space), counts) if len(codes) >= fcfg.colors else (x_all, counts_all)
    res = kmeans(x, w, fcfg.colors, np.random.default_rng([fcfg.seed, STREAM_INIT]),
                 init=fcfg.init, n_init=1, max_iter=fcfg.max_iter, fixed=fixed)
    return res.centers.astype(np.float32)


def fit_minibatch(run: Runner, st: Store, source: PixelSource, fcfg: FitConfig, fp: str,
                  ckpt: dict[str, Any] | None, x_all: np.ndarray, counts_all: np.ndarray,
                  progress: bool | None, fixed: np.ndarray | None = None
                  ) -> tuple[np.ndarray, FitInfo]:
    """The mini-batch phase from the checkpoint ``ckpt`` (or from new initial centres): its
    centres (float64, ``fixed`` exactly as given) and its history and stop reason.
    ``x_all``/``counts_all`` are the histogram's points and counts."""
    from streamq.kmeans.bounded import tolerance

    B, G = fcfg.batch_size, fcfg.batches_per_task
    if ckpt is not None and ckpt.get("phase") == "minibatch":
        model = restore_estimator(ckpt["model"])
        state = LoopState.from_dict(ckpt)
        log.info("Resuming the mini-batch fit at step %d", state.cursor)
    else:
        with timer("initial centres"):
            init = initial_centers(run, source, fcfg, x_all, counts_all, fixed)
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
    info: FitInfo = {"history": {k: history[k] for k in HISTORY_KEYS}, "steps": state.cursor,
            "pixels_seen": state.seen, "stop_reason": f"mini-batch: {stop_reason}"}
    centers = model.cluster_centers_.astype(np.float64)
    if fixed is not None:  # exactly, not their float32 copies in the model
        centers[:len(fixed)] = fixed
    return centers, info
