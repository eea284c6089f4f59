"""Which images of a collection a command works on: ``--ids`` and ``--label`` choices, and
the guard of the stages that work on opaque colours only.

Part of the store layer: the exports, the report and the array readers choose images the
same way without importing each other.
"""

from __future__ import annotations

import re

from streamq.errors import ConfigError
from streamq.store.images import Collection

__all__ = ["parse_ids", "refuse_alpha", "select_images"]


def parse_ids(ids: str | list[int] | None, n: int) -> list[int] | None:
    """Image ids from ``--ids`` (``"0,3,10-20"`` or a list) of a collection of ``n`` images,
    sorted and distinct; None (every image) for None. A bad part or an id out of range is a
    one-line error."""
    if ids is None:
        return None
    if isinstance(ids, list):
        out = ids
    else:
        out = []
        for part in ids.split(","):
            part = part.strip()
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ConfigError(f"--ids value {part!r} is not an id or a range like 10-20")
            a, b = int(m.group(1)), int(m.group(2) or m.group(1))
            out.extend(range(a, b + 1))
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ConfigError(f"--ids names image {bad[0]}, but ids run from 0 to {n - 1}")
    return sorted(set(out))


def select_images(coll: Collection, labels: list[str] | None, ids: list[int] | None) -> list[int]:
    """The ids among ``ids`` (None: every image) whose label is one of ``labels`` (None or
    empty: any); a label the collection does not have is a one-line error."""
    chosen = list(range(len(coll))) if ids is None else ids
    if labels:
        known = set(coll.labels)
        missing = [lab for lab in labels if lab not in known]
        if missing:
            raise ConfigError(f"--label {missing[0]!r} is not a label of this collection")
        wanted = set(labels)
        chosen = [i for i in chosen if coll.labels[i] in wanted]
    return chosen


def refuse_alpha(coll: Collection, what: str) -> None:
    """One line, for a stage that works in RGB only, when ``coll`` has images with alpha."""
    if coll.n_alpha:
        raise ConfigError(
            f"{coll.path} has {coll.n_alpha} images with alpha; {what} works on opaque colours "
            "only: ingest again with --alpha flatten (composited on the background) to use it")
