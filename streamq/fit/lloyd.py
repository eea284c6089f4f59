"""The exact phase of a fit: Lloyd's k-means on the colour histogram, several starts side by side.

The mini-batch centres (when there are any) and ``n_init`` k-means++ starts race on a
coarse grid of the histogram (one Dask task each) until their centres settle (``RACE_TOL``,
scikit-learn's rule and default); the ``FINISHERS`` best go on to a fixed point there, then
run exact Lloyd on every distinct colour (one task each, on every core of its worker:
:func:`~streamq.kmeans.filtering.lloyd_cells` gives the same result on any number of
threads), each checkpointed in its own slot of ``fit/starts``; the lowest exact inertia wins
(the first start on ties). Ranking the starts before they converge cut the race's time by
29-46% (16 starts on the photo collection below, K = 16 to 256, two seeds each;
``benchmarks/exact_ranking.py``) and kept the
same two starts in 7 of 8 fits (in the eighth, one of the two changed; the other, kept
either way, is the one that finishes best); the starts kept reach the fixed point an
unbroken run would have, bit for bit.

When the histogram has a finer grid (``FINE_BITS``) holding at most ``FINE_SHARE`` of the
distinct colours and K is at most ``FINE_MAX_K``, the ``FINISHERS`` best first go to a fixed
point on it (one task each), and only the best there (the first start on ties) is finished
on every colour. Iterations on that grid cost about half of one on every colour and take
over part of the slow tail: on 13,233 photo tiles (2.3 M colours;
``benchmarks/finish_grid.py``, 3 raced k-means++ starts per K, CPU time of one finisher,
summed over the 3) it took K = 16 from 9.6 to 4.7 s (-51%) and K = 64 from 14.7 to 11.3 s
(-23%), the same inertia within 0.006%; at K = 256 it cost 9% more (one start 1.8x): not
used there. Its ranking picked the start that finishing both would have picked in all 12
fits of K = 8, 16, 24, 32, 48 and 64, two seeds each, on that collection (the two, finished,
ended 0 to 0.5% apart in inertia), and finishing one start instead of two saves a
finisher's time (K = 64: the exact phase went from 7.1 to 5.5 s). The result is a fixed
point of Lloyd on every colour either way. Used by
:mod:`streamq.fit.driver` (phase 2, or ``--algorithm lloyd`` alone), :mod:`streamq.fit.quality`
(one such fit per K tried), :mod:`streamq.fit.minibatch` and :mod:`streamq.fit.evaluate` (the
points, the exact MSE) and :mod:`streamq.estimator`; it imports none of them.

Also here: the histogram's colours as points of the fit's colour space (:func:`points`),
the exact MSE over every pixel (:func:`exact_mse`) and the uint8 palette made distinct
(:func:`ensure_distinct`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np

from streamq.colorspace import to_rgb8, to_space
from streamq.config import FitConfig, fingerprint
from streamq.fs import Location
from streamq.scheduler import Runner
from streamq.stage import Task, run_tasks
from streamq.store import Store, open_array
from streamq.store.checkpoint import decode_state, encode_state
from streamq.store.names import COLOR_CODES, COLOR_COUNTS
from streamq.store.results import STARTS

__all__ = ["FINISHERS", "GRID_BITS", "FitInfo", "ensure_distinct", "exact_mse", "fit_exact",
           "join_history", "points", "prepare_exact", "release_points", "release_workers",
           "share_points"]

log = logging.getLogger(__name__)


def points(codes: np.ndarray, space: str) -> np.ndarray:
    """The distinct colours ``codes`` as float64 points of the fit's colour space."""
    from streamq.kmeans.codes import codes_to_rgb

    return to_space(codes_to_rgb(codes), space).astype(np.float64)


def exact_mse(x: np.ndarray, codes: np.ndarray, counts: np.ndarray, centers: np.ndarray,
              palette: np.ndarray) -> tuple[float, np.ndarray]:
    """MSE over every pixel (uint8 RGB units; nearest centre in the fit's space, compared with
    its palette colour, as quantize does) and the pixels of each palette colour."""
    from streamq.kmeans.codes import squared_errors
    from streamq.kmeans.nearest import assign

    labels, _ = assign(x, centers, n_threads=os.cpu_count() or 1)
    sse, pixel_counts = squared_errors(codes, counts, labels, palette)
    n = int(counts.sum())
    return (sse / (3 * n) if n else 0.0), pixel_counts


