"""One palette per image: the tutorial's workflow at collection scale.

For every image and every K, k-means with k-means++ starts is fitted on a seeded random
``sample`` fraction (default 70%) of the image's pixels, scaled to [0, 1]; then every pixel
is labelled with its exact nearest centre (as ``KMeans.predict`` does). ``method`` chooses
the fit: ``kmeans`` is the tutorial's scikit-learn ``KMeans`` on the sample, ``histogram``
the same k-means on the sample's distinct colours with compiled loops
(:mod:`streamq.kmeans`), many times faster at large K. Fitting runs in Dask tasks over
groups of images, each recording its palettes when done (so a rerun fits only unfinished
groups). Labelling with these palettes is part of ``quantize``
(:mod:`streamq.quantize.per_image`), chunk by chunk like the shared-palette labels.

With fixed colours (``fixed_colors``, :mod:`streamq.fixed`; the ``histogram`` method only:
scikit-learn's ``KMeans`` cannot hold centres) every palette's first ``F`` entries are those
colours and k-means fits the other ``K - F`` of each image.

Layout: ``per_image/k{K}/{center,palette}`` hold ``(N, K, 3)`` arrays, ``labels`` the
``(P,)`` labels, ``images/{sse,mse,psnr}`` the per-image errors.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.colorspace import to_space
from streamq.config import PerImageConfig, StreamQConfig, fingerprint, parse_config, to_dict
from streamq.console import timer
from streamq.errors import ConfigError, StoreMismatchError
from streamq.fixed import FixedColors, read_fixed_colors
from streamq.fs import Location, check_access
from streamq.lock import store_lock
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks
from streamq.store import (
    PIXELS,
    Collection,
    Store,
    open_array,
    store_location,
    write_record,
)
from streamq.store.names import (
    PER_IMAGE,
    PER_IMAGE_RECORDS,
    PER_IMAGE_TASKS,
    per_image_centers,
    per_image_palette,
)
from streamq.store.results import load_per_image
from streamq.store.selection import refuse_alpha
from streamq.store.summaries import PerImageSummary, per_image_summary, summary_of

__all__ = ["PerImageSummary", "fit_image", "fit_per_image", "load_per_image", "sample_index",
           "summary_of"]

log = logging.getLogger(__name__)

SECTION = PER_IMAGE
RECORDS = PER_IMAGE_RECORDS


def sample_size(n: int, k: int, sample: float) -> int:
    """Pixels in the sample of an ``n``-pixel image: the ``sample`` fraction, at least ``k``."""
    return min(n, max(k, int(round(sample * n))))


def sample_index(n: int, k: int, sample: float, seed: int, image_id: int) -> np.ndarray:
    """Sorted indices of the seeded ``sample`` fraction (at least ``k``) of ``n`` pixels."""
    m = sample_size(n, k, sample)
    if m >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, image_id])
    if n <= 10_000 or m > n // 20 or m <= n // 50:
        # The set of ``rng.choice(n, m, replace=False)``, drawn without its final shuffle:
        # for these sizes NumPy picks the set alike with or without it (a partial tail
        # shuffle, or Floyd's algorithm for few pixels; tests check it), and a mask puts it in
        # order in O(n) instead of a sort. A 4 Mpx image: 0.2 s instead of 0.7 s.
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=m, replace=False, shuffle=False)] = True
        return np.flatnonzero(mask)
    return np.sort(rng.choice(n, size=m, replace=False))


def _sample_histogram(rgb: np.ndarray, m: int, seed: int, image_id: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours and counts of the pixels :func:`sample_index` picks (``m`` of
    them), drawn and counted in one compiled pass (:mod:`streamq.kmeans.sampling`)."""
    from streamq.kmeans.sampling import sample_histogram

    return sample_histogram(rgb, m, np.random.default_rng([seed, image_id]))


