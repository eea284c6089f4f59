"""What both exports share: their manifest's name, the check of the output folder and the
message of labels changed under an export.

:mod:`streamq.export.files` (image files) and :mod:`streamq.export.zarr` (arrays) import it and
not each other's internals.
"""

from __future__ import annotations

import os

from streamq.errors import StoreExistsError
from streamq.fs import Location
from streamq.names import source_name
from streamq.store import Store

__all__ = ["MANIFEST", "check_out", "labels_changed_message"]

MANIFEST = ".streamq-export.json"


def check_out(out_loc: Location, st: Store) -> None:
    """Refuse an output folder that is, holds or sits inside the store or the source tree."""
    out = out_loc.url
    if not out_loc.is_local:  # only a store under the same URL scheme can overlap
        other = st.path
        if "://" in other and other.split("://")[0] == out.split("://")[0]:
            a, b = out.rstrip("/") + "/", other.rstrip("/") + "/"
            if a.startswith(b) or b.startswith(a):
                raise StoreExistsError(f"output {out} overlaps the store {other}; choose another URL")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise StoreExistsError(f"output folder {out} is a file; choose a folder")
    real = os.path.realpath(out)
    root = st.section("ingest").get("root")
    candidates: tuple[tuple[str, str | None], ...] = (
        ("the store", st.path), ("the ingested source folder", root and source_name(root)))
    for what, place in candidates:
        if not place or "://" in place:
            continue
        o = os.path.realpath(place)
        if os.path.commonpath([real, o]) in (real, o):
            raise StoreExistsError(f"output folder {out} overlaps {what} {place}; choose another folder")


def labels_changed_message(store: str) -> str:
    """The one line of :class:`~streamq.errors.LabelsChangedError` for ``store``."""
    return (f"{store}: the labels changed under this export (the store was quantized again, "
            "refitted or ingested again meanwhile); nothing made from them is kept as done: "
            "run the export again once that has finished")
