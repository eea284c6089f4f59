"""The read side of a store's results: what each stage left, read back, and whether it is current.

This is the store layer's half that knows the stages' results (:mod:`streamq.store` knows
the collection itself). A stage writes its result through it and reads another stage's only
here, so no stage imports another:

* the shared palette: :class:`FitResult`, :func:`load_fit`, and :func:`save_fit` /
  :func:`clear_fit` for the stages that make one (``fit``, ``fit --quality``, a palette with
  alpha, ``quantize --palette``);
* per-image palettes: :func:`load_per_image`;
* labels: :func:`labels_state`, :func:`ready_labels` ("are the labels current for this
  palette?"), :func:`labels_identity` (what an export reads, to notice a change under it)
  and :func:`recorded_labels_ok` (are a chunk's labels those its record vouches for?);
* :func:`worst_images`, the ranking ``info`` and the report share.

**Staleness: one mechanism.** A result made with a palette -- the labels (section
``quantize``, or ``per_image_quantize_k{K}`` for per-image palettes) and the image groups --
records that palette's fingerprint. It is current when its state is ``complete`` and that
fingerprint is the palette's now; otherwise a finished one is ``stale``
(:func:`result_state`). Nothing is written when a palette is refitted: a "stale" mark
written after the new fit (as ``Store.mark_stale`` did) could be lost to a kill between the
two writes and is one more record to keep in step with the fingerprints, while comparing the
fingerprints is always right, needs no write from a reader, and reads the ``stale`` states
older versions wrote as stale too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.config import fingerprint
from streamq.describe import describe_quality, describe_source
from streamq.durable import checksum
from streamq.errors import StageNotReadyError, StreamQError
from streamq.faults import retrying
from streamq.fs import Location
from streamq.store.arrays import open_array
from streamq.store.checkpoint import clear_checkpoint
from streamq.store.layout import Store
from streamq.store.names import (  # re-exported: the stages import these names from here too
    CENTERS,
    CHECKPOINT,
    FIT,
    FIT_HISTORY,
    FIT_PALETTE,
    GROUPS,
    HISTORY_KEYS,
    PER_IMAGE,
    PER_IMAGE_QUALITY,
    QUALITY_COLUMNS,
    QUANTIZE,
    STARTS,
    fit_center_columns,
    per_image_centers,
    per_image_labels,
    per_image_palette,
)

__all__ = ["CENTERS", "CHECKPOINT", "FIT", "FIT_HISTORY", "FIT_PALETTE", "HISTORY_KEYS",
           "PER_IMAGE", "QUANTIZE", "STARTS", "FitResult", "clear_fit", "default_per_image",
           "fit_center_columns", "labels_identity", "labels_state", "load_fit", "load_per_image",
           "per_image_centers", "per_image_labels", "per_image_quality", "read_identity",
           "ready_labels", "recorded_labels_ok", "result_state", "save_fit", "worst_images"]

# -- staleness: the one rule -------------------------------------------------------------------
def _palette_of(name: str) -> tuple[str, str] | None:
    """``(palette section, key of its fingerprint in section name)`` of a result made with
    a palette, None for any other section."""
    if name in (QUANTIZE, GROUPS):
        return FIT, "fit_fingerprint"
    if name.startswith("per_image_quantize_k"):
        return PER_IMAGE, "fingerprint"
    return None


def result_state(st: Store, name: str) -> str:
    """The state of section ``name`` as every reader shows it (``missing`` when there is
    none): a finished result made with a palette that is not the store's palette now is
    ``stale`` (see the module docstring)."""
    sec = st.section(name)
    state = str(sec.get("state", "missing"))
    palette = _palette_of(name)
    if palette is None:
        return state
    owner, key = palette
    if state == "complete" and sec.get(key) == st.section(owner).get("fingerprint"):
        return "complete"
    return "stale" if state in ("complete", "stale") else state


def labels_state(st: Store, per_image: int | None = None) -> tuple[str, str | None]:
    """``(state, palette fingerprint)`` of the labels of the shared palette, or of the
    per-image palettes of ``per_image`` colours: the state is ``complete`` only for labels
    of the palette the store holds now (:func:`result_state`)."""
    if per_image is None:
        return result_state(st, QUANTIZE), st.section(FIT).get("fingerprint")
    return (result_state(st, per_image_labels(per_image)),
            st.section(PER_IMAGE).get("fingerprint"))


def ready_labels(st: Store, per_image: int | None) -> str:
    """Fingerprint of the palette whose labels ``st`` holds complete: the shared fit's, or
    (``per_image`` = K) the per-image fit's; missing or stale labels are refused in one line."""
    if per_image is not None:
        load_per_image(st.location, per_image)  # checks they exist
    state, fit_fp = labels_state(st, per_image)
    if state != "complete":
        state = "stale (the palette was refitted)" if state == "stale" else state
        raise StageNotReadyError(f"{st.path}: labels are {state}", "streamq quantize")
    return str(fit_fp)