def fit_image(rgb: np.ndarray, k: int, sample: float, seed: int, image_id: int,
              init: str = "k-means++", n_init: int = 1, method: str = "kmeans",
              index: np.ndarray | None = None,
              histogram: tuple[np.ndarray, np.ndarray] | None = None,
              fixed: np.ndarray | None = None) -> np.ndarray:
    """The palette of one image: k-means on a seeded ``sample`` of its pixels.

    ``rgb`` is ``(n, 3)`` uint8; returns ``(k, 3)`` float centres in [0, 1] units.
    ``method="kmeans"`` is the tutorial's ``KMeans(init=init, n_init=n_init)`` on the
    sample; ``"histogram"`` runs the same k-means (to the same stopping rule) on the
    sample's distinct colours weighted by their counts, with compiled loops
    (:mod:`streamq.kmeans`): other random starts, so other centres, of the same
    quality. ``index`` is :func:`sample_index` when the caller has it already, and
    ``histogram`` the sample's :func:`streamq.kmeans.distinct_colours` (histogram method).
    ``fixed`` (``(F, 3)`` uint8, histogram method) are the first ``F`` centres, held.
    """
    n = len(rgb)
    m = sample_size(n, k, sample) if index is None else len(index)
    if fixed is not None and len(fixed):
        if method != "histogram":
            raise ValueError("fixed colours need the histogram method")
        from streamq.kmeans import codes_to_points, distinct_colours, kmeans, rgb_to_codes

        if m < k:  # fewer pixels than colours: all of them (kmeans takes every colour then)
            histogram = distinct_colours(rgb)
        elif histogram is None:
            histogram = (_sample_histogram(rgb, m, seed, image_id) if index is None
                         else distinct_colours(rgb, index))
        codes, counts = histogram
        return kmeans(codes_to_points(codes), counts, k, np.random.default_rng([seed, image_id, k]),
                      init=init, n_init=n_init,
                      fixed=codes_to_points(rgb_to_codes(np.asarray(fixed, np.uint8)))).centers
    if m < k:  # fewer pixels than colours: every pixel is a centre, the rest repeat the first
        x = to_space(rgb, "rgb")
        return np.concatenate([x, np.repeat(x[:1], k - n, axis=0)]).astype(np.float64)
    if method == "histogram":
        from streamq.kmeans import codes_to_points, distinct_colours, kmeans

        if histogram is None:  # drawn and counted in one pass unless the caller has the index
            histogram = (_sample_histogram(rgb, m, seed, image_id) if index is None
                         else distinct_colours(rgb, index))
        codes, counts = histogram
        # one generator per (image, K): palettes do not depend on which other K are fitted
        return kmeans(codes_to_points(codes), counts, k, np.random.default_rng([seed, image_id, k]),
                      init=init, n_init=n_init).centers
    if method != "kmeans":
        raise ValueError(f"unknown per-image method {method!r}, expected 'kmeans' or 'histogram'")
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    idx = sample_index(n, k, sample, seed, image_id) if index is None else index
    x = to_space(rgb[idx], "rgb")
    # One thread: KMeans sums in thread order, so this makes the palette independent of the
    # machine and scheduler (and tasks are the parallelism anyway).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # fewer distinct colours than k: duplicate centres
        km = KMeans(n_clusters=k, init=init, n_init=n_init, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float64)


def _fit_task(args: dict[str, Any]) -> dict[str, Any]:
    if args["method"] == "histogram":  # on a cold numba cache, the workers share the compiling
        from streamq.kmeans.precompile import precompile

        precompile()
    pixels = open_array(args["store"], PIXELS)
    a, b = args["px_start"], args["px_stop"]
    data = np.asarray(pixels[a:b])
    result: dict[str, list[Any]] = {str(k): [] for k in args["colors"]}
    fixed = None if args.get("fixed") is None else np.asarray(args["fixed"], np.uint8).reshape(-1, 3)
    for image_id, off, size in args["images"]:
        rgb = data[off - a: off - a + size]
        index: dict[int, np.ndarray] = {}  # one sample per image, whatever the K (unless tiny)
        hist: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # and its histogram
        for k in args["colors"]:
            m = sample_size(size, k, args["sample"])
            if args["method"] == "histogram":
                if m not in hist and m >= k:
                    hist[m] = _sample_histogram(rgb, m, args["seed"], image_id)
            elif m not in index:
                index[m] = sample_index(size, k, args["sample"], args["seed"], image_id)
            c = fit_image(rgb, k, args["sample"], args["seed"], image_id, args["init"],
                          args["n_init"], args["method"], index.get(m), hist.get(m), fixed)
            result[str(k)].append([image_id, c.reshape(-1).tolist()])
    write_record(args["store"], RECORDS, args["task"], result)
    return {"n": len(args["images"])}


