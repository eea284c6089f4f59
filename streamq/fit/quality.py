"""A quality target instead of K: the smallest palette that reaches a PSNR (``fit --quality``).

``fit.quality = [MIN, MAX]`` (PSNR in dB over every pixel) asks for the smallest K of
``fit.k_range = [LO, HI]`` whose palette reaches MAX, as pngquant's ``--quality MIN-MAX``.
Each K tried is fitted exactly as ``streamq fit -k K --algorithm lloyd`` with the same seed,
``n_init``, ``init``, ``tol`` and ``max_iter`` fits it (:func:`streamq.fit.lloyd.fit_exact`:
k-means++ starts raced on the colour grid, the best finished by exact Lloyd on every distinct
colour, each start a Dask task), and its MSE is exact, from the colour histogram
(:mod:`streamq.store.histogram`). So a search costs one histogram, read once, and a few Lloyd runs
on it, never a pass over the pixels per K.

**The search.** ``HI`` is fitted first (capped at the number of distinct colours, where the
MSE is 0): below MIN, the fit fails with :class:`QualityError` (exit status 99, one line);
below MAX but at least MIN, ``HI`` is the palette (the best the range allows, as pngquant
does). Otherwise a binary search over ``[LO, HI]`` keeps ``HI`` reaching MAX and ``LO - 1``
missing it, so the K it ends on reaches MAX and ``K - 1`` was fitted and misses it (unless
``K = LO``). k-means gives a local optimum, so the PSNR is not strictly monotone in K: a K
below ``K - 1`` that the search did not try may, rarely and by a fraction of a dB near the
target, reach MAX too. The result is the smallest K reaching MAX whose predecessor misses it,
found with about ``log2(HI - LO)`` fits instead of ``HI - LO``; the record lists every K tried.

**Resume.** Each K's result (its centres, pixels per colour, MSE and Lloyd record) is added
to the fit's checkpoint (JSON, :mod:`streamq.store.checkpoint`) as soon as it is known, and the K
being fitted checkpoints its Lloyd starts as any fit does; a rerun after ``kill -9`` reads
them back and continues, ending with the same K and palette. A search that fails below MIN
leaves its record, so a rerun fails again at once.

**With alpha.** A collection with alpha runs the same search (:func:`search_k`) with the
RGBA fit of :mod:`streamq.fit.alpha` at each K, on the RGBA histogram, PSNR over
premultiplied RGBA; that fit keeps no checkpoint, so neither does its search.

**What is stored.** The fit is saved as any fit (``fit/palette``, ``fit/history``, attribute
``fit``) with ``algorithm = "lloyd"`` and ``k`` the chosen K; ``summary.quality`` holds the
target, the range searched and every K tried with its MSE, and ``streamq info`` shows it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamq.colorspace import to_rgb8
from streamq.config import FitConfig, fingerprint, to_dict
from streamq.describe import describe_quality
from streamq.errors import ConfigError, QualityError
from streamq.fit.lloyd import FitInfo, ensure_distinct, exact_mse, fit_exact, join_history, points
from streamq.metrics import psnr
from streamq.scheduler import Runner
from streamq.store import Store
from streamq.store.checkpoint import read_checkpoint, write_checkpoint
from streamq.store.results import CHECKPOINT, HISTORY_KEYS, FitResult, save_fit

__all__ = ["EXIT_STATUS", "QualityError", "check_flags", "describe_quality", "fit_quality", "parse_range", "search",
           "search_config", "search_k"]

log = logging.getLogger(__name__)

EXIT_STATUS = QualityError.exit_status  # 99, as pngquant's when the quality is below MIN
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def parse_range(text: str, flag: str, integers: bool = False) -> list[float] | list[int]:
    """``"MIN-MAX"`` (or ``"MAX"`` alone: MIN 0) as ``[MIN, MAX]``; with ``integers``,
    ``"LO-HI"`` as ``[LO, HI]``. Order and bounds are checked with the config keys."""
    number = r"(\d+)" if integers else _NUMBER
    m = re.fullmatch(rf"\s*{number}\s*(?:-\s*{number}\s*)?", text)
    if m is None or (integers and m.group(2) is None):
        what = "LO-HI, two integers such as 2-256" if integers else \
            "MIN-MAX in dB such as 30-40 (or MAX alone, MIN being 0)"
        raise ConfigError(f"{flag} {text!r} is not {what}")
    if integers:
        return [int(m.group(1)), int(m.group(2))]
    lo, hi = m.group(1), m.group(2)
    return [0.0, float(lo)] if hi is None else [float(lo), float(hi)]


def check_flags(quality: Any, k_range: Any, *, colors: Any = None, per_image: bool = False,
                algorithm: str | None = None) -> None:
    """Refuse flags that do not go with ``--quality`` (one line each)."""
    if quality is None:
        if k_range is not None:
            raise ConfigError("--k-range goes with --quality MIN-MAX (the K searched)")
        return
    if colors is not None:
        raise ConfigError("--colors and --quality exclude each other: --quality chooses K "
                          "in --k-range")
    if algorithm == "minibatch" and not per_image:
        raise ConfigError("--quality fits each K by exact Lloyd on the colour histogram "
                          "(--algorithm lloyd), not minibatch")


def search_config(fcfg: FitConfig) -> FitConfig:
    """The fit keys a quality search runs with: exact Lloyd on the histogram (no pixel pass
    per K), and ``colors`` set to the largest K searched (it is not used otherwise), so that
    the fit's fingerprint depends on the target and range only."""
    return dataclasses.replace(fcfg, algorithm="lloyd", colors=fcfg.k_range[1])


