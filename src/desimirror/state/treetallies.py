"""Running counts of the tree's states per directory, so the web view lists a directory's
children, each with the state of everything below it, in time proportional to the
children at any size of release (a range scan of every row below each child took 12.7 s
for the root of a 10M-entry manifest).

``tree_tallies`` holds, for each directory path D with anything below it (the root, and
also a directory gone from the source whose objects remain in the bucket), and for each
state a file can be in (:data:`STATE`), the files and bytes strictly below D. A row is
keyed by D's parent and D's name (the root: ``''`` and ``''``), so the children of a
directory are one range of the primary key.

Kept exact in the same transactions as the rows they count, like :mod:`tallies`:

* what changes the state of some files (:meth:`record_mirrored`, :meth:`record_failure`,
  :meth:`forget_uploads`) reads the states of those paths before and after the change
  (:func:`states`, one query over those paths) and adds the difference to every directory
  above each (:func:`apply_change`);
* what changes entries wholesale (a crawl or an import when it closes; published checksums
  that changed a reference) counts everything again (:func:`recount`).

While a crawl runs the rows stay those of the last crawl that closed.

``sent_tallies`` holds, for each minute, the objects sent (not adopted) whose upload record
was last written in it, and their bytes: the view's throughput chart, without a grouping of
every upload record. Kept by the same before-and-after states.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence

from desimirror.state.records import NOT_DONE, UPLOADABLE

#: The state of a path, for an uploadable entry ``e`` LEFT JOINed with its upload record
#: ``u`` and its failure ``f``: ``done:PROOF`` when done (:data:`NOT_DONE`), else the
#: reason of its failure, else ``pending``; for an upload record whose file is no longer
#: an uploadable entry, ``gone``; NULL for anything else (directories, links not uploaded).
STATE = (
    f"CASE WHEN {UPLOADABLE} THEN CASE WHEN {NOT_DONE} THEN coalesce(f.reason, 'pending')"
    " ELSE 'done:' || coalesce(u.proof, 'none') END"
    " WHEN u.path IS NOT NULL THEN 'gone' END"
)
#: The bytes a path counts for: the file's (the object's for a gone one).
_BYTES = f"CASE WHEN {UPLOADABLE} THEN e.size ELSE u.size END"

#: The minute an object was last sent in (NULL: adopted, not sent), as the chart counts it.
_MINUTE = "CASE WHEN NOT u.adopted THEN CAST(u.uploaded_at / 60 AS INTEGER) * 60 END"

_STATES_OF = (
    f"SELECT j.value, {STATE}, {_BYTES}, {_MINUTE}, u.size"
    " FROM (SELECT DISTINCT value FROM json_each(?)) j"
    " LEFT JOIN entries e ON e.path = j.value LEFT JOIN uploads u ON u.path = j.value"
    " LEFT JOIN failures f ON f.path = j.value"
)
# Every uploadable by directory and state (uploads and failures LEFT JOINed: the one scan
# of the whole tree), and the objects of files gone from the source, one by one (few).
_BY_PARENT = (
    f"SELECT e.parent, {STATE}, count(*), sum(e.size) FROM entries e"
    " LEFT JOIN uploads u ON u.path = e.path LEFT JOIN failures f ON f.path = e.path"
    f" WHERE {UPLOADABLE} GROUP BY 1, 2"
)
_PENDING_BY_PARENT = (
    f"SELECT parent, 'pending', count(*), sum(size) FROM entries WHERE {UPLOADABLE} GROUP BY 1"
)
_GONE = (
    "SELECT u.path, u.size FROM uploads u WHERE NOT EXISTS"
    f" (SELECT 1 FROM entries e WHERE e.path = u.path AND {UPLOADABLE})"
)
_ADD = (
    "INSERT INTO tree_tallies (parent, name, state, files, bytes) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (parent, name, state) DO UPDATE"
    " SET files = files + excluded.files, bytes = bytes + excluded.bytes"
)
_DROP_EMPTY = "DELETE FROM tree_tallies WHERE parent = ? AND name = ? AND state = ? AND files = 0"
_ADD_SENT = (
    "INSERT INTO sent_tallies (minute, files, bytes) VALUES (?, ?, ?) ON CONFLICT (minute)"
    " DO UPDATE SET files = files + excluded.files, bytes = bytes + excluded.bytes"
)
_SENT = (
    "SELECT CAST(uploaded_at / 60 AS INTEGER) * 60, count(*), sum(size) FROM uploads"
    " WHERE NOT adopted GROUP BY 1"
)

#: (path, state, bytes, minute sent, object bytes) of one path: see :func:`states`.
PathState = tuple[str, str | None, int | None, int | None, int | None]
#: (directory, state) -> [files, bytes].
Counts = dict[tuple[str, str], list[int]]


def states(conn: sqlite3.Connection, paths: Sequence[str]) -> list[PathState]:
    """The state of each of ``paths`` (see :data:`STATE`) with its bytes, and the minute
    its object was last sent in with the object's bytes, to take before and after changing
    their rows; paths with neither are left out."""
    if not paths:
        return []
    rows = conn.execute(_STATES_OF, (json.dumps(list(paths)),))
    return [row for row in rows if row[1] is not None or row[3] is not None]


def apply_change(
    conn: sqlite3.Connection, before: Iterable[PathState], after: Iterable[PathState]
) -> None:
    """Add ``after - before`` (two :func:`states` of the same paths) to every directory
    above each path, and to the minutes the objects were sent in; inside the transaction
    that changed them."""
    direct: Counts = defaultdict(lambda: [0, 0])  # by parent first: a commit's files share few
    sent: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for sign, rows in ((-1, before), (1, after)):
        for path, state, nbytes, minute, object_bytes in rows:
            if state is not None:
                count = direct[(path.rpartition("/")[0], state)]
                count[0] += sign
                count[1] += sign * nbytes
            if minute is not None:
                count = sent[minute]
                count[0] += sign
                count[1] += sign * object_bytes
    counts: Counts = defaultdict(lambda: [0, 0])
    for (parent, state), (files, nbytes) in direct.items():
        if files or nbytes:
            _add_above(counts, parent, state, files, nbytes)
    changed = [
        (*_key(directory), state, files, nbytes)
        for (directory, state), (files, nbytes) in counts.items()
        if files or nbytes
    ]
    conn.executemany(_ADD, changed)
    conn.executemany(_DROP_EMPTY, [row[:3] for row in changed if row[3] < 0])
    moved = [(minute, files, nbytes) for minute, (files, nbytes) in sent.items() if files or nbytes]
    conn.executemany(_ADD_SENT, moved)
    conn.executemany(
        "DELETE FROM sent_tallies WHERE minute = ? AND files = 0",
        [(minute,) for minute, files, _ in moved if files < 0],
    )


def recount_sent(conn: sqlite3.Connection) -> None:
    """Count the objects sent per minute afresh from the upload records (a migration)."""
    conn.execute("DELETE FROM sent_tallies")
    conn.execute(f"INSERT INTO sent_tallies (minute, files, bytes) {_SENT}")


def sent_scan(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """minute -> (objects, bytes) sent in it, by reading the upload records."""
    return {minute: (files, nbytes) for minute, files, nbytes in conn.execute(_SENT)}


def sent_kept(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """The kept counts of objects sent per minute, as :func:`sent_scan` returns them."""
    rows = conn.execute("SELECT minute, files, bytes FROM sent_tallies")
    return {minute: (files, nbytes) for minute, files, nbytes in rows}


def recount(conn: sqlite3.Connection) -> None:
    """Count every directory's states afresh from the tables; inside a transaction."""
    conn.execute("DELETE FROM tree_tallies")
    conn.executemany(
        "INSERT INTO tree_tallies (parent, name, state, files, bytes) VALUES (?, ?, ?, ?, ?)",
        [(*_key(d), state, files, nbytes) for (d, state), (files, nbytes) in scan(conn).items()],
    )


