"""SIGINT and SIGTERM end a command like an error does: cleanup first, then one line.

:func:`call_exiting_on_signals` turns the first SIGINT or SIGTERM into :class:`Interrupted`,
raised in the main thread wherever it is. It derives from ``BaseException`` only, so neither
click (which turns ``KeyboardInterrupt`` into "Aborted!" and status 1) nor any
``except Exception`` stops it: every ``finally`` and context manager on the way out runs (the
store's lock is given back, a local Dask cluster is closed). The process then exits with
``128 + signal`` (130 for SIGINT, 143 for SIGTERM) and one line on stderr. The first signal
restores the default handlers, so a second one ends the process at once, cleanup or not; what
is not cleaned up then is what a ``kill -9`` leaves, which every stage resumes from. With
``--scheduler threads``, tasks already running in this process finish first (Python cannot
stop a thread); on the fit's default local cluster of threads, its long tasks (Lloyd runs)
see :func:`streamq.scheduler.stopping` and end at their next iteration; the workers of a
local cluster of processes ignore both signals (``streamq._local_worker``).
"""

from __future__ import annotations

import _thread
import itertools
import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

__all__ = ["SIGNALS", "Interrupted", "call_exiting_on_signals", "message"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process received ``signum``; raised in the main thread by the signal handler."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def message(signum: int) -> str:
    """The one line a command interrupted by ``signum`` prints on stderr."""
    return f"streamq: interrupted by {signal.Signals(signum).name}; rerun the same command to resume"


def call_exiting_on_signals(fn: Callable[[], object], quiet_logs: bool = True) -> NoReturn:
    """Call ``fn`` (a click command in standalone mode) and exit the process with its status.

    The first SIGINT or SIGTERM meanwhile raises :class:`Interrupted` in the main thread and
    restores the default handlers; once ``fn`` has unwound, the process exits with
    ``128 + signal`` and :func:`message` on stderr (also for a signal that arrives after
    ``fn`` has returned: the work is done then, and a rerun does nothing).

    ``quiet_logs``: from the first signal on, log records below CRITICAL are dropped (the
    cluster's shutdown chatter about cancelled tasks), so the one line stays the only one.
    Python swallows an exception raised while it runs a ``__del__``, a weakref or a garbage
    collector callback (Dask registers one); :class:`Interrupted` swallowed there is raised
    again a moment later.
    """
    received: list[int] = []
    state = {"armed": True, "again": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        if state["again"]:  # the signal sent again after a swallowed Interrupted
            state["again"] = False
        elif received:
            return
        else:
            received.append(signum)
            if quiet_logs:
                logging.disable(logging.ERROR)
        for sig in SIGNALS:  # a second signal ends the process at once
            signal.signal(sig, signal.SIG_DFL)
        if state["armed"]:
            raise Interrupted(signum)

    old_hook = sys.unraisablehook
    wake = threading.Event()

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, Interrupted):
            old_hook(info)
        elif state["armed"] and not state["again"]:
            state["again"] = True
            signal.signal(info.exc_value.signum, handler)
            wake.set()  # nothing that waits here: a signal's handler would run in this hook

    def again() -> None:  # raise it once more, from outside the code that swallowed it
        rng = random.Random()
        for attempt in itertools.count():
            wake.wait()
            wake.clear()
            # Later each time, at a random phase: not into the same callback each time.
            time.sleep(min(0.2, 0.01 * (1 + attempt)) * rng.uniform(0.5, 1.5))
            _thread.interrupt_main(signal.Signals(received[0]))

    threading.Thread(target=again, name="streamq-signals", daemon=True).start()

    for sig in SIGNALS:
        signal.signal(sig, handler)
    sys.unraisablehook = unraisable
    code: Any = 0
    try:
        code = _call(fn)
        state["armed"] = False  # from here on a signal is only recorded: the work is done
    except Interrupted:
        pass
    state["armed"] = False
    if received:
        try:
            sys.stderr.write(message(received[0]) + "\n")
            sys.stderr.flush()
        finally:
            sys.exit(128 + received[0])
    sys.exit(code)


def _call(fn: Callable[[], object]) -> Any:
    """``fn()``'s exit status: that of the ``SystemExit`` it raises, else 0."""
    try:
        fn()
    except SystemExit as exc:
        return exc.code
    return 0
