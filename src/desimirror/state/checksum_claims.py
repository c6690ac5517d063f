"""The checksums the release publishes (its ``*.sha256sum`` listings), as the state keeps
them: which listings were read, what each claims, and the claims made the entries'
reference checksums."""

from __future__ import annotations

import time

from desimirror.state import tallies, treetallies
from desimirror.state.db import StateDb
from desimirror.state.records import UPLOADABLE


class PublishedClaims(StateDb):
    """The ``published`` and ``checksum_files`` tables."""

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
            if cur.rowcount > 0 and tallies.read_any(conn) is not None:
                # a new reference can make a done file pending: count again
                tallies.recount(conn, self.get_meta(tallies.SCOPE) or "")
            else:
                tallies.set_claims(conn)
            if cur.rowcount > 0:  # the same for the tree's counts, which are always kept
                treetallies.recount(conn)
        return max(cur.rowcount, 0)

    def claim_count(self) -> int:
        """How many files the release's listings claim a checksum for (kept, else counted)."""
        kept = tallies.read_any(self.conn)
        if kept is not None:
            return kept["claims"]
        return self.conn.execute("SELECT count(*) FROM published").fetchone()[0]