def ensure_distinct(centers: np.ndarray, points: np.ndarray, space: str) -> np.ndarray:
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

    return spread_duplicates(centers, points, to_rgb8(centers, space), colour)


def _fine(start: dict[str, Any]) -> str:
    """The iterations a finisher ran on the finer grid, as the stop reason counts them."""
    n = start.get("fine_iterations", 0)
    return f"{n} on the {2 ** FINE_BITS}-level grid + " if n else ""


class FitInfo(TypedDict):
    """The progress of a fit: its history (arrays of ``streamq.store.results.HISTORY_KEYS``), its
    steps and pixels seen, and why it stopped."""

    history: dict[str, np.ndarray]
    steps: int
    pixels_seen: int
    stop_reason: str


def join_history(info: FitInfo, best: dict[str, Any], n_px: int, fcfg: FitConfig) -> FitInfo:
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
    fine = (f"the best {best['n_fine']} taken on the {2 ** FINE_BITS}-level grid, "
            if best.get("n_fine") else "")
    lloyd = (f"exact Lloyd on every pixel, best of {best['n_starts']} starts raced on the "
             f"colour grid, {fine}{best.get('n_finished', FINISHERS)} finished ({which}): "
             f"{how} after {best['grid_iterations']} + {_fine(best)}{n_iter} iterations")
    reason = f"{info['stop_reason']}; {lloyd}" if info["stop_reason"] else lloyd
    return {"history": h, "steps": steps0 + n_iter, "pixels_seen": seen0 + n_iter * n_px,
            "stop_reason": reason}


GRID_BITS = 6  # the race runs on a 64-level-per-channel grid of the histogram
RACE_TOL = 1e-4  # ... until the squared centre shift is within this of the variance (then
# the starts it keeps go on to a fixed point there)
FINE_BITS = 7  # the finishers first converge on a 128-level grid, when it is much smaller
FINE_SHARE = 0.75  # ... at most this share of the distinct colours
FINE_MAX_K = 64  # ... for up to this many centres (above, it saved nothing measurable)
FINISHERS = 2  # starts finished on every distinct colour (or ranked on the finer grid)

_POINTS: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
_POINTS_LOCK = threading.Lock()  # the tasks and the preparing thread of a process share them
_GIVEN: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_RELEASES = [0]  # how many times release_points ran: a preparation asked before one is stale


def share_points(st: Store, codes: np.ndarray, counts: np.ndarray, x: np.ndarray,
                 space: str) -> None:
    """Hand the histogram the caller holds (its codes, counts and points ``x`` in ``space``)
    to the exact tasks of this process: when the workers are threads of it (the fit's
    default local cluster), they take these arrays instead of reading and converting the
    same ones again (~100 MB of new memory on 2.3 M colours). Dropped by
    :func:`release_points`."""
    key = (st.location.url, _histogram_key(st), space)
    with _POINTS_LOCK:
        _GIVEN.clear()
        _GIVEN[key] = (codes, counts, x)


def _worker_points(store: Location, key: str, space: str) -> dict[str, np.ndarray]:
    """The histogram as weighted points, and its coarse grid, read once per process and fit
    (or those :func:`share_points` gave)."""
    from streamq.kmeans.codes import cell_means

    k = (store.url, key, space)
    with _POINTS_LOCK:
        if k not in _POINTS:
            _POINTS.clear()  # one histogram at a time
            if k in _GIVEN:
                codes, counts, x = _GIVEN[k]
                counts = np.asarray(counts, dtype=np.float64)
            else:
                codes = np.asarray(open_array(store, COLOR_CODES)[:], dtype=np.int64)
                counts = np.asarray(open_array(store, COLOR_COUNTS)[:], dtype=np.float64)
                x = points(codes, space)
            gx, gw = cell_means(codes, counts, x, GRID_BITS)
            if 2 * len(gx) > len(x):  # a grid that saves little: race on the colours themselves
                gx, gw = x, counts
            found = {"x": x, "w": counts, "gx": gx, "gw": gw}
            if len(gx) < len(x) and x.shape[1] == 3:  # the finishers' finer grid, if it saves much
                fx, fw = cell_means(codes, counts, x, FINE_BITS)
                if len(gx) < len(fx) <= FINE_SHARE * len(x):
                    found.update(fx=fx, fw=fw)
            _POINTS[k] = found  # whole or not at all
        return _POINTS[k]


