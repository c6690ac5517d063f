"""Running counts of where a mirror stands, so ``status`` answers at once at any size.

Counting done and pending files is a join of ``entries`` with ``uploads``: 10 s and more
at ten million files, and ``status`` must take well under 2 s, also while an upload writes.
So the counts ``status`` shows live in the ``tallies`` table (name -> integer), kept in the
same transactions as the rows they count:

* what changes ``uploads`` (:meth:`record_mirrored`, :meth:`forget_uploads`) counts its own
  rows before and after the change (:func:`snapshot`, one query per commit of rows, over
  those rows only) and adds the difference (:func:`apply_change`);
* what changes ``entries`` wholesale (a crawl, an import; published checksums that changed
  a reference) empties the table when it starts, which makes every reader count for
  itself (:func:`read` returns None), and counts afresh when it ends (:func:`recount`).

``files``, ``bytes`` and ``pending_*`` are for one selection, the plan's ``--subdir``
(``meta`` key :data:`SCOPE`); counts asked for another selection are not kept.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence

from desimirror.state.records import UPLOADABLE, subtree_range

#: ``meta`` key: the selection (``''`` the whole tree) the file counts are for.
SCOPE = "tally_scope"

#: Done = confirmed with the current size, mtime and identity (where both sides know
#: it), and not contradicted by the reference checksum (a *.sha256sum that changed
#: under an unchanged file). The one definition of pending, for scans and tallies alike.
PENDING = (
    " FROM entries e LEFT JOIN uploads u ON u.path = e.path"
    " WHERE (e.kind = 'file' OR (e.kind = 'link' AND e.link_kind = 'file'))"
    " AND (u.path IS NULL OR u.size != e.size OR u.mtime_ns IS NOT e.mtime_ns"
    " OR (u.ino IS NOT NULL AND e.ino IS NOT NULL AND (u.ino != e.ino"
    "     OR u.ctime_ns IS NOT e.ctime_ns OR u.dev IS NOT e.dev))"
    " OR (u.sha256 IS NOT NULL AND e.sha256 IS NOT NULL AND u.sha256 != e.sha256))"
)
_IN_SCOPE = " AND ((e.path >= ? AND e.path < ?) OR e.path = ?)"
_GONE = f"NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = u.path AND {UPLOADABLE})"
_PATHS = "(SELECT value FROM json_each(?))"


def read(conn: sqlite3.Connection, scope: str) -> dict[str, int] | None:
    """The counts, or None while they are not kept (a crawl runs) or are for another scope."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCOPE,)).fetchone()
    if row is None or row[0] != scope:
        return None
    counts = dict(conn.execute("SELECT name, value FROM tallies"))
    return counts or None


def read_any(conn: sqlite3.Connection) -> dict[str, int] | None:
    """The counts whatever their scope (the upload counts are not scoped), or None."""
    counts = dict(conn.execute("SELECT name, value FROM tallies"))
    return counts or None


def invalidate(conn: sqlite3.Connection) -> None:
    """Stop keeping counts (``entries`` is about to change wholesale); inside a transaction."""
    conn.execute("DELETE FROM tallies")


def recount(
    conn: sqlite3.Connection, scope: str, known: tuple[int, int] | None = None
) -> dict[str, int]:
    """Count everything afresh for ``scope`` and keep it; inside a transaction. ``known``:
    see :func:`scan`."""
    counts = scan(conn, scope, known)
    conn.execute("DELETE FROM tallies")
    conn.executemany("INSERT INTO tallies (name, value) VALUES (?, ?)", counts.items())
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (SCOPE, scope),
    )
    return counts


def ensure(conn: sqlite3.Connection, scope: str) -> None:
    """Recount unless the counts are kept for ``scope``; inside a transaction."""
    if read(conn, scope) is None:
        recount(conn, scope)


