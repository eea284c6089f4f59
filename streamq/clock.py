"""Wall-clock timestamps as streamq writes them: completion records, lock files, reports.

One format for machines (``2024-05-01T12:00:00+0200``: records' ``finished``, a lock's
``started``) and one for people (``2024-05-01 12:00:00 +0200``: a report's "made"), both in
local time with the offset from UTC.
"""

from __future__ import annotations

import time

__all__ = ["timestamp"]

_RECORD = "%Y-%m-%dT%H:%M:%S%z"
_READABLE = "%Y-%m-%d %H:%M:%S %z"


def timestamp(readable: bool = False) -> str:
    """Now, local time with its UTC offset: ``2024-05-01T12:00:00+0200``, or with ``readable``
    ``2024-05-01 12:00:00 +0200``."""
    return time.strftime(_READABLE if readable else _RECORD)
