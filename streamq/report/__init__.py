"""The HTML report of a store (``streamq report``), one stage of the package.

Modules, each importing only those below it:

- :mod:`streamq.report.page`: :func:`report`, the list of sections (:data:`SECTIONS`) and
  the page around them;
- the sections: :mod:`streamq.report.summary` (overview, collection, run facts), which
  uses :mod:`streamq.report.groups` (image groups), beside :mod:`streamq.report.palettes`
  (palettes, a per-image quality fit's K, convergence) and :mod:`streamq.report.images` (before/after, quality);
- :mod:`streamq.report.context`: what a report is made of (:class:`Section`,
  :class:`Result`, :class:`Context`) and the store read for it;
- :mod:`streamq.report.html`: HTML and figure helpers.

Everything a section builder needs is named here too.
"""

from __future__ import annotations

from streamq.report.context import READ_WHOLE, Context, Result, Section
from streamq.report.groups import image_groups
from streamq.report.html import (
    THUMB_SIDE,
    Raw,
    array_html,
    attr_name,
    contingency_html,
    esc,
    figure_html,
    palette_shares_html,
    swatches_html,
    table_html,
)
from streamq.report.images import PREVIEW_SIDE, before_after, quality
from streamq.report.page import SECTIONS, ReportSummary, report
from streamq.report.palettes import PER_IMAGE_PALETTES, chosen_k, convergence, palette
from streamq.report.summary import collection, overview, run_facts

__all__ = ["PER_IMAGE_PALETTES", "PREVIEW_SIDE", "READ_WHOLE", "SECTIONS", "THUMB_SIDE",
           "Context", "Raw", "ReportSummary", "Result", "Section", "array_html", "attr_name",
           "before_after", "chosen_k", "collection", "contingency_html", "convergence", "esc",
           "figure_html",
           "palette_shares_html", "image_groups", "overview", "palette", "quality", "report",
           "run_facts", "swatches_html", "table_html"]
