"""Crawl a directory tree into the manifest: directories as tasks, one writer process.

On the network filesystems a release lives on (Lustre, GPFS, DVS at NERSC) every metadata
call is a round trip of 0.1 to 2 ms, so the crawl keeps many calls in flight at once
through a :class:`concurrent.futures.Executor`. Local threads are the default; a process
pool or a Dask ``Client.get_executor()`` fits the same slot, which is why the task
(:func:`scan_directory`) is a picklable module-level function over plain data and
returns plain data.

The unit of work is a directory. A task opens it once, lists it, and takes one
``lstat`` per entry relative to that open directory (``fstatat``: no path walk per entry,
and paths longer than ``PATH_MAX`` work). Tasks adapt to the filesystem with a time
budget (:data:`TASK_SECONDS`):

- on a fast (local, cached) filesystem a task that finishes its directory early goes on
  into its subdirectories, so one task covers thousands of entries and the executor's
  per-task cost disappears;
- on a slow one a task that runs out of time hands back the names it has not stat'ed
  yet, and they go out again as slices of that directory, so a directory of 100,000
  files is stat'ed by all workers at once instead of one call after another.

How many tasks are in flight adapts too (:class:`~.tasklimit.TaskLimit`): threads only help while
they wait on the filesystem; on a fast one they only fight over the GIL.

Rows travel as plain tuples, grouped by directory. A forked writer process puts them into
SQLite in large transactions (:meth:`Manifest.bulk_load`) with its own GIL, while this
process goes on listing; memory holds the directories waiting to be listed and a few
batches of rows, never the tree. Directory sizes are summed here as listings arrive, so
closing a complete crawl needs no pass over the table.

Nothing bad about one entry stops the crawl: a name that is not UTF-8, an entry that
vanished between listing and ``lstat``, an unreadable directory, a path too long for the
OS all become a :class:`CrawlError` with the path, stored in ``crawl_errors`` and counted
in the crawl's row (which ``status`` shows) and in the summary.

Symlinks are recorded, never traversed: following them could leave the release or walk
a loop. Each is classified once so the uploader knows whether it stands for a file inside
the tree (uploaded with the target's bytes), a directory inside the tree (its target is
crawled at its real place), something outside the tree (never uploaded) or nothing.

The parts: :mod:`.walk` (one task), :mod:`.tasklimit` (how many in flight),
:mod:`.rowwriter` (rows into the db), :mod:`.summary` (the outcome, and closing a crawl).
"""

from __future__ import annotations

import os
import queue
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

from desimirror.pipeline.crawl.rowwriter import (
    CHUNK_ROWS,
    LoadMode,
    RowWriter,
    WalCheckpointer,
    open_row_writer,
)
from desimirror.pipeline.crawl.summary import ERROR_EXAMPLES, CrawlSummary, close_crawl
from desimirror.pipeline.crawl.tasklimit import TaskLimit
from desimirror.pipeline.crawl.walk import (
    TASK_SECONDS,
    CrawlError,
    DirListing,
    TreeRoot,
    classify_link,
    os_error_reason,
    resolve_root,
    scan_directory,
)
from desimirror.progress import NullProgress, Progress
from desimirror.state.manifest import Manifest

__all__ = [
    "CHUNK_ROWS",
    "DEFAULT_WORKERS",
    "ERROR_EXAMPLES",
    "TASK_SECONDS",
    "CrawlError",
    "CrawlSummary",
    "LoadMode",
    "RowWriter",
    "TreeRoot",
    "WalCheckpointer",
    "classify_link",
    "close_crawl",
    "crawl",
    "open_row_writer",
    "os_error_reason",
    "resolve_root",
    "scan_directory",
]

#: Threads at most; how many are busy adapts (see TaskLimit), so a high default costs
#: nothing on a local disk and serves a network filesystem.
DEFAULT_WORKERS = 64
#: The most waiting directories handed to one task at once.
MAX_DIRS_PER_TASK = 256


