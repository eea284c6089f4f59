"""Image groups: the images of a collection clustered by their colours.

Each image is described by its histogram over the shared palette, optionally followed by
its colour moments (``streamq.descriptors``; computed by Dask tasks from the labels that
``streamq quantize`` wrote). The clustered vector is the descriptor with the six moments
multiplied by ``moments_weight``: the histogram sums to 1 and each moment lies in [0, 1], so
with the default weight 1 a moment counts about as much as a large histogram bin.

The images are clustered into G groups by scikit-learn ``MiniBatchKMeans.partial_fit`` over
batches of descriptors streamed from the store by the loop the palette fit uses
(``streamq.minibatch``: seeded batches, an ordered window of Dask tasks, JSON checkpoints,
stopping by tol/patience/max steps/max epochs), from k-means++ centres fitted on a sample
of descriptors (every image when there are at most ``init_size``). Dask tasks then give
every image its nearest group centre and its distance to it. Where the images have labels
(their folder names), the groups are compared with them: adjusted Rand index, normalised
mutual information and the contingency table (sklearn.metrics).

Every phase resumes: descriptor and assignment tasks write completion records after their
rows, the clustering loop checkpoints its whole state. Results belong to one palette: a
refit marks them stale, and the next run recomputes them. Layout: ``docs/store-format.md``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from streamq.batches import STREAM_INIT, STREAM_TRAIN, PixelSource, draw_sample, draw_task
from streamq.clock import timestamp
from streamq.config import (
    ClusterImagesConfig,
    StreamQConfig,
    differences,
    fingerprint,
    parse_config,
    replaced,
    to_dict,
)
from streamq.console import timer
from streamq.descriptors import DESCRIPTORS, describe, n_features, prepare, read_plan
from streamq.errors import ConfigError, StageNotReadyError, StoreMismatchError, StreamQError
from streamq.fs import Location, check_access
from streamq.lock import store_lock
from streamq.minibatch import (
    HISTORY_KEYS,
    LoopSettings,
    LoopState,
    new_model,
    step_limit,
    stream_partial_fit,
)
from streamq.scheduler import Runner, runner
from streamq.stage import Task, run_tasks
from streamq.store import Collection, Store, open_array, store_location, write_record
from streamq.store.checkpoint import (
    clear_checkpoint,
    estimator_state,
    read_checkpoint,
    restore_estimator,
    write_checkpoint,
)
from streamq.store.image_groups import ImageGroups, load_groups
from streamq.store.names import (
    FIT,
    GROUP_ASSIGN_RECORDS,
    GROUP_CENTERS,
    GROUP_CHECKPOINT,
    GROUP_DISTANCE,
    GROUP_HISTORY,
    GROUP_LABELS,
    GROUP_OF_IMAGE,
    GROUP_OVERLAP,
    GROUPS,
    QUANTIZE,
)
from streamq.store.results import labels_state

__all__ = ["ImageGroups", "cluster_images", "load_groups"]

log = logging.getLogger(__name__)

SECTION = GROUPS
CHECKPOINT = GROUP_CHECKPOINT
CENTERS = GROUP_CENTERS
HISTORY = GROUP_HISTORY
GROUP = GROUP_OF_IMAGE
DISTANCE = GROUP_DISTANCE
ASSIGN_RECORDS = GROUP_ASSIGN_RECORDS
OVERLAP = GROUP_OVERLAP
LABELS = GROUP_LABELS
# Keys that change how fast grouping runs or how often it saves, not what it computes.
_NON_SEMANTIC = {"enabled", "prefetch", "checkpoint_steps", "checkpoint_seconds", "pixels_per_task"}


def _palette_labels(st: Store) -> tuple[str, int]:
    """Fingerprint and K of the shared palette whose labels are complete, or a clear error."""
    if st.section(FIT).get("state") != "complete":
        raise StageNotReadyError(f"{st.path} has no shared palette", "streamq fit",
                                 "streamq quantize")
    state, fit_fp = labels_state(st)
    if state == "complete":
        return str(fit_fp), int(st.section(QUANTIZE)["k"])
    what = {"missing": "has no pixel labels yet",
            "stale": "has stale labels (the palette was refitted)"}.get(state, "has unfinished labels")
    raise StageNotReadyError(f"{st.path} {what}", "streamq quantize")


def _weights(gcfg: ClusterImagesConfig, k: int) -> np.ndarray:
    """Per-feature factors of the clustered space: 1 on the histogram, the moment weight."""
    w = np.ones(n_features(gcfg.descriptor, k))
    w[k:] = gcfg.moments_weight
    return w


def cluster_images(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
                   overwrite: bool = False, progress: bool | None = None,
                   scheduler: str | None = None, storage_options: dict[str, Any] | None = None,
                   **options: Any) -> ImageGroups:
    """Group the images of ``store`` into G groups by their colour descriptors (resumable).

    Parameters
    ----------
    store : str
        A store with a shared palette and its labels (``streamq quantize``).
    config : StreamQConfig or dict, optional
        Full configuration; ``options`` override its ``cluster_images`` keys (``groups=8``,
        ``descriptor="histogram+moments"``, ``seed=1``, ...).
    overwrite : bool, default=False
        Recompute, replacing groups made with other parameters. Without it, finished groups
        with the same parameters are returned as they are, an interrupted run is resumed,
        and groups with other parameters are refused. Groups of an older palette are always
        recomputed.
    storage_options : dict, optional
        Options of the store's filesystem when it is a URL; default: ``config``'s.

    Returns
    -------
    ImageGroups
    """
    cfg = parse_config(config)
    cfg = replaced(cfg, {**{f"cluster_images.{k}": v for k, v in options.items()},
                         "dask.scheduler": scheduler})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="cluster-images", config=cfg.lock):
        return _cluster_images(loc, cfg, overwrite, progress)


def _cluster_images(store: Location, cfg: StreamQConfig, overwrite: bool,
                    progress: bool | None) -> ImageGroups:
    gcfg = cfg.cluster_images
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    fit_fp, k = _palette_labels(st)
    n = len(coll)
    if gcfg.groups > n:
        raise ConfigError(f"key 'cluster_images.groups' has value {gcfg.groups}, but the collection "
                          f"has only {n} images; choose --groups {n} or fewer")
    if gcfg.batch_size < gcfg.groups:
        raise ConfigError(f"key 'cluster_images.batch_size' has value {gcfg.batch_size}, expected "
                          f"at least groups={gcfg.groups} (each step needs an image per group)")
    desc_fp = fingerprint({"palette": fit_fp, "descriptor": gcfg.descriptor,
                           "rows_per_chunk": gcfg.rows_per_chunk})
    semantic = {key: v for key, v in to_dict(gcfg).items() if key not in _NON_SEMANTIC}
    fp = fingerprint({"palette": fit_fp, "groups": semantic})
    sec = st.section(SECTION)
    if sec and not overwrite:
        if sec.get("fit_fingerprint") == fit_fp and sec.get("fingerprint") != fp:
            raise StoreMismatchError(
                f"{st.path} already has image groups with other parameters "
                f"({differences(sec.get('config', {}), to_dict(gcfg), _NON_SEMANTIC)}); "
                "pass --overwrite to replace them")
        if sec.get("fingerprint") == fp and sec.get("state") == "complete":
            log.info("Image groups in %s are up to date; nothing to do", st.path)
            result = load_groups(st.location)
            result.status = "already complete"
            return result
    if sec and sec.get("fit_fingerprint") != fit_fp:
        log.info("Palette changed since the last grouping: recomputing the image groups")

    started = time.perf_counter()
    timings: dict[str, float] = {}
    from streamq.minibatch import client_threads

    # The model update runs on the client: one thread, one result, and no fight with workers.
    with runner(cfg.dask) as run, client_threads(1):
        run.check_paths(st.path)
        if overwrite or sec.get("fingerprint") != fp or sec.get("state") == "planning":
            reuse = sec.get("descriptor_fingerprint") == desc_fp and bool(sec.get("described"))
            kept = {"descriptor_fingerprint": desc_fp, "described": True} if reuse else {}
            st.set_section(SECTION, {"state": "planning", "fingerprint": fp,
                                     "fit_fingerprint": fit_fp, **kept})
            clear_checkpoint(st, CHECKPOINT)
            if not reuse:
                prepare(st, coll, gcfg.descriptor, k, gcfg.rows_per_chunk, gcfg.pixels_per_task)
            st.set_section(SECTION, {"state": "describing", "fingerprint": fp,
                                     "fit_fingerprint": fit_fp, "descriptor_fingerprint": desc_fp,
                                     "config": to_dict(gcfg), "k": k, **kept})
        sec = st.section(SECTION)
        if not sec.get("described"):
            with timer("describing images", timings):
                describe(run, st, coll, gcfg.descriptor, k, gcfg.pixels_per_task, progress)
            sec = {**sec, "described": True}
            st.set_section(SECTION, sec)
        if sec["state"] in ("describing", "clustering"):
            sec = {**sec, "state": "clustering"}
            st.set_section(SECTION, sec)
            with timer("clustering", timings):
                centers, info = _cluster(run, st, n, k, gcfg, fp, progress)
            st.write_array(CENTERS, centers)
            st.write_table(HISTORY, info.pop("history"))
            st.create_rows(GROUP, (n,), gcfg.rows_per_chunk, np.int32)
            st.create_rows(DISTANCE, (n,), gcfg.rows_per_chunk, np.float64)
            st.create_records(ASSIGN_RECORDS, len(read_plan(st)))
            sec = {**sec, "state": "assigning", "clustering": info}
            st.set_section(SECTION, sec)
        with timer("assigning", timings):
            _assign(run, st, gcfg, k, progress)
        with timer("comparing with labels", timings):
            summary = _consolidate(st, coll, gcfg.groups)
    seconds = round(time.perf_counter() - started, 3)
    st.set_section(SECTION, {**sec, "state": "complete", "summary": {**summary, **sec["clustering"]},
                             "timings": timings, "seconds": seconds,
                             "finished": timestamp()})
    clear_checkpoint(st, CHECKPOINT)
    result = load_groups(st.location)
    log.info("%s", result)
    return result


def _cluster(run: Runner, st: Store, n: int, k: int, gcfg: ClusterImagesConfig, fp: str,
             progress: bool | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Streamed mini-batch k-means over the descriptors; resumes from the checkpoint."""
    B, G = gcfg.batch_size, gcfg.batches_per_task
    source = PixelSource.whole(st.location, DESCRIPTORS, gcfg.rows_per_chunk, n)
    weights = _weights(gcfg, k)
    ckpt = read_checkpoint(st, CHECKPOINT, fp, "image groups")
    if ckpt is not None:
        model = restore_estimator(ckpt["model"])
        state = LoopState.from_dict(ckpt)
        log.info("Resuming the image grouping at step %d", state.cursor)
    else:
        with timer("initial group centres"):
            init, scale = _initial_centers(run, st, source, n, weights, gcfg)
            model = new_model(gcfg.groups, init, B, gcfg.seed, gcfg.reassignment_ratio)
        state = LoopState(scale=scale)
    max_steps, limit_name = step_limit(gcfg.max_steps, gcfg.max_epochs, n, B)

    def save() -> None:
        write_checkpoint(st, CHECKPOINT, {"fingerprint": fp, "model": estimator_state(model),
                                          **state.to_dict()})

    def task(i: int) -> tuple[Any, Any]:
        return draw_task, (source, gcfg.seed, STREAM_TRAIN, i, G * B, gcfg.blocks_per_task)

    stop_reason = stream_partial_fit(run, model, task, LoopSettings.of(gcfg), state, max_steps,
                                     limit_name, save, prepare=lambda x: x * weights,
                                     progress=progress, desc="grouping")
    info = {"history": {key: np.asarray(state.history[key]) for key in HISTORY_KEYS},
            "steps": state.cursor, "images_seen": state.seen, "stop_reason": stop_reason}
    return model.cluster_centers_.astype(np.float64), info


