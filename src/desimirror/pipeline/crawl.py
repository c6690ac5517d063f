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

How many tasks are in flight adapts too (:class:`_TaskLimit`): threads only help while
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
"""

from __future__ import annotations

import contextlib
import errno
import gc
import marshal
import os
import queue
import select
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from desimirror import processes
from desimirror.errors import StateError, UsageError
from desimirror.progress import NullProgress, Progress
from desimirror.state.manifest import Manifest, roll_up, wal_checkpointer

try:
    import fcntl
except ImportError:  # not POSIX: no fork either, the thread writer is used
    fcntl = None  # type: ignore[assignment]

#: Threads at most; how many are busy adapts (see _TaskLimit), so a high default costs
#: nothing on a local disk and serves a network filesystem.
DEFAULT_WORKERS = 64
#: A task's time budget: after it, a task stops descending into subdirectories and hands
#: back the part of its directory it has not stat'ed. Long enough that per-task costs
#: vanish on a fast filesystem (and on a Dask cluster), short enough that a slow
#: filesystem's big directories are spread over all workers.
TASK_SECONDS = 0.01
#: Names a task stats between looks at the clock.
CHECK_EVERY = 8
#: The fewest names a directory slice holds; a smaller rest is finished in place.
MIN_SLICE = 16
#: The most waiting directories handed to one task at once.
MAX_DIRS_PER_TASK = 256
#: How the number of tasks in flight is tuned (see _TaskLimit): the measuring window;
#: windows a new limit is on trial; the rise in rate that keeps a higher limit; the
#: share of the rate a lower limit must keep; windows to wait after a failed rise (doubled
#: after each, up to the most), and between tries lower.
WINDOW_SECONDS = 0.05
TRIAL_WINDOWS = 2
GROW_GAIN = 1.1
SHRINK_KEEP = 0.9
HOLD_WINDOWS = 4
MAX_HOLD_WINDOWS = 64
PROBE_WINDOWS = 20
#: A directory listed counts as this many entries of work (an open, a listing, a close).
DIR_WEIGHT = 8
#: Rows per SQLite transaction: a concurrent ``upload`` or ``status`` gets the write lock
#: between them, and the rows in memory stay a few batches.
CHUNK_ROWS = 20000
#: Commit at least this often (seconds) even on a slow filesystem, so the db shows progress.
FLUSH_SECONDS = 2.0
#: Batches of rows waiting for the writer at most (the crawl waits beyond that).
WRITE_QUEUE = 4
#: How often the WAL is copied into the database in the background during a crawl.
CHECKPOINT_SECONDS = 0.5
#: How often the crawl looks whether its writer process is still alive, and how long it
#: waits for it to exit once it has answered (or once the crawl has failed).
WRITER_POLL_SECONDS = 1.0
WRITER_EXIT_SECONDS = 30.0
#: The pipe buffer asked for between the crawl and its writer process (Linux).
PIPE_BYTES = 1 << 20
#: Errors kept in memory for the report; all of them go to the db.
ERROR_EXAMPLES = 20

#: A manifest row as the crawl makes it, see :meth:`Manifest.put_crawl_rows`:
#: (path, parent, name, kind, size, mtime_ns, link_target, link_kind, ctime_ns, ino, dev).
Row = tuple[str, str | None, str, str, int, int | None, str | None, str | None, int, int, int]
#: A row as a task returns it, without the directory: (name, kind, size, mtime_ns,
#: link_target, link_kind, ctime_ns, ino, dev). :func:`expand` puts the path and parent
#: back; rows travel (to the writer process, or from a process pool or a cluster) at about
#: half the size. The last three are the file's identity, which a user cannot set back as
#: ``touch -r`` sets back an mtime: the uploader checks them before and after each read.
Item = tuple[str, str, int, int | None, str | None, str | None, int, int, int]
#: One directory's (or slice's) items: (directory, items).
Group = tuple[str, list[Item]]
#: What the writer gets at a time: groups of rows and (path, message) errors.
RowBatch = tuple[list[Group], list[tuple[str, str]]]

#: Called with (directory's absolute path, its names) between listing a directory and
#: stat'ing its entries: tests change the tree at exactly that moment through it.
before_stat: Callable[[str, list[str]], None] | None = None

_FMT = 0o170000
_REG, _DIR, _LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_OPEN_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW


@dataclass(frozen=True)
class CrawlError:
    """A path the crawl could not record.

    ``hides`` says whether entries may exist that this crawl did not see (an unreadable
    directory, an entry that could not be stat'ed): the manifest must then keep what an
    earlier crawl recorded there instead of dropping it as vanished.
    """

    path: str
    message: str
    hides: bool


@dataclass(frozen=True)
class TreeRoot:
    """The crawled directory, as every task needs it (plain data, so it pickles)."""

    path: str  # absolute, normalised, as the user named it (symlinks kept)
    real: str  # realpath: what a symlink must resolve under to be "inside"
    name: str  # basename: the default key prefix
    mtime_ns: int  # the root's own mtime, for its row
    exclude: frozenset[str] = frozenset()  # relative paths never recorded (our own db)
    identity: tuple[int, int, int] = (0, 0, 0)  # the root's (ctime_ns, ino, dev)


@dataclass(slots=True)
class DirListing:
    """What one task found: rows, what is left to visit, errors and tallies.

    ``groups`` hold the rows, per directory; ``subdirs`` are directories found and not
    listed by this task; ``rest`` is ``(directory, names)`` when the task ran out of time
    in the middle of a directory, to be stat'ed as slices of ``slice_size`` names by
    other tasks.
    """

    path: str
    groups: list[Group] = field(default_factory=list)
    subdirs: list[str] = field(default_factory=list)
    errors: list[CrawlError] = field(default_factory=list)
    dir_bytes: list[tuple[str, int]] = field(default_factory=list)  # uploadables directly in
    rest: tuple[str, list[str]] | None = None
    slice_size: int = MIN_SLICE
    listed: int = 0  # directories listed
    seconds: float = 0.0  # the task's wall time
    entries: int = 0  # rows in the groups
    files: int = 0
    dirs: int = 0
    others: int = 0
    nbytes: int = 0  # bytes of the uploadables among the rows
    link_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class CrawlSummary:
    """The outcome of a crawl or an import, for the CLI report and for callers."""

    crawl_id: int
    root: str | None
    root_name: str
    source: str  # "crawl" or "json"
    entries: int = 0
    kinds: Counter = field(default_factory=Counter)
    link_kinds: Counter = field(default_factory=Counter)
    files: int = 0  # uploadables: regular files and links to files inside the tree
    bytes: int = 0  # their total size
    dirs_scanned: int = 0
    errors: int = 0
    error_examples: list[tuple[str, str]] = field(default_factory=list)
    vanished: int = 0  # entries of earlier crawls dropped because they are gone
    complete: bool = True  # False when unreadable parts kept their earlier records
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(self.seconds, 1e-9)
        return {
            "source": self.source,
            "root": self.root,
            "root_name": self.root_name,
            "crawl_id": self.crawl_id,
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "link_kinds": dict(sorted(self.link_kinds.items())),
            "files": self.files,
            "bytes": self.bytes,
            "dirs_scanned": self.dirs_scanned,
            "errors": self.errors,
            "error_examples": [{"path": p, "error": m} for p, m in self.error_examples],
            "vanished": self.vanished,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "entries_per_second": round(self.entries / elapsed, 1),
            "dirs_per_second": round(self.dirs_scanned / elapsed, 1),
            "warnings": self.warnings,
        }


# ---------------------------------------------------------------- the root


def resolve_root(
    root: str | os.PathLike[str], db: str | os.PathLike[str] | None = None
) -> TreeRoot:
    """Check that ``root`` can be crawled, before anything is written anywhere.

    ``db``, when it lies inside the tree, is excluded with its WAL files: a crawl must not
    record the state file it is writing into.
    """
    path = os.path.abspath(os.fspath(root))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{root} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{root} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{root} is not readable")
    name = os.path.basename(path)
    if not name:
        raise UsageError(f"cannot mirror {path}: crawl a named directory, e.g. .../public/edr")
    if not _is_utf8(name):
        raise UsageError(f"the name of {root} is not valid UTF-8")
    real = os.path.realpath(path)
    identity = (st.st_ctime_ns, st.st_ino, st.st_dev)
    return TreeRoot(path, real, name, st.st_mtime_ns, _excluded(real, db), identity)


def _excluded(real_root: str, db: str | os.PathLike[str] | None) -> frozenset[str]:
    if db is None:
        return frozenset()
    real_db = os.path.realpath(os.fspath(db))
    if not real_db.startswith(real_root + os.sep):
        return frozenset()
    rel = os.path.relpath(real_db, real_root).replace(os.sep, "/")
    return frozenset(rel + suffix for suffix in ("", "-wal", "-shm", "-journal", ".lock"))


def _is_utf8(name: str) -> bool:
    """False for names the OS gave us with undecodable bytes (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(name: str) -> str:
    """A non-UTF-8 name made storable, its bad bytes written as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def os_error_reason(exc: OSError) -> str:
    """The OS's words without the path (stored separately), e.g. 'Permission denied'."""
    return exc.strerror or str(exc) or type(exc).__name__


# ---------------------------------------------------------------- one task


def scan_directory(
    tree: TreeRoot,
    rel: str,
    names: list[str] | None = None,
    budget: float = TASK_SECONDS,
    more: Sequence[str] = (),
) -> DirListing:
    """List directory ``rel`` (relative to the root) and stat its entries.

    Given ``names``, stat only those (a slice of a directory another task listed). Given
    none, list the directory; with time left after it, go on into its subdirectories,
    depth first, and into the directories of ``more`` (others waiting to be listed);
    those not reached come back in ``DirListing.subdirs``. Out of time in the middle of a
    directory, hand back the rest of its names in ``DirListing.rest``. Runs in a worker
    (thread, process or Dask task). Errors are returned, not raised, so one bad entry
    or directory never stops the crawl.
    """
    started = time.monotonic()
    out = DirListing(rel)
    if names is not None:
        _scan(tree, rel, names, out, None, started)
    else:
        deadline = started + budget
        subdirs = out.subdirs
        subdirs += reversed(more)
        _scan(tree, rel, None, out, deadline, started)
        while subdirs and out.rest is None and time.monotonic() < deadline:
            _scan(tree, subdirs.pop(), None, out, deadline, started)
    out.seconds = time.monotonic() - started
    return out


def _scan(
    tree: TreeRoot,
    rel: str,
    names: list[str] | None,
    out: DirListing,
    deadline: float | None,
    started: float,
) -> None:
    """One directory (or a slice of it) into ``out``."""
    try:
        fd = _open_dir(tree, rel)
    except (FileNotFoundError, NotADirectoryError):
        out.errors.append(CrawlError(rel, "directory vanished during the crawl", False))
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since it was stat'ed
            out.errors.append(CrawlError(rel, "directory vanished during the crawl", False))
        else:
            message = f"cannot list directory: {os_error_reason(exc)}"
            out.errors.append(CrawlError(rel, message, True))
        return
    try:
        if names is None:
            try:
                names = os.listdir(fd)
            except OSError as exc:
                message = f"cannot list directory: {os_error_reason(exc)}"
                out.errors.append(CrawlError(rel, message, True))
                return
            out.listed += 1
            if before_stat is not None:
                before_stat(_join(tree.path, rel) if rel else tree.path, names)
        _stat_names(tree, rel, fd, names, out, deadline, started)
    finally:
        os.close(fd)


def _open_dir(tree: TreeRoot, rel: str) -> int:
    """An fd for directory ``rel``, never through a symlink below the root (one that
    replaced a directory since it was stat'ed); the root itself may be one, as named.

    Past ``PATH_MAX`` (deep trees with long names) it walks there one component at a time.
    """
    if not rel:
        return os.open(tree.path, _ROOT_FLAGS)
    try:
        return os.open(f"{tree.path}/{rel}", _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    fd = os.open(tree.path, _ROOT_FLAGS)
    try:
        for part in rel.split("/"):
            parent, fd = fd, -1
            try:
                fd = os.open(part, _OPEN_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _stat_names(
    tree: TreeRoot,
    rel: str,
    fd: int,
    names: list[str],
    out: DirListing,
    deadline: float | None,
    started: float,
) -> None:
    """The hot loop: one ``fstatat`` per name, one tuple per row.

    Written for speed at millions of entries: locals instead of attribute lookups, the
    file-type bits compared as ints, and the clock read every :data:`CHECK_EVERY` names.
    """
    pre = rel + "/" if rel else ""
    items: list[Item] = []
    add = items.append
    subdirs = out.subdirs
    errors = out.errors
    exclude = tree.exclude
    lstat = os.stat
    nbytes = files = dirs = others = 0
    n = len(names)
    i = 0
    while i < n:
        for name in names[i : i + CHECK_EVERY]:
            if not name.isascii() and not _is_utf8(name):
                message = f"name is not valid UTF-8: {os.fsencode(name)!r}"
                errors.append(CrawlError(pre + _shown(name), message, False))
                continue
            if exclude and pre + name in exclude:
                continue
            try:
                st = lstat(name, dir_fd=fd, follow_symlinks=False)
                fmt = st.st_mode & _FMT
                if fmt == _REG:
                    size = st.st_size
                    add(
                        (
                            name,
                            "file",
                            size,
                            st.st_mtime_ns,
                            None,
                            None,
                            st.st_ctime_ns,
                            st.st_ino,
                            st.st_dev,
                        )
                    )
                    nbytes += size
                    files += 1
                elif fmt == _DIR:
                    add(
                        (
                            name,
                            "dir",
                            0,
                            st.st_mtime_ns,
                            None,
                            None,
                            st.st_ctime_ns,
                            st.st_ino,
                            st.st_dev,
                        )
                    )
                    subdirs.append(pre + name)
                    dirs += 1
                elif fmt == _LNK:
                    item = classify_link(tree, name, pre + name, fd, st)
                    add(item)
                    link_kind = item[5]
                    out.link_kinds[link_kind] = out.link_kinds.get(link_kind, 0) + 1
                    if link_kind == "file":
                        nbytes += item[2]
                else:
                    add(
                        (
                            name,
                            "other",
                            0,
                            st.st_mtime_ns,
                            None,
                            None,
                            st.st_ctime_ns,
                            st.st_ino,
                            st.st_dev,
                        )
                    )
                    others += 1
            except FileNotFoundError:
                errors.append(CrawlError(pre + name, "vanished during the crawl", False))
            except OSError as exc:
                errors.append(CrawlError(pre + name, f"cannot stat: {os_error_reason(exc)}", True))
        i += CHECK_EVERY
        if deadline is not None and n - i >= MIN_SLICE and time.monotonic() > deadline:
            # out of time: the rest of this directory goes out in slices that each take
            # about one budget at the rate seen so far
            elapsed = max(time.monotonic() - started, 1e-6)
            out.rest = (rel, names[i:])
            done = out.entries + len(items)
            out.slice_size = max(MIN_SLICE, int(done / elapsed * (deadline - started)))
            break
    out.groups.append((rel, items))
    out.entries += len(items)
    out.dir_bytes.append((rel, nbytes))
    out.nbytes += nbytes
    out.files += files
    out.dirs += dirs
    out.others += others


def classify_link(tree: TreeRoot, name: str, path: str, fd: int, st: os.stat_result) -> Item:
    """Classify a symlink by where it finally resolves; only 'file' links are uploaded.

    A link to a regular file inside the tree takes the target's size, mtime and identity:
    those are the bytes the uploader will send and the state it will check. A link
    resolving to something that is neither a file nor a directory (a FIFO, a device)
    counts as broken, and so does one that cannot be resolved (dangling, a loop, a path
    too long). Links that are not uploaded keep the link's own identity.
    """
    target = _shown(os.readlink(name, dir_fd=fd))
    own = (st.st_ctime_ns, st.st_ino, st.st_dev)
    mtime = st.st_mtime_ns
    try:
        real = os.path.realpath(f"{tree.path}/{path}", strict=True)
        inside = real == tree.real or real.startswith(tree.real + os.sep)
        if not inside:
            return (name, "link", 0, mtime, target, "outside", *own)
        target_st = os.stat(real)
    except (OSError, ValueError):
        return (name, "link", 0, mtime, target, "broken", *own)
    if stat.S_ISREG(target_st.st_mode):
        size = target_st.st_size
        identity = (target_st.st_ctime_ns, target_st.st_ino, target_st.st_dev)
        return (name, "link", size, target_st.st_mtime_ns, target, "file", *identity)
    if stat.S_ISDIR(target_st.st_mode):
        return (name, "link", 0, mtime, target, "dir", *own)
    return (name, "link", 0, mtime, target, "broken", *own)


# ---------------------------------------------------------------- how many in flight


class _TaskLimit:
    """How many tasks to keep in flight: as many as make the crawl faster, no more.

    Threads help only while they wait on the filesystem. Measured on a warm local tree
    (2 cores), every task in flight beyond one made the crawl slower, the threads
    spending their time handing the GIL to each other: 250k entries/s with 1 in flight,
    35k with 8, 25k with 64. With 1 ms of latency per call the same crawl wants 64 in
    flight. Neither CPU load nor CPU per entry tells the two apart reliably (on FUSE the
    kernel's share per call swings fivefold), so the limit climbs the one measure that
    matters, the rate of work done (entries, and directories weighted by their extra
    calls). Each window (:data:`WINDOW_SECONDS`, and at least as many tasks as the
    limit) gives a rate. While work waits for a slot, a higher limit is tried for
    :data:`TRIAL_WINDOWS` windows and kept only if the rate rose by
    :data:`GROW_GAIN` over the windows before (the first step and those after a nearly
    linear gain are fourfold, the others twofold; after a failed rise it waits, twice as
    long each time); every :data:`PROBE_WINDOWS` windows half the limit is tried and
    kept if the rate holds. Fixed at ``most`` for executors other than the crawl's
    own threads, which may have reasons of their own (a cluster's workers).
    """

    def __init__(
        self, most: int, adaptive: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self.adaptive = adaptive
        self.clock = clock
        self.limit = 1 if adaptive else most
        self.limited = False  # work waited for a free slot during this window
        self.rates: list[float] = []  # the windows' rates since the limit last changed
        self.before: tuple[int, float] | None = None  # on trial: (old limit, its rate)
        self.step = 4
        self.hold = 0  # windows to wait before trying higher again
        self.backoff = HOLD_WINDOWS  # the next hold, doubled by every failed rise
        self.started, self.work, self.tasks = clock(), 0.0, 0
        self.waited = False

    def update(self, entries: int, listed: int) -> None:
        """Count a finished task's work; at the end of a window, adjust the limit."""
        if not self.adaptive:
            return
        self.work += entries + DIR_WEIGHT * listed
        self.tasks += 1
        self.waited |= self.limited
        now = self.clock()
        elapsed = now - self.started
        if elapsed < WINDOW_SECONDS or self.tasks < self.limit:
            return
        self.rates.append(self.work / elapsed)
        waited, self.waited, self.limited = self.waited, False, False
        self.started, self.work, self.tasks = now, 0.0, 0
        self.hold -= 1
        if self.before is not None:
            if len(self.rates) >= TRIAL_WINDOWS:
                self._judge(waited)
        elif waited and self.limit < self.most and self.hold <= 0 and len(self.rates) >= 2:
            self._try(min(self.most, self.limit * self.step))
        elif len(self.rates) >= PROBE_WINDOWS and self.limit > 1:
            self._try(self.limit // 2)

    def _rate(self) -> float:
        recent = self.rates[-TRIAL_WINDOWS:]
        return sum(recent) / len(recent)

    def _try(self, limit: int) -> None:
        self.before = (self.limit, self._rate())
        self.limit = limit
        self.rates = []

    def _judge(self, waited: bool) -> None:
        (before, before_rate), rate = self.before or (self.limit, 0.0), self._rate()
        self.before = None
        if self.limit > before:  # tried higher
            gain = rate / max(before_rate, 1e-9)
            if gain < GROW_GAIN:
                self.limit, self.step, self.hold = before, 2, self.backoff
                self.backoff = min(2 * self.backoff, MAX_HOLD_WINDOWS)
                self.rates = []
                return
            self.backoff = HOLD_WINDOWS
            self.step = 4 if gain > 0.7 * (self.limit / before) else 2
            if waited and self.limit < self.most:
                self._try(min(self.most, self.limit * self.step))
        elif rate < SHRINK_KEEP * before_rate:  # tried lower, and it cost
            self.limit = before
            self.rates = []


# ---------------------------------------------------------------- the writer


def expand(groups: list[Group]) -> list[Row]:
    """Manifest rows from a listing's groups: the path and parent put back on each item."""
    rows: list[Row] = []
    for rel, items in groups:
        pre = rel + "/" if rel else ""
        rows += [(pre + n, rel, n, k, s, m, t, lk, c, i, d) for n, k, s, m, t, lk, c, i, d in items]
    return rows


def _write_batch(manifest: Manifest, crawl_id: int, batch: RowBatch) -> None:
    groups, errors = batch
    rows = expand(groups)
    with manifest.atomic():
        manifest.put_crawl_rows(crawl_id, rows)
        manifest.put_crawl_errors(crawl_id, errors)


def _write_dir_sizes(manifest: Manifest, sizes: list[tuple[int, str]] | None) -> None:
    if sizes:
        with manifest.atomic():
            manifest.put_dir_sizes(sizes)


class _Checkpointer:
    """Copies the WAL into the database in the background while the crawl writes.

    The writer never checkpoints during a crawl (:meth:`Manifest.bulk_load`), so without
    this the WAL would grow to the size of the whole crawl and be copied and synced in
    one go after the last row: about 0.3 s per 360k entries here. A second connection in
    its own thread does it every :data:`CHECKPOINT_SECONDS` instead, while the tree is
    being listed; a PASSIVE checkpoint never blocks the writer, and syncs the WAL before
    copying and the database after, like any other.
    """

    def __init__(self, db: str) -> None:
        self.db = db
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="crawl-checkpoint", daemon=True)

    def __enter__(self) -> _Checkpointer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _loop(self) -> None:
        try:
            with wal_checkpointer(self.db) as checkpoint:
                while not self.stop.wait(CHECKPOINT_SECONDS):
                    checkpoint()
        except sqlite3.Error:
            pass  # only an optimisation: the final checkpoint copies whatever is left


class _ThreadSink:
    """Writes batches through the crawl's own connection, from the sender thread.

    The fallback where the OS cannot fork. SQLite runs without the GIL, but
    ``executemany`` takes the GIL back after every row, and busy scanning threads make it
    wait for it each time (10-20 µs a row measured here, against ~3 µs alone).
    """

    def __init__(self, manifest: Manifest, crawl_id: int, drop_index: bool) -> None:
        self.manifest, self.crawl_id = manifest, crawl_id
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(manifest.bulk_load(drop_parent_index=drop_index))
        self.stack.enter_context(_Checkpointer(str(manifest.path)))

    def write(self, batch: RowBatch) -> None:
        _write_batch(self.manifest, self.crawl_id, batch)

    def close(self, ok: bool, sizes: list[tuple[int, str]] | None) -> None:
        with self.stack:
            if ok:
                _write_dir_sizes(self.manifest, sizes)


class _ProcessSink:
    """Writes batches in a forked child process with its own connection and its own GIL.

    Measured on a warm local tree, a writer thread inside the crawling process waited
    10-20 µs a row for the GIL while the scanning threads held it; the child spends
    ~3.5 µs a row, in parallel with the scan. Batches travel marshalled (plain tuples and
    lists: faster than pickle, and both ends are this interpreter) through a pipe,
    length-prefixed. The child builds the index once the rows are in, also if the crawl
    dies (it sees the pipe close). It is forked before the crawl starts any thread and
    leaves through ``os._exit``, never touching the parent's connection. Plain
    ``os.fork`` and pipes rather than :mod:`multiprocessing`, which imports modules
    lazily: a crawl that dropped its privileges after start-up could not load them.
    """

    def __init__(self, manifest: Manifest, crawl_id: int, drop_index: bool) -> None:
        inbox, to_child = os.pipe()
        from_child, outbox = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(to_child)
                os.close(from_child)
                code = _writer_process(str(manifest.path), crawl_id, drop_index, inbox, outbox)
            finally:
                os._exit(code)
        os.close(inbox)
        os.close(outbox)
        self.pid: int | None = pid
        with contextlib.suppress(AttributeError, OSError):  # Linux: fewer, larger writes
            fcntl.fcntl(to_child, fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # type: ignore[union-attr]
        self.out = os.fdopen(to_child, "wb")
        self.replies = os.fdopen(from_child, "rb", buffering=0)

    def write(self, batch: RowBatch) -> None:
        try:
            _send(self.out, marshal.dumps(("rows", *batch)))
        except OSError:  # the child is gone; close() says why
            self.close(ok=True, sizes=None)
            raise StateError("the crawl's writer process ended early") from None

    def close(self, ok: bool, sizes: list[tuple[int, str]] | None) -> None:
        """Tell the child that the rows are all sent and wait for it (index build
        included); raise its failure. Not ``ok`` (the crawl failed): close the pipe, give
        the child a bounded time to restore the db, then stop it."""
        if self.pid is None:
            return
        reply: bytes | None = None
        try:
            with contextlib.suppress(OSError):
                if ok:
                    _send(self.out, marshal.dumps(("end", sizes)))
                self.out.close()
            if ok:
                reply = self._reply()
            self._reap(WRITER_EXIT_SECONDS)
        finally:
            if self.pid is not None:  # still running: stop it by its PID
                processes.stop(self.pid, terminate_first=False)
                self.pid = None
            self.replies.close()
        if ok and reply != b"ok":
            detail = (reply or b"it ended without an answer").decode(errors="replace")
            raise StateError(f"writing the crawl into the state db failed: {detail}")

    def _reply(self) -> bytes | None:
        """The child's answer. Waits as long as the child lives (it may be building the
        index of millions of rows), never past its end."""
        fd = self.replies.fileno()
        while True:
            ready, _, _ = select.select([fd], [], [], WRITER_POLL_SECONDS)
            if ready:
                try:
                    return _recv(self.replies)
                except EOFError:
                    return None
            if self._reap(0):
                return None

    def _reap(self, timeout: float) -> bool:
        """True once the child has exited (and is reaped), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.pid is not None:
            pid, _status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.pid = None
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True


def _send(out: BinaryIO, data: bytes) -> None:
    out.write(len(data).to_bytes(8, "little"))
    out.write(data)
    out.flush()


def _recv(stream: BinaryIO) -> bytes:
    size = int.from_bytes(_read_exactly(stream, 8), "little")
    return _read_exactly(stream, size)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)


def _writer_process(db: str, crawl_id: int, drop_index: bool, inbox: int, outbox: int) -> int:
    """The child's side of :class:`_ProcessSink`: batches in, ``ok`` or the error out.

    The child makes no reference cycles, so the cyclic GC (which would walk the rows of
    every batch in flight, again and again) is off: a process of its own, its own rules.
    """
    gc.disable()
    reply = b"ok"
    with os.fdopen(inbox, "rb") as source, os.fdopen(outbox, "wb") as answer:
        try:
            with (
                Manifest.open(db) as manifest,
                manifest.bulk_load(drop_parent_index=drop_index),
                _Checkpointer(db),
            ):
                while True:
                    kind, *payload = marshal.loads(_recv(source))
                    if kind == "end":
                        _write_dir_sizes(manifest, payload[0])
                        break
                    _write_batch(manifest, crawl_id, (payload[0], payload[1]))
        except EOFError:  # the crawl died; bulk_load has restored the db
            return 1
        except BaseException as exc:
            reply = f"{type(exc).__name__}: {exc}".encode()
        with contextlib.suppress(OSError):
            _send(answer, reply)
    return 0 if reply == b"ok" else 1


class _RowWriter:
    """Collects listings in the dispatching thread and hands batches to a sink.

    The dispatching thread only moves lists and adds up tallies; a sender thread
    marshals the batches and waits on the sink, so the dispatcher never waits for
    SQLite. At most :data:`WRITE_QUEUE` batches wait; beyond that the crawl waits.
    """

    def __init__(self, sink: _ThreadSink | _ProcessSink, summary: CrawlSummary) -> None:
        self.sink = sink
        self.summary = summary
        self.groups: list[Group] = []
        self.rows = 0
        self.errors: list[tuple[str, str]] = []
        self.keep: list[str] = []  # paths whose earlier records must survive this crawl
        self.direct: dict[str, int] = {}  # directory -> bytes of the uploadables in it
        self.last_flush = time.monotonic()
        self.failure: BaseException | None = None
        self.queue: queue.Queue[RowBatch | None] = queue.Queue(WRITE_QUEUE)
        self.thread = threading.Thread(target=self._loop, name="crawl-writer", daemon=True)
        self.thread.start()

    def add(self, listing: DirListing) -> None:
        """Queue one listing's rows and errors, and add up its tallies."""
        summary = self.summary
        summary.entries += listing.entries
        summary.dirs_scanned += listing.listed
        kinds = summary.kinds
        if listing.files:
            kinds["file"] += listing.files
        if listing.dirs:
            kinds["dir"] += listing.dirs
        if listing.others:
            kinds["other"] += listing.others
        for link_kind, count in listing.link_kinds.items():
            kinds["link"] += count
            summary.link_kinds[link_kind] += count
        summary.bytes += listing.nbytes
        direct = self.direct
        for directory, nbytes in listing.dir_bytes:
            direct[directory] = direct.get(directory, 0) + nbytes
        for error in listing.errors:
            summary.errors += 1
            if len(summary.error_examples) < ERROR_EXAMPLES:
                summary.error_examples.append((error.path, error.message))
            if error.hides:
                self.keep.append(error.path)
            self.errors.append((error.path, error.message))
        self.groups += listing.groups
        self.rows += listing.entries
        if self.rows >= CHUNK_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.failure is not None:
            raise self.failure
        if self.groups or self.errors:
            self.queue.put((self.groups, self.errors))
            self.groups, self.errors, self.rows = [], [], 0
        self.last_flush = time.monotonic()

    def close(self, *, ok: bool = True) -> None:
        """Write what is left and the directory sizes (when the crawl saw everything),
        wait for the sink, and raise its failure if ``ok`` (not while another exception
        is on its way out)."""
        try:
            if ok:
                self.flush()
        finally:
            self.queue.put(None)
            self.thread.join()
            ok = ok and self.failure is None
            try:
                self.sink.close(ok, None if self.keep else self.dir_sizes())
            except BaseException as exc:
                if ok:
                    self.failure = exc
        if ok and self.failure is not None:
            raise self.failure

    def _loop(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.failure is not None:
                continue  # drain, so the crawl never blocks on a dead writer
            try:
                self.sink.write(batch)
            except BaseException as exc:  # re-raised in the crawling thread
                self.failure = exc

    def dir_sizes(self) -> list[tuple[int, str]]:
        """(recursive bytes of uploadables, path) for every directory listed, as the
        manifest defines them (:func:`~desimirror.state.manifest.roll_up`)."""
        return [(nbytes, path) for path, nbytes in roll_up(self.direct).items()]


def close_crawl(manifest: Manifest, summary: CrawlSummary, keep: list[str]) -> None:
    """Close a crawl: drop what vanished except under ``keep``, total the directories.

    A crawl that met unreadable directories (or entries it could not stat) does not know
    what is below them now. Dropping their earlier records would make a transient
    permission or filesystem hiccup look like deleted data, and status would under-count
    the release; so those subtrees keep what an earlier crawl saw (the uploader re-checks
    every file before sending it), while everything the crawl did see is authoritative.
    """
    summary.vanished = manifest.close_crawl(summary.crawl_id, keep=keep)
    summary.complete = not keep
    summary.files, summary.bytes = manifest.uploadable_totals()


# ---------------------------------------------------------------- the crawl


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
    sink_type = _ProcessSink if fork else _ThreadSink
    writer = _RowWriter(sink_type(manifest, crawl_id, drop_index=not recrawl), summary)
    own = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl")
    progress.start("crawl")
    ok = False
    try:
        concurrency = _TaskLimit(max(2 * workers, 2), adaptive=own)
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
    concurrency: _TaskLimit,
    writer: _RowWriter,
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