def labels_identity(st: Store, per_image: int | None, labels: bool = True) -> str:
    """A fingerprint of what an export reads from ``st``: the ingest (pixels, image table),
    the palette's fit (shared, or per-image when ``per_image`` = K) and, with ``labels``, the
    labelling: its state and ``labels_id``, new whenever quantize starts writing labels. Every
    process that changes any of them changes it first, so a reader that finds it unchanged
    after a read has read what it started with."""
    ingest = st.section("ingest")
    parts: dict[str, Any] = {"ingest": [ingest.get(k) for k in (
        "state", "source_fingerprint", "settings_fingerprint")]}
    if per_image is None:
        fit, q = st.section(FIT), st.section(QUANTIZE)
        keys: tuple[str, ...] = ("state", "fit_fingerprint", "labels_id")
    else:
        fit, q = st.section(PER_IMAGE), st.section(per_image_labels(per_image))
        keys = ("state", "fingerprint", "labels_id")
    parts["fit"] = [fit.get("state"), fit.get("fingerprint")]
    if labels:
        parts["labels"] = [q.get(k) for k in keys]
    return fingerprint(parts)


def read_identity(store: Location, per_image: int | None, labels: bool = True) -> str | None:
    """:func:`labels_identity` of the store as it is now (None when it cannot be opened)."""
    try:
        return labels_identity(Store.open(store), per_image, labels)
    except StreamQError:
        return None


def recorded_labels_ok(store: Location, name: str, lo: int, hi: int, record: dict[str, Any],
                       fit: str, retry: Any) -> bool:
    """Whether labels ``[lo, hi)`` of array ``name`` are those a completion record of an
    earlier run vouches for: labels of the same palette (``fit``, its fingerprint: labels
    are a function of it) with the same checksum."""
    if record.get("fit") != fit:
        return False
    if "crc32" not in record:
        return True
    try:
        data = retrying(lambda: np.asarray(open_array(store, name)[lo:hi]), "read",
                        store.join(name).url, retry)
    except StreamQError:
        raise
    except Exception:  # noqa: BLE001  (a chunk that no longer decodes: torn, rewrite it)
        return False
    return checksum(data) == record["crc32"]


# -- the shared palette ---------------------------------------------------------------------------
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
    # fit --quality: the target, the K range searched and every K tried (streamq.fit.quality)
    quality: dict[str, Any] | None = None
    n_fixed: int = 0  # the first n_fixed colours are fixed colours (streamq.fixed), kept exactly
    # (K,) uint8 alpha of each colour for a collection with alpha (streamq.fit.alpha): then
    # ``centers`` are (K, 4) premultiplied RGBA in [0, 1], ``palette`` straight colours, and
    # MSE/PSNR over premultiplied RGBA; None for an opaque collection
    alpha: np.ndarray | None = None

    def label_space(self) -> tuple[str, np.ndarray]:
        """The colour space and centres quantize labels pixels in: the fit's, except for a
        given palette's own colours in RGB, compared in integer uint8 units (``rgb8``) so
        that colours at equal distances tie exactly (and the lowest index wins); a palette
        with alpha labels with its premultiplied RGBA centres (:class:`streamq.rgba.RgbaLabels`),
        a given one's (``rgba8``) in integer units likewise."""
        given = (self.palette_source or {}).get("centers") == "palette"
        if self.color_space == "rgb" and self.alpha is None and given:
            return "rgb8", self.palette.astype(np.float64)
        if self.alpha is not None and given:  # RgbaLabels(exact=True): integer distances
            return "rgba8", self.centers
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
            return (f"{self.status}: K={self.k} given palette ({self.color_space}): "
                    f"{describe_source(self.palette_source)}; MSE {self.mse:.2f} / PSNR "
                    f"{self.psnr:.2f} dB over every pixel")
        fixed = f", {self.n_fixed} fixed" if self.n_fixed else ""
        space = "premultiplied RGBA" if self.alpha is not None else self.color_space
        line = (f"{self.status}: K={self.k} ({self.algorithm}, {space}{fixed}), "
                f"{self.steps} steps, {self.pixels_seen / 1e6:.2f} Mpx seen, "
                f"MSE {self.mse:.2f} / PSNR {self.psnr:.2f} dB over every pixel, "
                f"stopped: {self.stop_reason}, {self.seconds:.1f} s")
        if self.quality is not None:
            line += f"; {describe_quality(self.quality)}"
        return line


def clear_fit(st: Store) -> None:
    """Forget the store's fit and its working state (before a new fit replaces it)."""
    st.set_section(FIT, {})
    clear_checkpoint(st, CHECKPOINT)
    if st.has(STARTS):
        st.create_records(STARTS, 0)


