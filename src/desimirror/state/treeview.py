"""The state db seen as a tree, one directory level at a time, for the web view.

Every subtree is a contiguous range of paths (see :func:`subtree_range`), so a
directory's children and the state of everything beneath each of them come from one range
scan of the primary key, grouped by the first path component below the directory: the
browser receives one row per child, never the files below. Nothing here writes:
:func:`read_only` makes the connection refuse to, so a view can never take the db's write
lock or alter what an upload is writing.
"""

from __future__ import annotations

from typing import NamedTuple

from desimirror.state.manifest import NOT_DONE, UPLOADABLE, Manifest, subtree_range

#: States of an uploadable file, as the view colours them: ``done:PROOF`` (one per proof
#: kind, see :class:`~desimirror.state.manifest.UploadRecord`), ``pending``, each failure
#: reason (``error``, ``changed``, ``unsafe``, ``corrupt``, ``mismatch``) of a file not
#: done, and ``gone`` (an object mirrored earlier whose file is no longer in the tree).
PENDING, GONE, DONE_PREFIX = "pending", "gone", "done:"

# ``rest`` is the path below the directory; its first component is the child it lies in.
_CHILD_OF_REST = (
    "CASE WHEN instr(rest, '/') = 0 THEN rest ELSE substr(rest, 1, instr(rest, '/') - 1) END"
)

_STATES_BELOW = f"""
SELECT {_CHILD_OF_REST} AS child, state, count(*), coalesce(sum(size), 0) FROM (
    SELECT substr(e.path, :start) AS rest, e.size AS size,
        CASE WHEN {NOT_DONE} THEN coalesce(f.reason, '{PENDING}')
             ELSE '{DONE_PREFIX}' || coalesce(u.proof, 'none') END AS state
    FROM entries e LEFT JOIN uploads u ON u.path = e.path
    LEFT JOIN failures f ON f.path = e.path
    WHERE {UPLOADABLE} AND e.path >= :lo AND e.path < :hi
) GROUP BY child, state
"""

_GONE_BELOW = f"""
SELECT {_CHILD_OF_REST} AS child, count(*), coalesce(sum(size), 0) FROM (
    SELECT substr(u.path, :start) AS rest, u.size AS size FROM uploads u
    WHERE u.path >= :lo AND u.path < :hi
    AND NOT EXISTS (SELECT 1 FROM entries WHERE entries.path = u.path AND {UPLOADABLE})
) GROUP BY child
"""

_LISTING = "SELECT name, kind, link_kind FROM entries WHERE parent = ?"

_FAILURES = """
SELECT path, reason, error, attempts, at FROM failures
WHERE (:reason IS NULL OR reason = :reason)
AND (:text = '' OR instr(lower(path), :text) > 0 OR instr(lower(error), :text) > 0)
AND (:lo = '' OR (path >= :lo AND path < :hi))
"""

_PER_MINUTE = """
SELECT CAST(uploaded_at / :step AS INTEGER) * :step AS t, count(*), coalesce(sum(size), 0)
FROM uploads WHERE NOT adopted GROUP BY t ORDER BY t
"""

_RUNS = "SELECT id, started, finished, files, bytes FROM upload_runs ORDER BY id"


class Child(NamedTuple):
    """One entry directly in a directory, with the state of what lies at or below it."""

    name: str
    kind: str  # file | dir | link | other
    files: int  # uploadable files at or below it
    bytes: int
    states: dict[str, tuple[int, int]]  # state -> (files, bytes); see the state names above


class Failure(NamedTuple):
    path: str
    reason: str
    error: str
    attempts: int
    at: float


class Run(NamedTuple):
    id: int
    started: float
    finished: float | None
    files: int
    bytes: int


def read_only(manifest: Manifest) -> None:
    """Make this connection refuse every write (``PRAGMA query_only``): a viewer of a db
    that an upload is writing can neither alter it nor wait for its write lock."""
    manifest.conn.execute("PRAGMA query_only = ON")


def change_token(manifest: Manifest) -> int:
    """A number that changes whenever another connection commits to the db (SQLite's
    ``data_version``): a view recomputes nothing while it stays the same."""
    return int(manifest.conn.execute("PRAGMA data_version").fetchone()[0])


def children(manifest: Manifest, directory: str) -> list[Child]:
    """The entries directly in ``directory`` ('' is the root), each with the files and
    bytes at or below it by state, largest first; empty directories and entries that are
    not uploaded (links to directories, broken links) are listed with nothing in them."""
    lo, hi = subtree_range(directory)
    args = {"start": len(directory) + 2 if directory else 1, "lo": lo, "hi": hi}
    states: dict[str, dict[str, tuple[int, int]]] = {}
    for child, state, files, nbytes in manifest.conn.execute(_STATES_BELOW, args):
        states.setdefault(child, {})[state] = (files, nbytes)
    for child, files, nbytes in manifest.conn.execute(_GONE_BELOW, args):
        states.setdefault(child, {})[GONE] = (files, nbytes)
    kinds = {name: kind for name, kind, _ in manifest.conn.execute(_LISTING, (directory,))}
    for name in states.keys() - kinds.keys():
        kinds[name] = "gone"  # only gone objects remain below this name
    found = []
    for name, kind in kinds.items():
        own = states.get(name, {})
        present = [v for state, v in own.items() if state != GONE]
        found.append(
            Child(
                name,
                kind,
                sum(f for f, _ in present),
                sum(b for _, b in present),
                own,
            )
        )
    found.sort(key=lambda c: (-c.bytes, -c.files, c.name))
    return found


def failures(
    manifest: Manifest,
    *,
    reason: str | None = None,
    text: str = "",
    under: str = "",
    limit: int = 200,
) -> tuple[int, list[Failure]]:
    """(how many match, the newest ``limit`` of them) of the files not mirrored, with
    their last error: of one ``reason`` if given, whose path or error contains ``text``
    (any case), at or below the directory ``under``."""
    lo, hi = subtree_range(under) if under else ("", "")
    args = {"reason": reason, "text": text.lower(), "lo": lo, "hi": hi}
    (count,) = manifest.conn.execute(f"SELECT count(*) FROM ({_FAILURES})", args).fetchone()
    rows = manifest.conn.execute(
        f"{_FAILURES} ORDER BY at DESC LIMIT :limit", {**args, "limit": limit}
    )
    return count, [Failure(*row) for row in rows]


def sent_per_interval(manifest: Manifest, step: int = 60) -> list[tuple[int, int, int]]:
    """(interval start, files, bytes) confirmed per ``step`` seconds by the upload records
    (objects sent, not adopted), in time order. A file sent again counts at its last send."""
    return manifest.conn.execute(_PER_MINUTE, {"step": int(step)}).fetchall()


def upload_runs(manifest: Manifest) -> list[Run]:
    """Every upload run: when it started and last confirmed work, and what it sent."""
    return [Run(*row) for row in manifest.conn.execute(_RUNS)]
