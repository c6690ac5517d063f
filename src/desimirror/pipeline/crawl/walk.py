"""One crawl task: list a directory beneath the root and stat its entries within a time
budget, returning plain data, so that a task runs alike in a thread, a process or on a
Dask worker (:func:`scan_directory`), plus checking the root before anything is written
(:func:`resolve_root`).

A task opens its directory once, lists it, and takes one ``lstat`` per entry relative to
that open directory (``fstatat``: no path walk per entry, and paths longer than
``PATH_MAX`` work). Nothing bad about one entry stops the crawl: it becomes a
:class:`CrawlError`. Symlinks are classified once (:func:`classify_link`), never followed.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from desimirror.errors import UsageError

#: A task's time budget: after it, a task stops descending into subdirectories and hands
#: back the part of its directory it has not stat'ed. Long enough that per-task costs
#: vanish on a fast filesystem (and on a Dask cluster), short enough that a slow
#: filesystem's big directories are spread over all workers.
TASK_SECONDS = 0.01
#: Names a task stats between looks at the clock.
CHECK_EVERY = 8
#: The fewest names a directory slice holds; a smaller rest is finished in place.
MIN_SLICE = 16

#: A manifest row as the crawl makes it, see :meth:`Manifest.put_crawl_rows`:
#: (path, parent, name, kind, size, mtime_ns, link_target, link_kind, ctime_ns, ino, dev).
Row = tuple[str, str | None, str, str, int, int | None, str | None, str | None, int, int, int]
#: A row as a task returns it, without the directory: (name, kind, size, mtime_ns,
#: link_target, link_kind, ctime_ns, ino, dev). :func:`expand` puts the path and parent
#: back; rows travel (to the writer process, or from a process pool or a cluster) at about
#: half the size. The last three are the file's identity, which a user cannot set back as
#: ``touch -r`` sets back an mtime: the uploader checks them before and after each read.
Item = tuple[str, str, int, int | None, str | None, str | None, int, int, int]
#: One directory's (or slice's) items: (directory, items); directory None for the root's
#: own row (an import's), whose parent is NULL.
Group = tuple[str | None, list[Item]]
#: What the writer gets at a time: groups of rows, (path, message) errors and (path,
#: files, bytes) totals of directories (an import's; a crawl's are written at its end).
RowBatch = tuple[list[Group], list[tuple[str, str]], list[tuple[str, int, int]]]

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
