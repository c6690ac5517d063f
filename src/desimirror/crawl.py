"""Crawl a directory tree into the manifest: one directory per task, one writer.

On the network filesystems a release lives on (Lustre, GPFS, DVS at NERSC) listing a
directory is a round trip of milliseconds, so the crawl keeps many directory listings in
flight at once through a :class:`concurrent.futures.Executor`. Local threads are the
default; a Dask ``Client.get_executor()`` fits the same slot, which is why the task
(:func:`scan_directory`) is a picklable module-level function over plain data.

Each task lists one directory with ``os.scandir`` and takes one ``lstat`` per entry; it
returns its children's rows and the subdirectories still to visit. Only the calling thread
writes to SQLite, in chunks, so memory holds the directories in flight and one chunk of
rows, never the tree.

Symlinks are recorded, never traversed: following them could leave the release or walk
a loop. Each is classified once so the uploader knows whether it stands for a file inside
the tree (uploaded with the target's bytes), a directory inside the tree (its target is
crawled at its real place), something outside the tree (never uploaded) or nothing.
"""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from desimirror.errors import UsageError
from desimirror.manifest import UPLOADABLE, Entry, Manifest
from desimirror.progress import NullProgress, Progress

DEFAULT_WORKERS = 32
#: Rows per SQLite transaction: short enough that a concurrent ``upload`` or ``status``
#: gets the write lock between chunks, long enough that commits are not the bottleneck.
CHUNK_ROWS = 5000
#: Commit at least this often (seconds) even on a slow filesystem, so the db shows progress.
FLUSH_SECONDS = 2.0
#: Errors kept in memory for the report; all of them go to the db.
ERROR_EXAMPLES = 20


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


@dataclass
class Listing:
    """What one task found in one directory."""

    path: str
    entries: list[Entry]
    subdirs: list[str]
    errors: list[CrawlError]


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
    return TreeRoot(path, real, name, st.st_mtime_ns, _excluded(real, db))


def _excluded(real_root: str, db: str | os.PathLike[str] | None) -> frozenset[str]:
    if db is None:
        return frozenset()
    real_db = os.path.realpath(os.fspath(db))
    if not real_db.startswith(real_root + os.sep):
        return frozenset()
    rel = os.path.relpath(real_db, real_root).replace(os.sep, "/")
    return frozenset(rel + suffix for suffix in ("", "-wal", "-shm", "-journal"))


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


# ---------------------------------------------------------------- one task: one directory


def scan_directory(tree: TreeRoot, rel: str) -> Listing:
    """List one directory: the rows of its children and the subdirectories to visit next.

    Runs in a worker (thread, process or Dask task). Errors are returned, not raised, so
    one unreadable directory never stops the crawl.
    """
    listing = Listing(rel, [], [], [])
    full = os.path.join(tree.path, rel) if rel else tree.path
    try:
        with os.scandir(full) as it:
            for dirent in it:
                _scan_entry(tree, rel, dirent, listing)
    except (FileNotFoundError, NotADirectoryError):
        listing.errors.append(CrawlError(rel, "directory vanished during the crawl", False))
    except OSError as exc:
        message = f"cannot list directory: {_reason(exc)}"
        listing.errors.append(CrawlError(rel, message, True))
    return listing


def _scan_entry(tree: TreeRoot, parent: str, dirent: os.DirEntry, listing: Listing) -> None:
    name = dirent.name
    if not _is_utf8(name):
        message = f"name is not valid UTF-8: {os.fsencode(name)!r}"
        listing.errors.append(CrawlError(_join(parent, _shown(name)), message, False))
        return
    path = _join(parent, name)
    if path in tree.exclude:
        return
    try:
        entry = _classify(tree, path, dirent.path, dirent.stat(follow_symlinks=False))
    except FileNotFoundError:
        listing.errors.append(CrawlError(path, "vanished during the crawl", False))
        return
    except OSError as exc:
        listing.errors.append(CrawlError(path, f"cannot stat: {_reason(exc)}", True))
        return
    listing.entries.append(entry)
    if entry.kind == "dir":
        listing.subdirs.append(path)


def _classify(tree: TreeRoot, path: str, full: str, st: os.stat_result) -> Entry:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return Entry(path, "file", st.st_size, st.st_mtime_ns)
    if stat.S_ISDIR(mode):
        return Entry(path, "dir", 0, st.st_mtime_ns)
    if stat.S_ISLNK(mode):
        return _link(tree, path, full, st)
    return Entry(path, "other", 0, st.st_mtime_ns)


def _link(tree: TreeRoot, path: str, full: str, st: os.stat_result) -> Entry:
    """Classify a symlink by where it finally resolves; only 'file' links are uploaded.

    A link to a regular file inside the tree takes the target's size and mtime: those are
    the bytes the uploader will send and the state it will check. A link resolving to
    something that is neither a file nor a directory (a FIFO, a device) counts as broken.
    """
    target = _shown(os.readlink(full))
    try:
        real = os.path.realpath(full, strict=True)  # OSError on dangling links and loops
        inside = real == tree.real or real.startswith(tree.real + os.sep)
        if not inside:
            return Entry(path, "link", 0, st.st_mtime_ns, target, "outside")
        target_st = os.stat(real)
    except OSError:
        return Entry(path, "link", 0, st.st_mtime_ns, target, "broken")
    if stat.S_ISREG(target_st.st_mode):
        return Entry(path, "link", target_st.st_size, target_st.st_mtime_ns, target, "file")
    if stat.S_ISDIR(target_st.st_mode):
        return Entry(path, "link", 0, st.st_mtime_ns, target, "dir")
    return Entry(path, "link", 0, st.st_mtime_ns, target, "broken")