def _initial_centers(run: Runner, st: Store, source: PixelSource, n: int, weights: np.ndarray,
                     gcfg: ClusterImagesConfig) -> tuple[np.ndarray, float]:
    """k-means (best of ``n_init`` k-means++ starts) on every descriptor, or on a
    collection-wide sample, and the sample's mean variance per coordinate."""
    if n <= gcfg.init_size:
        sample = np.asarray(open_array(source.store, source.array)[:])
    else:
        sample = draw_sample(run, source, gcfg.seed, STREAM_INIT, gcfg.init_size,
                             gcfg.blocks_per_task)
    x = sample * weights
    distinct = len(np.unique(x, axis=0))
    if distinct < gcfg.groups:
        where = "the collection has" if n <= gcfg.init_size else "a sample of the collection has"
        raise ConfigError(f"{where} only {distinct} distinct image descriptors, fewer than "
                          f"groups={gcfg.groups}; choose --groups {distinct} or fewer")
    from streamq.kmeans import kmeans

    res = kmeans(x, None, gcfg.groups, np.random.default_rng([gcfg.seed, STREAM_INIT]),
                 n_init=gcfg.n_init, tol=gcfg.tol, max_iter=300)
    return res.centers.astype(np.float32), float(x.var(axis=0).mean())


def _assign_task(args: dict[str, Any]) -> dict[str, Any]:
    from streamq.kmeans.nearest import assign

    store = args["store"]
    r0, r1 = args["rows"]
    x = np.asarray(open_array(store, DESCRIPTORS)[r0:r1])
    groups, d2 = assign(x * np.asarray(args["weights"]), np.asarray(args["centers"]))
    open_array(store, GROUP, mode="r+")[r0:r1] = groups.astype(np.int32)
    open_array(store, DISTANCE, mode="r+")[r0:r1] = np.sqrt(d2)
    report = {"sizes": np.bincount(groups, minlength=len(args["centers"])).tolist(),
              "sse": float(d2.sum())}
    write_record(store, ASSIGN_RECORDS, args["task"], report)
    return report


