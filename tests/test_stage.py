"""The stage skeleton (streamq.stage.run_tasks) on real runners: threads and a Dask cluster."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from streamq.config import DaskConfig
from streamq.scheduler import runner
from streamq.stage import Task, run_tasks

_lock = threading.Lock()
_running = {"now": 0, "most": 0}


def _counted(x: int) -> int:
    """x squared, counting how many calls run at once in this process."""
    with _lock:
        _running["now"] += 1
        _running["most"] = max(_running["most"], _running["now"])
    time.sleep(0.02)
    with _lock:
        _running["now"] -= 1
    return x * x


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("task 3 cannot be squared")
    return x * x


def test_window_resubmission_and_the_warning_on_threads(caplog):
    """At most ``window`` tasks in flight, a task given back by on_result runs in the first
    one's place, and the tasks written again are named once, on the stage's logger."""
    _running.update(now=0, most=0)
    seen: dict[int, int] = {}
    stage_log = logging.getLogger("streamq.test_stage")

    def on_result(task: Task, result: int) -> Task | bool | None:
        seen[task.key] = result
        if task.fn is _counted and task.key % 3 == 0:  # "no longer matches its record"
            return Task(_square_or_fail, task.arg + 100, task.weight, task.key)
        return task.key == 4

    tasks = [Task(_counted, i, 1, i) for i in range(10)]
    with caplog.at_level(logging.WARNING, logger="streamq"), \
            runner(DaskConfig(scheduler="threads", n_workers=4)) as run:
        out = run_tasks(run, tasks, "testing", "task", False, on_result=on_result, window=2,
                        redone="test task(s)", logger=stage_log)
    assert out == []  # on_result took the results
    assert _running["most"] <= 2
    assert seen == {i: (i + 100) ** 2 if i % 3 == 0 else i * i for i in range(10)}
    warnings = [r for r in caplog.records if r.name == "streamq.test_stage"]
    assert [r.getMessage() for r in warnings] == [
        "5 test task(s) recorded by an earlier run no longer matched their records (lost in a "
        "power loss?) and were written again: 0, 3, 4, 6, 9"]


def test_results_and_a_failing_task_on_dask(cluster_address):
    """On a Dask cluster: every result comes back, and a task's error is raised as it is."""
    with runner(DaskConfig(scheduler=cluster_address)) as run:
        assert sorted(run_tasks(run, [Task(_square_or_fail, i) for i in (1, 2, 4, 5)],
                                "testing", "task", False)) == [1, 4, 16, 25]
        with pytest.raises(ValueError, match="task 3 cannot be squared"):
            run_tasks(run, [Task(_square_or_fail, i) for i in range(6)], "testing", "task", False)


def test_local_cluster_workers_are_threads_here_or_processes():
    """``runner(..., threads=True)`` (the fit) starts a local cluster whose workers are threads
    of this process; key ``dask.processes`` decides either way when it is set."""
    import os

    here = os.getpid()
    with runner(DaskConfig(n_workers=2), threads=True) as run:
        assert set(run.client.run(os.getpid).values()) == {here}
        assert run.n_workers == 2
        assert run.description == "local cluster in this process (2 workers)"
    with runner(DaskConfig(n_workers=1, processes=False)) as run:
        assert set(run.client.run(os.getpid).values()) == {here}
    with runner(DaskConfig(n_workers=1, processes=True), threads=True) as run:
        pids = set(run.client.run(os.getpid).values())
        assert len(pids) == 1
        assert here not in pids
        assert run.description == "local cluster (1 workers)"


def test_a_shared_cluster_of_processes_by_default_lends_threads_to_the_fit():
    """Inside ``shared`` (``streamq run``), a stage asking for threads (the fit) gets threads
    of this process when the shared local cluster has worker processes only by default;
    other stages, and every stage when ``dask.processes`` or a memory limit is set, get the
    shared cluster."""
    import os

    from streamq.scheduler import shared

    here = os.getpid()
    with runner(DaskConfig(n_workers=1)) as run, shared(run):
        assert run.default_processes
        with runner(DaskConfig(n_workers=1)) as same:
            assert same is run
        with runner(DaskConfig(n_workers=1), threads=True) as own:
            assert own is not run
            assert set(own.client.run(os.getpid).values()) == {here}
            assert own.description == "local cluster in this process (1 workers)"
    with runner(DaskConfig(n_workers=1, memory_limit="2GiB")) as run, shared(run):
        assert not run.default_processes  # a memory limit: only worker processes apply it
        with runner(DaskConfig(n_workers=1, memory_limit="2GiB"), threads=True) as same:
            assert same is run
    with runner(DaskConfig(n_workers=1, processes=True)) as run, shared(run):
        assert not run.default_processes
        with runner(DaskConfig(n_workers=1, processes=True), threads=True) as same:
            assert same is run
            assert here not in set(same.client.run(os.getpid).values())


def _until_stopping(limit: float) -> str:
    """A long task of a cluster of threads: runs until the cluster closes, or ``limit`` s."""
    from streamq.scheduler import stopping

    end = time.monotonic() + limit
    while time.monotonic() < end:
        if stopping():
            return "stopped"
        time.sleep(0.01)
    return "ran out"


def test_a_cluster_of_threads_closing_on_an_error_tells_its_tasks_to_stop():
    """Python cannot stop a thread, and closing a local cluster of threads waits for its
    running tasks: on an error (or a signal's exception) ``stopping()`` holds until the
    cluster is closed, so that long tasks end at their next step instead of running on."""
    from streamq.scheduler import stopping

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _interrupted_while_a_task_runs()
    assert time.monotonic() - started < 15  # not until Dask gives up waiting (~30 s) or 120 s
    assert not stopping()  # cleared once the cluster is closed
    # ... and an uninterrupted cluster's tasks never see it
    with runner(DaskConfig(n_workers=1), threads=True) as run:
        assert run.submit(_until_stopping, 0.2).result() == "ran out"


def _interrupted_while_a_task_runs() -> None:
    with runner(DaskConfig(n_workers=1), threads=True) as run:
        future = run.submit(_until_stopping, 120)  # (held: a released future is forgotten)
        deadline = time.monotonic() + 30
        while not any(run.client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert future.status == "pending"
        raise KeyboardInterrupt
