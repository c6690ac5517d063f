"""The mirror's one state file: a SQLite manifest where every pipeline stage meets.

Crawl writes ``entries``; plan writes ``batches``; upload writes ``uploads`` and
``failures``; verify and status only read. No stage imports another: they share this
schema. The db runs in WAL mode so a ``status`` can read while an upload writes, and every
write happens inside :meth:`Manifest.atomic` so a kill -9 leaves either the old or the new
state, never half of one.

Paths are relative to the crawled root, ``/``-separated, UTF-8; the root itself is the
entry with path ``""``. Because every subtree is a contiguous range of paths in byte order,
"everything under directory D" is the range ``D/`` .. ``D0`` (``0`` follows ``/``), which an
index answers without recursion.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from desimirror.errors import StateError, UsageError, sqlite_failure
from desimirror.state import schema, writelock

APP_ID = "desimirror"
#: The ``schema_version`` meta value, which desimirrors older than the numbered migrations
#: check; the schema itself is versioned by ``PRAGMA user_version``
#: (:mod:`desimirror.state.schema`).
SCHEMA_VERSION = 1

Kind = Literal["file", "dir", "link", "other"]
LinkKind = Literal["file", "dir", "outside", "broken"]

#: Why a file is not mirrored (``failures.reason``): the store failed it, it is not the
#: crawl's file any more, its path leads out of the tree, its bytes differ from the published
#: SHA-256, or verify found its object wrong (never adopted by size again).
FAILED, CHANGED, UNSAFE, CORRUPT, MISMATCH = "error", "changed", "unsafe", "corrupt", "mismatch"
FAILURE_REASONS = (FAILED, CHANGED, UNSAFE, CORRUPT, MISMATCH)
#: How an object's content was proven (``uploads.proof``), strongest first; see UploadRecord.
PROOFS = ("sha256", "composite", "etag", "size", "none")

#: An entry the uploader sends: a regular file, or a symlink to a regular file inside the root.
UPLOADABLE = "(kind = 'file' OR (kind = 'link' AND link_kind = 'file'))"
#: The one definition of "not done", for an uploadable entry ``e`` LEFT JOINed with its
#: upload record ``u``: confirmed with the current size, mtime and identity (where both
#: sides know it), and not contradicted by the reference checksum (a *.sha256sum that
#: changed under an unchanged file). Used by :meth:`Manifest.totals` and the tree view.
NOT_DONE = (
    "(u.path IS NULL OR u.size != e.size OR u.mtime_ns IS NOT e.mtime_ns"
    " OR (u.ino IS NOT NULL AND e.ino IS NOT NULL AND (u.ino != e.ino"
    "     OR u.ctime_ns IS NOT e.ctime_ns OR u.dev IS NOT e.dev))"
    " OR (u.sha256 IS NOT NULL AND e.sha256 IS NOT NULL AND u.sha256 != e.sha256))"
)


@dataclass(frozen=True)
class Entry:
    """One crawled filesystem entry, as stored."""

    path: str
    kind: Kind
    size: int
    mtime_ns: int | None = None
    link_target: str | None = None
    link_kind: LinkKind | None = None
    sha256: str | None = None
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """(ctime_ns, ino, dev) as the crawl saw them, None where it did not stat."""
        if self.ino is None or self.ctime_ns is None or self.dev is None:
            return None
        return (self.ctime_ns, self.ino, self.dev)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str | None:
        if self.path == "":
            return None
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


@dataclass(frozen=True)
class UploadRecord:
    """One file confirmed in the bucket, and how its content was confirmed.

    ``proof`` is one of: ``sha256`` (the store validated the SHA-256 we sent, or returned
    one equal to the file's), ``composite`` (a multipart object: the store validated every
    part's SHA-256, and the parts were read in order into the whole-file SHA-256),
    ``etag`` (the object's MD5 ETag equals the one computed from the file), ``size``
    (adopted by size only, content unproven), ``none`` (sent; the store confirmed no checksum).
    ``ctime_ns``, ``ino`` and ``dev`` are the file's identity when it was sent: a later
    crawl that finds another identity makes the file pending again.
    """

    path: str
    key: str
    size: int
    mtime_ns: int
    etag: str | None
    sha256: str | None = None
    part_size: int | None = None
    parts: tuple[str, ...] = ()
    proof: str = "none"
    adopted: bool = False
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None


#: An upsert's test that the entry is the same file as before (so its checksum still holds).
_UNCHANGED = (
    "entries.size = excluded.size AND entries.mtime_ns IS excluded.mtime_ns"
    " AND entries.ctime_ns IS excluded.ctime_ns AND entries.ino IS excluded.ino"
    " AND entries.dev IS excluded.dev"
)


class RunTotals(NamedTuple):
    """The upload runs so far (see :meth:`Manifest.upload_run_totals`)."""

    count: int
    bytes: int
    seconds: float
    last_bytes: int
    last_seconds: float


def _upsert_entries(crawl_id: int, *, with_sha256: bool) -> str:
    """The one upsert of entries, for rows of (path, parent, name, kind, size, mtime_ns,
    link_target, link_kind, ctime_ns, ino, dev[, sha256]) seen by crawl ``crawl_id``.

    A recorded checksum survives only if the entry is the same file as before (see
    :data:`_UNCHANGED`); rows without one (a crawl's) keep it then, and drop it otherwise.
    """
    sha256 = "?" if with_sha256 else "NULL"
    return (
        "INSERT INTO entries (path, parent, name, kind, size, mtime_ns, link_target,"
        " link_kind, ctime_ns, ino, dev, sha256, crawl_id)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {sha256}, {int(crawl_id)})"
        " ON CONFLICT (path) DO UPDATE SET parent = excluded.parent, name = excluded.name,"
        " kind = excluded.kind,"
        f" sha256 = CASE WHEN {_UNCHANGED}"
        "   THEN coalesce(excluded.sha256, entries.sha256) ELSE excluded.sha256 END,"
        " size = excluded.size, mtime_ns = excluded.mtime_ns,"
        " link_target = excluded.link_target, link_kind = excluded.link_kind,"
        " crawl_id = excluded.crawl_id, ctime_ns = excluded.ctime_ns,"
        " ino = excluded.ino, dev = excluded.dev"
    )


def roll_up(own: dict[str, int], top: str = "") -> dict[str, int]:
    """Recursive totals per directory from each directory's own (bytes, say): deepest
    first, each added into its parent when the parent is among them, never past ``top``.

    The one definition of a directory's size, for the manifest, the crawl (which sums as
    it lists) and the planner (over a selection).
    """
    totals = dict(own)
    for path in sorted(totals, key=_depth, reverse=True):
        if path != top and path:
            parent = path.rpartition("/")[0]
            if parent in totals:
                totals[parent] += totals[path]
    return totals


def _depth(path: str) -> int:
    return path.count("/") + (path != "")


def _at_or_below(path: str, dirs: set[str]) -> bool:
    """True if ``path`` is one of ``dirs`` or inside one of them."""
    while True:
        if path in dirs:
            return True
        if not path:
            return False
        path = path.rpartition("/")[0]


def subtree_range(path: str) -> tuple[str, str]:
    """The half-open key range holding everything strictly below directory ``path``."""
    if path == "":
        return ("", "\U0010ffff")
    return (path + "/", path + "0")


class Manifest:
    """A connection to one mirror's state db. Use :meth:`open`; close when done."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._savepoints = 0  # for unique savepoint names in nested atomic() blocks

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False, writer: str | None = None) -> Manifest:
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

    def __enter__(self) -> Manifest:
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

    # -- crawl ---------------------------------------------------------------------------

    def unfinished_crawl(self) -> tuple[int, float] | None:
        """(id, started) of the last crawl if it never finished (interrupted, killed, its
        node rebooted), else None. Its manifest holds only part of the tree."""
        row = self.conn.execute(
            "SELECT id, started, finished FROM crawls ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row is not None and row[2] is None else None

    def partial_tree_warning(self) -> str | None:
        """The line every command repeats while the manifest rests on an unfinished crawl."""
        unfinished = self.unfinished_crawl()
        if unfinished is None:
            return None
        crawl_id, started = unfinished
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started))
        return (
            f"the last crawl (#{crawl_id}, started {when}) did not finish: the manifest holds "
            "only part of the tree; run the same 'desimirror crawl' again to complete it"
        )

    def plan_options(self) -> dict:
        """What the stored plan was made with (see :func:`desimirror.pipeline.plan.store_plan`)."""
        return json.loads(self.get_meta("plan_options") or "{}")

    def require_whole_tree(self, command: str) -> str | None:
        """Refuse ``command`` over an unfinished crawl unless the plan was made over that
        very crawl with ``--partial``; then return the warning to repeat (else None)."""
        warning = self.partial_tree_warning()
        if warning is None:
            return None
        unfinished = self.unfinished_crawl()
        options = self.plan_options()
        if unfinished and options.get("partial") and options.get("crawl_id") == unfinished[0]:
            return warning + " (planned with --partial)"
        raise UsageError(
            f"{warning}; '{command}' refuses a partial tree (or run 'desimirror plan --partial'"
            " to mirror only what it saw)"
        )

    def begin_crawl(self, root: str) -> int:
        with self.atomic() as conn:
            cur = conn.execute(
                "INSERT INTO crawls (root, started) VALUES (?, ?)", (root, time.time())
            )
        return int(cur.lastrowid)

    def put_entries(self, crawl_id: int, entries: Iterable[Entry]) -> int:
        """Insert or refresh entries as seen by crawl ``crawl_id``; call inside :meth:`atomic`.

        The published checksum survives a re-crawl only if the file did not change.
        """
        rows = [
            (
                e.path,
                e.parent,
                e.name if e.path else "",
                e.kind,
                e.size,
                e.mtime_ns,
                e.link_target,
                e.link_kind,
                e.ctime_ns,
                e.ino,
                e.dev,
                e.sha256,
            )
            for e in entries
        ]
        self.conn.executemany(_upsert_entries(crawl_id, with_sha256=True), rows)
        return len(rows)

    def put_crawl_errors(self, crawl_id: int, errors: Iterable[tuple[str, str]]) -> int:
        """Record (path, message) pairs; call inside :meth:`atomic`."""
        rows = [(crawl_id, p, m) for p, m in errors]
        self.conn.executemany(
            "INSERT INTO crawl_errors (crawl_id, path, error) VALUES (?, ?, ?)", rows
        )
        return len(rows)

    def close_crawl(
        self,
        crawl_id: int,
        *,
        keep: Iterable[str] = (),
        sizes_written: bool = False,
        earlier_entries: bool = True,
    ) -> int:
        """Mark crawl ``crawl_id`` finished, the one way a crawl or an import ends.

        Entries it did not see are dropped (they vanished), except at or below ``keep``: a
        crawl that could not read some directories does not know what is below them now,
        and dropping their earlier records would make a transient permission or filesystem
        hiccup look like deleted data. Directory sizes are rolled up from the files unless
        the crawl wrote them itself (``sizes_written``); ``earlier_entries=False`` (a first
        crawl) skips looking for entries to drop. Returns the number dropped. A crawl that
        never gets here stays unfinished, and the commands that need the whole tree refuse
        it (:meth:`require_whole_tree`).
        """
        with self.atomic() as conn:
            dropped = self._drop_unseen(crawl_id, set(keep)) if earlier_entries else 0
            if dropped:  # vanished entries lose their failure records; uploads stay for verify
                conn.execute("DELETE FROM failures WHERE path NOT IN (SELECT path FROM entries)")
            if not sizes_written:
                self._roll_up_dir_sizes()
            _record_crawl_counts(conn, crawl_id)
        return dropped

    def _drop_unseen(self, crawl_id: int, keep: set[str]) -> int:
        if not keep:
            return self.conn.execute(
                "DELETE FROM entries WHERE crawl_id != ?", (crawl_id,)
            ).rowcount
        stale = self.conn.execute("SELECT path FROM entries WHERE crawl_id != ?", (crawl_id,))
        gone = [(p,) for (p,) in stale.fetchall() if not _at_or_below(p, keep)]
        self.conn.executemany("DELETE FROM entries WHERE path = ?", gone)
        return len(gone)

    def _roll_up_dir_sizes(self) -> None:
        """Set each directory's size to the recursive sum of the uploadables below it."""
        own = dict.fromkeys(
            (p for (p,) in self.conn.execute("SELECT path FROM entries WHERE kind = 'dir'")), 0
        )
        for parent, nbytes in self.conn.execute(
            f"SELECT parent, sum(size) FROM entries WHERE {UPLOADABLE} GROUP BY parent"
        ):
            if parent in own:
                own[parent] = nbytes
        self.put_dir_sizes((total, path) for path, total in roll_up(own).items())

    def uploadable_totals(self) -> tuple[int, int]:
        """(files, bytes) of every uploadable entry."""
        return self.conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM entries WHERE {UPLOADABLE}"
        ).fetchone()

    # -- reading the tree ---------------------------------------------------------------

    def _entry(self, row: tuple) -> Entry:
        return Entry(*row)

    _COLS = "path, kind, size, mtime_ns, link_target, link_kind, sha256, ctime_ns, ino, dev"

    def get(self, path: str) -> Entry | None:
        row = self.conn.execute(
            f"SELECT {self._COLS} FROM entries WHERE path = ?", (path,)
        ).fetchone()
        return self._entry(row) if row else None

    def children(self, parent: str) -> list[Entry]:
        """A directory's entries, directories first, then by name (the seed's order)."""
        rows = self.conn.execute(
            f"SELECT {self._COLS} FROM entries WHERE parent = ? ORDER BY kind != 'dir', name",
            (parent,),
        )
        return [self._entry(r) for r in rows]

    def iter_uploadables(self, under: str = "") -> Iterator[Entry]:
        """Every uploadable entry at or below ``under``, in path order, streamed."""
        lo, hi = subtree_range(under)
        rows = self.conn.execute(
            f"SELECT {self._COLS} FROM entries WHERE {UPLOADABLE}"
            " AND ((path >= ? AND path < ?) OR path = ?) ORDER BY path",
            (lo, hi, under),
        )
        for row in rows:
            yield self._entry(row)

    def count_entries(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT kind, count(*) FROM entries GROUP BY kind"))

    # A directory's nodes in the seed's order, straight from the parent index: the type as
    # find.json has it (0 directory, 1 uploadable, -1 other or broken; links to directories
    # and out of the tree are left out), then the name. SQLite compares text in its default
    # BINARY collation byte by byte, which for UTF-8 is code point order: the order
    # Python's sort and the original's give. No Entry objects: a million of them cost more
    # than all the queries.
    _TYPED_CHILDREN = """
    SELECT name, type, size FROM (
        SELECT name, size, CASE
            WHEN kind = 'dir' THEN 0
            WHEN kind = 'file' OR link_kind = 'file' THEN 1
            WHEN kind = 'other' OR link_kind = 'broken' THEN -1
        END AS type
        FROM entries WHERE parent = ?
    ) WHERE type IS NOT NULL ORDER BY type, name
    """

    def typed_children(self, parent: str) -> list[tuple[str, int, int]]:
        """(name, type, size) of a directory's nodes as find.json lists them, in its order."""
        return self.conn.execute(self._TYPED_CHILDREN, (parent,)).fetchall()

    def direct_totals(self, under: str) -> dict[str, tuple[int, int]]:
        """directory -> (bytes, files) of the uploadables directly in it, below ``under``."""
        lo, hi = subtree_range(under)
        rows = self.conn.execute(
            f"SELECT parent, coalesce(sum(size), 0), count(*) FROM entries"
            f" WHERE {UPLOADABLE} AND path >= ? AND path < ? GROUP BY parent",
            (lo, hi),
        )
        return {parent: (nbytes, nfiles) for parent, nbytes, nfiles in rows}

    def directories_below(self, under: str) -> Iterator[str]:
        """The paths of the directories strictly below ``under``."""
        lo, hi = subtree_range(under)
        rows = self.conn.execute(
            "SELECT path FROM entries WHERE kind = 'dir' AND path >= ? AND path < ?", (lo, hi)
        )
        return (path for (path,) in rows)

    def uploadable_children(self, parent: str) -> list[tuple[str, int]]:
        """(path, size) of the uploadables directly in ``parent``, by name."""
        return self.conn.execute(
            f"SELECT path, size FROM entries WHERE parent = ? AND {UPLOADABLE} ORDER BY name",
            (parent,),
        ).fetchall()

    def uploadable_links(self) -> set[str]:
        """The symlinks that are uploaded (as copies of a file inside the tree)."""
        rows = self.conn.execute(f"SELECT path FROM entries WHERE {UPLOADABLE} AND kind = 'link'")
        return {path for (path,) in rows}

    def iter_with_published(self) -> Iterator[tuple[Entry, str | None]]:
        """Every entry in path order, with the SHA-256 the release published for it."""
        cols = ", ".join("e." + c for c in self._COLS.split(", "))
        rows = self.conn.execute(
            f"SELECT {cols}, p.sha256 FROM entries e LEFT JOIN published p ON p.path = e.path"
            " ORDER BY e.path"
        )
        for row in rows:
            yield self._entry(row[:-1]), row[-1]

    def last_crawl_id(self) -> int | None:
        return self.conn.execute("SELECT max(id) FROM crawls").fetchone()[0]

    # -- plan ------------------------------------------------------------------------------

    def replace_plan(
        self,
        batches: Iterable[tuple[int, int, list[tuple[str, bool]]]],
        *,
        meta: dict[str, str] | None = None,
    ) -> int:
        """Store a new plan: (bytes, files, [(path, is_dir), ...]) per batch, in order, and
        the plan's options in ``meta``, in one transaction so they never disagree.

        Upload progress is per file, so a new plan never loses what was already sent.
        """
        batch_rows: list[tuple[int, int, int]] = []
        path_rows: list[tuple[int, str, int]] = []
        for n, (nbytes, nfiles, paths) in enumerate(batches, start=1):
            batch_rows.append((n, nbytes, nfiles))
            path_rows.extend((n, p, int(d)) for p, d in paths)
        with self.atomic() as conn:
            conn.execute("DELETE FROM batch_paths")
            conn.execute("DELETE FROM batches")
            conn.executemany("INSERT INTO batches (id, bytes, files) VALUES (?, ?, ?)", batch_rows)
            conn.executemany(
                "INSERT INTO batch_paths (batch_id, path, is_dir) VALUES (?, ?, ?)", path_rows
            )
            for key, value in (meta or {}).items():
                self._set_meta_raw(key, value)
        return len(batch_rows)

    def iter_batches(self) -> Iterator[tuple[int, int, int, list[tuple[str, bool]]]]:
        """(id, bytes, files, [(path, is_dir)]) for every batch, in plan order."""
        batches = self.conn.execute("SELECT id, bytes, files FROM batches ORDER BY id").fetchall()
        for batch_id, nbytes, nfiles in batches:
            paths = [
                (p, bool(d))
                for p, d in self.conn.execute(
                    "SELECT path, is_dir FROM batch_paths WHERE batch_id = ? ORDER BY path",
                    (batch_id,),
                )
            ]
            yield batch_id, nbytes, nfiles, paths

    def mark_batch_complete(self, batch_id: int) -> None:
        with self.atomic() as conn:
            conn.execute("UPDATE batches SET completed = ? WHERE id = ?", (time.time(), batch_id))

    def batch_entries(self, paths: list[tuple[str, bool]]) -> Iterator[Entry]:
        """The uploadable entries a batch covers, streamed in path order."""
        for path, is_dir in paths:
            if is_dir:
                yield from self.iter_uploadables(path)
            else:
                entry = self.get(path)
                if entry is not None:
                    yield entry

    # -- upload state ------------------------------------------------------------------------

    def is_done(self, entry: Entry) -> bool:
        """True when the object for this entry was confirmed with the entry's size and mtime
        (and, where both are known, with the entry's reference SHA-256)."""
        row = self.conn.execute(
            "SELECT size, mtime_ns, sha256, ctime_ns, ino, dev FROM uploads WHERE path = ?",
            (entry.path,),
        ).fetchone()
        if row is None or row[:2] != (entry.size, entry.mtime_ns):
            return False
        sent_as = None if None in row[3:] else tuple(row[3:])
        if sent_as is not None and entry.identity is not None and sent_as != entry.identity:
            return False
        return row[2] is None or entry.sha256 is None or row[2] == entry.sha256

    # Done = confirmed with the current size, mtime and identity (where both sides know
    # it), and not contradicted by the reference checksum (a *.sha256sum that changed
    # under an unchanged file).
    _PENDING = (
        " FROM entries e LEFT JOIN uploads u ON u.path = e.path"
        " WHERE (e.kind = 'file' OR (e.kind = 'link' AND e.link_kind = 'file'))"
        f" AND {NOT_DONE}"
    )

    def pending_in(self, paths: list[tuple[str, bool]]) -> list[Entry]:
        """The entries of a batch not yet confirmed in the bucket with their current state."""
        cols = ", ".join("e." + c for c in self._COLS.split(", "))
        found: list[Entry] = []
        for path, is_dir in paths:
            if is_dir:
                lo, hi = subtree_range(path)
                where, args = " AND e.path >= ? AND e.path < ?", (lo, hi)
            else:
                where, args = " AND e.path = ?", (path,)
            rows = self.conn.execute(f"SELECT {cols}{self._PENDING}{where} ORDER BY e.path", args)
            found.extend(self._entry(r) for r in rows)
        return found

    def totals(self, under: str = "") -> dict[str, int]:
        """Files and bytes of the uploadables at or below ``under``: all, and still pending."""
        lo, hi = subtree_range(under)
        in_range = " AND ((e.path >= ? AND e.path < ?) OR e.path = ?)"
        args = (lo, hi, under)
        all_files, all_bytes = self.conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM entries e WHERE {UPLOADABLE}" + in_range,
            args,
        ).fetchone()
        pending_files, pending_bytes = self.conn.execute(
            f"SELECT count(*), coalesce(sum(e.size), 0){self._PENDING}{in_range}", args
        ).fetchone()
        return {
            "files": all_files,
            "bytes": all_bytes,
            "pending_files": pending_files,
            "pending_bytes": pending_bytes,
        }

    def record_mirrored(self, records: Iterable[UploadRecord]) -> int:
        """Mark files as confirmed in the bucket, with their checksums; inside atomic.

        A computed SHA-256 also becomes the entry's reference checksum when the entry still
        has the size and mtime it was computed for and has no published one.
        """
        now = time.time()
        rows = [
            (
                r.path,
                r.key,
                r.size,
                r.mtime_ns,
                r.etag,
                now,
                r.sha256,
                r.part_size,
                " ".join(r.parts) or None,
                r.proof,
                int(r.adopted),
                r.ctime_ns,
                r.ino,
                r.dev,
            )
            for r in records
        ]
        self.conn.executemany(
            "INSERT INTO uploads (path, key, size, mtime_ns, etag, uploaded_at, sha256,"
            " part_size, parts, proof, adopted, ctime_ns, ino, dev)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET key = excluded.key, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, etag = excluded.etag,"
            " uploaded_at = excluded.uploaded_at, sha256 = excluded.sha256,"
            " part_size = excluded.part_size, parts = excluded.parts, proof = excluded.proof,"
            " adopted = excluded.adopted, ctime_ns = excluded.ctime_ns, ino = excluded.ino,"
            " dev = excluded.dev",
            rows,
        )
        self.conn.executemany(
            "UPDATE entries SET sha256 = ? WHERE path = ? AND size = ? AND mtime_ns IS ?"
            " AND (ino IS NULL OR ? IS NULL OR (ino = ? AND ctime_ns IS ?)) AND sha256 IS NULL",
            [(r[6], r[0], r[2], r[3], r[12], r[12], r[11]) for r in rows if r[6]],
        )
        self.conn.executemany("DELETE FROM failures WHERE path = ?", [(r[0],) for r in rows])
        return len(rows)

    def upload_record(self, path: str) -> UploadRecord | None:
        """What the uploads table says about one file, or None."""
        row = self.conn.execute(
            "SELECT path, key, size, mtime_ns, etag, sha256, part_size, parts, proof, adopted,"
            " ctime_ns, ino, dev FROM uploads WHERE path = ?",
            (path,),
        ).fetchone()
        if row is None:
            return None
        return UploadRecord(
            *row[:7],
            parts=tuple((row[7] or "").split()),
            proof=row[8] or "none",
            adopted=bool(row[9]),
            ctime_ns=row[10],
            ino=row[11],
            dev=row[12],
        )

    def record_failure(self, path: str, reason: str, error: str) -> None:
        """Remember why a file is not mirrored; inside atomic. ``error`` must be redacted."""
        self.conn.execute(
            "INSERT INTO failures (path, reason, error, attempts, at) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (path) DO UPDATE SET reason = excluded.reason,"
            " error = excluded.error, attempts = failures.attempts + 1, at = excluded.at",
            (path, reason, error, time.time()),
        )

    def begin_upload_run(self) -> int:
        with self.atomic() as conn:
            cur = conn.execute("INSERT INTO upload_runs (started) VALUES (?)", (time.time(),))
        return int(cur.lastrowid)

    def tick_upload_run(self, run_id: int, files: int, nbytes: int) -> None:
        """Add confirmed work to a run and stamp its end; inside atomic, with the uploads."""
        self.conn.execute(
            "UPDATE upload_runs SET files = files + ?, bytes = bytes + ?, finished = ?"
            " WHERE id = ?",
            (files, nbytes, time.time(), run_id),
        )

    # -- published checksums (*.sha256sum files of the release) --------------------------

    def checksum_listings(self, suffix: str = ".sha256sum") -> list[tuple[str, int, int | None]]:
        """(path, size, mtime_ns) of every regular file named ``*.sha256sum``.

        Symlinks are left out on purpose: a listing is read, and only what the crawl saw as a
        regular file inside the tree may be read.
        """
        pattern = "%" + suffix.replace("%", "").replace("_", "\\_")
        return self.conn.execute(
            "SELECT path, size, mtime_ns FROM entries WHERE kind = 'file'"
            " AND name LIKE ? ESCAPE '\\' ORDER BY path",
            (pattern,),
        ).fetchall()

    def read_listings(self) -> dict[str, tuple[int, int | None]]:
        """The listings already read: path -> (size, mtime_ns) at the time."""
        rows = self.conn.execute("SELECT path, size, mtime_ns FROM checksum_files")
        return {p: (s, m) for p, s, m in rows}

    def replace_listing(
        self, path: str, size: int, mtime_ns: int | None, claims: dict[str, str], errors: int
    ) -> None:
        """Store what one listing claims, replacing its earlier claims; inside atomic.

        When two listings claim the same file, the one deeper in the tree (nearer the file)
        wins: a product directory's own listing over a summary further up.
        """
        conn = self.conn
        conn.execute("DELETE FROM published WHERE listed_in = ?", (path,))
        depth = "(length({0}) - length(replace({0}, '/', '')))"
        conn.executemany(
            "INSERT INTO published (path, sha256, listed_in) VALUES (?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256,"
            " listed_in = excluded.listed_in"
            f" WHERE {depth.format('excluded.listed_in')} > {depth.format('published.listed_in')}",
            [(p, d, path) for p, d in claims.items()],
        )
        conn.execute(
            "INSERT INTO checksum_files (path, size, mtime_ns, claims, errors, read_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, claims = excluded.claims, errors = excluded.errors,"
            " read_at = excluded.read_at",
            (path, size, mtime_ns, len(claims), errors, time.time()),
        )

    def drop_listing(self, path: str) -> None:
        """Forget a listing that is gone from the tree, and its claims; inside atomic."""
        self.conn.execute("DELETE FROM published WHERE listed_in = ?", (path,))
        self.conn.execute("DELETE FROM checksum_files WHERE path = ?", (path,))

    def published_counts(self) -> dict[str, int]:
        """How the published claims cover the uploadables (see ``ChecksumReport``)."""
        claims = self.conn.execute("SELECT count(*) FROM published").fetchone()[0]
        files, with_published, with_sha = self.conn.execute(
            "SELECT count(*), count(p.path), count(e.sha256) FROM entries e"
            f" LEFT JOIN published p ON p.path = e.path WHERE {UPLOADABLE}"
        ).fetchone()
        absent = self.conn.execute(
            "SELECT count(*) FROM published p WHERE NOT EXISTS"
            f" (SELECT 1 FROM entries e WHERE e.path = p.path AND {UPLOADABLE})"
        ).fetchone()[0]
        return {
            "claims": claims,
            "files": files,
            "files_with_published": with_published,
            "files_with_computed": with_sha - with_published,
            "listed_but_absent": absent,
        }

    def apply_published(self) -> int:
        """Make every published claim the reference checksum of its entry; the count changed.

        Runs after each sync: a file that changed since a crawl lost its checksum there, and
        gets the claim back here, so that bytes which no longer match what the release
        published are caught instead of mirrored.
        """
        with self.atomic() as conn:
            cur = conn.execute(
                "UPDATE entries SET sha256 = p.sha256 FROM published p"
                " WHERE p.path = entries.path AND entries.kind IN ('file', 'link')"
                " AND entries.sha256 IS NOT p.sha256"
            )
        return max(cur.rowcount, 0)

    # -- files gone from the source ---------------------------------------------------------

    def gone_uploads(self) -> list[tuple[str, str, int, str | None, bool]]:
        """(path, key, size, etag, adopted) of objects recorded for files no longer uploadable."""
        return self.conn.execute(
            "SELECT u.path, u.key, u.size, u.etag, u.adopted FROM uploads u"
            f" WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = u.path AND {UPLOADABLE})"
            " ORDER BY u.path"
        ).fetchall()

    def forget_uploads(self, paths: Iterable[str]) -> int:
        """Drop upload records (objects deleted, or found wrong); inside atomic. Returns
        how many there were."""
        cur = self.conn.executemany("DELETE FROM uploads WHERE path = ?", [(p,) for p in paths])
        return max(cur.rowcount, 0)

    # -- crawl: bulk loading -------------------------------------------------------------
    #
    # A crawl writes one row per entry, millions of them, as fast as the filesystem lists
    # them. These methods let it do that without per-row overhead; the rows mean exactly
    # what put_entries writes. Nothing else in the mirror needs them.

    #: The secondary index of ``entries``, as the schema creates it.
    _PARENT_INDEX = "CREATE INDEX IF NOT EXISTS entries_by_parent ON entries (parent, name)"

    def has_entries(self) -> bool:
        """True if any entry is recorded (a re-crawl), False for a first crawl."""
        return self.conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None

    @contextmanager
    def bulk_load(self, *, drop_parent_index: bool = False) -> Iterator[None]:
        """Settings for writing a crawl's rows, restored (and checkpointed) on the way out.

        - ``wal_autocheckpoint = 0``: the writer never stops to copy the WAL into the
          database; the crawl does that from a second connection in the background
          (``crawl._Checkpointer``), and this method once more on the way out.
        - ``synchronous = OFF``: in WAL mode a commit does not sync under NORMAL either;
          what OFF leaves out is the sync around checkpoints, and this connection makes
          none (the background ones and the last one run with NORMAL). So a power loss
          still leaves the database file as of the last checkpoint plus the WAL's intact,
          checksummed prefix of whole transactions, the guarantee NORMAL gives. A crash of
          the crawl loses at most its rows not yet committed: the crawl is run again.
        - ``ignore_check_constraints``: the kind column's ``CHECK (kind IN (...))`` costs
          about 2 µs a row (SQLite rebuilds the IN list at every statement run); the crawl
          writes only its own four constants.
        - ``drop_parent_index`` (a first crawl: nobody can be reading the tree yet):
          building ``entries_by_parent`` once at the end, by sorting, costs a fraction of
          updating it row by row; the upsert needs only the primary key. The index is
          rebuilt on the way out, also when the crawl fails; if the process is killed
          first, the next bulk load (the next crawl) rebuilds it before anything else.
        """
        conn = self.conn
        conn.execute(self._PARENT_INDEX)  # a crawl killed in bulk mode may have left none
        if drop_parent_index:
            conn.execute("DROP INDEX IF EXISTS entries_by_parent")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA ignore_check_constraints = ON")
        try:
            yield
        finally:
            conn.execute("PRAGMA ignore_check_constraints = OFF")
            cache = conn.execute("PRAGMA cache_size").fetchone()[0]
            conn.execute("PRAGMA cache_size = -16384")  # the index sort, in memory: ~12% faster
            conn.execute(self._PARENT_INDEX)
            conn.execute(f"PRAGMA cache_size = {int(cache)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 1000")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def put_crawl_rows(self, crawl_id: int, rows: Sequence[tuple]) -> int:
        """:meth:`put_entries` for rows as a crawl makes them; call inside :meth:`atomic`.

        A row is ``(path, parent, name, kind, size, mtime_ns, link_target, link_kind,
        ctime_ns, ino, dev)``: plain tuples cost a fraction of :class:`Entry` objects at
        millions of rows. A crawl never brings a checksum, so a file's recorded one survives
        only if its size, mtime and identity did not change, as with put_entries.
        """
        self.conn.executemany(_upsert_entries(crawl_id, with_sha256=False), rows)
        return len(rows)

    def put_dir_sizes(self, sizes: Iterable[tuple[int, str]]) -> None:
        """Set ``(size, path)`` for directories; call inside :meth:`atomic`. For a crawl
        that saw the whole tree and summed it itself (:func:`roll_up`), without a pass
        over the table."""
        self.conn.executemany("UPDATE entries SET size = ? WHERE path = ?", sizes)

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

    # -- where the mirror stands (status, and the dashboard to come) ---------------------

    def failure_counts(self) -> dict[str, int]:
        """reason -> files not mirrored for it."""
        return dict(self.conn.execute("SELECT reason, count(*) FROM failures GROUP BY reason"))

    def recent_failures(self, limit: int) -> list[tuple[str, str, str, int]]:
        """(path, reason, error, attempts) of the latest failures, newest first."""
        return self.conn.execute(
            "SELECT path, reason, error, attempts FROM failures ORDER BY at DESC LIMIT ?",
            (limit,),
        ).fetchall()

    def upload_run_totals(self) -> RunTotals:
        """What the upload runs sent and how long they took, in all and in the latest."""
        count, nbytes, seconds = self.conn.execute(
            "SELECT count(*), coalesce(sum(bytes), 0), coalesce(sum(finished - started), 0)"
            " FROM upload_runs WHERE finished IS NOT NULL"
        ).fetchone()
        last_bytes, last_seconds = self.conn.execute(
            "SELECT bytes, finished - started FROM upload_runs WHERE finished IS NOT NULL"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone() or (0, 0.0)
        return RunTotals(count, nbytes, seconds, last_bytes, last_seconds)

    def batch_counts(self) -> tuple[int, int]:
        """(batches planned, batches an upload found complete)."""
        return self.conn.execute("SELECT count(*), count(completed) FROM batches").fetchone()

    def last_crawl(self) -> tuple | None:
        """(id, root, started, finished, entries, errors) of the latest crawl, or None."""
        return self.conn.execute(
            "SELECT id, root, started, finished, entries, errors FROM crawls"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()

    def proof_counts(self) -> dict[str, int]:
        """proof -> objects recorded with it (see :class:`UploadRecord`)."""
        rows = self.conn.execute("SELECT coalesce(proof, 'none'), count(*) FROM uploads GROUP BY 1")
        return dict(rows)

    def adopted_count(self) -> int:
        """Objects found in the bucket and recorded without being sent."""
        return self.conn.execute("SELECT count(*) FROM uploads WHERE adopted").fetchone()[0]

    def paths_failed_for(self, reason: str) -> set[str]:
        """The paths whose last failure has ``reason``."""
        rows = self.conn.execute("SELECT path FROM failures WHERE reason = ?", (reason,))
        return {path for (path,) in rows}

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


def _record_crawl_counts(conn: sqlite3.Connection, crawl_id: int) -> None:
    """Mark a crawl finished with the manifest's entry count and the crawl's error count."""
    n_entries = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    n_errors = conn.execute(
        "SELECT count(*) FROM crawl_errors WHERE crawl_id = ?", (crawl_id,)
    ).fetchone()[0]
    conn.execute(
        "UPDATE crawls SET finished = ?, entries = ?, errors = ? WHERE id = ?",
        (time.time(), n_entries, n_errors, crawl_id),
    )
