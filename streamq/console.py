"""Logging, timing and progress, in one place.

Library modules log through ``logging.getLogger(__name__)`` and never configure
logging; the CLI calls :func:`set_log_level`. Progress bars go to stderr and only when
it is a terminal (or when forced), so logs and pipes stay clean.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar", "set_log_level", "timer"]

log = logging.getLogger("streamq")
_handler: logging.Handler | None = None
# Loggers of the client's side of a Dask connection; a filter on a logger sees only the
# records logged through that logger, so each is named.
_CLIENT_LOGGERS = ("distributed.client", "distributed.batched")


def set_log_level(level: int) -> None:
    """Attach one stderr handler to the ``streamq`` logger and set its level."""
    global _handler
    if _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(_Redacting("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(_handler)
    log.setLevel(level)
    # Dask's client (and its batched comm to the scheduler) log their own account, with
    # tracebacks, of a lost scheduler; streamq turns that into one line of its own, so below
    # -v those messages stay out of the way.
    for name in _CLIENT_LOGGERS:
        client_log = logging.getLogger(name)
        for f in [f for f in client_log.filters if isinstance(f, _BelowCritical)]:
            client_log.removeFilter(f)
        if level > logging.INFO:
            client_log.addFilter(_BelowCritical())


class _Redacting(logging.Formatter):
    """Log lines without URL credentials or remembered storage-option secrets."""

    def format(self, record: logging.LogRecord) -> str:
        from streamq import redact

        return redact.text(super().format(record))


class _BelowCritical(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL


@contextmanager
def timer(what: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log how long a block took and store it in ``timings[what]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        if timings is not None:
            timings[what] = round(elapsed, 3)
        log.info("Finished %s in %.2f s", what, elapsed)


@functools.cache
def _bar_class() -> Any:
    from tqdm.auto import tqdm

    class Bar(tqdm):
        """A bar whose last count is drawn before it is cleared: a stage that finishes
        within tqdm's refresh interval still shows it reached its total."""

        def close(self) -> None:
            if not self.disable and not getattr(self, "_drawn_last", False):
                self._drawn_last = True
                self.refresh()
            super().close()

    return Bar


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr; disabled when stderr is not a terminal unless ``enabled``. In
    Jupyter, tqdm's notebook bar (when ipywidgets is installed)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return _bar_class()(total=total, desc=desc, unit=unit, unit_scale=True,
                        disable=not enabled, file=sys.stderr, leave=False, dynamic_ncols=True)