def release_points() -> None:
    """Drop this process's cached points (:func:`_worker_points`, :func:`share_points`):
    called by the fit when it ends, as its workers may be threads of the calling process,
    which lives on after it."""
    with _POINTS_LOCK:
        _POINTS.clear()
        _GIVEN.clear()
        _RELEASES[0] += 1


def release_workers(run: Runner) -> None:
    """Drop the points the workers of ``run`` cached for the fit (:func:`release_points` on
    each): ~0.7 GB per worker process at 2.3 M colours, which a cluster that lives on (later
    stages of ``streamq run`` with ``dask.processes: true``, or a cluster given by address)
    would otherwise hold until the next fit. Best effort: a worker that cannot be reached
    keeps them, and the fit's result stands."""
    if run.client is None:
        return
    try:
        run.client.run(release_points)
    except Exception as exc:  # noqa: BLE001  (memory, not a result)
        log.debug("The workers' points were not released: %s", exc)


def _once(p: dict[str, Any], key: str, make: Callable[[], Any]) -> Any:
    """``p[key]``, made by ``make()`` the first time, by one thread at a time per key (not
    under ``_POINTS_LOCK``: a large entry takes a while, and the others need not wait)."""
    got = p.get(key)
    if got is not None:
        return got
    with _POINTS_LOCK:
        lock = p.setdefault("lock_" + key, threading.Lock())
    with lock:
        if key not in p:
            p[key] = make()
        return p[key]


def _same_as_x(p: dict[str, Any], which: str) -> str:
    """``x`` when the points ``which`` are the colours themselves (a grid that saved little),
    so that their layout and cells are made once."""
    return "x" if p[which] is p["x"] else which


def _layout(p: dict[str, Any], which: str) -> tuple[np.ndarray, ...] | None:
    """The cell layout of the points ``which`` (``x``, ``gx`` or ``fx``), made once per process,
    for colour points only (k-means++ and :func:`_cells` use it)."""
    from streamq.kmeans.plusplus import cell_layout

    which = _same_as_x(p, which)
    if p[which].shape[1] != 3:
        return None
    return _once(p, "layout_" + which, lambda: cell_layout(p[which]))


_WEIGHTS = {"x": "w", "gx": "gw", "fx": "fw"}


def _cells(p: dict[str, Any], which: str) -> Any:
    """The points ``which`` arranged for Lloyd (:class:`~streamq.kmeans.filtering.CellPoints`,
    on their layout), made once per process and shared by every run on them; None for
    points other than colours."""
    from streamq.kmeans.filtering import CellPoints

    which = _same_as_x(p, which)
    layout = _layout(p, which)
    if layout is None:
        return None
    return _once(p, "cells_" + which,
                 lambda: CellPoints(p[which], p[_WEIGHTS[which]], layout[0], layout[1]))


def _histogram_key(st: Store) -> str:
    """What a worker's cached points (:func:`_worker_points`) are the points of."""
    sec = st.section("colors")
    return fingerprint([sec.get("data"), sec.get("n_distinct")])