def scan(
    conn: sqlite3.Connection, scope: str, known: tuple[int, int] | None = None
) -> dict[str, int]:
    """Every count, by reading the tables (what the tallies must always equal); ``known``
    is (files, bytes) of the uploadables in ``scope`` when the caller summed them itself."""
    lo, hi = subtree_range(scope)
    in_scope = (lo, hi, scope)
    files, nbytes = (
        known
        or conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM entries e WHERE {UPLOADABLE}"
            + _IN_SCOPE,
            in_scope,
        ).fetchone()
    )
    if conn.execute("SELECT 1 FROM uploads LIMIT 1").fetchone() is None:
        pending_files, pending_bytes = files, nbytes  # nothing uploaded yet: a second scan spared
    else:
        pending_files, pending_bytes = conn.execute(
            f"SELECT count(*), coalesce(sum(e.size), 0){PENDING}{_IN_SCOPE}", in_scope
        ).fetchone()
    counts = Counter(
        files=files, bytes=nbytes, pending_files=pending_files, pending_bytes=pending_bytes
    )
    counts += _upload_counts(conn, "", ())
    counts["claims"] = conn.execute("SELECT count(*) FROM published").fetchone()[0]
    return _complete(counts)


def snapshot(conn: sqlite3.Connection, paths: Sequence[str]) -> Counter | None:
    """The counts that ``paths``' rows contribute, to take before and after changing
    them; None when no counts are kept (then there is nothing to update)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCOPE,)).fetchone()
    if row is None or conn.execute("SELECT 1 FROM tallies LIMIT 1").fetchone() is None:
        return None
    scope = row[0]
    lo, hi = subtree_range(scope)
    chosen = json.dumps(list(paths))
    pending_files, pending_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum(e.size), 0){PENDING}{_IN_SCOPE} AND e.path IN {_PATHS}",
        (lo, hi, scope, chosen),
    ).fetchone()
    counts = Counter(pending_files=pending_files, pending_bytes=pending_bytes)
    counts += _upload_counts(conn, f" AND u.path IN {_PATHS}", (chosen,))
    return counts


def apply_change(conn: sqlite3.Connection, before: Counter | None, after: Counter | None) -> None:
    """Add ``after - before`` (two :func:`snapshot` s) to the kept counts."""
    if before is None or after is None:
        return
    names = set(before) | set(after)
    deltas = [(after[n] - before[n], n) for n in names if after[n] != before[n]]
    conn.executemany(
        "INSERT INTO tallies (name, value) VALUES (?2, ?1)"
        " ON CONFLICT (name) DO UPDATE SET value = value + ?1",
        deltas,
    )


def set_claims(conn: sqlite3.Connection) -> None:
    """Count the published checksum claims again (after a sync of the listings)."""
    if conn.execute("SELECT 1 FROM tallies LIMIT 1").fetchone() is None:
        return
    claims = conn.execute("SELECT count(*) FROM published").fetchone()[0]
    conn.execute("UPDATE tallies SET value = ? WHERE name = 'claims'", (claims,))


def _upload_counts(conn: sqlite3.Connection, where: str, args: tuple) -> Counter:
    """Objects recorded, by proof; adopted; gone from the source (of all or some rows)."""
    counts: Counter = Counter()
    for proof, n, adopted, gone in conn.execute(
        "SELECT coalesce(u.proof, 'none'), count(*), coalesce(sum(u.adopted != 0), 0),"
        f" coalesce(sum({_GONE}), 0) FROM uploads u WHERE 1{where} GROUP BY 1",
        args,
    ):
        counts[f"proof:{proof}"] += n
        counts["adopted"] += adopted
        counts["gone"] += gone
    return counts


def _complete(counts: Counter) -> dict[str, int]:
    for name in ("files", "bytes", "pending_files", "pending_bytes", "adopted", "gone", "claims"):
        counts.setdefault(name, 0)
    return dict(counts)


def proofs(counts: dict[str, int]) -> dict[str, int]:
    """proof -> objects, from the kept counts (as :meth:`proof_counts` returns it)."""
    return {name[6:]: n for name, n in counts.items() if name.startswith("proof:") and n}
