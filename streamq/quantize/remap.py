"""A given palette as the store's shared palette (``streamq quantize STORE --palette SRC``).

The palette of ``SRC`` (:func:`streamq.palettes.read_palette`: a palette file, an image or
another store) is written where a fit writes its palette (``fit/palette``, attribute
``fit``), so that quantize, export, ``--zarr``, cluster-images, the report and info use it
as they use a fitted one. Attribute ``fit`` then says it was given, not fitted:
``summary.algorithm`` is ``"palette"``, ``config`` is ``{colors, color_space, palette:
"given"}`` and ``palette_source`` says where it came from (kind, path, name, number of
colours, SHA-256 of the colours; for a store, its fit's fingerprint, algorithm and colour
space) and whose ``centers`` the labels use: ``"palette"`` (the colours themselves) or
``"fit"`` (a source store's float k-means centres).

Labels are the exact nearest palette colour (the first on ties) in the colour space chosen
by, in order: ``color_space``; a source store's fit's; this store's fit's; ``rgb``. A given
palette's own colours in RGB are compared in integer uint8 units (``rgb8``), so equal
distances tie exactly; a source store's centres are used as that store's quantize uses
them, so its labels are those of that store's fit.

On a collection with alpha the palette is premultiplied RGBA (:mod:`streamq.rgba`): its
colours with their alpha (``#rrggbbaa`` in a file, a palette PNG's ``tRNS``, another alpha
store's fit; a palette without alpha is opaque), and labels are the exact nearest centre in
premultiplied RGBA: a given palette's colours in integer units (``rgba8``, equal distances tie
to the first), a source store's float centres as that store labels. Counts and MSE (over
premultiplied RGBA, four channels) come from the RGBA histogram. Only ``color_space: rgb``.
On an opaque collection a palette's alpha is left aside (its colours, as before).

The palette's fingerprint covers the collection, the colours, the colour space and the
centres, never the file's name: giving the same palette again (from any file) changes
nothing, and replacing another palette (a fit, or another given palette) needs
``overwrite``. The pixels per colour and the MSE/PSNR over every pixel come from the colour
histogram, labelled by the same rule as quantize's label tables.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np

from streamq.colorspace import to_space
from streamq.config import StreamQConfig, fingerprint
from streamq.errors import ConfigError, StoreMismatchError
from streamq.metrics import psnr
from streamq.palettes import Palette, colors_sha256, describe_source, read_palette
from streamq.store import Collection, Store
from streamq.store.results import FIT, HISTORY_KEYS, FitResult, clear_fit, load_fit, save_fit

__all__ = ["use_palette"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20  # histogram colours labelled at a time


def use_palette(st: Store, src: str | os.PathLike[str], cfg: StreamQConfig, *,
                color_space: str | None = None, overwrite: bool = False,
                progress: bool | None = None,
                storage_options: dict[str, Any] | None = None) -> FitResult:
    """Make the palette of ``src`` the shared palette of ``st`` (under its write lock).

    A no-op (status ``already given``) when ``st`` already has this palette in this colour
    space; another palette in ``st`` is replaced only with ``overwrite``. ``storage_options``
    reach ``src`` at a URL (default: ``cfg``'s).
    """
    coll = Collection(st)  # a finished ingest
    settings = st.section("ingest").get("settings", {})
    options = storage_options if storage_options is not None else dict(cfg.storage_options)
    pal = read_palette(src, storage_options=options or None,
                       background=tuple(settings.get("background", cfg.ingest.background)),
                       max_pixels=int(settings.get("max_pixels", cfg.ingest.max_pixels)))
    prev = st.section(FIT)
    space = (color_space or pal.color_space or prev.get("config", {}).get("color_space")
             or "rgb")
    if coll.n_alpha:  # premultiplied RGBA (an opaque palette: every alpha 255)
        if space != "rgb":
            raise ConfigError(
                f"{st.path} has {coll.n_alpha} images with alpha, labelled in premultiplied "
                f"RGBA: color_space {space!r} is not available for them; use rgb, or ingest "
                "with --alpha flatten")
        alpha = pal.alpha if pal.alpha is not None else np.full(pal.k, 255, np.uint8)
        centers, whose = _rgba_centers(pal, alpha)
        source = {**pal.source, "centers": whose}
    else:  # an opaque collection: the colours as before, alpha and RGBA centres left aside
        alpha = None
        if pal.alpha is not None or (pal.centers is not None and pal.centers.shape[1] != 3):
            log.info("palette %s has alpha: an opaque collection takes its colours only",
                     pal.describe())
            pal = dataclasses.replace(
                pal, source={k: v for k, v in pal.source.items() if k != "alpha_sha256"},
                centers=pal.centers if pal.alpha is None else None, alpha=None)
        centers, whose = _centers(pal, space)
        source = {**pal.source, "centers": whose}
    fp = _fingerprint(st, pal, space, centers, whose)
    if prev.get("fingerprint") == fp and prev.get("state") == "complete":
        log.info("%s already has this palette (%s); nothing to do", st.path, pal.describe())
        result = load_fit(st.location)
        result.status = "already given"
        return result
    if prev and not overwrite:
        raise StoreMismatchError(f"{st.path} already has {_what(prev)}; pass --overwrite to "
                                 f"replace it with the palette of {os.fspath(src)}")
    started = time.perf_counter()
    if prev:
        clear_fit(st)
    result = FitResult(
        store=st.path, k=pal.k, algorithm="palette", color_space=space, centers=centers,
        palette=pal.colors, counts=np.zeros(pal.k, np.int64),
        history={k: np.zeros(0, np.int64 if k in ("step", "pixels_seen") else np.float64)
                 for k in HISTORY_KEYS},
        steps=0, pixels_seen=0, stop_reason=f"given palette: {describe_source(source)}",
        mse=0.0, psnr=0.0, seconds=0.0, seed=0,
        config={"colors": pal.k, "color_space": space, "palette": "given"},
        status="given", palette_source=source, alpha=alpha)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    facts, (codes, counts) = _color_histogram(st, coll, cfg, progress, rgba=alpha is not None)
    timings["histogram"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    result.counts, result.mse = (_counts_mse(result, codes, counts) if alpha is None
                                 else _counts_mse_rgba(result, codes, counts))
    timings["labelling colours"] = round(time.perf_counter() - t0, 3)
    result.psnr = psnr(result.mse)
    result.seconds = round(time.perf_counter() - started, 3)
    save_fit(st, result, fp, timings, facts, {"palette_source": source})
    log.info("%s", result)
    return result


def _centers(pal: Palette, space: str) -> tuple[np.ndarray, str]:
    """The centres in ``space`` and whose they are: a source store's own (when its fit is
    in ``space``), else the palette colours'."""
    if pal.centers is not None and pal.color_space == space:
        return np.asarray(pal.centers, np.float64), str(pal.source.get("centers", "fit"))
    return to_space(pal.colors, space).astype(np.float64), "palette"