def _assign(run: Runner, st: Store, gcfg: ClusterImagesConfig, k: int,
            progress: bool | None) -> None:
    """Every image's nearest group centre, by the tasks that have no record yet."""
    centers = np.asarray(st.array(CENTERS)[:])
    common = {"store": st.location, "centers": centers.tolist(), "weights": _weights(gcfg, k).tolist()}
    records = st.records(ASSIGN_RECORDS)
    tasks = read_plan(st)
    run_tasks(run, [Task(_assign_task, {**common, "task": i, "rows": [r0, r1]}, r1 - r0)
                    for i, (r0, r1) in enumerate(tasks) if not records[i]],
              "assigning", "image", progress, total=tasks[-1][1] if tasks else 0)
    if any(not r for r in st.records(ASSIGN_RECORDS)):
        raise StreamQError(f"{st.path}: some group assignment tasks have no completion record; "
                           "rerun `streamq cluster-images`")


def _consolidate(st: Store, coll: Collection, n_groups: int) -> dict[str, Any]:
    """Group sizes and the overlap of groups and image labels (stored); the summary numbers."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    group = np.asarray(st.array(GROUP)[:]).astype(np.int64)
    distance = np.asarray(st.array(DISTANCE)[:])
    sizes = np.bincount(group, minlength=n_groups)
    summary: dict[str, Any] = {"groups": n_groups, "sizes": sizes.tolist(),
                               "inertia": float((distance ** 2).mean()) if len(group) else 0.0,
                               "ari": None, "nmi": None, "n_labels": 0}
    names: np.ndarray = np.zeros(0, dtype=str)
    cells = {"group": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
             "count": np.zeros(0, np.int64)}
    if any(coll.labels):
        names, label = np.unique(np.asarray(coll.labels, dtype=str), return_inverse=True)
        codes, counts = np.unique(group * len(names) + label, return_counts=True)
        cells = {"group": codes // len(names), "label": codes % len(names), "count": counts}
        summary.update(ari=float(adjusted_rand_score(label, group)),
                       nmi=float(normalized_mutual_info_score(label, group)),
                       n_labels=len(names))
    st.write_table(LABELS, {"name": names})
    st.write_table(OVERLAP, cells)
    return summary


