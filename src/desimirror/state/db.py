"""The state db file and its connection: opening (and refusing what is not ours),
the write lock, transactions that nest, the ``meta`` table, and noticing a db deleted or
replaced under a running writer. The tables' own methods build on this (``entries``,
``batches``, ``uploads``, ``checksum_claims``) and :class:`~desimirror.state.manifest.Manifest`
joins them."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from desimirror.errors import StateError, sqlite_failure
from desimirror.state import schema, writelock

APP_ID = "desimirror"
#: The ``schema_version`` meta value, which desimirrors older than the numbered migrations
#: check; the schema itself is versioned by ``PRAGMA user_version``
#: (:mod:`desimirror.state.schema`).
SCHEMA_VERSION = 1


_Db = TypeVar("_Db", bound="StateDb")


class StateDb:
    """A connection to one mirror's state db. Use :meth:`open`; close when done."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._savepoints = 0  # for unique savepoint names in nested atomic() blocks

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(
        cls: type[_Db], path: str | Path, *, create: bool = False, writer: str | None = None
    ) -> _Db:
        """Open a state db; with ``create``, make a new one if the file is absent or empty.

        ``writer`` names the command that is going to write (``"upload"``): it takes the
        mirror's write lock first (:mod:`desimirror.state.writelock`), so that a second writer
        is refused at once, naming this one; :meth:`close` gives it up. Readers pass
        nothing: they never take the lock and never wait for it.

        A file that is not SQLite, or SQLite that is not ours, raises :class:`StateError`
        and is left untouched.
        """
        path = Path(path)
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh and not create:
            raise StateError(f"no state db at {path}: run 'desimirror crawl' first")
        if fresh and not path.parent.is_dir():
            raise StateError(f"cannot create state db {path}: {path.parent} is not a directory")
        lock = writelock.acquire(path, writer) if writer is not None else None
        try:
            try:
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            except sqlite3.Error as exc:
                raise cls._open_failure(path, exc, f"cannot open state db {path}") from None
            manifest = cls(conn, path)
            try:
                manifest._check_or_init(fresh)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise cls._open_failure(
                    path, exc, f"{path} is not a usable desimirror state db ({exc})"
                ) from None
            except StateError:
                conn.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        manifest.lock = lock
        manifest._identity = _file_identity(path)
        return manifest

    def _check_or_init(self, fresh: bool) -> None:
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 30000")
        if fresh:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            with self.atomic():
                schema.upgrade(conn)
                self._set_meta_raw("app", APP_ID)
                self._set_meta_raw("schema_version", str(SCHEMA_VERSION))
                self._set_meta_raw("created", repr(time.time()))
            return
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            raise StateError(f"{self.path} is not a desimirror state db; refusing to touch it")
        if self.get_meta("app") != APP_ID:
            raise StateError(f"{self.path} is not a desimirror state db; refusing to touch it")
        version = int(self.get_meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer desimirror (schema {version}); upgrade"
            )
        schema.check_not_newer(conn, self.path)
        self._check_length()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if schema.version(conn) < schema.LATEST:
            with self.atomic():
                schema.upgrade(conn)

    def _check_length(self) -> None:
        """Refuse a db file cut short (a copy that did not finish, a full disk).

        Its header still opens, so the damage would only show mid-run, as an error in some
        later query. Cheap: the header's page count against the file's length. With pages
        still in the write-ahead log the file may legitimately be shorter, so only a db
        without a WAL is checked.
        """
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            return
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        if self.path.stat().st_size < pages * page_size:
            raise StateError(
                f"{self.path} is cut short ({self.path.stat().st_size:,} of "
                f"{pages * page_size:,} bytes): restore it from a copy; refusing to touch it"
            )

    def close(self) -> None:
        self.conn.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self: _Db) -> _Db:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions and metadata -----------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on success, rolled back on error.

        Inside another ``atomic`` block it is a savepoint: a failure rolls back only the
        inner block (the caller may handle it and go on), and nothing is committed before
        the outermost block ends. So a method that needs a transaction can take one
        whether or not its caller already holds one.
        """
        conn = self.conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        self._savepoints += 1
        name = f"desimirror_{self._savepoints}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")

    def bound_wal(self, max_bytes: int) -> bool:
        """Copy the WAL into the db and truncate it, if it has grown past ``max_bytes``;
        outside a transaction. Returns whether it did.

        SQLite's automatic checkpoints copy pages but cannot rewind the WAL while some
        reader's snapshot is in it, and the file never shrinks: under a ``status`` run in a
        loop, a days-long upload's WAL grows without bound. This waits for the readers (at
        most ``busy`` seconds; else it tries at the next call) and truncates the file.
        """
        try:
            size = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return False
        if size <= max_bytes or self.conn.in_transaction:
            return False
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 2000")
        try:
            busy, _log, _copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute("PRAGMA busy_timeout = 30000")
        return not busy

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta_raw(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._set_meta_raw(key, value)

    @property
    def root(self) -> str | None:
        """Absolute path of the crawled directory (None for a tree imported from JSON)."""
        return self.get_meta("root")

    @property
    def root_name(self) -> str | None:
        """The crawled directory's name: the default key prefix (``edr`` for ``.../edr``)."""
        return self.get_meta("root_name")

    def bind_root(self, root: str | None, root_name: str) -> None:
        """Tie this db to one source tree; a different tree is refused, never mixed in."""
        known_root, known_name = self.root, self.root_name
        if known_name is not None and (known_root, known_name) != (root, root_name):
            raise StateError(
                f"{self.path} is the state of the mirror of {known_root or known_name}, "
                f"not {root or root_name}; use another --db"
            )
        if known_name is None:
            with self.atomic():
                if root is not None:
                    self._set_meta_raw("root", root)
                self._set_meta_raw("root_name", root_name)

    def record_store_note(self, name: str, note: dict) -> None:
        """Keep a small JSON note on how the object store behaved (``health``: its recent
        errors; ``validation``: whether it checked the checksums sent), for ``status`` and
        ``verify`` to read. Joins the caller's transaction if one is open."""
        value = json.dumps(note, sort_keys=True)
        if self.conn.in_transaction:
            self._set_meta_raw(f"store_{name}", value)
        else:
            self.set_meta(f"store_{name}", value)

    def store_note(self, name: str) -> dict | None:
        """The note :meth:`record_store_note` kept under ``name``, or None."""
        value = self.get_meta(f"store_{name}")
        return json.loads(value) if value else None

    # -- the db file itself: the write lock, and a file deleted or replaced under us -------

    #: The write lock, when opened with ``writer`` (see :meth:`open`).
    lock: writelock.WriteLock | None = None
    #: (st_dev, st_ino) of the db file as opened: see :meth:`check_in_place`.
    _identity: tuple[int, int] | None = None

    def check_in_place(self) -> None:
        """Raise :class:`StateError` if the file at :attr:`path` is no longer the one opened.

        SQLite keeps writing to a deleted db (the open file lives on, nameless), so a db
        removed or replaced during a run would take everything the run records with it,
        unnoticed: a writer calls this before each commit, and stops. Cheap: one stat.
        """
        if self._identity is None:
            return
        now = _file_identity(self.path)
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StateError(
                f"the state db {self.path} was {what} while this run wrote it, and what the "
                "run recorded went with the old file: stopped. Objects already sent are in "
                "the bucket; crawl, plan and upload again (into a new db if need be) adopt them"
            )
        if self.lock is not None:
            self.lock.check_in_place()

    @staticmethod
    def _open_failure(path: Path, exc: sqlite3.Error, default: str) -> StateError:
        """The one line for a db that SQLite cannot open: a directory we cannot write (WAL
        needs ``-shm`` beside the db even to read), a full disk, or ``default``."""
        if not os.access(path.parent, os.W_OK):
            return StateError(writelock.not_writable_message(path))
        return sqlite_failure(exc, path) or StateError(f"{default}; refusing to touch it")


@contextmanager
def wal_checkpointer(path: str | Path) -> Iterator[Callable[[], None]]:
    """A connection of its own that copies a db's WAL into the db when called, while
    another connection writes (see the crawl's bulk loading); closed on the way out."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA synchronous = NORMAL")
        yield lambda: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a file, None if it is gone (or for ``:memory:``)."""
    if str(path) == ":memory:":
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)