def save_fit(st: Store, r: FitResult, fp: str, timings: dict[str, float],
                 facts: dict[str, Any], extra: dict[str, Any]) -> None:
    """Save ``r`` as the store's fit (fingerprint ``fp``), then drop the fit's working state."""
    columns = {c: r.centers[:, j] for j, c in enumerate(fit_center_columns(r.centers.shape[1]))}
    columns.update({"r": r.palette[:, 0], "g": r.palette[:, 1], "b": r.palette[:, 2]})
    if r.alpha is not None:  # a palette with alpha (streamq.fit.alpha)
        columns["a"] = r.alpha
    st.write_table(FIT_PALETTE, {**columns, "count": r.counts})
    st.write_table(FIT_HISTORY, {k: np.asarray(v) for k, v in r.history.items()})
    summary = {k: v for k, v in asdict(r).items()
               if k not in ("centers", "palette", "counts", "history", "config", "status",
                            "palette_source", "alpha") and (k != "quality" or r.quality is not None)
               and (k != "n_fixed" or r.n_fixed)}
    st.set_section(FIT, {"state": "complete", "fingerprint": fp, "config": r.config,
                         "summary": summary, "timings": timings, "runtime": facts, **extra,
                         "finished": timestamp()})
    clear_checkpoint(st, CHECKPOINT)  # the result is saved; the working state is not needed


def load_fit(store: str | Location, storage_options: dict[str, Any] | None = None) -> FitResult:
    """The palette saved in ``store`` by :func:`fit`."""
    st = Store.open(store, storage_options=storage_options)
    sec = st.section(FIT)
    if sec.get("state") != "complete":
        raise StageNotReadyError(f"{st.path} has no fitted palette", "streamq fit")
    rgba = st.has(f"{FIT_PALETTE}/a")  # a palette with alpha (streamq.fit.alpha)
    dims = 4 if rgba else 3
    p = st.read_table(FIT_PALETTE, fit_center_columns(dims)
                      + ("r", "g", "b", "count") + (("a",) if rgba else ()))
    h = st.read_table(FIT_HISTORY, HISTORY_KEYS)
    s = sec["summary"]
    return FitResult(
        store=st.path, k=s["k"], algorithm=s["algorithm"], color_space=s["color_space"],
        centers=np.stack([p[c] for c in fit_center_columns(dims)], 1),
        palette=np.stack([p["r"], p["g"], p["b"]], 1).astype(np.uint8), counts=p["count"],
        history=h, steps=s["steps"], pixels_seen=s["pixels_seen"], stop_reason=s["stop_reason"],
        mse=s["mse"], psnr=s["psnr"], seconds=s["seconds"], seed=s["seed"], config=sec["config"],
        status="given" if sec.get("palette_source") else "fitted",
        palette_source=sec.get("palette_source"), quality=s.get("quality"),
        n_fixed=int(s.get("n_fixed", 0)), alpha=p["a"].astype(np.uint8) if rgba else None)


# -- per-image palettes --------------------------------------------------------------------------
def load_per_image(store: str | Location, k: int,
                   storage_options: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, palettes)`` of every image for ``k``: ``(N, k, 3)`` float and uint8."""
    st = Store.open(store, storage_options=storage_options)
    sec = st.section(PER_IMAGE)
    if sec.get("state") != "complete" or k not in sec.get("colors", []):
        have = sec.get("colors") if sec.get("state") == "complete" else "none"
        raise StageNotReadyError(f"{st.path} has no per-image palettes for K={k} (fitted: {have})",
                                 f"streamq fit --per-image --colors {k}")
    return (np.asarray(st.array(per_image_centers(k))[:]),
            np.asarray(st.array(per_image_palette(k))[:]))


def per_image_quality(st: Store) -> dict[str, np.ndarray] | None:
    """A complete per-image quality fit's choice of each image (``fit --per-image
    --quality``): the columns ``k``, ``mse``, ``psnr``, ``met`` (reached MAX) and ``reason``
    (why below MIN, else ``""``); None for palettes fitted for a list of K."""
    sec = st.section(PER_IMAGE)
    if sec.get("state") != "complete" or not sec.get("quality"):
        return None
    return st.read_table(PER_IMAGE_QUALITY, QUALITY_COLUMNS)


def default_per_image(st: Store) -> int | None:
    """The per-image K an export takes when none is given: HI of a complete per-image quality
    fit (its only K group) when the store has no shared palette; else None (the shared one)."""
    if st.section(FIT).get("state") == "complete":
        return None
    sec = st.section(PER_IMAGE)
    if sec.get("state") != "complete" or not sec.get("quality"):
        return None
    return int(sec["quality"]["k_range"][1])


def worst_images(psnr: np.ndarray, n: int) -> list[int]:
    """Ids of the ``n`` images with the lowest PSNR, lowest first (lower id first on ties)."""
    return [int(i) for i in np.argsort(np.asarray(psnr, dtype=np.float64), kind="stable")[:n]]