def _reason(exc: OSError) -> str:
    """The OS's words without the path (stored separately), e.g. 'Permission denied'."""
    return exc.strerror or str(exc) or type(exc).__name__


# ---------------------------------------------------------------- the writer


class _Writer:
    """Buffers rows and errors from listings and commits them in small transactions."""

    def __init__(self, manifest: Manifest, crawl_id: int, summary: CrawlSummary) -> None:
        self.manifest = manifest
        self.crawl_id = crawl_id
        self.summary = summary
        self.rows: list[Entry] = []
        self.errors: list[tuple[str, str]] = []
        self.keep: list[str] = []  # paths whose earlier records must survive this crawl
        self.last_flush = time.monotonic()

    def add(self, entries: list[Entry], errors: list[CrawlError]) -> int:
        """Queue one listing's results; returns the bytes of uploadables it found."""
        summary = self.summary
        nbytes = 0
        for entry in entries:
            summary.kinds[entry.kind] += 1
            if entry.kind == "link":
                summary.link_kinds[entry.link_kind] += 1
            if entry.kind == "file" or entry.link_kind == "file":
                nbytes += entry.size
        summary.entries += len(entries)
        for error in errors:
            summary.errors += 1
            if len(summary.error_examples) < ERROR_EXAMPLES:
                summary.error_examples.append((error.path, error.message))
            if error.hides:
                self.keep.append(error.path)
            self.errors.append((error.path, error.message))
        self.rows.extend(entries)
        if len(self.rows) >= CHUNK_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        return nbytes

    def flush(self) -> None:
        if self.rows or self.errors:
            with self.manifest.atomic():
                self.manifest.put_entries(self.crawl_id, self.rows)
                self.manifest.put_crawl_errors(self.crawl_id, self.errors)
            self.rows, self.errors = [], []
        self.last_flush = time.monotonic()


def close_crawl(manifest: Manifest, summary: CrawlSummary, keep: list[str]) -> None:
    """Close a crawl: drop what vanished except under ``keep``, total the directories.

    A crawl that met unreadable directories (or entries it could not stat) does not know
    what is below them now. Dropping their earlier records would make a transient
    permission or filesystem hiccup look like deleted data, and status would under-count
    the release; so those subtrees keep what an earlier crawl saw (the uploader re-checks
    every file before sending it), while everything the crawl did see is authoritative.
    """
    summary.vanished = manifest.drop_unseen(summary.crawl_id, keep)
    summary.complete = not keep
    manifest.finish_crawl(summary.crawl_id, complete=not keep)
    files, nbytes = manifest.conn.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM entries WHERE {UPLOADABLE}"
    ).fetchone()
    summary.files, summary.bytes = files, nbytes


# ---------------------------------------------------------------- the crawl


def crawl(
    root: str | os.PathLike[str] | TreeRoot,
    manifest: Manifest,
    *,
    executor: Executor | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> CrawlSummary:
    """Crawl ``root`` into ``manifest`` and close the crawl; returns what was found.

    ``executor`` may be any :class:`~concurrent.futures.Executor` (a Dask
    ``client.get_executor()`` included); it is not shut down. Without one, a thread pool of
    ``workers`` threads is used. At most ``2 * workers`` directories are in flight.

    Raises :class:`UsageError` if the root cannot be crawled and
    :class:`~desimirror.errors.StateError` if the db belongs to another tree.
    """
    tree = root if isinstance(root, TreeRoot) else resolve_root(root, manifest.path)
    progress = progress or NullProgress()
    manifest.bind_root(tree.path, tree.name)
    started = time.monotonic()
    crawl_id = manifest.begin_crawl(tree.path)
    summary = CrawlSummary(crawl_id, tree.path, tree.name, "crawl")
    writer = _Writer(manifest, crawl_id, summary)
    writer.add([Entry("", "dir", 0, tree.mtime_ns)], [])
    own = executor is None
    pool = executor or ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawl")
    progress.start("crawl")
    ok = False
    try:
        _run(tree, pool, max(2 * workers, 2), writer, progress)
        ok = True
    finally:
        if own:
            pool.shutdown(wait=ok, cancel_futures=True)
        progress.close()
    writer.flush()
    close_crawl(manifest, summary, writer.keep)
    summary.seconds = time.monotonic() - started
    return summary


def _run(tree: TreeRoot, pool: Executor, limit: int, writer: _Writer, progress: Progress) -> None:
    """Keep up to ``limit`` listings in flight; write each result as it arrives.

    Pending directories wait on a stack (depth first), which keeps that list about as
    long as the tree is deep times its fan-out rather than as wide as a whole level.
    """
    pending = [""]
    in_flight: set[Future] = set()
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            in_flight.add(pool.submit(scan_directory, tree, pending.pop()))
        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in done:
            listing: Listing = future.result()
            pending.extend(reversed(listing.subdirs))
            writer.summary.dirs_scanned += 1
            nbytes = writer.add(listing.entries, listing.errors)
            progress.advance(files=len(listing.entries), nbytes=nbytes)
