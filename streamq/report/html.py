"""HTML and figures for the report: escaping, tables, colour swatches and bars, matplotlib
figures and thumbnails embedded as PNG ``data:`` URIs, and how numbers are written.

Every string that comes from a store goes through :func:`esc` (or a :class:`Raw` made here),
so a section's body is safe to put into the page as is."""

from __future__ import annotations

import base64
import html
import io
import re
import struct
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["THUMB_SIDE", "Raw", "array_html", "attr_name", "contingency_html", "esc",
           "figure_html", "fmt_psnr", "fmt_seconds", "fmt_ssim", "palette_shares_html",
           "new_figure", "swatches_html", "table_html"]

THUMB_SIDE = 96  # longest side of a thumbnail in the worst-images lists


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def attr_name(text: str) -> str:
    """``text`` made a safe part of an attribute name (escaping cannot do that): letters,
    digits, ``-`` and ``_`` stay, anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


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


Layout = Literal["constrained", "compressed", "tight"]


def new_figure(width: float, height: float, layout: Layout | None = "constrained") -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches, laid out by ``layout`` (None:
    positions set by hand)."""
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


def swatches_html(palette: np.ndarray, counts: np.ndarray | None, limit: int,
                  alpha: np.ndarray | None = None) -> str:
    """Colour swatches with hex codes and pixel counts, most used first (index order on ties).
    With ``alpha`` (a palette with alpha: each entry's straight colour and its alpha), each
    swatch is its colour over a checkerboard, labelled ``#rrggbbaa``, ``data-alpha`` its
    alpha; without it, swatches are as they always were."""
    order = (np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable") if counts is not None
             else np.arange(len(palette)))
    total = int(np.sum(counts)) if counts is not None else 0
    cells = []
    for j in order[:limit]:
        r, g, b = (int(v) for v in palette[j])
        hexcode = f"#{r:02x}{g:02x}{b:02x}"
        if alpha is None:
            shown, extra = hexcode, ""
            style = f"background:{hexcode}"
            ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
        else:
            a = int(alpha[j])
            shown = f"{hexcode}{a:02x}"
            extra = f' data-alpha="{a}"'
            style = (f"background:linear-gradient({shown},{shown}),"
                     f"repeating-conic-gradient(#c8c8c8 0 25%,#fff 0 50%) 0 0/12px 12px")
            over = (0.299 * r + 0.587 * g + 0.114 * b) * a / 255 + 228 * (1 - a / 255)
            ink = "#000" if over > 140 else "#fff"  # on the checkerboard's mean grey
        if counts is None:
            label, data = shown, ""
        else:
            c = int(counts[j])
            share = f" ({c / total:.1%})" if total else ""
            label = f"{shown}<br>{c:,}{share}"
            data = f' data-count="{c}"'
        cells.append(f'<div class="swatch" data-index="{int(j)}" data-hex="{hexcode}"{extra}{data} '
                     f'style="{style};color:{ink}">{label}</div>')
    more = (f'<p class="note">{len(order) - limit} more colours not shown '
            f"(report.max_colors={limit}).</p>" if len(order) > limit else "")
    return f'<div class="swatches">{"".join(cells)}</div>{more}'


def fmt_psnr(v: float) -> str:
    return "exact (inf dB)" if not np.isfinite(v) else f"{v:.2f} dB"


def fmt_seconds(v: Any) -> str:
    return f"{v:.2f} s" if isinstance(v, int | float) else "—"


def fmt_ssim(v: float | None) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"


def palette_shares_html(palette: np.ndarray, shares: np.ndarray) -> str:
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
