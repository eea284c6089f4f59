"""The loop every stage runs: its tasks on the runner, a progress bar, each result handed back.

A stage describes its work as :class:`Task` s (a function, its argument, a weight on the
progress bar) and says what to do with each finished one; :func:`run_tasks` does the rest:

- submits the tasks on the :class:`~streamq.scheduler.Runner` (all at once, or at most
  ``window`` in flight when each task's inputs cost memory on the client until it runs),
- takes each result as it finishes, in this thread, after checking that the store's writer
  lock is still this job's (:func:`streamq.lock.check_writer`; every task checks it too,
  before it starts and before each write),
- hands it to the stage's ``on_result`` (sum its counts, count what it wrote), which may give
  a task to run in its place (a record an earlier run left that the data no longer matches),
- moves the progress bar by the task's weight, and at the end logs one warning naming the
  tasks that wrote again what an earlier run had recorded.

Everything that must survive a ``kill -9`` is written by the tasks themselves: data first,
then the task's completion record, with transient storage errors retried where they happen
(:func:`streamq.faults.retrying`); so the loop has no retries of its own, and a task that
fails raises its error here, as its future's ``result()`` does, and stops the stage.

Why the runner and not ``concurrent.futures`` via ``Client.get_executor``: the ``sync`` and
``threads`` schedulers already are ``concurrent.futures`` executors, and on Dask
``get_executor(pure=False)`` would give the same ``submit``, but (1) the array ingest submits
a task whose inputs are lazy Dask arrays with ``Client.compute``, so that the workers holding
their data compute them, which an executor's ``submit`` cannot express; (2) each executor
future is a copy of a Dask future relayed by a coroutine on the client's event loop, where the
runner hands the Dask future itself, released as soon as its result is taken; (3) a finished
task may need another one submitted in its place, which ``concurrent.futures.as_completed``
(a fixed set of futures) cannot take, so the loop keeps its own queue of finished futures fed
by ``add_done_callback``, which Dask and ``concurrent.futures`` futures both have; (4) the
runner also guards every task with the writer lock, checks that workers see the store's
paths and records where a stage ran, none of which an executor knows about.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamq.console import progress_bar

if TYPE_CHECKING:
    from streamq.scheduler import Runner

__all__ = ["Task", "run_tasks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """``fn(arg)`` as a task, worth ``weight`` on the progress bar; ``key`` names it (a task
    or chunk number) in the stage's bookkeeping and in the warning about tasks written again."""

    fn: Callable[..., Any]
    arg: Any
    weight: int = 1
    key: Any = None


def run_tasks(run: Runner, tasks: Iterable[Task], desc: str, unit: str, progress: bool | None,
              *, on_result: Callable[[Task, Any], Task | bool | None] | None = None,
              total: int | None = None, window: int | None = None, redone: str | None = None,
              logger: logging.Logger = log,
              submit: Callable[[Runner, Task], Any] | None = None) -> list[Any]:
    """Run ``tasks`` on ``run`` and return their results in the order they finished; with
    ``on_result`` given, it takes each result instead (the list is then empty: a stage that
    sums results need not hold them all).

    ``on_result(task, result)`` runs in this thread as each task finishes; it returns None,
    True when the task wrote again what an earlier run had recorded, or a :class:`Task` to run
    in its place (the progress bar moves when that one finishes). ``total``: the length of the
    progress bar (default: the sum of the weights); the rest counts as done before the first
    task. ``window``: at most that many tasks in flight (default: all submitted at once).
    ``redone``: what the tasks are called ("ingest task(s)") in the one warning, on ``logger``
    (the stage's), that lists those written again. ``submit(run, task)``: how a task is
    submitted (default ``run.submit(task.fn, task.arg)``).
    """
    from streamq.lock import check_writer

    tasks = list(tasks)
    todo = sum(t.weight for t in tasks)
    send = submit or (lambda r, t: r.submit(t.fn, t.arg))
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    pending: dict[Any, Task] = {}
    queued = iter(tasks)
    results: list[Any] = []
    again: list[Any] = []

    def start(task: Task) -> None:
        fut = send(run, task)
        pending[fut] = task
        fut.add_done_callback(finished.put)  # at once when it is done already (sync)

    def fill() -> None:
        while window is None or len(pending) < window:
            task = next(queued, None)
            if task is None:
                return
            start(task)

    with progress_bar(todo if total is None else total, desc, unit, progress) as bar:
        if total is not None:
            bar.update(total - todo)
        fill()
        while pending:
            fut = finished.get()
            check_writer()
            task = pending.pop(fut)  # released: the worker drops its copy
            result = fut.result()
            del fut
            outcome = None
            if on_result is None:
                results.append(result)
            else:
                outcome = on_result(task, result)
            if isinstance(outcome, Task):
                again.append(task.key)
                start(outcome)
            else:
                if outcome:
                    again.append(task.key)
                bar.update(task.weight)
            fill()
    if again and redone:
        logger.warning("%d %s recorded by an earlier run no longer matched their records (lost "
                       "in a power loss?) and were written again: %s", len(again), redone,
                       ", ".join(map(str, sorted(again)[:10])))
    return results