def prepare_exact(run: Runner, st: Store, fcfg: FitConfig) -> threading.Thread | None:
    """Get every worker ready for the exact phase while the mini-batch phase runs.

    Each worker's first exact task would otherwise import the k-means core, load its
    compiled kernels and read the histogram and build its grids before any work: ~1-1.4 s
    on 2.3 M colours, on every worker at once, while the mini-batch phase leaves most of a
    core idle (its steps run on the client). So each worker starts a background thread that
    does all of it (:func:`_prepare`) and the exact tasks find it done, or wait for the part
    under way. Only on a Dask cluster, including the fit's default local cluster of threads
    of this process (there one preparation, in a thread of its own, serves every worker);
    not on the thread pool and synchronous runners.
    The palette is the same either way (the tasks compute the same arrays).

    The request goes from a thread of its own, returned (the caller joins it before the
    exact phase): a fresh worker imports the fit's modules before it runs the request
    (~0.4 s), which the client's mini-batch phase would otherwise wait for.
    """
    client = run.client
    if client is None:
        return None
    args = (st.location, _histogram_key(st), fcfg.color_space, fcfg.colors, fcfg.init)

    def ask() -> None:
        try:
            client.run(_prepare_in_background, *args)
        except Exception as exc:  # noqa: BLE001  (a speed-up only: the exact tasks do the work)
            log.debug("Workers not prepared for the exact phase: %s", exc)

    asking = threading.Thread(target=ask, daemon=True, name="streamq-prepare-exact")
    asking.start()
    return asking


def _prepare_in_background(store: Location, key: str, space: str, k: int, init: str) -> None:
    threading.Thread(target=_prepare, args=(store, key, space, k, init, time.monotonic(),
                                            _RELEASES[0]),
                     daemon=True, name="streamq-prepare-exact").start()


#: Seconds a worker waits for its turn to prepare (another worker of the machine preparing
#: takes ~1.2 s); after that the exact phase is near or under way, and its tasks do the work.
PREPARE_WAIT = 5.0


def _prepare(store: Location, key: str, space: str, k: int, init: str, asked: float,
             released: int) -> None:
    """Read the histogram, build its grids and layouts, and load the kernels of a race (one
    start, two iterations on the coarse grid), in this process; one worker of a machine at a
    time (a lock file), so that the client's mini-batch steps keep a core: with both
    workers preparing at once, the mini-batch phase took 0.3-0.5 s longer.

    A worker that waited more than :data:`PREPARE_WAIT` seconds for its turn, whose points
    are already there (made by a task), or whose fit has ended meanwhile (``released``, the
    count of :func:`release_points` when it was asked, is out of date) does nothing: a late
    preparation would only take a core from the exact tasks, replace the points of a later
    fit, or hold points no fit will use."""
    from streamq.kmeans.precompile import machine_lock

    try:
        while True:
            with machine_lock("prepare-exact", wait=False) as mine:
                if mine:
                    with _POINTS_LOCK:
                        if (store.url, key, space) in _POINTS or released != _RELEASES[0]:
                            return
                    _prepare_now(store, key, space, k, init)
                    return
            if time.monotonic() - asked > PREPARE_WAIT:
                log.debug("Not preparing for the exact phase: no turn within %s s", PREPARE_WAIT)
                return
            time.sleep(0.05)
    except Exception as exc:  # noqa: BLE001  (the exact tasks meet any real problem again)
        log.info("Preparing for the exact phase failed (the exact tasks do it): %s", exc)


def _prepare_now(store: Location, key: str, space: str, k: int, init: str) -> None:
    from streamq.kmeans import converge, initial_centers

    p = _worker_points(store, key, space)
    for which in ("gx", "fx", "x"):
        if which in p:
            _cells(p, which)
    k = min(k, len(p["gx"]))
    start = initial_centers(p["gx"], p["gw"], k, init, np.random.default_rng(0),
                            _layout(p, "gx"), None)
    converge(p["gx"], p["gw"], start, cells=_cells(p, "gx"), tol=0, max_iter=2)


IterHook = Callable[[int, np.ndarray, list[tuple[int, float, int]]], None]


def _unless_stopping(then: IterHook | None = None) -> IterHook:
    """An ``on_iter`` hook that ends the Lloyd run when its cluster of threads is closing
    (:func:`streamq.scheduler.stopping`; a Ctrl-C would otherwise wait for the whole run),
    then calls ``then``. The results are those of a run without it (a hook only pauses the
    compiled loop between updates)."""
    from streamq.scheduler import StopRequested, stopping

    def hook(it: int, centers: np.ndarray, rows: list[tuple[int, float, int]]) -> None:
        if stopping():
            raise StopRequested(f"Lloyd stopped at iteration {it}: the command is ending")
        if then is not None:
            then(it, centers, rows)

    return hook


