"""An HTML report of a store: one self-contained page, readable offline.

:func:`report` writes ``OUT.html`` with every figure embedded as a ``data:`` URI (PNG), so
the page is one file that can be mailed, archived or opened anywhere; it loads nothing else
(a Content-Security-Policy forbids it) and runs no script. Figures are drawn with
matplotlib's Agg canvas, thumbnails with Pillow.

The page is a list of *sections*, each built by a function of :data:`SECTIONS` from a
:class:`Context` (the store, its collection, the chosen sample, the label results). A
builder returns a :class:`Section` or ``None``; to add one, write a builder and put it in
the list. Builders show what the store holds and say what is missing (and the command that
makes it), so a report works at any stage.

Big collections stay fast: apart from per-image tables (paths, labels, shapes, PSNR), the
report reads only the pixels and labels of the images it shows, and large images only
row by row at the stride they are displayed at.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import re
import struct
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamq.clock import timestamp
from streamq.config import ReportConfig, StreamQConfig, parse_config
from streamq.console import timer
from streamq.describe import describe_source
from streamq.errors import ConfigError, StoreLayoutError, StreamQError
from streamq.fs import Location, write_atomic
from streamq.store import Collection, Store, store_location
from streamq.store.overview import collection_info
from streamq.store.results import (
    QUANTIZE,
    groups_summary,
    labels_state,
    load_groups,
    per_image_labels,
    result_state,
    worst_images,
)
from streamq.store.selection import parse_ids, select_images

__all__ = ["SECTIONS", "Context", "ReportSummary", "Result", "Section", "report"]

log = logging.getLogger(__name__)

PER_IMAGE_PALETTES = 4  # sampled images whose per-image palettes are shown
PREVIEW_SIDE = 320  # longest side of an image in the before/after figures (pixels read)
THUMB_SIDE = 96  # longest side of a thumbnail in the worst-images lists
READ_WHOLE = 4_000_000  # images up to this many pixels are read whole, larger row by row


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def attr_name(text: str) -> str:
    """``text`` made a safe part of an attribute name (escaping cannot do that): letters,
    digits, ``-`` and ``_`` stay, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _count(value: Any) -> int | None:
    """A positive integer read from the store's attributes (a K), or None if it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# -- what a report is made of ----------------------------------------------------------------
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
        return self._read("pixels", i, side)

    def quantized(self, result: Result, i: int, side: int) -> np.ndarray:
        """Image ``i`` rebuilt from ``result``'s labels and palette, as :meth:`image` is shrunk."""
        labels = self._read(result.labels, i, side).astype(np.int64)
        return self.palette(result, i)[labels]

    def palette(self, result: Result, i: int) -> np.ndarray:
        if result.shared_palette is not None:
            return result.shared_palette
        return np.asarray(self.store.group[result.palettes][i])

    def label_counts(self, result: Result, i: int) -> np.ndarray:
        """Pixels of image ``i`` per palette colour (all its labels, read a slice at a time)."""
        assert self.coll is not None
        arr = self.store.group[result.labels]
        off, n = int(self.coll.offsets[i]), int(self.coll.heights[i] * self.coll.widths[i])
        counts = np.zeros(result.k, dtype=np.int64)
        for a in range(off, off + n, READ_WHOLE):
            part = np.asarray(arr[a:min(a + READ_WHOLE, off + n)]).astype(np.int64)
            counts += np.bincount(part, minlength=result.k)[:result.k]
        return counts

    def _read(self, name: str, i: int, side: int) -> np.ndarray:
        key = (name, i, side)
        if key not in self._cache:
            assert self.coll is not None
            arr = self.store.group[name]
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


# -- figures and small HTML pieces -------------------------------------------------------------
def _png_uri(data: bytes) -> tuple[str, int, int]:
    width, height = struct.unpack(">II", data[16:24])  # the PNG IHDR chunk
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height


def figure_html(fig: Any, alt: str, cls: str = "fig") -> str:
    """A matplotlib figure as an embedded PNG ``<img>`` (drawn on the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the font in user labels
        fig.savefig(buf, format="png", dpi=100)
    uri, w, h = _png_uri(buf.getvalue())
    return f'<img class="{cls}" src="{uri}" width="{w}" height="{h}" alt="{esc(alt)}">'


def array_html(rgb: np.ndarray, alt: str, side: int = THUMB_SIDE) -> str:
    """An RGB array as an embedded PNG thumbnail (nearest-neighbour, longest side ``side``)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    scale = side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    uri, w, h = _png_uri(buf.getvalue())
    return f'<img class="thumb" src="{uri}" width="{w}" height="{h}" alt="{esc(alt)}">'


