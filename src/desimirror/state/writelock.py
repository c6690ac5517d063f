"""One writer per mirror: a POSIX record lock on ``DB.lock``, the file beside the state db.

Two uploads on one db both run otherwise: SQLite serializes their transactions, not their
work, so both send the same files. Every command that writes the db (crawl, plan, upload,
verify, manifest checksums and publish) takes this lock first, without waiting; a second
one is refused at once, naming the holder. Readers (``status``) never take it and never
wait for it.

Why a lock of our own. SQLite's own locks (POSIX record locks on bytes of the db file, and
in WAL mode on the ``-shm`` file) last one transaction; an upload commits every second, and
holding one transaction open for a whole run would commit nothing until the end.

Why ``fcntl`` record locks (``F_SETLK`` through :func:`fcntl.lockf`, non-blocking). The
kernel drops them when the holder dies, by ``kill -9`` too, so a crashed run never blocks
the next one; a reboot of the holder's node drops them too (NFS through lockd/statd; GPFS
through its own lock manager), so they work on the shared filesystems of a cluster, where
``flock`` may be local to one node. Two properties of POSIX locks shape this module:

* they belong to a process, not to a file descriptor, and closing *any* descriptor of the
  file drops them all. So a process opens the lock file once: a registry keeps the one
  descriptor, nested holders share it, and a reader in the holder's own process asks the
  registry instead of opening the file;
* ``F_GETLK`` tells whether someone holds the lock without taking it: that is how readers
  look without ever delaying a writer.

The holder writes ``{pid, host, since, command}`` into the file for the refusal message and
removes the file on release. A file without a lock on it is what a holder that died left.

Hosts. SQLite's WAL mode keeps its index in shared memory (``-shm``, memory-mapped), which
only processes on one host share: a reader on another node of a shared filesystem may see
a torn or stale state. The lock records the host, so a writer refused by a holder on
another host says so, and :func:`reader_warning` lets a reader say so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from desimirror.errors import StateError

LOCK_SUFFIX = ".lock"


class LockedError(StateError):
    """Another run writes this mirror's state db: refused at once, never waited for."""


