"""What a report is made of, and the store read for it.

A :class:`Context` carries what every section builder may use: the store, its collection,
the chosen sample and the label results (:class:`Result`, read by :func:`read_results`);
it reads images, labels and palettes lazily, large images row by row at the stride they are
shown at. A builder returns a :class:`Section`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamq.config import ReportConfig
from streamq.errors import ConfigError
from streamq.report.html import esc
from streamq.store import Collection, Store
from streamq.store.names import (
    FIT_PALETTE,
    PIXELS,
    QUANTIZE,
    image_errors_path,
    labels_path,
    per_image_alpha,
    per_image_labels,
    per_image_palette,
)
from streamq.store.results import labels_state, per_image_quality
from streamq.store.selection import parse_ids, select_images

__all__ = ["READ_WHOLE", "Context", "Result", "Section", "read_results", "sample_images"]

READ_WHOLE = 4_000_000  # images up to this many pixels are read whole, larger row by row


def _count(value: Any) -> int | None:
    """A positive integer read from the store's attributes (a K), or None if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class Section:
    """One part of the page: ``<section id=...><h2>title</h2> body </section>``."""

    id: str
    title: str
    body: str  # HTML, every string from the store already escaped


@dataclass
class Result:
    """One set of labels: the shared palette, or the per-image palettes of one K."""

    key: str  # "shared" or "k6"
    title: str  # "shared K=16" or "per-image K=6"
    k: int
    state: str  # "complete", "stale", "running" or "missing"
    labels: str  # array name of the labels
    palettes: str | None  # per-image: array name of the (N, K, 3) palettes
    shared_palette: np.ndarray | None  # shared: (K, 3) uint8
    psnr: np.ndarray | None  # per-image PSNR when complete
    command: str  # what makes it complete
    ssim: np.ndarray | None = None  # per-image SSIM when complete and computed (NaN: too small)
    #: a per-image quality fit (``fit --per-image --quality``): each image's own K (its palette
    #: row is padded to ``k``; labels stay below it) and its table ``per_image/quality``
    quality: dict[str, np.ndarray] | None = None

    def own_k(self, i: int) -> int:
        """Entries of image ``i``'s palette: ``k``, or its own K in a quality fit."""
        return self.k if self.quality is None else int(self.quality["k"][i])

    def title_of(self, i: int) -> str:
        """The result's title for image ``i`` (a quality fit: with the image's own K)."""
        return self.title if self.quality is None else f"per-image K={self.own_k(i)} (quality)"

    @property
    def ready(self) -> bool:
        return self.state == "complete"


@dataclass
class Context:
    """Everything a section builder may use; read lazily where it costs."""

    store: Store
    coll: Collection | None  # None while ingest is unfinished
    info: dict[str, Any] | None  # :func:`streamq.info.collection_info`
    cfg: ReportConfig
    chosen_by: str  # how the sample was chosen, for the page
    sample: list[int]
    results: list[Result]
    missing: list[str] = field(default_factory=list)
    _cache: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)

    def note(self, text: str) -> str:
        """A highlighted note saying what is missing and how to make it."""
        return f'<p class="missing">{esc(text)}</p>'

    def image(self, i: int, side: int) -> np.ndarray:
        """Image ``i``, shrunk by striding to at most ``side`` pixels on its longest side."""
        return self._read(PIXELS, i, side)

    def quantized(self, result: Result, i: int, side: int) -> np.ndarray:
        """Image ``i`` rebuilt from ``result``'s labels and palette, as :meth:`image` is shrunk."""
        labels = self._read(result.labels, i, side).astype(np.int64)
        return self.palette(result, i)[labels]

    def palette(self, result: Result, i: int) -> np.ndarray:
        if result.shared_palette is not None:
            return result.shared_palette
        assert result.palettes is not None, "a result without a shared palette has per-image ones"
        return np.asarray(self.store.array(result.palettes)[i])[:result.own_k(i)]

    def palette_alpha(self, result: Result, i: int) -> np.ndarray | None:
        """The alpha of image ``i``'s palette (:meth:`palette`) when it has alpha: the shared
        palette of a fit with alpha, the per-image palette of an image with alpha; else None."""
        if result.shared_palette is not None:
            return self.shared_alpha
        assert self.coll is not None
        name = per_image_alpha(result.k)
        if not self.coll.has_alpha[i] or not self.store.has(name):
            return None
        return np.asarray(self.store.array(name)[i])[:result.own_k(i)]

    @property
    def shared_alpha(self) -> np.ndarray | None:
        """``(K,)`` alpha of the shared palette (None: no fit with alpha)."""
        name = f"{FIT_PALETTE}/a"
        return np.asarray(self.store.array(name)[:]) if self.store.has(name) else None

    def label_counts(self, result: Result, i: int) -> np.ndarray:
        """Pixels of image ``i`` per colour of its palette (:meth:`palette`: a quality fit's own
        K entries), from all its labels, read a slice at a time."""
        assert self.coll is not None
        arr = self.store.array(result.labels)
        off, n = int(self.coll.offsets[i]), int(self.coll.heights[i] * self.coll.widths[i])
        counts = np.zeros(result.k, dtype=np.int64)
        for a in range(off, off + n, READ_WHOLE):
            part = np.asarray(arr[a:min(a + READ_WHOLE, off + n)]).astype(np.int64)
            counts += np.bincount(part, minlength=result.k)[:result.k]
        return counts[:result.own_k(i)]

    def _read(self, name: str, i: int, side: int) -> np.ndarray:
        key = (name, i, side)
        if key not in self._cache:
            assert self.coll is not None
            arr = self.store.array(name)
            off, h, w = int(self.coll.offsets[i]), int(self.coll.heights[i]), int(self.coll.widths[i])
            self._cache[key] = _read_strided(arr, off, h, w, side)
        return self._cache[key]