def _figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """A table; every cell is escaped unless it is a :class:`Raw`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


class Raw(str):
    """Markup built here (already escaped): put into a table as is."""


def swatches_html(palette: np.ndarray, counts: np.ndarray | None, limit: int) -> str:
    """Colour swatches with hex codes and pixel counts, most used first (index order on ties)."""
    order = (np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable") if counts is not None
             else np.arange(len(palette)))
    total = int(np.sum(counts)) if counts is not None else 0
    cells = []
    for j in order[:limit]:
        r, g, b = (int(v) for v in palette[j])
        hexcode = f"#{r:02x}{g:02x}{b:02x}"
        ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
        if counts is None:
            label, data = hexcode, ""
        else:
            c = int(counts[j])
            share = f" ({c / total:.1%})" if total else ""
            label = f"{hexcode}<br>{c:,}{share}"
            data = f' data-count="{c}"'
        cells.append(f'<div class="swatch" data-index="{int(j)}" data-hex="{hexcode}"{data} '
                     f'style="background:{hexcode};color:{ink}">{label}</div>')
    more = (f'<p class="note">{len(order) - limit} more colours not shown '
            f"(report.max_colors={limit}).</p>" if len(order) > limit else "")
    return f'<div class="swatches">{"".join(cells)}</div>{more}'


def _fmt_psnr(v: float) -> str:
    return "exact (inf dB)" if not np.isfinite(v) else f"{v:.2f} dB"


def _seconds(v: Any) -> str:
    return f"{v:.2f} s" if isinstance(v, int | float) else "—"


# -- sections -----------------------------------------------------------------------------------
def overview(ctx: Context) -> Section:
    """What the store holds at each stage, and what is missing."""
    st = ctx.store
    ingest, fit, per = st.section("ingest"), st.section("fit"), st.section("per_image")
    rows: list[list[Any]] = []
    state = ingest.get("state", "missing")
    rows.append(["ingest", state, f"{len(ctx.coll)} images, {ctx.coll.n_pixels:,} pixels"
                 if ctx.coll is not None else "run `streamq ingest SRC STORE` to finish it"])
    if fit:
        s = fit.get("summary", {})
        what = (f"K={s.get('k')} ({s.get('algorithm')}, {s.get('color_space')}), PSNR "
                f"{_fmt_psnr(s['psnr'])}" if fit.get("state") == "complete" else
                "rerun `streamq fit` to finish it")
        if fit.get("state") == "complete" and fit.get("palette_source"):
            what += f", given: {describe_source(fit['palette_source'])}"
        rows.append(["shared palette", fit.get("state"), what])
    if per.get("state") == "complete":
        colors = ",".join(map(str, per.get("colors") or []))
        rows.append(["per-image palettes", "complete", f"K={colors} on "
                     f"{per.get('config', {}).get('sample')} of each image's pixels, method "
                     f"{per.get('config', {}).get('method', 'kmeans')}"])
    for r in ctx.results:
        what = ("mean PSNR " + _fmt_psnr(float(np.mean(r.psnr[np.isfinite(r.psnr)])))
                if r.ready and r.psnr is not None and np.isfinite(r.psnr).any() else
                "" if r.ready else f"run `{r.command}`")
        rows.append([f"labels, {r.title}", r.state, what])
    if per and per.get("state") != "complete":
        rows.append(["per-image palettes", per.get("state"), "rerun `streamq fit --per-image`"])
    groups = _groups_state(ctx)
    if groups:
        g_state = groups["state"]
        what = (f"{groups['groups']} groups ({groups['descriptor']}, K={groups['k']})"
                + (f", ARI {groups['ari']:.3f} / NMI {groups['nmi']:.3f} against the labels"
                   if groups["ari"] is not None else "") if g_state == "complete"
                else _groups_command(ctx, g_state))
        rows.append(["image groups", g_state, what])
        if g_state != "complete":
            ctx.missing.append(f"image groups are {g_state}: {_groups_command(ctx, g_state)}.")
    if state != "complete":
        ctx.missing.append(f"ingest is not finished (state: {state}): run `streamq ingest` again; "
                           "nothing else can be shown yet.")
    elif not fit and not per:
        ctx.missing.append("no palette yet: run `streamq fit STORE -k K` (one palette) or "
                           "`streamq fit STORE --per-image --colors 2,6,30` (one per image).")
    for what, sec in (("the shared fit", fit), ("the per-image fit", per)):
        if sec and sec.get("state") != "complete":
            ctx.missing.append(f"{what} is {sec.get('state')}: rerun the same `streamq fit` to finish it.")
    ctx.missing += [f"labels for {r.title} are {r.state}: run `{r.command}`."
                    for r in ctx.results if not r.ready]
    body = table_html(["stage", "state", ""], rows, "stages")
    body += "".join(ctx.note(m[0].upper() + m[1:]) for m in ctx.missing)
    return Section("overview", "Overview", body)


def collection(ctx: Context) -> Section | None:
    """Images, pixels, labels (bar chart), shapes, skipped inputs: from collection_info."""
    info = ctx.info
    if info is None:
        return None
    raw, stored = info["raw_bytes"], info["stored_bytes"]
    facts = [["images", f"{info['n_images']:,}"], ["pixels", f"{info['n_pixels']:,}"],
             ["stored", f"{stored / 2**20:.1f} MiB ({stored / raw:.0%} of raw)" if raw else "0"],
             ["labels", f"{info['n_labels']:,} ({info['labels_with_one_image']:,} with one image)"],
             ["distinct shapes", f"{info['n_shapes']:,}"], ["skipped inputs", f"{info['n_skipped']:,}"],
             ["source", info.get("source") or ""]]
    body = table_html(["", ""], facts, "facts")
    top = info["labels_top"]
    if top:
        fig = _figure(7, 0.3 * len(top) + 1.0)
        ax = fig.add_subplot()
        names = [x["label"] or "(none)" for x in top][::-1]
        ax.barh(range(len(top)), [x["count"] for x in top][::-1], color="#4c72b0")
        ax.set_yticks(range(len(top)), [n if len(n) <= 40 else n[:39] + "…" for n in names])
        for t in ax.get_yticklabels():
            t.set_parse_math(False)
        ax.set_xlabel("images")
        ax.set_title(f"Images per label (top {len(top)} of {info['n_labels']:,})")
        body += figure_html(fig, "bar chart of images per label")
        tail = info["labels_tail"]
        body += table_html(["label", "images"], [[x["label"] or "(none)", x["count"]] for x in top]
                           + ([[f"… {tail['n_labels']:,} more labels", tail["n_images"]]]
                              if tail["n_labels"] else []), "labels")
    body += "<h3>Image shapes</h3>" + table_html(
        ["height × width", "images"], [[x["shape"].replace("x", " × "), x["count"]]
                                       for x in info["shapes_top"]], "shapes")
    if ctx.coll is not None and len(ctx.coll):
        hw, counts = np.unique(np.stack([ctx.coll.heights, ctx.coll.widths], 1), axis=0,
                               return_counts=True)
        fig = _figure(4.5, 3.6)
        ax = fig.add_subplot()
        ax.scatter(hw[:, 1], hw[:, 0], s=12 + 120 * np.sqrt(counts / counts.max()), alpha=0.6)
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.set_title("Image sizes (area ~ images)")
        body += figure_html(fig, "scatter plot of image widths and heights")
    limit = ctx.cfg.max_skipped
    skipped = info["skipped"]
    body += f"<h3>Skipped inputs ({len(skipped):,})</h3>"
    if skipped:
        body += table_html(["path", "reason"], [[s["path"], s["reason"]] for s in skipped[:limit]],
                           "skipped")
        if len(skipped) > limit:
            body += f'<p class="note">{len(skipped) - limit:,} more: see `streamq info --json`.</p>'
    else:
        body += "<p>None: every input was stored.</p>"
    return Section("collection", "Collection", body)


def palette(ctx: Context) -> Section | None:
    """The shared palette as swatches by pixel count; a sample of per-image palettes."""
    if ctx.coll is None:
        return None
    body = ""
    fit = ctx.info.get("fit") if ctx.info else None
    if fit and fit.get("state") == "complete":
        hexes = fit["palette_hex"]
        rgb = np.asarray([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hexes], dtype=np.uint8)
        body += (f"<h3>Shared palette: {len(hexes)} colours</h3><p>Sorted by pixel count "
                 "(every pixel of the collection, counted on its colour histogram).</p>")
        if fit.get("palette_source"):
            body += (f'<p class="palette-source">Given, not fitted: '
                     f"{esc(describe_source(fit['palette_source']))}.</p>")
        body += swatches_html(rgb, np.asarray(fit["counts"]), ctx.cfg.max_colors)
    elif fit:
        body += ctx.note(f"The shared palette is {fit.get('state')}: rerun `streamq fit`.")
    per = [r for r in ctx.results if r.palettes is not None]
    if per:
        shown = ctx.sample[:PER_IMAGE_PALETTES]
        body += (f"<h3>Per-image palettes of {len(shown)} sampled images</h3>"
                 "<p>Each image's own palette per K, sorted by its pixel count in that image "
                 "(palette order where its labels are missing).</p>")
        for i in shown:
            rows = "".join(
                f'<div class="pi-k"><span>K={esc(r.k)}</span>'
                + swatches_html(ctx.palette(r, i), ctx.label_counts(r, i) if r.ready else None,
                                ctx.cfg.max_colors) + "</div>" for r in per)
            body += (f'<div class="per-image-palette" data-id="{i}"><h4>#{i} '
                     f"{esc(ctx.coll.labels[i])} <small>{esc(ctx.coll.paths[i])}</small></h4>"
                     f"{rows}</div>")
    if not body:
        return Section("palette", "Palette", ctx.note(
            "No palette fitted: run `streamq fit STORE -k K` or `streamq fit STORE --per-image`."))
    return Section("palette", "Palette", body)


def before_after(ctx: Context) -> Section | None:
    """Sampled images next to their quantized versions, one row per image, every K side by side."""
    if ctx.coll is None or not len(ctx.coll):
        return None
    ready = [r for r in ctx.results if r.ready]
    coll = ctx.coll
    body = (f"<p>{len(ctx.sample)} images, {esc(ctx.chosen_by)}: ids "
            f"{esc(', '.join(map(str, ctx.sample)))}.</p>")
    if not ready:
        body += ctx.note("No quantized images yet: fit a palette and run `streamq quantize STORE`; "
                         "originals only below.")
    figures = []
    for i in ctx.sample:
        panels = [(coll.labels[i] or f"#{i}", ctx.image(i, PREVIEW_SIDE))]
        for r in ready:
            panels.append((f"{r.title}\nPSNR {_fmt_psnr(float(r.psnr[i]))}",
                           ctx.quantized(r, i, PREVIEW_SIDE)))
        h, w = panels[0][1].shape[:2]
        cell, top = 2.6, 0.45  # inches per panel, inches for two title lines
        height = cell * h / max(h, w)
        # A fixed layout (no ticks, no layout engine): drawing is ~5x cheaper.
        fig = _figure(cell * len(panels), height + top, layout=None)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=height / (height + top),
                            wspace=0.05)
        for n, (title, img) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), n + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if len(title) <= 60 else title[:59] + "…", fontsize=9,
                         parse_math=False)
        caption = " · ".join([f"#{i} {coll.labels[i]} ({coll.paths[i]}, {h}×{w} shown of "
                              f"{coll.heights[i]}×{coll.widths[i]})"]
                             + [f"{r.title}: PSNR {_fmt_psnr(float(r.psnr[i]))}" for r in ready])
        psnrs = " ".join(f'data-psnr-{attr_name(r.key)}="{float(r.psnr[i])!r}"' for r in ready)
        img = figure_html(fig, f"image {i} before and after quantization")
        width = img.split('width="', 1)[1].split('"', 1)[0]
        figures.append(f'<figure class="pair" data-id="{i}" {psnrs} style="width:{width}px">'
                       f"{img}<figcaption>{esc(caption)}</figcaption></figure>")
    body += f'<div class="pairs">{"".join(figures)}</div>'
    return Section("samples", "Before and after", body)


def convergence(ctx: Context) -> Section | None:
    """The shared fit's history: centre shift and batch inertia (mini-batch) or MSE (Lloyd)."""
    if ctx.coll is None:
        return None
    fit = ctx.store.section("fit")
    if fit.get("state") != "complete":
        if ctx.store.section("per_image"):
            return Section("convergence", "Convergence", "<p>Per-image palettes are k-means fits "
                           "of single images: there is no collection-wide convergence curve.</p>")
        return Section("convergence", "Convergence", ctx.note(
            "No finished shared fit, so no convergence curve: run `streamq fit STORE`."))
    s = fit["summary"]
    if fit.get("palette_source"):
        return Section("convergence", "Convergence", "<p>The shared palette was given (" +
                       esc(describe_source(fit["palette_source"])) + "), not fitted: there is "
                       "no convergence curve.</p>")
    h = ctx.store.read_table("fit/history", ("step", "pixels_seen", "shift", "inertia"))
    lloyd = s["algorithm"] == "lloyd"
    tol = fit.get("config", {}).get("tol")
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = h["step"] if lloyd else h["pixels_seen"]
    xlabel = "Lloyd iteration" if lloyd else "pixels seen"
    shift = np.maximum(h["shift"].astype(float), 1e-12)
    ax1.plot(x, shift, lw=1)
    ax1.set_yscale("log")
    if tol:
        ax1.axhline(tol, color="#c44e52", ls="--", lw=1, label=f"tol = {tol:g}")
        ax1.legend(loc="upper right")
    ax1.set_xlabel(xlabel)
    ax1.set_ylabel("largest centre shift")
    ax1.set_title("Centre shift")
    rgb = s.get("color_space") == "rgb"
    inertia = h["inertia"].astype(float) * (255.0 ** 2 / 3 if rgb else 1.0)
    ax2.plot(x, inertia, lw=1, color="#55a868", alpha=0.5 if not lloyd and len(x) > 20 else 1)
    if not lloyd and len(x) > 20:  # batch values are noisy: add a running mean
        w = max(5, len(x) // 20)
        mean = np.convolve(inertia, np.ones(w) / w, mode="valid")
        ax2.plot(x[w - 1:], mean, lw=1.5, color="#2d6a3e", label=f"mean of {w} batches")
        ax2.legend(loc="upper right")
    ax2.set_xlabel(xlabel)
    if lloyd:
        ax2.set_ylabel("MSE (uint8 RGB units)" if rgb else "mean squared OKLab distance")
        ax2.set_title("MSE per iteration (every pixel)")
    else:
        ax2.set_ylabel("MSE (uint8 RGB units)" if rgb else "mean squared OKLab distance")
        ax2.set_title("Batch inertia (before each update)")
    body = figure_html(fig, "convergence curves of the fit")
    body += table_html(["", ""], [
        ["algorithm", f"{s['algorithm']} in {s['color_space']}"], ["K", s["k"]],
        ["steps" if not lloyd else "iterations", f"{s['steps']:,}"],
        ["pixels seen", f"{s['pixels_seen']:,}"], ["stopped", s["stop_reason"]],
        ["MSE / PSNR", f"{s['mse']:.2f} / {_fmt_psnr(s['psnr'])} (every pixel)"],
        ["history points", f"{len(x):,}"]], "facts")
    return Section("convergence", "Convergence", body)


def _fmt_ssim(v: float | None) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"


def _ssim_html(ctx: Context, ready: list[Result]) -> str:
    """The distribution of per-image SSIM of every result that has it, and its statistics."""
    have = [r for r in ready if r.ssim is not None]
    notes = "".join(ctx.note(f"No SSIM for {r.title}: it was quantized with --no-ssim; "
                             "`streamq quantize STORE` adds it.") for r in ready if r.ssim is None)
    if not have:
        return notes
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    finite = [r.ssim[np.isfinite(r.ssim)] for r in have]
    lo = min((float(f.min()) for f in finite if len(f)), default=0.0)
    bins = np.linspace(min(lo, 1 - 1e-6), 1.0, 31)
    for r, f in zip(have, finite, strict=True):
        ax.hist(f, bins=bins, histtype="step", lw=1.5,
                label=f"{r.title} (median {np.median(f):.3f})" if len(f) else r.title)
    ax.set_xlabel("SSIM (luma, 11x11 Gaussian window, sigma 1.5)")
    ax.set_ylabel("images")
    ax.set_title("Per-image SSIM")
    ax.legend(loc="upper left", fontsize=8)
    body = figure_html(fig, "histogram of per-image SSIM", cls="fig ssim-hist")
    body += table_html(["result", "images", "min", "median", "mean", "max", "none (< 11x11)"], [
        [r.title, len(f), *(f"{fn(f):.4f}" if len(f) else "—"
                            for fn in (np.min, np.median, np.mean, np.max)),
         int(len(r.ssim) - len(f))] for r, f in zip(have, finite, strict=True)], "ssim-stats")
    return body + notes


def quality(ctx: Context) -> Section | None:
    """Per-image PSNR and SSIM: their distributions for every result, and the worst images
    (by PSNR) with thumbnails."""
    if ctx.coll is None:
        return None
    ready = [r for r in ctx.results if r.ready]
    if not ready:
        return Section("quality", "Image quality (PSNR)", ctx.note(
            "No per-image PSNR yet: it is computed by `streamq quantize STORE`."))
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    finite = [r.psnr[np.isfinite(r.psnr)] for r in ready]
    lo = min((float(f.min()) for f in finite if len(f)), default=0.0)
    hi = max((float(f.max()) for f in finite if len(f)), default=1.0)
    bins = np.linspace(lo, max(hi, lo + 1e-6), 31)
    for r, f in zip(ready, finite, strict=True):
        ax.hist(f, bins=bins, histtype="step", lw=1.5, label=f"{r.title} (median {np.median(f):.1f} dB)"
                if len(f) else r.title)
    ax.set_xlabel("PSNR (dB)")
    ax.set_ylabel("images")
    ax.set_title("Per-image PSNR")
    ax.legend(loc="upper left", fontsize=8)
    body = figure_html(fig, "histogram of per-image PSNR")
    body += table_html(["result", "images", "min", "median", "mean", "max", "exact (inf)"], [
        [r.title, len(r.psnr), *(f"{fn(f):.2f}" if len(f) else "—"
                                 for fn in (np.min, np.median, np.mean, np.max)),
         int(np.isinf(r.psnr).sum())] for r, f in zip(ready, finite, strict=True)], "psnr-stats")
    body += _ssim_html(ctx, ready)
    coll = ctx.coll
    for r in ready if ctx.cfg.worst else []:
        worst = worst_images(r.psnr, ctx.cfg.worst)
        rows = []
        for rank, i in enumerate(worst, 1):
            thumbs = Raw(array_html(ctx.image(i, THUMB_SIDE), f"image {i}") + " "
                         + array_html(ctx.quantized(r, i, THUMB_SIDE), f"image {i}, {r.title}"))
            ssim = None if r.ssim is None else float(r.ssim[i])
            rows.append([rank, i, coll.labels[i], coll.paths[i],
                         Raw(f'<span class="psnr" data-psnr="{float(r.psnr[i])!r}">'
                             f"{esc(_fmt_psnr(float(r.psnr[i])))}</span>"),
                         Raw(f'<span class="ssim" data-ssim="{"" if ssim is None else repr(ssim)}">'
                             f"{esc(_fmt_ssim(ssim))}</span>"), thumbs])
        body += (f'<h3>Worst {len(worst)} images by PSNR, {esc(r.title)}</h3>'
                 f'<div class="worst" data-result="{esc(r.key)}">'
                 + table_html(["rank", "id", "label", "path", "PSNR", "SSIM",
                               "original · quantized"], rows)
                 + "</div>")
    return Section("quality", "Image quality (PSNR, SSIM)", body)


def _groups_state(ctx: Context) -> dict[str, Any] | None:
    """The groups section of the store as ``streamq info`` shows it (None when there is none)."""
    return groups_summary(ctx.store)


def _groups_command(ctx: Context, state: str) -> str:
    """What makes the image groups complete (for a note)."""
    shared = next((r for r in ctx.results if r.key == "shared"), None)
    if shared is None:
        return ("run `streamq fit STORE -k K` and `streamq quantize STORE`, then "
                "`streamq cluster-images STORE --groups G`")
    if not shared.ready:
        return "run `streamq quantize STORE`, then `streamq cluster-images STORE`"
    if state == "missing":
        return "run `streamq cluster-images STORE --groups G`"
    return "run `streamq cluster-images STORE`"


def histogram_bar_html(palette: np.ndarray, shares: np.ndarray) -> str:
    """A stacked bar of palette colours, each as wide as its share (largest first)."""
    shares = np.clip(np.asarray(shares, dtype=np.float64), 0, None)
    total = float(shares.sum())
    if total > 0:
        shares = shares / total
    segments = []
    for j in np.argsort(-shares, kind="stable"):
        if shares[j] <= 0:
            break
        r, g, b = (int(v) for v in palette[j])
        hexcode = f"#{r:02x}{g:02x}{b:02x}"
        segments.append(f'<span class="seg" data-index="{int(j)}" data-hex="{hexcode}" '
                        f'data-share="{float(shares[j])!r}" title="{hexcode} {shares[j]:.1%}" '
                        f'style="width:{100 * shares[j]:.3f}%;background:{hexcode}"></span>')
    return f'<div class="hbar">{"".join(segments)}</div>'


def contingency_html(table: np.ndarray, names: Sequence[str], top: int) -> str:
    """Groups x labels counts: the ``top`` labels with most images, the rest as one column."""
    totals = table.sum(0)
    order = np.argsort(-totals, kind="stable")  # most images first, label order on ties
    shown, rest = order[:top], order[top:]
    header = ["group", *[names[j] or "(none)" for j in shown]]
    if len(rest):
        header.append(f"other ({len(rest):,} labels)")
    header.append("images")
    rows: list[list[Any]] = []
    for g, row in enumerate(table):
        cells: list[Any] = [f"group {g}", *(int(row[j]) for j in shown)]
        if len(rest):
            cells.append(int(row[rest].sum()))
        rows.append([*cells, int(row.sum())])
    rows.append(["all groups", *(int(totals[j]) for j in shown),
                 *([int(totals[rest].sum())] if len(rest) else []), int(totals.sum())])
    return table_html(header, rows, "contingency")


def image_groups(ctx: Context) -> Section | None:
    """Images grouped by their colours: members per group, centres, overlap with the labels."""
    if ctx.coll is None:
        return None
    title = "Image groups"
    state = (_groups_state(ctx) or {}).get("state", "missing")
    if state != "complete":
        what = {"missing": "No image groups yet", "stale": "The image groups are stale (the "
                "palette was refitted)"}.get(state, f"The image groups are {state} (interrupted)")
        return Section("groups", title, ctx.note(f"{what}: {_groups_command(ctx, state)}."))
    shared = next((r for r in ctx.results if r.key == "shared"), None)
    if shared is None or shared.shared_palette is None:  # a refit under way
        return Section("groups", title, ctx.note(
            f"The shared palette is not finished: {_groups_command(ctx, 'stale')}."))
    res = load_groups(ctx.store.location)
    by = ("palette histograms" if res.descriptor == "histogram" else
          f"palette histograms and colour moments (weighted {res.moments_weight:g})")
    body = (f"<p>{len(res.group):,} images in {esc(res.groups)} groups by their {esc(by)} over "
            f"the shared palette (K={esc(res.k)}); {res.steps:,} mini-batch step{'s' if res.steps != 1 else ''}, stopped: "
            f"{esc(res.stop_reason)}. Each group: its centre as a palette histogram (colours by "
            f"share), then up to {ctx.cfg.group_samples} of its images, the nearest to the centre "
            "first.</p>")
    limit = ctx.cfg.max_groups
    blocks = []
    for g in range(min(res.groups, limit)):
        members = res.members(g)
        size = len(members)
        figs = "".join(
            f'<figure class="member" data-id="{int(i)}">'
            + array_html(ctx.image(int(i), THUMB_SIDE), f"image {int(i)}, group {g}")
            + f"<figcaption>#{int(i)} {esc(ctx.coll.labels[i])}</figcaption></figure>"
            for i in members[:ctx.cfg.group_samples])
        more = (f'<p class="note">{size - ctx.cfg.group_samples:,} more images.</p>'
                if size > ctx.cfg.group_samples else "")
        if not size:
            figs = '<p class="note">No image is nearest to this centre.</p>'
        blocks.append(f'<div class="group" data-group="{g}" data-size="{size}">'
                      f"<h3>Group {g} · {size:,} image{'s' if size != 1 else ''}</h3>"
                      + histogram_bar_html(shared.shared_palette, res.centers[g, :res.k])
                      + f'<div class="members">{figs}</div>{more}</div>')
    body += f'<div class="groups">{"".join(blocks)}</div>'
    if res.groups > limit:
        body += (f'<p class="note">{res.groups - limit:,} more groups not shown '
                 f"(report.max_groups={limit}).</p>")
    body += "<h3>Groups and labels</h3>"
    if res.ari is None:
        body += ("<p>The images have no labels (folder names), so the groups cannot be compared "
                 "with them.</p>")
    elif len(res.label_names) == 1:
        body += (f"<p>Every image has the same label ({esc(res.label_names[0] or '(none)')}), "
                 "so the groups cannot be compared with labels.</p>")
    else:
        names = res.label_names
        body += (f'<p class="overlap">Adjusted Rand index <b class="ari" '
                 f'data-ari="{esc(repr(res.ari))}">{res.ari:.3f}</b>, normalised mutual '
                 f'information <b class="nmi" data-nmi="{esc(repr(res.nmi))}">{res.nmi:.3f}</b> '
                 'between the groups and the '
                 f"{len(names):,} image labels (1: the groups are the labels; an ARI near 0: "
                 "no closer than a random grouping). Images per group and label:</p>")
        body += contingency_html(res.contingency, names, ctx.cfg.group_labels)
    return Section("groups", title, body)


def run_facts(ctx: Context) -> Section:
    """Versions, configuration, seeds, timings per stage and the cluster each stage used."""
    from streamq.scheduler import library_versions

    st = ctx.store
    stages = [("ingest", "ingest"), ("fit", "shared fit"), ("quantize", "quantize"),
              ("per_image", "per-image fit")]
    per = st.section("per_image")
    stages += [(f"per_image_quantize_k{k}", f"per-image labels K={k}") for k in per.get("colors") or []]
    stages.append(("groups", "image groups"))
    rows, versions = [], {}
    for key, name in stages:
        sec = st.section(key)
        if not sec:
            continue
        t = sec.get("timings") or {}
        rt = sec.get("runtime") or {}
        total = (sec.get("summary", {}).get("seconds") if key == "fit" else None) or (
            sum(v for v in t.values() if isinstance(v, int | float)) if t else None)
        breakdown = ", ".join(f"{k} {_seconds(v)}" for k, v in t.items())
        cluster = rt.get("cluster", "not recorded")
        if "cluster" in cluster and rt.get("workers"):
            cluster += f", {rt['workers']} workers"
        state = result_state(st, key) if "state" in sec else ""  # labels, groups: stale?
        rows.append([name, state, sec.get("finished", ""), cluster,
                     _seconds(total), breakdown or "not recorded"])
        if rt.get("versions"):
            versions[name] = rt["versions"]
    body = table_html(["stage", "state", "finished", "ran on", "time", "timings"], rows, "timings")
    body += ('<p class="note">Timings are those of the run that finished each stage (a resumed '
             "stage counts only its last run).</p>")
    versions["this report"] = library_versions()
    names = list(dict.fromkeys(n for v in versions.values() for n in v))
    body += "<h3>Versions</h3>" + table_html(
        ["library", *versions], [[n, *(v.get(n) or "—" for v in versions.values())] for n in names],
        "versions")
    meta = st.section("streamq")
    body += "<h3>Store</h3>" + table_html(["", ""], [
        ["path", st.path], ["format version", meta.get("format_version")],
        ["created with streamq", meta.get("created_with")]], "facts")
    configs = [("ingest settings", st.section("ingest").get("settings")),
               ("fit configuration", st.section("fit").get("config")),
               ("per-image configuration", per.get("config")),
               ("image groups configuration", st.section("groups").get("config"))]
    for title, conf in configs:
        if conf:
            seed = f" (seed {conf['seed']})" if "seed" in conf else ""
            body += f"<h3>{esc(title)}{esc(seed)}</h3>" + table_html(
                ["key", "value"], [[k, json.dumps(v)] for k, v in sorted(conf.items())], "config")
    return Section("run", "Run facts", body)


#: The page, in order. A builder takes the :class:`Context` and returns a :class:`Section`
#: (or ``None`` to leave it out); add a section by adding a builder here.
SECTIONS: list[Callable[[Context], Section | None]] = [
    overview, collection, palette, before_after, convergence, quality, image_groups, run_facts]


# -- assembling the page -------------------------------------------------------------------------
@dataclass
class ReportSummary:
    out: str
    bytes: int
    sections: list[str]
    missing: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        text = (f"wrote {self.out} ({self.bytes / 2**20:.1f} MiB, {len(self.sections)} sections) "
                f"in {self.seconds:.1f} s")
        for m in self.missing:
            text += f"\nmissing: {m}"
        return text


def _results(st: Store) -> tuple[list[Result], list[str]]:
    """The label sets of the store, and a note for each K in its attributes that is not one
    (a damaged store: such a value is shown, escaped, and left out)."""
    out, problems = [], []
    fit, q = st.section("fit"), st.section(QUANTIZE)
    if fit.get("state") == "complete":
        p = st.read_table("fit/palette", ("r", "g", "b"))
        k = fit["summary"]["k"]
        state = labels_state(st)[0]
        out.append(Result("shared", f"shared K={k}", k, state, "quantize/labels", None,
                          np.stack([p["r"], p["g"], p["b"]], 1).astype(np.uint8),
                          _psnr(st, "quantize/images") if state == "complete" else None,
                          "streamq quantize STORE",
                          _ssim(st, "quantize/images") if state == "complete" and q.get("ssim")
                          else None))
    per = st.section("per_image")
    if per.get("state") == "complete":
        for value in per.get("colors") or []:
            k = _count(value)
            if k is None:
                problems.append(f"the per-image K value {value!r} (store attribute "
                                "per_image.colors) is not a positive integer: left out.")
                continue
            q = st.section(per_image_labels(k))
            state = labels_state(st, k)[0]
            out.append(Result(f"k{k}", f"per-image K={k}", k, state, f"per_image/k{k}/labels",
                              f"per_image/k{k}/palette", None,
                              _psnr(st, f"per_image/k{k}/images") if state == "complete" else None,
                              "streamq quantize STORE",
                              _ssim(st, f"per_image/k{k}/images")
                              if state == "complete" and q.get("ssim") else None))
    return out, problems


def _psnr(st: Store, prefix: str) -> np.ndarray:
    return st.read_table(prefix, ("psnr",))["psnr"].astype(np.float64)


def _ssim(st: Store, prefix: str) -> np.ndarray:
    return st.read_table(prefix, ("ssim",))["ssim"].astype(np.float64)


def _sample(coll: Collection, n: int, seed: int, ids: Any, labels: Sequence[str] | None) -> list[int]:
    pool = select_images(coll, list(labels) if labels else None, parse_ids(ids, len(coll)))
    if not pool and (ids is not None or labels):
        raise ConfigError(f"no image has both ids {ids} and labels {list(labels or [])}; "
                          "choose others")
    if len(pool) <= n:
        return list(pool)
    rng = np.random.default_rng(seed)
    return sorted(int(pool[j]) for j in rng.choice(len(pool), size=n, replace=False))


def report(store: str | os.PathLike[str] | Location, out: str | os.PathLike[str] | None = None, *,
           config: StreamQConfig | dict[str, Any] | None = None, ids: str | list[int] | None = None,
           labels: Sequence[str] | None = None,
           sections: Sequence[Callable[[Context], Section | None]] | None = None,
           storage_options: dict[str, Any] | None = None, **options: Any) -> ReportSummary:
    """Write an HTML report of ``store`` to ``out`` (one self-contained ``.html`` file).

    Parameters
    ----------
    store : str or path
        A streamq store at any stage: a folder or a URL (``s3://bucket/x.zarr``, reached with
        ``storage_options``, default ``config``'s).
    out : str or path, optional
        The page to write (``.html``, a local file); default: key ``report.out`` of ``config``.
    config : StreamQConfig or dict, optional
        ``options`` override its ``report`` keys (``samples=8``, ``worst=10``, ``seed=0``,
        ``max_colors=256``, ``max_skipped=200``).
    ids, labels : optional
        Show these images (``"0,5,10-20"`` or a list) / images with these labels in the
        before/after figures: at most ``samples`` of them, a seeded choice when there are more.
    sections : list of builders, optional
        Defaults to :data:`SECTIONS`.

    Returns
    -------
    ReportSummary
    """
    started = time.perf_counter()
    cfg = parse_config(config).replace(**{f"report.{k}": v for k, v in options.items()},
                                       **{"report.out": None if out is None else os.fspath(out)})
    rcfg = cfg.report
    if rcfg.out is None:
        raise ConfigError("no output given: pass OUT or set key 'report.out'")
    out = os.path.abspath(rcfg.out)
    if os.path.splitext(out)[1].lower() not in (".html", ".htm"):
        raise ConfigError(f"report output {out} should end in .html")
    st = Store.open(store_location(store, storage_options, cfg.storage_options))
    if st.location.is_local and os.path.commonpath([out, st.path]) == st.path:
        raise ConfigError(f"report output {out} is inside the store {st.path}; write it elsewhere")
    if os.path.isdir(out):
        raise ConfigError(f"report output {out} is a folder; give a file name ending in .html")
    try:
        coll: Collection | None = Collection(st)
    except StoreLayoutError:
        coll = None
    info = None
    sample: list[int] = []
    results: list[Result] = []
    problems: list[str] = []
    if coll is not None:
        info = collection_info(coll, top=rcfg.top_labels)
        sample = _sample(coll, rcfg.samples, rcfg.seed, ids, labels)
        results, problems = _results(st)
    chosen_by = (f"chosen with ids={ids!r} labels={list(labels or [])!r}" if ids or labels
                 else f"a seeded sample (seed {rcfg.seed})")
    chosen_by += f", at most {rcfg.samples}"
    ctx = Context(st, coll, info, rcfg, chosen_by, sample, results, missing=problems)
    built: list[Section] = []
    for builder in sections if sections is not None else SECTIONS:
        with timer(f"report section {builder.__name__}"):
            section = builder(ctx)
        if section is not None:
            built.append(section)
    page = _page(st, built)
    try:
        write_atomic(out, page.encode("utf-8"))
    except OSError as exc:
        raise StreamQError(f"cannot write the report {out}: {exc.strerror or exc}; choose "
                           "another place for OUT") from exc
    summary = ReportSummary(out=out, bytes=len(page.encode()), sections=[s.title for s in built],
                            missing=ctx.missing, seconds=round(time.perf_counter() - started, 3))
    log.info("%s", summary)
    return summary


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#eceff1;padding:12px 24px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;color:#b0bec5}
nav a{color:#80cbc4;margin-right:14px;text-decoration:none}
main{padding:8px 24px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:4px 18px 14px;margin:16px 0}
h2{border-bottom:1px solid #eee;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0} td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f5f5f5} img{max-width:100%;height:auto} img.thumb{image-rendering:pixelated;margin-right:4px}
.swatches{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0}
.swatch{width:86px;height:46px;font:11px/1.3 monospace;padding:3px;box-sizing:border-box;border-radius:3px;border:1px solid #0002}
.pi-k{display:flex;align-items:center;gap:8px} .pi-k>span{width:46px;font-weight:bold}
.missing{background:#fff3e0;border-left:4px solid #fb8c00;padding:6px 10px}
.note{color:#666;font-size:12px} figcaption{color:#555;font-size:12px}
.hbar{display:flex;height:14px;width:100%;max-width:640px;border:1px solid #0002;margin:4px 0}
.hbar .seg{display:block;height:100%}
.members{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
.members figure{margin:2px 0;font-size:11px;max-width:100px;overflow-wrap:anywhere}
.pairs{display:flex;flex-wrap:wrap;gap:8px 18px;align-items:flex-start} figure{margin:6px 0;max-width:100%}
"""


def _page(st: Store, sections: list[Section]) -> str:
    from streamq._version import __version__

    name = os.path.basename(st.path.rstrip("/")) or st.path
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    made = timestamp(readable=True)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data:; style-src 'unsafe-inline'\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>streamq report: {esc(name)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>streamq report: {esc(name)}</h1><p>{esc(st.path)} · made {esc(made)} "
            f"with streamq {esc(__version__)}</p><nav>{nav}</nav></header><main>{body}</main>"
            "</body></html>\n")
