"""One phrase for a record a result keeps: where a palette came from, what a K search found.

These read JSON-ready records only (a palette's ``source``, :mod:`streamq.palettes`; a fit's
``quality``, :mod:`streamq.fit.quality`), so the store layer, the stages and the CLI describe
results the same way without importing the stage that made them.
"""

from __future__ import annotations

from typing import Any

from streamq.metrics import psnr

__all__ = ["describe_quality", "describe_source"]

_NAMES = {"gpl": "GIMP palette", "act": "Adobe colour table", "json": "JSON palette",
          "text": "hex colour list", "image": "image", "store": "store"}


def describe_source(source: dict[str, Any] | None) -> str:
    """One phrase for where a palette came from (``info``, the report, summaries)."""
    if not source:
        return "k-means fit"
    kind = source.get("kind")
    path = source.get("path")
    k = source.get("n_colors")
    if kind == "store":
        return (f"the fitted palette of store {path} (K={k}, {source.get('algorithm')}, "
                f"{source.get('color_space')})")
    if kind == "image":
        what = ("the palette entries its pixels use" if source.get("image_palette")
                else "its distinct colours")
        return f"{k} colours of image {path} ({what})"
    name = source.get("name")
    named = f" {name!r}" if name else ""
    return f"{k} colours of {_NAMES.get(str(kind), str(kind))}{named} {path}"


def describe_quality(q: dict[str, Any]) -> str:
    """The search's outcome in one phrase, for the summary line and ``streamq info``."""
    qmin, qmax, (lo, hi), k = q["min"], q["max"], q["searched"], q["k"]
    tried = {int(t): float(m) for t, m in q["tried"]}
    n = f"{len(tried)} K fitted"
    head = f"quality {qmin:g}-{qmax:g} dB"
    if not q["reached"]:
        return (f"{head}: no K in {lo}..{hi} reaches {qmax:g} dB; K={k}, the largest, gives "
                f"{psnr(tried[k]):.2f} dB (at least MIN); {n}")
    if k == lo:
        return f"{head}: K={k}, the smallest K in {lo}..{hi}, reaches {qmax:g} dB; {n}"
    return (f"{head}: K={k} is the smallest K in {lo}..{hi} reaching {qmax:g} dB (K={k - 1}: "
            f"{psnr(tried[k - 1]):.2f} dB); {n}")