def search(run: Runner, st: Store, fcfg: FitConfig, fp: str, codes: np.ndarray,
           counts: np.ndarray, progress: bool | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Find the K of the target ``fcfg.quality`` (see the module's docstring).

    Returns the chosen K's record (``k``, ``mse``, ``centers``, ``counts``, ``best``: the
    Lloyd result of :func:`streamq.fit.lloyd.fit_exact`) and the search's record for the summary.
    Raises :class:`QualityError` when the largest K stays below MIN.
    """
    x = points(codes, fcfg.color_space)
    ckpt = read_checkpoint(st, CHECKPOINT, fp, "fit")
    tried: list[dict[str, Any]] = list(ckpt["tried"]) if ckpt and "tried" in ckpt else []

    def fit_k(k: int) -> dict[str, Any]:
        best = fit_exact(run, st, dataclasses.replace(fcfg, colors=k), fingerprint([fp, k]),
                          None, progress)
        centers = ensure_distinct(best["centers"], x, fcfg.color_space)
        mse, pixel_counts = exact_mse(x, codes, counts, centers,
                                       to_rgb8(centers, fcfg.color_space))
        return {"k": k, "mse": mse, "centers": centers, "counts": pixel_counts, "best": best}

    def save(done: list[dict[str, Any]]) -> None:
        write_checkpoint(st, CHECKPOINT, {"fingerprint": fp, "phase": "quality", "tried": done})

    return search_k(st, fcfg, len(codes), fit_k, tried, save)


def search_k(st: Store, fcfg: FitConfig, n_distinct: int, fit_k: Callable[[int], dict[str, Any]],
             tried: list[dict[str, Any]], save: Callable[[list[dict[str, Any]]], None] | None = None,
             what: str = "colours") -> tuple[dict[str, Any], dict[str, Any]]:
    """The search of the module's docstring over any fit: ``fit_k(k)`` fits K colours and
    returns a record with ``k`` and ``mse`` (the exact MSE); ``tried`` holds the records known
    already (a resumed search), ``save`` keeps them after each new one. ``n_distinct`` colours
    (``what``) cap the range. Returns the chosen record and the search's record; raises
    :class:`QualityError` when the largest K stays below MIN."""
    assert fcfg.quality is not None
    qmin, qmax = fcfg.quality
    lo, hi = fcfg.k_range
    if n_distinct < lo:
        raise ConfigError(f"the collection has only {n_distinct} distinct {what}, fewer than "
                          f"the smallest K of key 'fit.k_range' {[lo, hi]}; start the range at "
                          f"{n_distinct} or below")
    hi = min(hi, n_distinct)  # K = the distinct colours: every pixel exact

    def fitted(k: int) -> dict[str, Any]:
        for rec in tried:
            if rec["k"] == k:
                log.info("quality search: K=%d: PSNR %.2f dB (recorded)", k, psnr(rec["mse"]))
                return rec
        rec = fit_k(k)
        tried.append(rec)
        if save is not None:
            save(tried)
        log.info("quality search: K=%d: PSNR %.2f dB", k, psnr(rec["mse"]))
        return rec

    def reaches(rec: dict[str, Any]) -> bool:
        return psnr(rec["mse"]) >= qmax

    top = fitted(hi)
    if psnr(top["mse"]) < qmin:
        record = {"min": qmin, "max": qmax, "k_range": list(fcfg.k_range), "searched": [lo, hi],
                  "k": None, "reached": False, "tried": [[r["k"], r["mse"]] for r in tried]}
        message = (f"{st.path}: quality {qmin:g}-{qmax:g} dB not reached: K={hi}, the largest "
                   f"K searched ({lo}..{hi}), gives PSNR {psnr(top['mse']):.2f} dB, below MIN "
                   f"{qmin:g} dB; widen key 'fit.k_range' (--k-range) or lower MIN")
        st.set_section("fit", {**st.section("fit"), "state": "failed", "error": message,
                               "quality": record})
        raise QualityError(message)
    chosen = top
    if reaches(top):
        a, b = lo, hi  # b reaches MAX; every K below a that was tried misses it
        while a < b:
            mid = (a + b) // 2
            if reaches(fitted(mid)):
                b = mid
            else:
                a = mid + 1
        chosen = next(r for r in tried if r["k"] == b)  # b was fitted: hi or a mid
    record = {"min": qmin, "max": qmax, "k_range": list(fcfg.k_range), "searched": [lo, hi],
              "k": chosen["k"], "reached": reaches(chosen),
              "tried": [[r["k"], r["mse"]] for r in tried]}
    return chosen, record


def fit_quality(run: Runner, st: Store, fcfg: FitConfig, fp: str, codes: np.ndarray,
                counts: np.ndarray, timings: dict[str, float], facts: dict[str, Any],
                started: float, progress: bool | None) -> Any:
    """The quality search of :func:`streamq.fit.fit`, after the histogram: the chosen K's
    palette saved as the store's fit; a :class:`streamq.store.results.FitResult`."""
    from streamq.console import timer

    with timer("quality search", timings):
        chosen, record = search(run, st, fcfg, fp, codes, counts, progress)
    fk = dataclasses.replace(fcfg, colors=chosen["k"])
    empty: FitInfo = {"history": {k: np.zeros(0) for k in HISTORY_KEYS}, "steps": 0,
                      "pixels_seen": 0, "stop_reason": ""}
    info = join_history(empty, chosen["best"], int(counts.sum()), fk)
    centers = np.asarray(chosen["centers"], np.float64)
    result = FitResult(
        store=st.path, k=chosen["k"], algorithm=fcfg.algorithm, color_space=fcfg.color_space,
        centers=centers, palette=to_rgb8(centers, fcfg.color_space),
        counts=np.asarray(chosen["counts"], np.int64), history=info["history"],
        steps=info["steps"], pixels_seen=info["pixels_seen"], stop_reason=info["stop_reason"],
        mse=float(chosen["mse"]), psnr=psnr(float(chosen["mse"])),
        seconds=round(time.perf_counter() - started, 3), seed=fcfg.seed, config=to_dict(fcfg),
        quality=record)
    save_fit(st, result, fp, timings, facts, {"starts": chosen["best"]["results"]})
    log.info("%s", result)
    return result