def _read_strided(arr: Any, off: int, h: int, w: int, side: int) -> np.ndarray:
    """Rows of a flat per-pixel array as ``(h', w', ...)``, every ``step``-th row and column."""
    step = max(1, -(-max(h, w) // side))
    tail = tuple(arr.shape[1:])
    if h * w <= READ_WHOLE or step == 1:
        return np.asarray(arr[off:off + h * w]).reshape((h, w) + tail)[::step, ::step]
    rows = [np.asarray(arr[off + r * w: off + (r + 1) * w])[::step] for r in range(0, h, step)]
    return np.stack(rows)


def read_results(st: Store) -> tuple[list[Result], list[str]]:
    """The label sets of the store, and a note for each K in its attributes that is not one
    (a damaged store: such a value is shown, escaped, and left out)."""
    out, problems = [], []
    fit, q = st.section("fit"), st.section(QUANTIZE)
    if fit.get("state") == "complete":
        p = st.read_table(FIT_PALETTE, ("r", "g", "b"))
        k = fit["summary"]["k"]
        state = labels_state(st)[0]
        out.append(Result("shared", f"shared K={k}", k, state, labels_path(), None,
                          np.stack([p["r"], p["g"], p["b"]], 1).astype(np.uint8),
                          _psnr(st, image_errors_path()) if state == "complete" else None,
                          "streamq quantize STORE",
                          _ssim(st, image_errors_path()) if state == "complete" and q.get("ssim")
                          else None))
    per = st.section("per_image")
    chosen = per_image_quality(st)  # a quality fit: one K group (HI), each image its own K
    if per.get("state") == "complete":
        for value in per.get("colors") or []:
            k = _count(value)
            if k is None:
                problems.append(f"the per-image K value {value!r} (store attribute "
                                "per_image.colors) is not a positive integer: left out.")
                continue
            q = st.section(per_image_labels(k))
            state = labels_state(st, k)[0]
            title = (f"per-image K={k}" if chosen is None else
                     f"per-image quality, K "
                     f"{((per.get('quality') or {}).get('k_range') or ['?'])[0]}..{k}")
            out.append(Result(f"k{k}", title, k, state, labels_path(k),
                              per_image_palette(k), None,
                              _psnr(st, image_errors_path(k)) if state == "complete" else None,
                              "streamq quantize STORE",
                              _ssim(st, image_errors_path(k))
                              if state == "complete" and q.get("ssim") else None, chosen))
    return out, problems


def _psnr(st: Store, prefix: str) -> np.ndarray:
    return st.read_table(prefix, ("psnr",))["psnr"].astype(np.float64)


def _ssim(st: Store, prefix: str) -> np.ndarray:
    return st.read_table(prefix, ("ssim",))["ssim"].astype(np.float64)


def sample_images(coll: Collection, n: int, seed: int, ids: Any,
                  labels: Sequence[str] | None) -> list[int]:
    """The images shown in the before/after figures: those of ``ids`` and ``labels`` (all
    when neither is given), at most ``n`` of them, a seeded choice when there are more."""
    pool = select_images(coll, list(labels) if labels else None, parse_ids(ids, len(coll)))
    if not pool and (ids is not None or labels):
        raise ConfigError(f"no image has both ids {ids} and labels {list(labels or [])}; "
                          "choose others")
    if len(pool) <= n:
        return list(pool)
    rng = np.random.default_rng(seed)
    return sorted(int(pool[j]) for j in rng.choice(len(pool), size=n, replace=False))
