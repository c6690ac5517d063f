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

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from desimirror.errors import StateError

APP_ID = "desimirror"
SCHEMA_VERSION = 1

Kind = Literal["file", "dir", "link", "other"]
LinkKind = Literal["file", "dir", "outside", "broken"]

#: An entry the uploader sends: a regular file, or a symlink to a regular file inside the root.
UPLOADABLE = "(kind = 'file' OR (kind = 'link' AND link_kind = 'file'))"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    path      TEXT PRIMARY KEY,           -- relative to the root; '' is the root
    parent    TEXT,                       -- NULL for the root
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'link', 'other')),
    size      INTEGER NOT NULL DEFAULT 0, -- files: bytes; dirs: recursive sum of uploadables
    mtime_ns  INTEGER,
    link_target TEXT,                     -- symlinks: what readlink says
    link_kind TEXT,                       -- symlinks: file | dir | outside | broken
    sha256    TEXT,                       -- published (*.sha256sum) or computed checksum
    crawl_id  INTEGER NOT NULL            -- the last crawl that saw this entry
) WITHOUT ROWID;
CREATE INDEX entries_by_parent ON entries (parent, name);
CREATE TABLE crawls (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    entries INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE crawl_errors (
    crawl_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE batches (
    id INTEGER PRIMARY KEY,               -- 1-based, in plan order
    bytes INTEGER NOT NULL,
    files INTEGER NOT NULL,
    completed REAL                        -- when an upload last found it fully mirrored
);
CREATE TABLE batch_paths (
    batch_id INTEGER NOT NULL REFERENCES batches (id),
    path TEXT NOT NULL,                   -- a directory taken whole, or one file
    is_dir INTEGER NOT NULL,
    PRIMARY KEY (batch_id, path)
) WITHOUT ROWID;
CREATE TABLE uploads (
    path TEXT PRIMARY KEY,                -- the entry this object was made from
    key TEXT NOT NULL,
    size INTEGER NOT NULL,                -- size and mtime of the file when it was sent
    mtime_ns INTEGER NOT NULL,
    etag TEXT,
    uploaded_at REAL NOT NULL,
    sha256 TEXT,                          -- hex SHA-256 of the bytes the object holds
    part_size INTEGER,                    -- multipart objects: the part size ...
    parts TEXT,                           -- ... and the parts' base64 SHA-256s, space-separated
    proof TEXT,                           -- how the content was confirmed (see UploadRecord)
    adopted INTEGER NOT NULL DEFAULT 0    -- 1: found in the bucket, not sent
) WITHOUT ROWID;
CREATE TABLE failures (
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,                 -- error | changed | unsafe | corrupt
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE upload_runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE published (
    path TEXT PRIMARY KEY,                -- the file a *.sha256sum claims a digest for
    sha256 TEXT NOT NULL,                 -- hex
    listed_in TEXT NOT NULL               -- the *.sha256sum file (a manifest path)
) WITHOUT ROWID;
CREATE INDEX published_by_listing ON published (listed_in);
CREATE TABLE checksum_files (
    path TEXT PRIMARY KEY,                -- a *.sha256sum file that was read ...
    size INTEGER NOT NULL,                -- ... with this size and mtime
    mtime_ns INTEGER,
    claims INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    read_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Additions since the first schema, applied in place to older dbs of the same version:
# tables are created if absent, columns added if absent. Additive only, in one transaction.
_ADDED_TABLES = ("published", "checksum_files")
_CREATES = re.compile(r"\s*CREATE (?:TABLE|INDEX \w+ ON) (\w+) \(")
_ADDED_COLUMNS = (
    ("uploads", "sha256", "TEXT"),
    ("uploads", "part_size", "INTEGER"),
    ("uploads", "parts", "TEXT"),
    ("uploads", "proof", "TEXT"),
    ("uploads", "adopted", "INTEGER NOT NULL DEFAULT 0"),
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

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> Manifest:
        """Open a state db; with ``create``, make a new one if the file is absent or empty.

        A file that is not SQLite, or SQLite that is not ours, raises :class:`StateError`
        and is left untouched.
        """
        path = Path(path)
        fresh = not path.exists() or path.stat().st_size == 0
        if fresh and not create:
            raise StateError(f"no state db at {path}: run 'desimirror crawl' first")
        if fresh and not path.parent.is_dir():
            raise StateError(f"cannot create state db {path}: {path.parent} is not a directory")
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state db {path}: {exc}") from None
        manifest = cls(conn, path)
        try:
            manifest._check_or_init(fresh)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StateError(
                f"{path} is not a usable desimirror state db ({exc}); refusing to touch it"
            ) from None
        except StateError:
            conn.close()
            raise
        return manifest

    def _check_or_init(self, fresh: bool) -> None:
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 30000")
        if fresh:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            with self.atomic():
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
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
        self._check_length()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._migrate(tables)

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

    def _migrate(self, tables: set[str]) -> None:
        """Bring a db of this schema version up to date with the additive changes."""
        conn = self.conn
        missing = {t for t in _ADDED_TABLES if t not in tables}
        statements = [
            statement
            for statement in _SCHEMA.split(";\n")
            if (m := _CREATES.match(statement)) and m.group(1) in missing
        ]
        for table, column, ddl in _ADDED_COLUMNS:
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                statements.append(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
        if statements:
            with self.atomic():
                for statement in statements:
                    conn.execute(statement)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions and metadata -----------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on success, rolled back on error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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
                e.sha256,
                crawl_id,
            )
            for e in entries
        ]
        self.conn.executemany(
            "INSERT INTO entries (path, parent, name, kind, size, mtime_ns, link_target,"
            " link_kind, sha256, crawl_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET parent = excluded.parent, name = excluded.name,"
            " kind = excluded.kind,"
            " sha256 = CASE WHEN entries.size = excluded.size"
            "   AND entries.mtime_ns IS excluded.mtime_ns"
            "   THEN coalesce(excluded.sha256, entries.sha256) ELSE excluded.sha256 END,"
            " size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " link_target = excluded.link_target, link_kind = excluded.link_kind,"
            " crawl_id = excluded.crawl_id",
            rows,
        )
        return len(rows)

    def put_crawl_errors(self, crawl_id: int, errors: Iterable[tuple[str, str]]) -> int:
        """Record (path, message) pairs; call inside :meth:`atomic`."""
        rows = [(crawl_id, p, m) for p, m in errors]
        self.conn.executemany(
            "INSERT INTO crawl_errors (crawl_id, path, error) VALUES (?, ?, ?)", rows
        )
        return len(rows)

    def finish_crawl(self, crawl_id: int, *, complete: bool = True) -> None:
        """Close a crawl: drop entries it no longer saw (if it covered the whole tree),
        recompute directory sizes, record the counts."""
        with self.atomic() as conn:
            if complete:
                conn.execute("DELETE FROM entries WHERE crawl_id != ?", (crawl_id,))
                # entries that vanished lose their failure records; uploads stay for verify
                conn.execute("DELETE FROM failures WHERE path NOT IN (SELECT path FROM entries)")
            self._compute_dir_sizes()
            _record_crawl_counts(conn, crawl_id)

    def _compute_dir_sizes(self) -> None:
        """Set each directory's size to the recursive sum of the uploadables below it.

        SQLite sums the files of each directory (an index scan); Python then only walks
        the directories, deepest first, adding each total into its parent.
        """
        conn = self.conn
        direct = dict(
            conn.execute(
                f"SELECT parent, sum(size) FROM entries WHERE {UPLOADABLE} GROUP BY parent"
            )
        )
        dirs = [r[0] for r in conn.execute("SELECT path FROM entries WHERE kind = 'dir'")]
        dirs.sort(key=lambda p: p.count("/") + (p != ""), reverse=True)
        totals = {d: direct.get(d, 0) for d in dirs}
        for d in dirs:
            if d:
                parent = d.rsplit("/", 1)[0] if "/" in d else ""
                if parent in totals:
                    totals[parent] += totals[d]
        conn.executemany(
            "UPDATE entries SET size = ? WHERE path = ?", [(t, d) for d, t in totals.items()]
        )

    # -- reading the tree ---------------------------------------------------------------

    def _entry(self, row: tuple) -> Entry:
        return Entry(*row)

    _COLS = "path, kind, size, mtime_ns, link_target, link_kind, sha256"

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
            "SELECT size, mtime_ns, sha256 FROM uploads WHERE path = ?", (entry.path,)
        ).fetchone()
        if row is None or row[:2] != (entry.size, entry.mtime_ns):
            return False
        return row[2] is None or entry.sha256 is None or row[2] == entry.sha256

    # Done = confirmed with the current size and mtime, and not contradicted by the
    # reference checksum (a *.sha256sum that changed under an unchanged file).
    _PENDING = (
        " FROM entries e LEFT JOIN uploads u ON u.path = e.path"
        " WHERE (e.kind = 'file' OR (e.kind = 'link' AND e.link_kind = 'file'))"
        " AND (u.path IS NULL OR u.size != e.size OR u.mtime_ns IS NOT e.mtime_ns"
        " OR (u.sha256 IS NOT NULL AND e.sha256 IS NOT NULL AND u.sha256 != e.sha256))"
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
            )
            for r in records
        ]
        self.conn.executemany(
            "INSERT INTO uploads (path, key, size, mtime_ns, etag, uploaded_at, sha256,"
            " part_size, parts, proof, adopted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET key = excluded.key, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, etag = excluded.etag,"
            " uploaded_at = excluded.uploaded_at, sha256 = excluded.sha256,"
            " part_size = excluded.part_size, parts = excluded.parts, proof = excluded.proof,"
            " adopted = excluded.adopted",
            rows,
        )
        self.conn.executemany(
            "UPDATE entries SET sha256 = ? WHERE path = ? AND size = ? AND mtime_ns IS ?"
            " AND sha256 IS NULL",
            [(r[6], r[0], r[2], r[3]) for r in rows if r[6]],
        )
        self.conn.executemany("DELETE FROM failures WHERE path = ?", [(r[0],) for r in rows])
        return len(rows)

    def upload_record(self, path: str) -> UploadRecord | None:
        """What the uploads table says about one file, or None."""
        row = self.conn.execute(
            "SELECT path, key, size, mtime_ns, etag, sha256, part_size, parts, proof, adopted"
            " FROM uploads WHERE path = ?",
            (path,),
        ).fetchone()
        if row is None:
            return None
        return UploadRecord(
            *row[:7],
            parts=tuple((row[7] or "").split()),
            proof=row[8] or "none",
            adopted=bool(row[9]),
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

    def forget_uploads(self, paths: Iterable[str]) -> None:
        """Drop upload records (objects deleted, or found wrong); inside atomic."""
        self.conn.executemany("DELETE FROM uploads WHERE path = ?", [(p,) for p in paths])

    # -- crawl: forgetting what vanished (added for crawl.py) ----------------------------

    def drop_unseen(self, crawl_id: int, keep: Iterable[str] = ()) -> int:
        """Delete the entries crawl ``crawl_id`` did not see, except at or below ``keep``.

        A crawl that could not read some directories must not forget what is below them,
        yet what it did see is authoritative: files gone elsewhere are dropped. Returns the
        number of entries deleted. Call before :meth:`finish_crawl` (``complete=False``).
        """
        kept = set(keep)

        def is_kept(path: str) -> bool:
            while True:
                if path in kept:
                    return True
                if not path:
                    return False
                path = path.rsplit("/", 1)[0] if "/" in path else ""

        with self.atomic() as conn:
            stale = conn.execute("SELECT path FROM entries WHERE crawl_id != ?", (crawl_id,))
            gone = [(p,) for (p,) in stale.fetchall() if not is_kept(p)]
            conn.executemany("DELETE FROM entries WHERE path = ?", gone)
            if gone:
                conn.execute("DELETE FROM failures WHERE path NOT IN (SELECT path FROM entries)")
        return len(gone)

    # -- crawl: bulk loading (added for crawl.py's fast path) ----------------------------
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

        A row is ``(path, parent, name, kind, size, mtime_ns, link_target, link_kind)``:
        plain tuples cost a fraction of :class:`Entry` objects at millions of rows. A crawl
        never brings a checksum, so a file's recorded one survives only if its size and
        mtime did not change, as with put_entries.
        """
        self.conn.executemany(
            "INSERT INTO entries (path, parent, name, kind, size, mtime_ns, link_target,"
            f" link_kind, crawl_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {int(crawl_id)})"
            " ON CONFLICT (path) DO UPDATE SET parent = excluded.parent, name = excluded.name,"
            " kind = excluded.kind,"
            " sha256 = CASE WHEN entries.size = excluded.size"
            "   AND entries.mtime_ns IS excluded.mtime_ns THEN entries.sha256 END,"
            " size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " link_target = excluded.link_target, link_kind = excluded.link_kind,"
            " crawl_id = excluded.crawl_id",
            rows,
        )
        return len(rows)

    def put_dir_sizes(self, sizes: Iterable[tuple[int, str]]) -> None:
        """Set ``(size, path)`` for directories; call inside :meth:`atomic`. For a crawl
        that saw the whole tree and summed it itself: the sizes :meth:`_compute_dir_sizes`
        would find, without a pass over the table."""
        self.conn.executemany("UPDATE entries SET size = ? WHERE path = ?", sizes)

    def finish_complete_crawl(self, crawl_id: int, *, drop_unseen: bool = True) -> int:
        """:meth:`drop_unseen` and :meth:`finish_crawl` for a crawl that saw the whole tree
        and set the directory sizes itself (:meth:`put_dir_sizes`); returns the number of
        entries dropped. ``drop_unseen=False`` skips looking for entries of earlier crawls
        when there were none.
        """
        with self.atomic() as conn:
            dropped = 0
            if drop_unseen:
                dropped = conn.execute(
                    "DELETE FROM entries WHERE crawl_id != ?", (crawl_id,)
                ).rowcount
                if dropped:
                    conn.execute(
                        "DELETE FROM failures WHERE path NOT IN (SELECT path FROM entries)"
                    )
            _record_crawl_counts(conn, crawl_id)
        return dropped

    def record_store_note(self, name: str, note: dict) -> None:
        """Keep a small JSON note on how the object store behaved (``health``: its recent
        errors; ``validation``: whether it checked the checksums sent), for ``status`` and
        ``verify`` to read. Joins the caller's transaction if one is open."""
        import json

        value = json.dumps(note, sort_keys=True)
        if self.conn.in_transaction:
            self._set_meta_raw(f"store_{name}", value)
        else:
            self.set_meta(f"store_{name}", value)

    def store_note(self, name: str) -> dict | None:
        """The note :meth:`record_store_note` kept under ``name``, or None."""
        import json

        value = self.get_meta(f"store_{name}")
        return json.loads(value) if value else None


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
