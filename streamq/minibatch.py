"""The streamed mini-batch k-means loop, shared by the palette fit and the image groups.

One scikit-learn ``MiniBatchKMeans`` on the client is updated with ``partial_fit``, batch
after batch. Batches come from Dask tasks: task ``i`` returns ``batches_per_task`` batches
as a pure function of the seed and ``i`` (see ``streamq.batches``); a window of ``prefetch``
tasks runs ahead and results are consumed in task order, so the model depends only on the
seed, never on scheduling, while client memory stays bounded. Stopping: for ``patience``
consecutive steps the squared centre shifts of a step sum to at most ``tol`` times the data's
mean variance per coordinate (scikit-learn's ``tol``, as :mod:`streamq.kmeans.bounded` uses it),
or a step limit (:func:`step_limit`).

The caller checkpoints the estimator and the :class:`LoopState` through a ``save`` callback,
called every ``checkpoint_steps`` steps or ``checkpoint_seconds`` seconds; a loop restarted
from a saved state continues bit for bit.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from streamq.console import progress_bar

if TYPE_CHECKING:
    from streamq.scheduler import Runner

__all__ = ["HISTORY_KEYS", "LoopSettings", "LoopState", "client_threads", "import_model_early",
           "new_model", "step_limit", "stream_partial_fit"]

log = logging.getLogger(__name__)

HISTORY_KEYS = ("step", "seen", "shift", "inertia")
INERTIA_ROWS = 4096  # rows of each batch the batch-inertia estimate is computed on


@dataclass(frozen=True)
class LoopSettings:
    """The loop's keys, shared by the ``fit`` and ``cluster_images`` config sections."""

    batch_size: int
    batches_per_task: int
    prefetch: int
    tol: float
    patience: int
    checkpoint_steps: int
    checkpoint_seconds: float

    @classmethod
    def of(cls, section: Any) -> LoopSettings:
        """The loop settings of a config section that has these keys."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


@dataclass
class LoopState:
    """Where the loop is: steps done, samples seen, calm steps in a row, history, and the
    data's mean variance per coordinate (``scale``: ``tol`` is relative to it)."""

    cursor: int = 0
    seen: int = 0
    calm: int = 0
    scale: float = 1.0
    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (through ``streamq.store.checkpoint``) state for a checkpoint."""
        return {"cursor": self.cursor, "seen": self.seen, "calm": self.calm, "scale": self.scale,
                "history": {k: np.asarray(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(cursor=int(d["cursor"]), seen=int(d["seen"]), calm=int(d["calm"]),
                   scale=float(d.get("scale", 1.0)),
                   history={k: list(v) for k, v in d["history"].items()})

    def history_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.history.items()}


def step_limit(max_steps: int, max_epochs: float, n_items: int, batch_size: int,
               **max_items: int | None) -> tuple[int, str]:
    """The number of steps to stop at and the name of the limit that sets it.

    ``max_epochs`` counts passes over ``n_items``; each ``max_items`` keyword (e.g.
    ``max_pixels=...``) limits the samples seen. On a tie, ``max_steps`` names the limit.
    """
    limits = {"max_steps": max_steps,
              "max_epochs": max(1, math.ceil(max_epochs * n_items / batch_size))}
    for name, value in max_items.items():
        if value is not None:
            limits[name] = max(1, -(-value // batch_size))
    name = min(limits, key=lambda k: (limits[k], k != "max_steps"))
    return limits[name], name


def import_model_early() -> None:
    """Import scikit-learn's clustering (~1 s in a fresh process) in a background thread,
    while the command starts its cluster. :func:`client_threads` imports the same module:
    it finds it done, or waits for it."""
    def run() -> None:
        try:
            import sklearn.cluster  # noqa: F401
        except Exception as exc:  # noqa: BLE001  (a speed-up only: the fit imports it again)
            log.debug("Early import failed: %s", exc)

    threading.Thread(target=run, daemon=True, name="streamq-import-model").start()


@contextmanager
def client_threads(limit: int, model: bool = True) -> Iterator[None]:
    """The client's OpenMP and BLAS threads limited to ``limit`` (the model's updates run on
    the client, beside workers on the same cores: k = 64 ``partial_fit`` dropped from ~8 to
    ~1.4 Mpx/s when they fought).

    threadpoolctl limits the libraries loaded when its block starts, and scikit-learn loads
    its OpenMP runtime with ``sklearn.cluster``: so, with ``model``, that is imported first.
    Imported later (as it used to be, in :func:`new_model`), a fresh process's model ran on
    every core (``_n_threads`` 2 instead of 1 here).
    """
    from threadpoolctl import threadpool_limits

    if model:
        import sklearn.cluster  # noqa: F401
    with threadpool_limits(limits=limit):
        yield


def new_model(k: int, init: np.ndarray, batch_size: int, seed: int,
              reassignment_ratio: float) -> Any:
    """A ``MiniBatchKMeans`` that starts from the centres ``init``."""
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(n_clusters=k, init=init, n_init=1, batch_size=batch_size,
                           compute_labels=False, random_state=seed,
                           reassignment_ratio=reassignment_ratio)


def stream_partial_fit(run: Runner, model: Any, task: Callable[[int], tuple[Callable[..., Any], Any]],
                       settings: LoopSettings, state: LoopState, max_steps: int, limit_name: str,
                       save: Callable[[], None], *,
                       prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                       progress: bool | None = None, desc: str = "fitting",
                       fixed: np.ndarray | None = None) -> str:
    """Run ``partial_fit`` steps from ``state`` until a stop; return the reason.

    ``task(i)`` gives ``(fn, args)``: ``fn(args)`` returns the rows of batches
    ``i * batches_per_task ...`` back to back; ``prepare`` turns a batch into the model's
    features (default: as is). ``state`` is updated in place; its ``shift`` history holds each
    step's summed squared centre shift.

    ``fixed`` (``(F, d)``) holds the model's first ``F`` centres in place: ``partial_fit`` has
    no such option, so they are put back after every step (before the shift is measured and
    before any checkpoint, so a resumed loop continues bit for bit).
    """
    from streamq.kmeans.nearest import assign

    B, G = settings.batch_size, settings.batches_per_task
    window: collections.deque[tuple[int, Any]] = collections.deque()
    next_task = state.cursor // G
    stop_reason = limit_name if state.cursor >= max_steps else ""
    last_save = time.monotonic()
    with progress_bar(max_steps, desc, "step", progress) as bar:
        bar.update(state.cursor)
        while not stop_reason:
            while len(window) < settings.prefetch and next_task * G < max_steps:
                fn, args = task(next_task)
                window.append((next_task, run.submit(fn, args)))
                next_task += 1
            index, fut = window.popleft()
            data = fut.result()
            for j in range(state.cursor - index * G, G):
                x = data[j * B:(j + 1) * B]
                if prepare is not None:
                    x = prepare(x)
                before = (model.cluster_centers_.copy() if hasattr(model, "cluster_centers_")
                          else np.asarray(model.init))
                _, d = assign(x[:INERTIA_ROWS], before)  # batch inertia, before the update
                model.partial_fit(x)
                if fixed is not None:
                    model.cluster_centers_[:len(fixed)] = fixed
                shift = float(((model.cluster_centers_ - before) ** 2).sum())
                state.cursor += 1
                state.seen += len(x)
                state.calm = state.calm + 1 if shift <= settings.tol * state.scale else 0
                for k, v in zip(HISTORY_KEYS, (state.cursor, state.seen, shift, float(d.mean())),
                                strict=True):
                    state.history[k].append(v)
                bar.update(1)
                if state.calm >= settings.patience:
                    stop_reason = (f"converged (squared centre shift within tol={settings.tol:g} "
                                   f"of the variance for {settings.patience} steps)")
                elif state.cursor >= max_steps:
                    stop_reason = limit_name
                if stop_reason:
                    break
                if (state.cursor % settings.checkpoint_steps == 0
                        or time.monotonic() - last_save > settings.checkpoint_seconds):
                    save()
                    last_save = time.monotonic()
    for _, fut in window:
        fut.cancel()
    return stop_reason
