"""Where the crawl's directory tasks run: threads here, processes here, or a Dask cluster.

Threads are the default and enough while the filesystem's latency is the limit. When the
client's CPU is (each ``lstat`` through a FUSE or DVS client costs tens of microseconds of
kernel time), a process pool spreads the calls over the node's cores; a Dask cluster
(``dask-jobqueue`` on Slurm at NERSC, or any ``dask scheduler``) spreads them over nodes
that mount the same filesystem at the same path. The crawl sees one
:class:`concurrent.futures.Executor` in every case; only the task's time budget differs,
so that a task is worth what it costs to ship to a worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from desimirror.errors import UsageError

#: A task's time budget on a process pool: the hand-off costs about a millisecond.
PROCESS_TASK_SECONDS = 0.05
#: ... and on a cluster, where a task costs a few milliseconds of scheduling and network.
CLUSTER_TASK_SECONDS = 0.5
CONNECT_SECONDS = 20
CLOSE_SECONDS = 5


@dataclass(frozen=True)
class Placement:
    """An executor for the crawl (None: its own threads) and the task budget to use."""

    executor: Executor | None
    task_seconds: float | None
    where: str


@contextlib.contextmanager
def crawl_placement(processes: int | None, scheduler: str | None) -> Iterator[Placement]:
    """The executor asked for on the command line, shut down (or left) when done."""
    if processes and scheduler:
        raise UsageError("give either --processes or --scheduler, not both")
    if scheduler:
        with _dask_executor(scheduler) as (executor, where):
            yield Placement(executor, CLUSTER_TASK_SECONDS, where)
    elif processes:
        with ProcessPoolExecutor(processes) as pool:
            yield Placement(pool, PROCESS_TASK_SECONDS, f"{processes} processes")
    else:
        yield Placement(None, None, "threads")


@contextlib.contextmanager
def _dask_executor(address: str) -> Iterator[tuple[Executor, str]]:
    with dask_client(address) as (client, where):
        yield client.get_executor(), where


@contextlib.contextmanager
def dask_client(address: str) -> Iterator[tuple[Any, str]]:
    """A ``distributed.Client`` of the scheduler at ``address`` and what to call it
    ("Dask at tcp://... (N workers)"), closed when done; the one way the crawl and the
    upload reach a cluster. An unreachable scheduler, or no ``distributed``, is a
    :class:`UsageError` of one line."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError(
            "--scheduler needs dask.distributed: pip install 'desimirror[dask]'"
        ) from None
    with _quiet_dask():
        try:
            client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        try:
            workers = len(client.scheduler_info().get("workers", {}))
            yield client, f"Dask at {address} ({workers} workers)"
        finally:  # bounded: a lost scheduler would hold it for twice the connect timeout
            with contextlib.suppress(OSError, TimeoutError):
                client.close(timeout=CLOSE_SECONDS)


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's client logs what it meets (a lost scheduler, with tracebacks) on stderr
    through handlers of its own; the caller says it in one line instead, so those
    handlers are silenced meanwhile."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    handlers = [h for lg in loggers if lg.name.startswith("distributed") for h in lg.handlers]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)