@dataclass(frozen=True)
class Holder:
    """Who holds a mirror's write lock, as the holder wrote it into the lock file."""

    pid: int
    host: str
    since: float
    command: str

    @property
    def elsewhere(self) -> bool:
        """True when the holder runs on another host than this process (as far as known)."""
        return bool(self.host) and self.host != this_host()

    def describe(self) -> str:
        """``upload (pid 1234 on host nid00012, since 2026-12-01 23:40:01 UTC)``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        what = self.command or "a desimirror command"
        if not self.since:  # the lock file said nothing yet: what the kernel knows
            return f"{what} (pid {self.pid})"
        return f"{what} (pid {self.pid} on host {self.host}, since {since})"


def this_host() -> str:
    """The name this host goes by in lock files."""
    return socket.gethostname()


def lock_path(db: str | os.PathLike[str]) -> Path:
    """The lock file of a state db: ``mirror.db`` -> ``mirror.db.lock``, beside it."""
    return Path(f"{os.fspath(db)}{LOCK_SUFFIX}")


# -- the holder's side ---------------------------------------------------------------------


@dataclass
class _Held:
    """The one open descriptor of a lock file this process holds, and how many share it."""

    fd: int
    identity: tuple[int, int]  # (st_dev, st_ino) of the file we locked
    holder: Holder
    users: int = 1


_registry: dict[tuple[int, int], _Held] = {}
_registry_lock = threading.Lock()


class WriteLock:
    """A held write lock; :meth:`release` when done (the kernel does if we die)."""

    def __init__(self, path: Path, held: _Held) -> None:
        self.path = path
        self._held: _Held | None = held

    @property
    def holder(self) -> Holder:
        assert self._held is not None, "released"
        return self._held.holder

    def check_in_place(self) -> None:
        """Raise :class:`StateError` if the lock file was removed or replaced under us.

        Someone "cleaning up" the lock file of a running writer lets a second writer in
        (it creates and locks a new file); the first one notices here and stops.
        """
        if self._held is None:
            return
        if _identity_of(self.path) != self._held.identity:
            raise StateError(
                f"the lock file {self.path} was removed or replaced while this run held it, "
                "so another run may now write the same db: stopped; never delete the lock "
                "of a running desimirror (a dead holder's lock does not block anyone)"
            )

    def release(self) -> None:
        """Give the lock up: the last of this process's users removes the file and closes it.

        The file goes while still locked, so a run that opened it meanwhile finds, once it
        has the lock, that the path is no longer its file, and starts over (see
        :func:`acquire`). A holder that dies leaves the file behind: harmless, unlocked.
        """
        with _registry_lock:
            held, self._held = self._held, None
            if held is None:
                return
            held.users -= 1
            if held.users:
                return
            _registry.pop(held.identity, None)
            if _identity_of(self.path) == held.identity:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            os.close(held.fd)  # drops the lock


def acquire(db: str | os.PathLike[str], command: str) -> WriteLock:
    """Take the write lock of state db ``db`` for ``command``, or refuse at once.

    Raises :class:`LockedError` naming the holder when another process holds it, and
    :class:`StateError` when the lock file cannot be made (a read-only directory) or the
    filesystem has no POSIX locks.
    """
    path = lock_path(db)
    with _registry_lock:
        held = _registry.get(_identity_of(path) or (-1, -1))
        if held is not None:  # this process holds it already: share the one descriptor
            held.users += 1
            return WriteLock(path, held)
        for _ in range(20):  # bounded: each round means another run released meanwhile
            fd = _lock_file(db, path)
            st = os.fstat(fd)
            if _identity_of(path) == (st.st_dev, st.st_ino):
                break
            os.close(fd)  # we locked a file its holder removed on release: start over
        else:
            raise StateError(f"cannot take the lock {path}: it keeps being replaced")
        holder = Holder(os.getpid(), this_host(), time.time(), command)
        _write_holder(fd, holder)
        held = _Held(fd, (st.st_dev, st.st_ino), holder)
        _registry[held.identity] = held
        return WriteLock(path, held)


def _lock_file(db: str | os.PathLike[str], path: Path) -> int:
    """Open (or create) the lock file and lock it whole, without waiting: the descriptor."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _cannot_create(db, path, exc) from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd, wait=True)
        os.close(fd)  # we hold nothing on this file, so closing drops nobody's lock
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise LockedError(_refusal(db, holder)) from None
        raise StateError(
            f"cannot lock {path}: {exc.strerror} (the filesystem must support POSIX "
            "locks, e.g. NFS with lockd, not mounted 'nolock'; desimirror uses them to "
            "keep one writer per mirror)"
        ) from None
    _same_mode_as_db(fd, db)
    return fd


def _same_mode_as_db(fd: int, db: str | os.PathLike[str]) -> None:
    """Give the lock file the db's permission bits, as SQLite does its -wal and -shm, so
    that whoever may write the db (a group sharing a mirror) may take its lock."""
    with contextlib.suppress(OSError):  # no db yet, or not our file: leave it as it is
        os.fchmod(fd, os.stat(db).st_mode & 0o666)