def crawl(
    root: str | os.PathLike[str] | TreeRoot,
    manifest: Manifest,
    *,
    executor: Executor | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
    task_seconds: float = TASK_SECONDS,
    writer_process: bool | None = None,
) -> CrawlSummary:
    """Crawl ``root`` into ``manifest`` and close the crawl; returns what was found.

    ``executor`` may be any :class:`~concurrent.futures.Executor` (a process pool or a
    Dask ``client.get_executor()`` included); it is not shut down, and ``2 * workers``
    tasks are kept in flight on it. Without one, a pool of ``workers`` threads is used
    and the number in flight adapts, up to ``2 * workers``. ``task_seconds`` is a task's
    time budget (raise it for executors with a high per-task cost, such as a cluster).
    Rows are written by a forked process where the OS can fork (``writer_process`` None
    or True), else by a thread.

    Raises :class:`UsageError` if the root cannot be crawled and
    :class:`~desimirror.errors.StateError` if the db belongs to another tree.
    """
    tree = root if isinstance(root, TreeRoot) else resolve_root(root, manifest.path)
    progress = progress or NullProgress()
    manifest.bind_root(tree.path, tree.name)
    started = time.monotonic()
    recrawl = manifest.has_entries()
    crawl_id = manifest.begin_crawl(tree.path)
    summary = CrawlSummary(crawl_id, tree.path, tree.name, "crawl")
    with manifest.atomic():
        root_row = ("", None, "", "dir", 0, tree.mtime_ns, None, None, *tree.identity)
        manifest.put_crawl_rows(crawl_id, [root_row])
    summary.entries, summary.kinds["dir"] = 1, 1
    # the writer first: its process is forked before this crawl starts any thread
    fork = writer_process if writer_process is not None else hasattr(os, "fork")
    writer = open_row_writer(manifest, crawl_id, summary, LoadMode(first=not recrawl), fork=fork)
    own = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl")
    progress.start("crawl")
    ok = False
    try:
        concurrency = TaskLimit(max(2 * workers, 2), adaptive=own)
        _run(tree, pool, concurrency, writer, progress, task_seconds)
        ok = True
    finally:
        if own:
            pool.shutdown(wait=ok, cancel_futures=True)
        progress.close()
        writer.close(ok=ok)
    if writer.keep:
        close_crawl(manifest, summary, writer.keep)
    else:
        summary.vanished = manifest.close_crawl(
            crawl_id, sizes_written=True, earlier_entries=recrawl
        )
        summary.files = summary.kinds["file"] + summary.link_kinds["file"]
    summary.seconds = time.monotonic() - started
    return summary


def _run(
    tree: TreeRoot,
    pool: Executor,
    concurrency: TaskLimit,
    writer: RowWriter,
    progress: Progress,
    budget: float,
) -> None:
    """Keep tasks in flight; hand each result to the writer as it comes.

    Work waits on a stack (depth first), which keeps it about as long as the tree is deep
    times its fan-out rather than as wide as a whole level. A task gets as many waiting
    directories as the time seen per directory says fill its budget: on a fast
    filesystem, leaf directories of a few files would otherwise cost a task each (3,500
    tasks instead of ~200 for 360k entries here, a fifth of the crawl's time in
    hand-offs). Finished futures arrive on a queue through ``add_done_callback``: no
    scan over all futures in flight per result.
    """
    pending: list[tuple[str, list[str] | None]] = [("", None)]
    done: queue.SimpleQueue[Future] = queue.SimpleQueue()
    in_flight = 0
    per_dir = max(budget, 1e-6)  # seconds per directory, smoothed: 1 a task to start
    while pending or in_flight:
        while pending and in_flight < concurrency.limit:
            rel, names = pending.pop()
            more: list[str] = []
            if names is None:  # enough further directories to fill the task's budget
                room = min(MAX_DIRS_PER_TASK, int(budget / per_dir)) - 1
                while room > 0 and pending and pending[-1][1] is None:
                    more.append(pending.pop()[0])
                    room -= 1
            future = pool.submit(scan_directory, tree, rel, names, budget, more)
            future.add_done_callback(done.put)
            in_flight += 1
        if pending:
            concurrency.limited = True
        future = done.get()
        in_flight -= 1
        listing: DirListing = future.result()
        writer.add(listing)
        concurrency.update(listing.entries, listing.listed)
        if listing.listed:
            per_dir = 0.7 * per_dir + 0.3 * max(listing.seconds / listing.listed, 1e-6)
        if listing.rest is not None:
            rel, names = listing.rest
            step = listing.slice_size
            pending.extend((rel, names[i : i + step]) for i in range(0, len(names), step))
        pending.extend((d, None) for d in reversed(listing.subdirs))
        progress.advance(files=listing.entries, nbytes=listing.nbytes)
