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

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamq.clock import timestamp
from streamq.config import StreamQConfig, parse_config, replaced
from streamq.console import timer
from streamq.errors import ConfigError, StoreLayoutError, StreamQError
from streamq.fs import Location, write_atomic
from streamq.report.context import Context, Result, Section, read_results, sample_images
from streamq.report.groups import image_groups
from streamq.report.html import esc
from streamq.report.images import before_after, quality
from streamq.report.palettes import chosen_k, convergence, palette
from streamq.report.summary import collection, overview, run_facts
from streamq.store import Collection, Store, store_location
from streamq.store.overview import collection_info

__all__ = ["SECTIONS", "ReportSummary", "report"]

log = logging.getLogger(__name__)


#: The page, in order. A builder takes the :class:`Context` and returns a :class:`Section`
#: (or ``None`` to leave it out); add a section by adding a builder here.
SECTIONS: list[Callable[[Context], Section | None]] = [
    overview, collection, palette, chosen_k, before_after, convergence, quality, image_groups,
    run_facts]


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
    cfg = replaced(parse_config(config), {**{f"report.{k}": v for k, v in options.items()},
                                            "report.out": None if out is None else os.fspath(out)})
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
        sample = sample_images(coll, rcfg.samples, rcfg.seed, ids, labels)
        results, problems = read_results(st)
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