def _identity_of(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _write_holder(fd: int, holder: Holder) -> None:
    data = json.dumps(holder.__dict__, sort_keys=True).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int, *, wait: bool = False) -> Holder | None:
    """What the lock file says; with ``wait``, give a holder that has just taken the lock
    a moment (at most half a second) to write it."""
    deadline = time.monotonic() + (0.5 if wait else 0.0)
    while True:
        try:
            data = os.pread(fd, 4096, 0)
            fields = json.loads(data)
            return Holder(
                int(fields["pid"]), str(fields["host"]), float(fields["since"]), fields["command"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def _refusal(db: str | os.PathLike[str], holder: Holder | None) -> str:
    who = holder.describe() if holder else "another desimirror (it has not said who yet)"
    text = (
        f"{os.fspath(db)} is being written by {who}: one writer at a time, so nothing was "
        "done; wait for it to finish or stop it, then run this again"
    )
    if holder and holder.elsewhere:
        return (
            f"{text}. It runs on another host than this one ({this_host()}): use this "
            f"mirror's db from {holder.host} only (SQLite's WAL is not shared between hosts)"
        )
    return f"{text} ('desimirror status' reads at any time)"


def _cannot_create(db: str | os.PathLike[str], path: Path, exc: OSError) -> StateError:
    if exc.errno in (errno.EACCES, errno.EPERM) and path.exists():
        holder = _probe(path)
        if holder is not None:  # another user's run holds it
            return LockedError(_refusal(db, holder))
        return StateError(
            f"cannot write the lock file {path} ({exc.strerror}): a run of another user "
            "left it behind when it stopped, and nothing holds it now; remove it"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StateError(not_writable_message(db))
    if exc.errno == errno.ENOENT:
        return StateError(f"cannot write state db {db}: {path.parent} is not a directory")
    return StateError(f"cannot create the lock file {path}: {exc.strerror or exc}")


def not_writable_message(db: str | os.PathLike[str]) -> str:
    """The one line for a state db whose directory cannot be written."""
    name = Path(db).name
    return (
        f"the directory of state db {os.fspath(db)} is not writable: desimirror keeps "
        f"{name}{LOCK_SUFFIX}, {name}-wal and {name}-shm beside the db, even to read it; "
        "make the directory writable, or copy the db into one that is"
    )


# -- the readers' side ---------------------------------------------------------------------

# struct flock, for F_GETLK: Linux (64-bit) and macOS lay it out differently.
_FLOCK = {"linux": "hhqqi4x", "darwin": "qqihh"}.get(sys.platform)


def current_holder(db: str | os.PathLike[str]) -> Holder | None:
    """Who writes ``db`` now, or None; never takes the lock, never waits.

    Uses ``F_GETLK``, which asks the kernel (or the filesystem's lock manager) whether a
    lock would conflict, so a holder that died is not reported. Returns None where the
    layout of ``struct flock`` is not known (not Linux or macOS).
    """
    path = lock_path(db)
    identity = _identity_of(path)
    if identity is None:
        return None
    with _registry_lock:
        held = _registry.get(identity)
        if held is not None:  # we hold it: opening and closing the file would drop it
            return held.holder
        return _probe(path)


def _probe(path: Path) -> Holder | None:
    """:func:`current_holder` for a lock file this process does not hold."""
    if _FLOCK is None or struct.calcsize("P") != 8:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _holder_if_locked(fd)
    finally:
        os.close(fd)  # we hold nothing on this file, so closing drops nobody's lock


def _holder_if_locked(fd: int) -> Holder | None:
    assert _FLOCK is not None
    if sys.platform == "darwin":
        query = struct.pack(_FLOCK, 0, 0, 0, fcntl.F_WRLCK, os.SEEK_SET)
    else:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    fields = struct.unpack(_FLOCK, answer)
    lock_type, pid = (fields[3], fields[2]) if sys.platform == "darwin" else (fields[0], fields[4])
    if lock_type == fcntl.F_UNLCK:
        return None
    return _read_holder(fd, wait=True) or Holder(pid, "", 0.0, "")


def reader_warning(db: str | os.PathLike[str]) -> str | None:
    """A warning for a reader of ``db`` while a writer on another host holds it, or None."""
    holder = current_holder(db)
    if holder is None or not holder.elsewhere:
        return None
    return (
        f"{os.fspath(db)} is being written from another host, by {holder.describe()}: "
        "SQLite's WAL cannot be read live from another host, so what this shows may be "
        f"stale or wrong; run this on {holder.host} for live figures"
    )