def _rgba_centers(pal: Palette, alpha: np.ndarray) -> tuple[np.ndarray, str]:
    """Premultiplied RGBA centres in [0, 1] and whose they are: a source store's fit's own
    (a fit with alpha), else the colours premultiplied by their alpha (as ingest rounds)."""
    from streamq.rgba import premultiplied

    if pal.centers is not None and pal.centers.shape[1] == 4 and pal.color_space == "rgb":
        return np.asarray(pal.centers, np.float64), str(pal.source.get("centers", "fit"))
    return premultiplied(pal.colors, alpha).astype(np.float64) / 255.0, "palette"


def _fingerprint(st: Store, pal: Palette, space: str, centers: np.ndarray, whose: str) -> str:
    ingest = st.section("ingest")
    described = {"colors": colors_sha256(pal.colors), "color_space": space, "centers": whose,
                 "centers_sha256": colors_sha256(np.ascontiguousarray(centers, "<f8")
                                                 .view(np.uint8).reshape(-1))}  # the bytes
    if pal.alpha is not None:  # only then: an opaque palette's fingerprint is as before
        described["alpha"] = colors_sha256(pal.alpha)
    return fingerprint({
        "data": [ingest.get("source_fingerprint"), ingest.get("settings_fingerprint")],
        "palette": described})


def _what(prev: dict[str, Any]) -> str:
    """The palette a store holds, for a refusal."""
    if prev.get("state") != "complete":
        return f"an unfinished fit (state: {prev.get('state') or 'none'})"
    s = prev.get("summary", {})
    if prev.get("palette_source"):
        return f"another given palette ({describe_source(prev['palette_source'])})"
    return f"a fitted palette (K={s.get('k')}, {s.get('algorithm')}, {s.get('color_space')})"


def _color_histogram(st: Store, coll: Collection, cfg: StreamQConfig, progress: bool | None,
                     rgba: bool = False
                     ) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """The collection's colour histogram: the stored one, else made once (a Dask pass for a
    store ingested before ingest counted colours); with the facts of where it ran. ``rgba``:
    the premultiplied RGBA histogram of a collection with alpha (counted once, as the fit's)."""
    from streamq.scheduler import library_versions, runner
    from streamq.store.histogram import histogram, load_histogram, rgba_histogram

    if rgba:
        with runner(cfg.dask) as run:  # no task when the table is stored already
            run.check_paths(st.path)
            return run.facts(), rgba_histogram(run, st, coll, progress)
    stored = load_histogram(st)
    if stored is not None:
        return {"cluster": "client", "workers": 0, "versions": library_versions()}, stored
    from streamq.batches import PixelSource

    with runner(cfg.dask) as run:
        run.check_paths(st.path)
        return run.facts(), histogram(run, st, PixelSource.of_collection(coll), progress)


def _counts_mse(result: FitResult, codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Pixels per palette colour and the MSE over every pixel (uint8 RGB units), each
    distinct colour labelled as quantize's label tables label it."""
    from streamq.kmeans.codes import codes_to_rgb, squared_errors
    from streamq.kmeans.nearest import assign

    space, centers = result.label_space()
    per_colour = np.zeros(result.k, np.int64)
    sse = 0
    for a in range(0, len(codes), _BLOCK):
        labels, _ = assign(to_space(codes_to_rgb(codes[a:a + _BLOCK]), space), centers,
                           n_threads=os.cpu_count() or 1)
        part, per = squared_errors(codes[a:a + _BLOCK], counts[a:a + _BLOCK], labels, result.palette)
        sse += part
        per_colour += per
    total = int(counts.sum())
    return per_colour, (sse / (3 * total) if total else 0.0)


def _counts_mse_rgba(result: FitResult, codes: np.ndarray, counts: np.ndarray
                     ) -> tuple[np.ndarray, float]:
    """Pixels per palette colour and the MSE over premultiplied RGBA (four channels, uint8
    units) of every distinct RGBA colour, labelled as quantize's RGBA labels label it."""
    from streamq.rgba import RgbaLabels

    assert result.alpha is not None, "a palette with alpha"
    labels, err = RgbaLabels(result.centers, result.palette, result.alpha, table=False,
                             exact=result.label_space()[0] == "rgba8").distinct(codes)
    per_colour = np.bincount(labels, weights=counts, minlength=result.k).astype(np.int64)
    total = int(counts.sum())
    return per_colour, (float((err * counts).sum()) / (4 * total) if total else 0.0)
