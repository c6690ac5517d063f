"""The bucket compared with the manifest, in SQL: expected keys and listed objects as two
temporary tables of the state db, joined. Verify streams ten million listed objects into
it without holding them in memory; the tables live only as long as the comparison."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from desimirror.state.manifest import Manifest

Problem = Literal["missing", "differ", "unexpected"]
PROBLEMS: tuple[Problem, ...] = ("missing", "differ", "unexpected")

_QUERIES: dict[Problem, str] = {
    "missing": "SELECT e.key, e.path FROM temp.expected e LEFT JOIN temp.listed l"
    " ON l.key = e.key WHERE l.key IS NULL ORDER BY e.key",
    "differ": "SELECT e.key, e.path FROM temp.expected e JOIN temp.listed l"
    " ON l.key = e.key WHERE l.size != e.size ORDER BY e.key",
    "unexpected": "SELECT l.key, NULL FROM temp.listed l LEFT JOIN temp.expected e"
    " ON e.key = l.key WHERE e.key IS NULL AND NOT (l.key GLOB ?) ORDER BY l.key",
}
_CANDIDATES = (
    "SELECT e.key, e.path, e.size, l.etag, n.sha256, u.etag, u.sha256, u.part_size, u.parts,"
    " u.proof FROM temp.expected e JOIN temp.listed l ON l.key = e.key AND l.size = e.size"
    " JOIN entries n ON n.path = e.path LEFT JOIN uploads u ON u.path = e.path ORDER BY e.key"
)


class BucketComparison:
    """One comparison; use as a context manager (the tables are dropped on the way out)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.conn = manifest.conn

    def __enter__(self) -> BucketComparison:
        self.conn.execute("DROP TABLE IF EXISTS temp.expected")
        self.conn.execute("DROP TABLE IF EXISTS temp.listed")
        self.conn.execute(
            "CREATE TEMP TABLE expected (key TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER)"
        )
        self.conn.execute(
            "CREATE TEMP TABLE listed (key TEXT PRIMARY KEY, size INTEGER, etag TEXT)"
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("DROP TABLE IF EXISTS temp.expected")
        self.conn.execute("DROP TABLE IF EXISTS temp.listed")

    def expect(self, rows: Iterable[tuple[str, str, int]]) -> tuple[int, int]:
        """Load (key, path, size) of what the bucket should hold; (objects, bytes)."""
        with self.manifest.atomic():
            self.conn.executemany("INSERT OR REPLACE INTO temp.expected VALUES (?, ?, ?)", rows)
        return self.conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM temp.expected"
        ).fetchone()

    def listed(self, objects: list[tuple[str, int, str | None]]) -> None:
        """Add (key, size, etag) of listed objects."""
        with self.manifest.atomic():
            self.conn.executemany("INSERT OR REPLACE INTO temp.listed VALUES (?, ?, ?)", objects)

    def problems(self, problem: Problem, ignore_glob: str) -> Iterator[tuple[str, str | None]]:
        """(key, path) of each object with ``problem``; listed keys matching ``ignore_glob``
        (the mirror's own metadata) are never unexpected."""
        args = (ignore_glob,) if problem == "unexpected" else ()
        return iter(self.conn.execute(_QUERIES[problem], args))

    def content_candidates(self) -> list[tuple]:
        """What the content proof needs of each object of the right size: (key, path, size,
        listed etag, reference sha256, recorded etag, sha256, part size, parts, proof)."""
        return self.conn.execute(_CANDIDATES).fetchall()
