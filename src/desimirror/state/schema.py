"""The state db's schema: the first version's tables, then numbered migrations.

``PRAGMA user_version`` holds the number of migrations a db has had. A new db gets the
base tables and every migration, in one transaction, exactly as an old one is brought up
to date: there is one way a schema comes to be. Each migration is idempotent (tables
created if absent, columns added if absent), because dbs written before migrations were
numbered (``user_version`` 0) may already have some of its changes.

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from desimirror.errors import StateError
from desimirror.state import treetallies

BASE = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
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
CREATE INDEX IF NOT EXISTS entries_by_parent ON entries (parent, name);
CREATE TABLE IF NOT EXISTS crawls (
    id INTEGER PRIMARY KEY,
    root TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,                        -- NULL: interrupted (or still running)
    entries INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS crawl_errors (
    crawl_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,               -- 1-based, in plan order
    bytes INTEGER NOT NULL,
    files INTEGER NOT NULL,
    completed REAL                        -- when an upload last found it fully mirrored
);
CREATE TABLE IF NOT EXISTS batch_paths (
    batch_id INTEGER NOT NULL REFERENCES batches (id),
    path TEXT NOT NULL,                   -- a directory taken whole, or one file
    is_dir INTEGER NOT NULL,
    PRIMARY KEY (batch_id, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    path TEXT PRIMARY KEY,                -- the entry this object was made from
    key TEXT NOT NULL,
    size INTEGER NOT NULL,                -- size and mtime of the file when it was sent
    mtime_ns INTEGER NOT NULL,
    etag TEXT,
    uploaded_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    reason TEXT NOT NULL,                 -- error | changed | unsafe | corrupt | mismatch
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS upload_runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
"""


def _content_proof(conn: sqlite3.Connection) -> None:
    """1: what each object's content was proven by, and the release's published checksums."""
    _add_columns(
        conn,
        "uploads",
        [
            ("sha256", "TEXT"),  # hex SHA-256 of the bytes the object holds
            ("part_size", "INTEGER"),  # multipart objects: the part size ...
            ("parts", "TEXT"),  # ... and the parts' base64 SHA-256s, space-separated
            ("proof", "TEXT"),  # how the content was confirmed (see UploadRecord)
            ("adopted", "INTEGER NOT NULL DEFAULT 0"),  # 1: found in the bucket, not sent
        ],
    )
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS published (
            path TEXT PRIMARY KEY,        -- the file a *.sha256sum claims a digest for
            sha256 TEXT NOT NULL,         -- hex
            listed_in TEXT NOT NULL       -- the *.sha256sum file (a manifest path)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS published_by_listing ON published (listed_in);
        CREATE TABLE IF NOT EXISTS checksum_files (
            path TEXT PRIMARY KEY,        -- a *.sha256sum file that was read ...
            size INTEGER NOT NULL,        -- ... with this size and mtime
            mtime_ns INTEGER,
            claims INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            read_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    )


def _file_identity(conn: sqlite3.Connection) -> None:
    """2: the identity (ctime, inode, device) of each entry at the crawl (for a link to a
    file: its target's) and of each file when it was sent, which no user can set back as
    ``touch -r`` sets back an mtime. NULL where unknown (older rows): not compared."""
    identity = [("ctime_ns", "INTEGER"), ("ino", "INTEGER"), ("dev", "INTEGER")]
    _add_columns(conn, "entries", identity)
    _add_columns(conn, "uploads", identity)


def _running_counts(conn: sqlite3.Connection) -> None:
    """3: the counts ``status`` shows, kept as uploads are recorded instead of counted by
    a scan (see :mod:`desimirror.state.tallies`). Empty means not kept yet: readers count
    for themselves until the next crawl or plan counts them."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS tallies (
            name TEXT PRIMARY KEY,        -- files, pending_bytes, proof:sha256, ...
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    )


def _worker_counts(conn: sqlite3.Connection) -> None:
    """4: what each Dask worker of an upload run sent (``upload --scheduler``), so that
    ``status`` shows the throughput per worker; one row per run and worker, not per file."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS upload_run_workers (
            run_id INTEGER NOT NULL,      -- upload_runs.id
            worker TEXT NOT NULL,         -- host/name of the Dask worker
            files INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, worker)
        ) WITHOUT ROWID;
        """,
    )


def _tree_tallies(conn: sqlite3.Connection) -> None:
    """5: the states below each directory, kept as uploads are recorded, for the web view
    and the objects sent per minute, for the throughput chart (see
    :mod:`desimirror.state.treetallies`), counted here once for an existing db; and the
    failures by time, so the latest are read without sorting them all."""
    _run(
        conn,
        """
        CREATE TABLE IF NOT EXISTS tree_tallies (
            parent TEXT NOT NULL,         -- the directory's parent and name ('' '' the root)
            name TEXT NOT NULL,
            state TEXT NOT NULL,          -- done:PROOF, pending, a failure reason, gone
            files INTEGER NOT NULL,       -- files (gone: objects) strictly below it ...
            bytes INTEGER NOT NULL,       -- ... and their bytes
            PRIMARY KEY (parent, name, state)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS failures_by_time ON failures (at);
        CREATE TABLE IF NOT EXISTS sent_tallies (
            minute INTEGER PRIMARY KEY,   -- its first second (epoch)
            files INTEGER NOT NULL,       -- objects sent (not adopted) last in that minute
            bytes INTEGER NOT NULL
        );
        """,
    )
    treetallies.recount(conn)
    treetallies.recount_sent(conn)


#: Migration N brings a db from user_version N-1 to N.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _content_proof,
    _file_identity,
    _running_counts,
    _worker_counts,
    _tree_tallies,
)
LATEST = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def check_not_newer(conn: sqlite3.Connection, path: object) -> None:
    """Refuse a db that a newer desimirror has migrated past what this one knows."""
    found = version(conn)
    if found > LATEST:
        raise StateError(
            f"{path} was written by a newer desimirror (schema {found}, this one knows "
            f"{LATEST}); upgrade desimirror"
        )


def upgrade(conn: sqlite3.Connection) -> bool:
    """Apply the migrations the db has not had; call inside a write transaction.

    Returns whether anything was applied. ``PRAGMA user_version`` is part of the
    transaction, so a kill leaves the db at the old version or the new, never between.
    """
    found = version(conn)
    if found >= LATEST:
        return False
    if found == 0:
        _run(conn, BASE)
    for migration in MIGRATIONS[found:]:
        migration(conn)
    conn.execute(f"PRAGMA user_version = {LATEST}")
    return True


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` in the caller's transaction (``executescript`` would
    commit it first); statements end where SQLite says they do, not at every ``;``."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"an incomplete statement in the schema: {statement.strip()[:60]}")


def _add_columns(conn: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> None:
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, ddl in columns:
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
