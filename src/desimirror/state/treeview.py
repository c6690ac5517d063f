"""The state db seen as a tree, one directory level at a time, for the web view.

The state of everything beneath each child directory is kept per directory, exact, as
uploads are recorded (:mod:`~desimirror.state.treetallies`), so a level costs one row per
child at any size of release, and the browser receives one row per child, never the files
below. Nothing here writes:
:func:`read_only` makes the connection refuse to, so a view can never take the db's write
lock or alter what an upload is writing.
"""

from __future__ import annotations

from typing import NamedTuple

from desimirror.state import treetallies
from desimirror.state.manifest import (
    FAILURE_REASONS,
    NOT_DONE,
    OPEN_FAILURES,
    UPLOADABLE,
    Manifest,
    subtree_range,
)

#: States of an uploadable file, as the view colours them: ``done:PROOF`` (one per proof
#: kind, see :class:`~desimirror.state.manifest.UploadRecord`), ``pending``, each failure
#: reason (``error``, ``changed``, ``unsafe``, ``corrupt``, ``mismatch``) of a file not
#: done, and ``gone`` (an object mirrored earlier whose file is no longer in the tree).
PENDING, GONE, DONE_PREFIX = "pending", "gone", "done:"

# The files directly in a directory, one row each from the parent index; what lies below
# each child directory comes from the kept counts (:mod:`treetallies`).
_STATE_OF_FILE = (
    f"CASE WHEN {NOT_DONE} THEN coalesce(f.reason, '{PENDING}')"
    f" ELSE '{DONE_PREFIX}' || coalesce(u.proof, 'none') END"
)
_FILES_IN = (
    f"SELECT e.name, {_STATE_OF_FILE}, e.size FROM entries e"
    " LEFT JOIN uploads u ON u.path = e.path LEFT JOIN failures f ON f.path = e.path"
    f" WHERE e.parent = :parent AND {UPLOADABLE}"
)
# Objects recorded in a range whose file is no longer an uploadable entry.
_GONE_IN_RANGE = (
    "SELECT u.path, u.size FROM uploads u WHERE u.path >= :lo AND u.path < :hi"
    f" AND NOT EXISTS (SELECT 1 FROM entries WHERE entries.path = u.path AND {UPLOADABLE})"
)

_LISTING = "SELECT name, kind FROM entries WHERE parent = ?"
# A directory's size is the recursive sum of its uploadables, written by the crawl.
_SIZES = (
    f"SELECT name, kind, CASE WHEN kind = 'dir' OR {UPLOADABLE} THEN size ELSE 0 END"
    " FROM entries WHERE parent = ?"
)
_FAILURES = f"""
SELECT f.path, f.reason, f.error, f.attempts, f.at{OPEN_FAILURES}
AND (:reason IS NULL OR f.reason = :reason)
AND (:text = '' OR instr(lower(f.path), :text) > 0 OR instr(lower(f.error), :text) > 0)
AND (:lo = '' OR (f.path >= :lo AND f.path < :hi))
"""

_PER_MINUTE = """
SELECT CAST(uploaded_at / :step AS INTEGER) * :step AS t, count(*), coalesce(sum(size), 0)
FROM uploads WHERE NOT adopted GROUP BY t ORDER BY t
"""

_PER_KEPT_MINUTE = """
SELECT CAST(minute / :step AS INTEGER) * :step AS t, sum(files), sum(bytes)
FROM sent_tallies GROUP BY t ORDER BY t
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
    not uploaded (links to directories, broken links) are listed with nothing in them,
    and a name under which only objects of files gone from the source remain, as ``gone``.

    In time proportional to the children: each directory's states are its kept counts."""
    conn = manifest.conn
    kinds = dict(conn.execute(_LISTING, (directory,)).fetchall())
    states: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in kinds}
    for name, state, nbytes in conn.execute(_FILES_IN, {"parent": directory}):
        states[name] = {state: (1, nbytes)}
    below = treetallies.below(conn, directory)
    for name, counts in below.items():
        states.setdefault(name, {}).update(counts)  # a name both a file and a gone directory
        kinds.setdefault(name, GONE)
    for path, nbytes in _gone_beside(manifest, directory, below):
        name = path.rpartition("/")[2]
        files, total = states.setdefault(name, {}).get(GONE, (0, 0))
        states[name][GONE] = (files + 1, total + nbytes)
        kinds.setdefault(name, GONE)
    found = []
    for name, kind in kinds.items():
        own = states[name]
        present = [v for state, v in own.items() if state != GONE]
        found.append(Child(name, kind, sum(f for f, _ in present), sum(b for _, b in present), own))
    found.sort(key=lambda c: (-c.bytes, -c.files, c.name))
    return found


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _gone_beside(
    manifest: Manifest, directory: str, below: dict[str, dict[str, tuple[int, int]]]
) -> list[tuple[str, int]]:
    """(path, size) of the objects of gone files directly in ``directory``: none unless its
    own count of gone objects exceeds its subdirectories'; then the stretches of its range
    between its subdirectories' ranges, which hold only what lies directly in it."""
    inside = sum(counts.get(GONE, (0, 0))[0] for counts in below.values())
    if treetallies.of(manifest.conn, directory).get(GONE, (0, 0))[0] <= inside:
        return []
    lo, hi = subtree_range(directory)
    found = []
    # in the order of the ranges: "a.b/" < "a/", though "a" < "a.b"
    for name in sorted(below, key=lambda n: n + "/"):
        inner_lo, inner_hi = subtree_range(_join(directory, name))
        found += manifest.conn.execute(_GONE_IN_RANGE, {"lo": lo, "hi": inner_lo}).fetchall()
        lo = inner_hi
    found += manifest.conn.execute(_GONE_IN_RANGE, {"lo": lo, "hi": hi}).fetchall()
    return found


def sizes(manifest: Manifest, directory: str) -> list[tuple[str, str, int]]:
    """(name, kind, bytes at or below it) of the entries directly in ``directory``, largest
    first: from the directory sizes the crawl wrote, one index lookup at any size of tree,
    for a first view before :func:`children` has summed the states below."""
    rows = manifest.conn.execute(_SIZES, (directory,)).fetchall()
    return sorted(rows, key=lambda r: (-r[2], r[0]))


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
    kept = treetallies.of(manifest.conn, under) if not text else {}
    if kept:  # counted below the directory by the tree's counts, not by a scan
        count = sum(v[0] for r, v in kept.items() if r in FAILURE_REASONS and reason in (None, r))
    else:
        (count,) = manifest.conn.execute(f"SELECT count(*) FROM ({_FAILURES})", args).fetchone()
    rows = manifest.conn.execute(
        f"{_FAILURES} ORDER BY f.at DESC LIMIT :limit", {**args, "limit": limit}
    )
    return count, [Failure(*row) for row in rows]


def sent_per_interval(manifest: Manifest, step: int = 60) -> list[tuple[int, int, int]]:
    """(interval start, files, bytes) confirmed per ``step`` seconds by the upload records
    (objects sent, not adopted), in time order. A file sent again counts at its last send.
    For a ``step`` of whole minutes, from the counts kept per minute (:mod:`treetallies`)."""
    query = _PER_MINUTE if step % 60 else _PER_KEPT_MINUTE
    return manifest.conn.execute(query, {"step": int(step)}).fetchall()


def upload_runs(manifest: Manifest) -> list[Run]:
    """Every upload run: when it started and last confirmed work, and what it sent."""
    return [Run(*row) for row in manifest.conn.execute(_RUNS)]
