"""Open the files of the crawled tree, and nothing outside it, as the crawl saw them.

Everything the mirror reads from the source (files to send, files to hash, the release's
``*.sha256sum`` listings) is opened here. Two things make a path unsafe to open naively:

* **A component swapped for a symlink.** ``lstat`` of the leaf and ``O_NOFOLLOW`` protect
  only the last component: replace a directory of the tree with a symlink to a directory
  outside it, holding a file of the same name, size and mtime, and ``open(root/path)``
  reads the outside file. So every file is opened *beneath* a descriptor of the root, no
  component followed if it is a symlink: with ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6+, one system call), else one
  ``openat(O_NOFOLLOW)`` per component.
* **Another file at the same path.** A file renamed over, or rewritten and ``touch -r``'d,
  has the crawled size and mtime but not the crawled identity: ctime, inode and device,
  which no user can set back. The opened descriptor's ``fstat`` is compared with the
  identity the crawl recorded, and again after the bytes were read.

A symlink to a regular file inside the tree (the crawl records those as uploadable) is
resolved with ``realpath``, must land inside the real root, and its target is then opened
beneath the root like any file; the crawl recorded the target's identity, so a target
swapped since is refused too.

The device number of a network filesystem can differ between the nodes that mount it (a
crawl on one login node, an upload on another). When the root's device is not the one the
crawl recorded, devices are not compared, and inode and ctime still are.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from dataclasses import dataclass

from desimirror.state.manifest import Entry

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (the unified table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_DIRECTORY


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class SourceRefused(Exception):
    """A source file that must not be read as it stands.

    ``reason`` is ``"unsafe"`` (the path now leads through a symlink or out of the tree)
    or ``"changed"`` (gone, not a regular file, or not the file the crawl saw).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Signature:
    """What identifies one version of a file: the crawl's view, checked at every read."""

    size: int
    mtime_ns: int | None
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None

    @classmethod
    def of_entry(cls, entry: Entry) -> Signature:
        return cls(entry.size, entry.mtime_ns, entry.ctime_ns, entry.ino, entry.dev)

    def difference(self, now: os.stat_result, *, compare_dev: bool = True) -> str | None:
        """Why ``now`` is not this version of the file, or None if it is."""
        if now.st_size != self.size:
            return f"its size is {now.st_size:,} bytes, the crawl saw {self.size:,}"
        if self.mtime_ns is not None and now.st_mtime_ns != self.mtime_ns:
            return "its mtime changed since the crawl"
        if self.ino is not None and now.st_ino != self.ino:
            return "another file (inode) is at its path since the crawl"
        if compare_dev and self.dev is not None and now.st_dev != self.dev:
            return "another file (device) is at its path since the crawl"
        if self.ctime_ns is not None and now.st_ctime_ns != self.ctime_ns:
            return "it was modified since the crawl (its ctime changed)"
        return None


