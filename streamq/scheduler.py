"""Where tasks run: a local cluster, an existing Dask cluster, or this process.

:func:`runner` is a context manager yielding a :class:`Runner`, a small executor
interface (``submit``) that stages use without knowing which backend is behind it; the loop
that runs a stage's tasks on it is :func:`streamq.stage.run_tasks`.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from streamq.config import DaskConfig
from streamq.errors import ConfigError, StreamQError

__all__ = ["Runner", "StopRequested", "library_versions", "runner", "shared", "stopping"]

log = logging.getLogger(__name__)
_SHARED: ContextVar[Runner | None] = ContextVar("streamq_runner", default=None)
_STOPPING = threading.Event()


class StopRequested(Exception):
    """Raised by a long task that saw :func:`stopping` (its work is checkpointed)."""


def stopping() -> bool:
    """Is a local cluster of this process's threads closing on an error or a signal?

    Python cannot stop a running thread, and closing such a cluster waits for the tasks it
    runs; so long tasks (the fit's Lloyd runs, whose every iteration can be minutes of a
    large fit) look at this between steps and raise :class:`StopRequested`. Their progress is
    in their checkpoints: the next run goes on from it."""
    return _STOPPING.is_set()


class Runner:
    """Submit functions and collect their futures, on Dask or in this process."""

    def __init__(self, client: Any | None, pool: cf.Executor | None, description: str,
                 remote: bool = False, default_processes: bool = False) -> None:
        self.client = client
        self._pool = pool
        self.description = description
        self.remote = remote  # workers may live on other machines
        # a local cluster of worker processes by default (not by the user's choice): a stage
        # whose tasks release the GIL gets threads of this process instead (see runner)
        self.default_processes = default_processes
        self._seen: set[str] = set()

    def check_paths(self, *paths: str) -> None:
        """Fail with one line unless every worker of a remote cluster sees these local paths.

        A store or source folder on the client's own disk is invisible to workers on other
        machines; without this check they would fail task by task with file-not-found errors.
        """
        todo = [p for p in paths if "://" not in p and p not in self._seen]
        if not todo or not self.remote or self.client is None:
            return
        seen = self.client.run(_missing_paths, todo)
        for worker, missing in sorted(seen.items()):
            if missing:
                raise StreamQError(
                    f"Dask worker {worker} cannot see {missing[0]}: stores and sources must be on "
                    "a filesystem every worker mounts at the same absolute path (or at an s3:// URL)"
                )
        self._seen.update(todo)

    @property
    def n_workers(self) -> int:
        if self.client is not None:
            return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))
        return getattr(self._pool, "_max_workers", 1)

    def facts(self) -> dict[str, Any]:
        """Where and with what a stage ran: stored as ``runtime`` in the stage's section."""
        return {"cluster": self.description, "workers": self.n_workers,
                "versions": library_versions()}

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as a task. Under a store lock, the task checks before
        it starts and before each write that the lock is still this job's (and this call
        checks before submitting)."""
        from streamq.lock import check_writer, guard_task

        check_writer()
        fn = guard_task(fn)
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False, **kwargs)
        assert self._pool is not None
        return self._pool.submit(fn, *args, **kwargs)

    def map_ordered(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        """Run ``fn(item)`` for every item and return the results in input order."""
        futures = [self.submit(fn, item) for item in items]
        if self.client is not None:
            return list(self.client.gather(futures))
        return [f.result() for f in futures]


# Distributions whose versions can change a result (or its speed); recorded with every stage.
_LIBRARIES = ("numpy", "scikit-learn", "dask", "distributed", "zarr", "numcodecs",
              "pillow", "numba", "matplotlib")


def library_versions() -> dict[str, str | None]:
    """Installed versions of Python and of the libraries streamq's results depend on."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str | None]:  # looked up once per process (~15 ms)
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from streamq._version import __version__

    out: dict[str, str | None] = {"streamq": __version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class _SyncPool(cf.Executor):
    """Runs each submitted call at once, in the caller's thread (for debugging)."""

    _max_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the future carries it, as a pool would
            fut.set_exception(exc)
        return fut


def _missing_paths(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def _lost_scheduler(exc: BaseException, client: Any) -> bool:
    """Did ``exc`` come from losing the connection to the scheduler?"""
    from distributed.comm.core import CommClosedError

    if isinstance(exc, CommClosedError):
        return True
    if isinstance(exc, cf.CancelledError | TimeoutError | OSError):
        return client.status != "running"
    return False


MMAP_THRESHOLD = 64 * 2**20


def _worker_malloc_settings() -> dict[str, int]:
    """Environment for local worker processes: keep buffers below 64 MiB on the heap.

    Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's
    mmap threshold at 128 KiB: every decoded image and shard buffer is then mmapped,
    faulted in page by page and unmapped. Measured on ingest (312 Mpx, 2 workers): with the
    mmap threshold alone at 64 MiB, 31 -> 50 Mpx/s; with the trim threshold at 64 MiB too,
    minor faults per worker fall from ~0.5 M to ~10 K and ingest reaches 0.74-0.82 of a
    hand-written process-pool loop. Values the user set in Dask's configuration win.
    """
    import dask

    out = {}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        key = f"distributed.nanny.pre-spawn-environ.{name}"
        current = dask.config.get(key, None)
        user_set = current is not None and not (name == "MALLOC_TRIM_THRESHOLD_" and int(current) == 65536)
        if not user_set:
            out[key] = MMAP_THRESHOLD
    return out


def _worker_profile_settings() -> dict[str, bool]:
    """Dask's statistical profiler off in a local cluster (its workers, and its scheduler,
    which is made under the same settings).

    Every worker samples the stacks of all its threads every 10 ms for the dashboard's
    Profile page; in a local cluster's ingest that took a few percent of the workers' CPU
    (see docs/benchmarks.md). A cluster given by address keeps its own settings: start one
    and pass its address to see the profile.
    """
    return {"distributed.worker.profile.enabled": False}


def _start_local_cluster(**kwargs: Any) -> Any:
    """A started ``LocalCluster(**kwargs)``, closed again if this thread is interrupted (by
    a signal's exception) while it starts.

    It starts in a helper thread born with SIGINT and SIGTERM blocked, and the cluster's
    threads and worker processes inherit that for good (``streamq._local_worker``): Ctrl-C
    sends SIGINT to the whole process group, a service manager SIGTERM, and workers that took
    them while importing would die or print a ``KeyboardInterrupt`` traceback each. The
    signals still reach this process, whose handlers run in the main thread.
    """
    import signal
    from multiprocessing import resource_tracker

    from distributed import LocalCluster

    # Started later from a cluster thread, the tracker would unblock them in that thread.
    resource_tracker.ensure_running()
    pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamq-cluster-start")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        future = pool.submit(LocalCluster, **kwargs)  # the thread starts here, signals blocked
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        return future.result()
    except BaseException:
        try:  # interrupted: close the cluster once it is up, so no worker outlives us
            future.result().close()
        except Exception:  # noqa: BLE001  (it failed to start: nothing to close)
            pass
        raise
    finally:
        pool.shutdown(wait=False)


@contextmanager
def _local_cluster(cfg: DaskConfig, n_workers: int, processes: bool) -> Iterator[Any]:
    """A started ``LocalCluster`` of ``n_workers``, closed on the way out.

    Worker processes get streamq's preload (quiet, signal-proof, early imports) and
    malloc settings. Workers in this process share its memory, so Dask's per-worker memory
    limit (which measures the whole process) is off for them: the stages that run on them
    hold bounded data (the fit: a histogram of at most 2**24 colours and a few batches).
    """
    import dask

    settings: dict[str, Any] = {**_worker_profile_settings()}
    kwargs: dict[str, Any] = {"n_workers": n_workers, "dashboard_address": ":0",
                              "threads_per_worker": cfg.threads_per_worker or 1,
                              "processes": processes}
    if processes:
        settings.update(_worker_malloc_settings())
        kwargs.update(
            memory_limit=cfg.memory_limit or "auto",
            # workers that ignore SIGINT/SIGTERM, close quietly (streamq._local_worker)
            preload=[*dask.config.get("distributed.worker.preload", []), "streamq._local_worker"])
    else:
        kwargs.update(memory_limit=0)
        if cfg.memory_limit:
            log.warning("dask.memory_limit=%s is not applied: the local cluster's workers are "
                        "threads of this process (set dask.processes: true to limit them)",
                        cfg.memory_limit)
    with dask.config.set(settings):  # only for the workers started here
        cluster = _start_local_cluster(**kwargs)
    try:
        yield cluster
    except BaseException:
        if not processes:  # closing waits for its running tasks: they end at their next step
            _STOPPING.set()
        raise
    finally:
        try:
            cluster.close()
        finally:
            _STOPPING.clear()


@contextmanager
def shared(run: Runner) -> Iterator[Runner]:
    """Make every :func:`runner` inside this block reuse ``run`` (one cluster for a pipeline;
    a stage asking for threads may get its own, see :func:`runner`)."""
    token = _SHARED.set(run)
    try:
        yield run
    finally:
        _SHARED.reset(token)


@contextmanager
def runner(cfg: DaskConfig, *, threads: bool = False) -> Iterator[Runner]:
    """Open the backend named by ``cfg.scheduler`` and close what was opened here.

    ``threads``: the stage's tasks release the GIL (compiled kernels), so a local cluster's
    workers are threads of this process unless ``cfg.processes`` says otherwise. Inside
    :func:`shared`, the shared runner is yielded instead and left open; except that a stage
    asking for ``threads`` gets a local cluster of threads of its own when the shared one is
    a local cluster of processes only by default (``streamq run``'s fit). In worker processes
    each worker reads the histogram and builds the fit's points again (~0.7 GB per worker at
    2.3 M colours; threads share the client's): the exact phase took 4.8-8.1 s there against
    3.9-4.7 s in threads (K = 64, 2 cores; docs/benchmarks.md).
    """
    active = _SHARED.get()
    if active is not None and not (threads and active.default_processes):
        yield active
        return
    sched = cfg.scheduler
    if sched == "sync":
        yield Runner(None, _SyncPool(), "in-process (synchronous)")
        return
    if sched == "threads":
        n = cfg.n_workers or os.cpu_count() or 1
        pool = cf.ThreadPoolExecutor(max_workers=n)
        try:
            yield Runner(None, pool, f"in-process ({n} threads)")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop queued tasks
            raise
        pool.shutdown(wait=True)
        return

    from distributed import Client

    if sched is None:
        n_workers = cfg.n_workers or os.cpu_count() or 1
        processes = cfg.processes if cfg.processes is not None else not threads
        with _local_cluster(cfg, n_workers, processes) as cluster, Client(cluster) as client:
            kind = "" if processes else " in this process"
            log.info("Started a local Dask cluster%s: %s workers, dashboard %s",
                     kind, n_workers, client.dashboard_link)
            # processes by default: neither dask.processes nor a memory limit (which only
            # worker processes apply) chose them
            yield Runner(client, None, f"local cluster{kind} ({n_workers} workers)",
                         default_processes=(processes and cfg.processes is None
                                            and not cfg.memory_limit))
        return

    from streamq import redact

    shown = redact.url(sched)  # an address is recorded with results: never its credentials
    if "://" not in sched:
        raise ConfigError(
            f"key 'dask.scheduler' has value {sched!r}, expected 'threads', 'sync' or an "
            "address like tcp://HOST:PORT"
        )
    try:
        client = Client(sched, timeout="10s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        hint = "check the address and that the scheduler is running"
        if sched.startswith("tls://"):
            hint = ("check the address and Dask's TLS settings (distributed.comm.tls.ca-file, "
                    ".client.cert, .client.key; see README)")
        detail = redact.text(str(exc).splitlines()[0][:160]) if str(exc) else type(exc).__name__
        raise StreamQError(f"cannot reach the Dask scheduler at {shown} ({detail}); {hint}") from None
    try:
        yield Runner(client, None, f"Dask cluster at {shown}", remote=True)
    except Exception as exc:
        if _lost_scheduler(exc, client):
            raise StreamQError(
                f"lost the Dask scheduler at {shown} mid-job ({type(exc).__name__}); start a "
                "cluster and rerun the same command: finished work is kept in the store"
            ) from exc
        raise
    finally:
        client.close()