def _fingerprint(st: Store, pcfg: PerImageConfig, fixed: FixedColors | None = None) -> str:
    ingest = st.section("ingest")
    semantic = {k: v for k, v in to_dict(pcfg).items() if k not in ("enabled", "pixels_per_task")}
    if semantic.get("fixed_colors") is None:
        semantic.pop("fixed_colors", None)  # as before there were fixed colours
    elif fixed is not None:  # the colours themselves, wherever the file is
        semantic["fixed_colors"] = fixed.sha256
    if semantic.get("method") == "kmeans":  # the only method before there was a choice
        del semantic["method"]
    return fingerprint({"data": [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")],
                        "per_image": semantic})


def fit_per_image(store: str | Location, *, config: StreamQConfig | dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool | None = None,
                  scheduler: str | None = None, storage_options: dict[str, Any] | None = None,
                  **options: Any) -> PerImageSummary:
    """Fit one palette per image and per K (``options`` override ``per_image`` keys)."""
    cfg = parse_config(config)
    cfg = cfg.replace(**{f"per_image.{k}": v for k, v in options.items()}, **{"dask.scheduler": scheduler})
    loc = store_location(store, storage_options, cfg.storage_options)
    check_access(loc)
    with store_lock(loc, operation="fit --per-image", config=cfg.lock):
        return _fit_per_image(loc, cfg, overwrite, progress)


def _fit_per_image(store: Location, cfg: StreamQConfig, overwrite: bool, progress: bool | None
                   ) -> PerImageSummary:
    pcfg = cfg.per_image
    st = Store.open(store, mode="r+")
    coll = Collection(st)
    refuse_alpha(coll, "fit --per-image")
    fixed = None
    if pcfg.fixed_colors is not None:
        if pcfg.method != "histogram":
            raise ConfigError(f"key 'per_image.fixed_colors' needs per_image.method 'histogram', "
                              f"got {pcfg.method!r} (scikit-learn's KMeans cannot hold centres "
                              "fixed); add --method histogram")
        fixed = read_fixed_colors(pcfg.fixed_colors, min(pcfg.colors),
                                  key="per_image.fixed_colors",
                                  storage_options=cfg.storage_options or None)
    fp = _fingerprint(st, pcfg, fixed)
    sec = st.section(SECTION)
    if sec and not overwrite:
        if sec.get("fingerprint") != fp:
            old = sec.get("config", {})
            raise StoreMismatchError(
                f"{st.path} already has per-image palettes with other parameters (colors="
                f"{old.get('colors')}, sample={old.get('sample')}, seed={old.get('seed')}, "
                f"method={old.get('method', 'kmeans')}); "
                "pass --overwrite to replace them")
        if sec.get("state") == "complete":
            return per_image_summary(st, "already complete")
    timings: dict[str, float] = {}
    sizes = coll.heights * coll.widths
    with timer("per-image fit", timings), runner(cfg.dask) as run:
        run.check_paths(st.path)
        facts = run.facts()
        if not sec or overwrite or sec.get("state") == "planning":
            # at most pixels_per_task per task, and a small collection still gets about four
            # tasks per worker (the plan is stored: a resumed run keeps it, whatever its workers)
            budget = min(pcfg.pixels_per_task, max(1, -(-int(sizes.sum()) // (4 * run.n_workers))))
            tasks = coll.groups_by_pixels(range(len(coll)), budget)
            st.set_section(SECTION, {"state": "planning", "fingerprint": fp})
            st.write_table(PER_IMAGE_TASKS, {"first": np.asarray([t[0] for t in tasks], np.int64),
                                               "last": np.asarray([t[-1] for t in tasks], np.int64)})
            st.create_records(RECORDS, len(tasks))
            extra = {} if fixed is None else {"fixed_colors": fixed.record()}
            st.set_section(SECTION, {"state": "running", "fingerprint": fp, "config": to_dict(pcfg),
                                     "colors": list(pcfg.colors), "n_tasks": len(tasks), **extra})
        t = st.read_table(PER_IMAGE_TASKS, ("first", "last"))
        records = st.records(RECORDS)
        pending = [i for i in range(len(records)) if not records[i]]
        todo = []
        # the largest tasks first, so that no worker is left with a big one at the end
        cost = {ti: int(sizes[int(t["first"][ti]):int(t["last"][ti]) + 1].sum()) for ti in pending}
        for ti in sorted(pending, key=lambda ti: -cost[ti]):
            ids = range(int(t["first"][ti]), int(t["last"][ti]) + 1)
            images = [(i, int(coll.offsets[i]), int(sizes[i])) for i in ids]
            a = images[0][1]
            b = images[-1][1] + images[-1][2]
            args = {"store": st.location, "task": ti, "px_start": a, "px_stop": b, "images": images,
                    "colors": list(pcfg.colors), "sample": pcfg.sample, "seed": pcfg.seed,
                    "init": pcfg.init, "n_init": pcfg.n_init, "method": pcfg.method,
                    "fixed": None if fixed is None else fixed.rgb.tolist()}
            todo.append(Task(_fit_task, args, len(images)))
        run_tasks(run, todo, "per-image fit", "image", progress)
    with timer("consolidating", timings):
        records = st.records(RECORDS)
        for k in pcfg.colors:
            centers = np.zeros((len(coll), k, 3), dtype=np.float64)
            for r in records:
                for image_id, flat in json.loads(r)[str(k)]:
                    centers[image_id] = np.asarray(flat, dtype=np.float64).reshape(k, 3)
            st.write_array(per_image_centers(k), centers)
            st.write_array(per_image_palette(k), np.round(np.clip(centers * 255, 0, 255)).astype(np.uint8))
        st.set_section(SECTION, {**st.section(SECTION), "state": "complete", "timings": timings,
                                 "runtime": facts, "finished": timestamp()})
    st.set_section(SECTION, {**st.section(SECTION), "timings": timings})  # with consolidating
    return per_image_summary(st, "fitted", timings, len(coll))