class SourceTree:
    """The crawled root, opened once; see the module docstring. Thread-safe."""

    def __init__(self, root: str, *, crawled_dev: int | None = None) -> None:
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        root_dev = os.fstat(self._fd).st_dev
        #: False when the tree is mounted with another device number than at the crawl.
        self.compare_dev = crawled_dev is None or crawled_dev == root_dev
        self._openat2 = _load_openat2()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, rel: str) -> str:
        """The absolute path of a manifest path (for programs that read by path)."""
        return os.path.join(self.root, rel) if rel else self.root

    # -- opening ---------------------------------------------------------------------

    def open_entry(self, entry: Entry) -> int:
        """A descriptor of the file the crawl saw at ``entry``; raises :class:`SourceRefused`.

        The caller owns the descriptor. It is a regular file with the entry's signature.
        """
        fd = self.open_beneath(self.rel_to_read(entry))
        try:
            self.check_fd(fd, Signature.of_entry(entry))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_entry(self, entry: Entry) -> None:
        """Raise :class:`SourceRefused` unless ``entry``'s path still holds the crawled file."""
        os.close(self.open_entry(entry))

    def signature(self, entry: Entry) -> Signature:
        """``entry``'s signature as this tree can check it (no device where it moved)."""
        sig = Signature.of_entry(entry)
        return sig if self.compare_dev else Signature(sig.size, sig.mtime_ns, sig.ctime_ns, sig.ino)

    def check_fd(self, fd: int, expected: Signature) -> None:
        """Raise :class:`SourceRefused` unless ``fd`` is a regular file of ``expected``'s."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceRefused("changed", "no longer a regular file")
        why = expected.difference(st, compare_dev=self.compare_dev)
        if why is not None:
            raise SourceRefused("changed", f"{why}; run 'desimirror crawl' again")

    def open_beneath(self, rel: str) -> int:
        """Open ``rel`` (a manifest path) read-only below the root, following no symlink."""
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise SourceRefused("unsafe", f"{rel!r} is not a path inside the tree")
        if self._openat2 is not None:
            try:
                return self._open_openat2(rel)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise self._refusal(rel, exc) from None
                self._openat2 = None  # a kernel or sandbox without it: walk instead
        try:
            return self._open_walk(rel)
        except OSError as exc:
            raise self._refusal(rel, exc) from None

    def _open_openat2(self, rel: str) -> int:
        how = _OpenHow(
            _FILE_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
        )
        assert self._openat2 is not None
        fd = self._openat2(_SYS_OPENAT2, self._fd, os.fsencode(rel), ctypes.byref(how), 24)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return fd

    def _open_walk(self, rel: str) -> int:
        *dirs, leaf = rel.split("/")
        fd = self._fd
        try:
            for name in dirs:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if fd != self._fd:
                    os.close(fd)
                fd = child
            return os.open(leaf, _FILE_FLAGS, dir_fd=fd)
        finally:
            if fd != self._fd:
                os.close(fd)

    def _refusal(self, rel: str, exc: OSError) -> SourceRefused:
        """Tell a path that now leads through a symlink (unsafe) from one that is gone."""
        if exc.errno in (errno.ELOOP, errno.EXDEV) or self._has_link(rel):
            return SourceRefused(
                "unsafe", "its path now leads through a symlink; it is not read (re-crawl)"
            )
        return SourceRefused("changed", f"cannot open: {exc.strerror or exc}")

    def _has_link(self, rel: str) -> bool:
        path = self.root
        for name in rel.split("/"):
            path = os.path.join(path, name)
            try:
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return True
            except OSError:
                return False
        return False

    def rel_to_read(self, entry: Entry) -> str:
        """The manifest path whose bytes are ``entry``'s: its own, or for a symlink to a file
        inside the tree, where it resolves to now (refused if that is outside the tree)."""
        if entry.kind != "link":
            return entry.path
        real = os.path.realpath(self.path(entry.path))
        if not real.startswith(self.real_root + os.sep):
            raise SourceRefused("unsafe", "the symlink now points outside the crawled tree")
        return os.path.relpath(real, self.real_root).replace(os.sep, "/")


def _load_openat2():  # type: ignore[no-untyped-def]
    """libc's ``syscall`` for openat2 on Linux, or None where there is no such call."""
    if os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    return syscall


def unreadable(exc: BaseException) -> tuple[str, str]:
    """(failure reason, message) for a source file that could not be read as the crawl
    saw it: ``unsafe`` or ``changed`` from a refusal, ``changed`` for anything else."""
    if isinstance(exc, SourceRefused):
        return exc.reason, str(exc)
    if isinstance(exc, OSError):
        return "changed", f"cannot read: {exc.strerror or exc}"
    return "changed", str(exc)


_TREES: dict[str, SourceTree] = {}
_TREES_LOCK = threading.Lock()


def tree_at(root: str) -> SourceTree:
    """The process's one open :class:`SourceTree` of ``root`` (opened on first use).

    Backends open items through this, so a root descriptor is opened once per process,
    also in a worker process that only receives picklable items.
    """
    with _TREES_LOCK:
        tree = _TREES.get(root)
        if tree is None:
            tree = _TREES[root] = SourceTree(root)
        return tree


def open_item(root: str | None, rel: str | None, source: str, expected: Signature | None) -> int:
    """A descriptor of a file to send: beneath ``root`` and checked against ``expected``
    when the uploader gave them, else ``source`` opened without following a final symlink.

    Raises :class:`SourceRefused` (and ``OSError`` on the plain path).
    """
    if root is None or rel is None:
        return os.open(source, _FILE_FLAGS)
    tree = tree_at(root)
    fd = tree.open_beneath(rel)
    if expected is not None:
        try:
            tree.check_fd(fd, expected)
        except BaseException:
            os.close(fd)
            raise
    return fd


def recheck_fd(fd: int, expected: Signature | None) -> None:
    """After the last byte was read: raise :class:`SourceRefused` if the file was modified
    meanwhile (its ctime moves even when its mtime is set back), so that a torn read is
    never recorded as the file's content."""
    if expected is None:
        return
    st = os.fstat(fd)
    why = expected.difference(st)
    if why is not None:
        raise SourceRefused("changed", f"changed while it was read: {why}")