def _slot(args: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    slot = open_array(args["store"], STARTS, mode="r+")
    text = str(slot[args["start"]])
    state = decode_state(text) if text else None
    if state is not None and (state.get("fingerprint") != args["fingerprint"]
                              or "grid_done" not in state):  # (or of a race run to its end)
        state = None
    return slot, state


def _held(args: dict[str, Any]) -> np.ndarray | None:
    """The mask of a start's fixed centres (its first ones), or None."""
    from streamq.kmeans.starts import fixed_first

    fixed = args.get("fixed")
    return None if fixed is None else fixed_first(args["k"], len(fixed))


def _race_task(args: dict[str, Any]) -> dict[str, Any]:
    """One start (the given centres or k-means++) run on the coarse grid until its centres
    settle (``RACE_TOL``): far enough to rank it."""
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
    res = converge(p["gx"], p["gw"], init, cells=_cells(p, "gx"), tol=RACE_TOL,
                   max_iter=args["max_iter"], fixed=_held(args), on_iter=_unless_stopping())
    state = {"fingerprint": args["fingerprint"], "start": args["start"], "done": False,
             "grid_inertia": res.inertia, "grid_iterations": res.n_iter,
             "grid_done": res.stop != "tol", "centers": res.centers, "iteration": 0,
             "history": []}
    slot[args["start"]] = encode_state(state)
    return state


#: Threads of the tasks after the race, the last tasks of a fit and only two: each labels on
#: every core its process may use (the same result on any number, see ``lloyd_cells``); two
#: at once on one machine share them.
_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _to_grid_fixed_point(p: dict[str, Any], args: dict[str, Any], slot: Any,
                         state: dict[str, Any]) -> dict[str, Any]:
    """A raced start taken on to a fixed point of the coarse grid (the race stopped it at
    ``RACE_TOL``): Lloyd goes on from its centres and iteration count, which gives what an
    unbroken run to a fixed point would have; checkpointed in its slot."""
    from streamq.kmeans import converge

    if state["grid_done"]:
        return state
    res = converge(p["gx"], p["gw"], np.asarray(state["centers"]), cells=_cells(p, "gx"),
                   tol=0, max_iter=args["max_iter"], start_iter=state["grid_iterations"],
                   fixed=_held(args), n_threads=_THREADS, on_iter=_unless_stopping())
    state = {**state, "centers": res.centers, "grid_iterations": res.n_iter, "grid_done": True}
    slot[args["start"]] = encode_state(state)
    return state


def _fine_task(args: dict[str, Any]) -> dict[str, Any]:
    """A raced start taken to a fixed point of the coarse grid, then of the finer grid when
    the histogram has one (see the module docstring), checkpointed in its slot: its
    ``fine_inertia`` there ranks it."""
    from streamq.kmeans import converge

    slot, state = _slot(args)
    assert state is not None, "a start goes to the finer grid after its race"
    if state["done"] or "fine_iterations" in state:
        return state
    p = _worker_points(args["store"], args["key"], args["space"])
    state = _to_grid_fixed_point(p, args, slot, state)
    if "fx" not in p or args["k"] > FINE_MAX_K:
        return state
    res = converge(p["fx"], p["fw"], np.asarray(state["centers"]), cells=_cells(p, "fx"),
                   tol=0, max_iter=args["max_iter"], fixed=_held(args), n_threads=_THREADS,
                   on_iter=_unless_stopping())
    state = {**state, "centers": res.centers, "fine_iterations": res.n_iter,
             "fine_inertia": res.inertia}
    slot[args["start"]] = encode_state(state)
    return state


def _finish_task(args: dict[str, Any]) -> dict[str, Any]:
    """Exact Lloyd on every distinct colour from a start's grid (or finer grid) result,
    checkpointed in its slot."""
    from streamq.kmeans import converge

    slot, state = _slot(args)
    assert state is not None, "a start is finished after its race"
    if state["done"]:
        return state
    p = _worker_points(args["store"], args["key"], args["space"])
    state = _to_grid_fixed_point(p, args, slot, state)
    history: list[list[float]] = list(state["history"])
    last_save = [time.monotonic()]

    def on_iter(it: int, centers: np.ndarray, rows: list[tuple[int, float, int]]) -> None:
        if (it % args["checkpoint_steps"] == 0
                or time.monotonic() - last_save[0] > args["checkpoint_seconds"]):
            slot[args["start"]] = encode_state({**state, "centers": centers, "iteration": it,
                                                "history": history + [list(r) for r in rows]})
            last_save[0] = time.monotonic()

    res = converge(p["x"], p["w"], np.asarray(state["centers"]), cells=_cells(p, "x"),
                   tol=args["tol"], max_iter=args["max_iter"], start_iter=state["iteration"],
                   on_iter=_unless_stopping(on_iter), fixed=_held(args), n_threads=_THREADS)
    history.extend(list(r) for r in res.history)
    done = {**state, "done": True, "centers": res.centers, "iteration": res.n_iter,
            "history": history, "inertia": res.inertia, "stop": res.stop}
    slot[args["start"]] = encode_state(done)
    return done


def fit_exact(run: Runner, st: Store, fcfg: FitConfig, fp: str, mb_centers: np.ndarray | None,
               progress: bool | None, fixed: np.ndarray | None = None) -> dict[str, Any]:
    """The mini-batch centres (if any) and ``n_init`` k-means++ starts race on the coarse
    colour grid (one task each); the ``FINISHERS`` best go to a fixed point there and on the
    finer grid when there is one, and the best there, or else all of them, run exact Lloyd
    on every distinct colour (one task each); the lowest exact inertia wins (the first start
    on ties). Every start holds the ``fixed`` centres (its first ones)."""
    inits: list[np.ndarray | None] = [] if mb_centers is None else [np.asarray(mb_centers)]
    inits += [None] * fcfg.n_init
    if not st.has(STARTS) or st.array(STARTS).shape[0] != len(inits):
        st.create_records(STARTS, len(inits))
    base = {"store": st.location, "fingerprint": fp, "key": _histogram_key(st),
            "space": fcfg.color_space, "k": fcfg.colors, "init_method": fcfg.init,
            "seed": fcfg.seed, "tol": fcfg.tol,
            "max_iter": fcfg.max_iter, "checkpoint_steps": fcfg.checkpoint_steps,
            "checkpoint_seconds": fcfg.checkpoint_seconds, "fixed": fixed}
    first = len(inits) - fcfg.n_init  # slot of k-means++ start 0
    starts = [Task(_race_task, {**base, "start": s, "init": init, "plusplus": s - first})
              for s, init in enumerate(inits)]
    raced = sorted(run_tasks(run, starts, "lloyd starts", "start", progress),
                   key=lambda r: (r["grid_inertia"], r["start"]))
    top = sorted(r["start"] for r in raced[:FINISHERS])
    fine = run_tasks(run, [Task(_fine_task, {**base, "start": s}) for s in top], "best starts",
                     "start", progress)
    if all("fine_inertia" in r for r in fine):  # the finer grid ranks them: finish the best
        top = [min(fine, key=lambda r: (r["fine_inertia"], r["start"]))["start"]]
    finishers = [Task(_finish_task, {**base, "start": s}) for s in top]
    results = sorted(run_tasks(run, finishers, "exact lloyd", "start", progress),
                     key=lambda r: r["start"])
    best = min(results, key=lambda r: (r["inertia"], r["start"]))
    best["n_starts"] = len(inits)
    best["n_fine"] = sum(1 for r in fine if "fine_inertia" in r)
    best["n_finished"] = len(results)
    best["from_minibatch"] = mb_centers is not None and best["start"] == 0
    done = {r["start"]: r for r in results}
    kept = {r["start"]: r for r in fine}  # at the grid's fixed point (and the finer grid's)
    best["results"] = [
        {"start": r["start"], "grid_inertia": r["grid_inertia"],
         "grid_iterations": kept.get(r["start"], r)["grid_iterations"],
         **{key: kept[r["start"]][key] for key in ("fine_iterations", "fine_inertia")
            if key in kept.get(r["start"], {})},
         **({"inertia": done[r["start"]]["inertia"], "iterations": done[r["start"]]["iteration"],
             "stop": done[r["start"]]["stop"]} if r["start"] in done else {})}
        for r in sorted(raced, key=lambda r: r["start"])]
    for r in best["results"]:
        log.debug("lloyd start %s", r)
    return best