def has_records(conn: sqlite3.Connection) -> bool:
    """Whether any file has an upload record or a failure (else every file is pending)."""
    return bool(
        conn.execute(
            "SELECT EXISTS (SELECT 1 FROM uploads) OR EXISTS (SELECT 1 FROM failures)"
        ).fetchone()[0]
    )


def put_pending(conn: sqlite3.Connection, totals: Iterable[tuple[str, int, int]]) -> None:
    """Write ``(directory, files, bytes)`` below directories as their pending counts (an
    import that sums each directory as it leaves it, with nothing uploaded or failed)."""
    conn.executemany(
        "INSERT INTO tree_tallies (parent, name, state, files, bytes)"
        " VALUES (?, ?, 'pending', ?, ?)",
        [(*_key(directory), files, nbytes) for directory, files, nbytes in totals],
    )


def scan(conn: sqlite3.Connection) -> Counts:
    """(directory, state) -> [files, bytes] below it, by reading the tables: what the kept
    rows must always equal. Without upload records or failures every file is pending, and
    one grouping of the entries by parent says it all."""
    counts: Counts = defaultdict(lambda: [0, 0])
    records = has_records(conn)
    for parent, state, files, nbytes in conn.execute(_BY_PARENT if records else _PENDING_BY_PARENT):
        _add_above(counts, parent, state, files, nbytes)
    if records:
        for path, nbytes in conn.execute(_GONE):
            _add_above(counts, path.rpartition("/")[0], "gone", 1, nbytes)
    return dict(counts)


def kept(conn: sqlite3.Connection) -> Counts:
    """The kept rows, as :func:`scan` returns them."""
    rows = conn.execute("SELECT parent, name, state, files, bytes FROM tree_tallies")
    return {(_path(p, n), state): [files, nbytes] for p, n, state, files, nbytes in rows}


def below(conn: sqlite3.Connection, directory: str) -> dict[str, dict[str, tuple[int, int]]]:
    """name -> state -> (files, bytes) below each directory directly in ``directory``
    (one that is gone from the source included, while objects of it remain)."""
    found: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for name, state, files, nbytes in conn.execute(
        "SELECT name, state, files, bytes FROM tree_tallies WHERE parent = ? AND name != ''",
        (directory,),
    ):
        found[name][state] = (files, nbytes)
    return dict(found)


def of(conn: sqlite3.Connection, directory: str) -> dict[str, tuple[int, int]]:
    """state -> (files, bytes) of everything below ``directory`` ('' is the root)."""
    rows = conn.execute(
        "SELECT state, files, bytes FROM tree_tallies WHERE parent = ? AND name = ?",
        _key(directory),
    )
    return {state: (files, nbytes) for state, files, nbytes in rows}


def _add_above(counts: Counts, directory: str, state: str, files: int, nbytes: int) -> None:
    """Count ``files`` and ``nbytes`` in ``state`` for ``directory`` and each one above it."""
    while True:
        count = counts[(directory, state)]
        count[0] += files
        count[1] += nbytes
        if not directory:
            return
        directory = directory.rpartition("/")[0]


def _key(directory: str) -> tuple[str, str]:
    """(parent, name) of a directory's rows; the root's are ('', '')."""
    parent, _, name = directory.rpartition("/")
    return parent, name


def _path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name
