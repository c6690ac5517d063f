"""The crawled tree in the state: crawls begun and closed, entries written (one at a time
by an import, in bulk by a crawl) and read back in the orders the stages need."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from desimirror.state import tallies, treetallies
from desimirror.state.db import StateDb
from desimirror.state.records import UPLOADABLE, Entry, roll_up, subtree_range

#: An upsert's test that the entry is the same file as before (so its checksum still holds).
_UNCHANGED = (
    "entries.size = excluded.size AND entries.mtime_ns IS excluded.mtime_ns"
    " AND entries.ctime_ns IS excluded.ctime_ns AND entries.ino IS excluded.ino"
    " AND entries.dev IS excluded.dev"
)


#: The columns of a row as the crawl and the import write it (see :func:`_upsert_entries`).
_ROW_WIDTH = 11


def _upsert_entries(crawl_id: int, *, with_sha256: bool, width: int = _ROW_WIDTH) -> str:
    """The one upsert of entries, for rows of (path, parent, name, kind, size, mtime_ns,
    link_target, link_kind, ctime_ns, ino, dev[, sha256]) seen by crawl ``crawl_id``.

    Rows may stop after their first ``width`` columns: the others are NULL, written as
    literals, since the sqlite3 module binds a None only after looking for an adapter for
    it, which raises and catches an AttributeError each time: six of them made half an
    import's cost (an import without a tree has no mtime, identity or link).

    A recorded checksum survives only if the entry is the same file as before (see
    :data:`_UNCHANGED`); rows without one (a crawl's) keep it then, and drop it otherwise.
    """
    sha256 = "?" if with_sha256 else "NULL"
    values = ", ".join(["?"] * width + ["NULL"] * (_ROW_WIDTH - width))
    return (
        "INSERT INTO entries (path, parent, name, kind, size, mtime_ns, link_target,"
        " link_kind, ctime_ns, ino, dev, sha256, crawl_id)"
        f" VALUES ({values}, {sha256}, {int(crawl_id)})"
        " ON CONFLICT (path) DO UPDATE SET parent = excluded.parent, name = excluded.name,"
        " kind = excluded.kind,"
        f" sha256 = CASE WHEN {_UNCHANGED}"
        "   THEN coalesce(excluded.sha256, entries.sha256) ELSE excluded.sha256 END,"
        " size = excluded.size, mtime_ns = excluded.mtime_ns,"
        " link_target = excluded.link_target, link_kind = excluded.link_kind,"
        " crawl_id = excluded.crawl_id, ctime_ns = excluded.ctime_ns,"
        " ino = excluded.ino, dev = excluded.dev"
    )


def _at_or_below(path: str, dirs: set[str]) -> bool:
    """True if ``path`` is one of ``dirs`` or inside one of them."""
    while True:
        if path in dirs:
            return True
        if not path:
            return False
        path = path.rpartition("/")[0]


class EntryTables(StateDb):
    """The ``crawls``, ``crawl_errors`` and ``entries`` tables."""

    # -- crawls ----------------------------------------------------------------------------

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

    def begin_crawl(self, root: str) -> int:
        with self.atomic() as conn:
            cur = conn.execute(
                "INSERT INTO crawls (root, started) VALUES (?, ?)", (root, time.time())
            )
            tallies.invalidate(conn)  # counted again when the crawl closes
        return int(cur.lastrowid)

    def put_entries(self, crawl_id: int, entries: Iterable[Entry]) -> int:
        """Insert or refresh entries as seen by crawl ``crawl_id``; call inside :meth:`atomic`.

        The published checksum survives a re-crawl only if the file did not change.
        """
        rows = [(*e.row(), e.sha256) for e in entries]
        self.conn.executemany(_upsert_entries(crawl_id, with_sha256=True), rows)
        return len(rows)

    def discard_first_crawl(self, crawl_id: int) -> None:
        """Delete what a first crawl (of a db that held no entries) committed: every entry
        and its errors, leaving the crawl unfinished; inside :meth:`atomic`."""
        self.conn.execute("DELETE FROM entries")
        self.conn.execute("DELETE FROM crawl_errors WHERE crawl_id = ?", (crawl_id,))
        treetallies.recount(self.conn)  # the tree's counts it wrote, gone with its entries

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
        totals: tuple[int, int] | None = None,
        tree_counted: bool = False,
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

        An import sums as it reads: ``totals`` are (files, bytes) of the uploadables it
        wrote, with no ``keep`` the whole tree's, and ``tree_counted`` says it wrote the
        tree's counts too (:meth:`put_dir_totals`), so neither needs a pass over ten
        million rows here.
        """
        if keep:
            totals, tree_counted = None, False
        with self.atomic() as conn:
            dropped = self._drop_unseen(crawl_id, set(keep)) if earlier_entries else 0
            if dropped:  # vanished entries lose their failure records; uploads stay for verify
                conn.execute("DELETE FROM failures WHERE path NOT IN (SELECT path FROM entries)")
            if not sizes_written:
                self._roll_up_dir_sizes()
            _record_crawl_counts(conn, crawl_id)
            scope = self.get_meta("plan_subdir") or ""
            tallies.recount(conn, scope, known=totals if scope == "" else None)
            if not tree_counted:
                treetallies.recount(conn)
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

    # A directory's nodes in the seed's order, straight from the parent index: the type as
    # find.json has it (0 directory, 1 uploadable, -1 other or broken; links to directories
    # and out of the tree are left out: the original followed them, which listed a subtree
    # twice or data from outside the release), then the name. SQLite compares text in its
    # default BINARY collation byte by byte, which for UTF-8 is code point order: the order
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

    def last_crawl(self) -> tuple | None:
        """(id, root, started, finished, entries, errors) of the latest crawl, or None."""
        return self.conn.execute(
            "SELECT id, root, started, finished, entries, errors FROM crawls"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()

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
          (``pipeline.crawl.WalCheckpointer``), and this method once more on the way out.
        - ``synchronous = OFF``: in WAL mode a commit does not sync under NORMAL either;
          what OFF leaves out is the sync around checkpoints, and this connection makes
          none (the background ones and the last one run with NORMAL). So a power loss
          still leaves the database file as of the last checkpoint plus the WAL's intact,
          checksummed prefix of whole transactions, the guarantee NORMAL gives. A crash of
          the crawl loses at most its rows not yet committed: the crawl is run again.
        - ``ignore_check_constraints``: the kind column's ``CHECK (kind IN (...))`` costs
          a measurable share of a row's insert (SQLite rebuilds the IN list at every
          statement run); the crawl
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
        millions of rows. Rows may all stop after ``size`` (an import without its tree:
        the rest is unknown, NULL). A crawl never brings a checksum, so a file's recorded
        one survives only if its size, mtime and identity did not change, as with
        put_entries.
        """
        if rows:
            width = len(rows[0])
            self.conn.executemany(_upsert_entries(crawl_id, with_sha256=False, width=width), rows)
        return len(rows)

    def start_pending_counts(self) -> bool:
        """Empty the tree's counts for an import to write as it goes (:meth:`put_dir_totals`)
        if nothing is uploaded or failed, and say whether it did; inside :meth:`atomic`
        or not (a first import's own transaction)."""
        if treetallies.has_records(self.conn):
            return False
        with self.atomic() as conn:
            conn.execute("DELETE FROM tree_tallies")
        return True

    def put_dir_totals(self, totals: Sequence[tuple[str, int, int]], *, pending: bool) -> None:
        """``(path, files, bytes)`` of the uploadables below directories: their sizes, and
        with ``pending`` their counts as pending (:meth:`start_pending_counts`); inside
        :meth:`atomic`. For an import, which sums each directory as it leaves it."""
        self.put_dir_sizes((nbytes, path) for path, _, nbytes in totals)
        if pending:
            treetallies.put_pending(self.conn, totals)

    def put_dir_sizes(self, sizes: Iterable[tuple[int, str]]) -> None:
        """Set ``(size, path)`` for directories; call inside :meth:`atomic`. For a crawl
        that saw the whole tree and summed it itself (:func:`roll_up`), without a pass
        over the table."""
        self.conn.executemany("UPDATE entries SET size = ? WHERE path = ?", sizes)


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
