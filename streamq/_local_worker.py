"""Set-up of the worker processes of the local clusters streamq starts (a Dask preload).

Ctrl-C in a terminal sends SIGINT to every process of the foreground group, and a service
manager stopping a job (systemd) sends SIGTERM to every process of it: local workers
included. Their lifetime belongs to the command that started them, which closes the cluster
on its way out (see :mod:`streamq.cli.signals`); so they ignore both signals (they are born
with them blocked, see ``streamq.scheduler``) instead of dying mid-task or each printing a
``KeyboardInterrupt`` traceback. The cluster closes them without signals, and SIGKILL if they
are slow; a worker whose command is gone exits by itself (Dask watches the parent). A worker
that is being closed stays quiet: no warning for each task it cancels, no error for a
scheduler that went first.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from typing import Any

#: What the tasks of every stage import (Zarr under the store layer, numba under the k-means
#: core; ~0.3 s of a worker's first task): imported in a background thread as the worker
#: starts, while the command sets up its first tasks.
WARM_IMPORTS = ("streamq.store", "streamq.kmeans")


def _import_in_background() -> None:
    def run() -> None:
        for name in WARM_IMPORTS:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112  (a speed-up only: the tasks import it again)
                continue

    threading.Thread(target=run, daemon=True, name="streamq-warm-imports").start()


class _QuietWhenEnding(logging.Filter):
    """Drop records below CRITICAL once the worker is closing or has lost its scheduler.

    The scheduler of a local cluster lives in the command's process: losing it means the
    command is ending, and the worker is about to be closed (or to exit with its parent).
    """

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        status = getattr(getattr(self.worker, "status", None), "name", "")
        if status not in ("running", "paused", "init", "created", "starting"):
            return False
        try:
            return not self.worker.batched_stream.closed()
        except Exception:  # noqa: BLE001  (no stream yet: starting)
            return True


def dask_setup(worker: Any) -> None:
    """Called by Dask in each worker process as it starts (in its main thread)."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave the defaults
        pass
    quiet = _QuietWhenEnding(worker)
    for name in ("", "distributed"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(quiet)
    _import_in_background()
