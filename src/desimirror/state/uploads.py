"""What the bucket holds, as the state records it: per-file upload records and how each
was proven, failures and their reasons, upload runs, and which files are still pending."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from desimirror.state import tallies, treetallies
from desimirror.state.entries import EntryTables
from desimirror.state.records import (
    FAILURE_REASONS,
    NOT_DONE,
    OPEN_FAILURES,
    UPLOADABLE,
    Entry,
    RunTotals,
    UploadRecord,
    subtree_range,
)


class UploadTables(EntryTables):
    """The ``uploads``, ``failures`` and ``upload_runs`` tables."""

    #: The uploadables not done (:data:`~desimirror.state.records.NOT_DONE`).
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
        """Files and bytes of the uploadables at or below ``under``: all, and still pending.

        From the running counts where they are kept for ``under`` (the plan's selection),
        else by a scan (:meth:`scanned_totals`)."""
        kept = tallies.read(self.conn, under)
        if kept is not None:
            return {k: kept[k] for k in ("files", "bytes", "pending_files", "pending_bytes")}
        return self.scanned_totals(under)

    def scanned_totals(self, under: str = "") -> dict[str, int]:
        """:meth:`totals` counted from the tables (a scan of every entry below ``under``)."""
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
        records = list(records)
        paths = [r.path for r in records]
        before = tallies.snapshot(self.conn, paths)
        tree_before = treetallies.states(self.conn, paths)
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
        if before is not None:
            tallies.apply_change(self.conn, before, tallies.snapshot(self.conn, paths))
        treetallies.apply_change(self.conn, tree_before, treetallies.states(self.conn, paths))
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
        before = treetallies.states(self.conn, [path])
        self.conn.execute(
            "INSERT INTO failures (path, reason, error, attempts, at) VALUES (?, ?, ?, 1, ?)"
            " ON CONFLICT (path) DO UPDATE SET reason = excluded.reason,"
            " error = excluded.error, attempts = failures.attempts + 1, at = excluded.at",
            (path, reason, error, time.time()),
        )
        treetallies.apply_change(self.conn, before, treetallies.states(self.conn, [path]))

    def begin_upload_run(self) -> int:
        with self.atomic() as conn:
            cur = conn.execute("INSERT INTO upload_runs (started) VALUES (?)", (time.time(),))
        return int(cur.lastrowid)

    def tick_upload_run(
        self,
        run_id: int,
        files: int,
        nbytes: int,
        by_worker: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Add confirmed work to a run and stamp its end; inside atomic, with the uploads.
        ``by_worker``: worker -> (files, bytes) of that work sent by each Dask worker."""
        self.conn.execute(
            "UPDATE upload_runs SET files = files + ?, bytes = bytes + ?, finished = ?"
            " WHERE id = ?",
            (files, nbytes, time.time(), run_id),
        )
        self.conn.executemany(
            "INSERT INTO upload_run_workers (run_id, worker, files, bytes) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (run_id, worker) DO UPDATE SET files = files + excluded.files,"
            " bytes = bytes + excluded.bytes",
            [(run_id, w, f, b) for w, (f, b) in (by_worker or {}).items()],
        )

    def latest_run_workers(self) -> list[tuple[str, int, int]]:
        """(worker, files, bytes) each Dask worker sent in the latest upload run (empty for
        a run on one node)."""
        return self.conn.execute(
            "SELECT worker, files, bytes FROM upload_run_workers WHERE run_id ="
            " (SELECT max(id) FROM upload_runs WHERE finished IS NOT NULL) ORDER BY worker"
        ).fetchall()

    # -- files gone from the source ---------------------------------------------------------

    def gone_uploads(self) -> list[tuple[str, str, int, str | None, bool]]:
        """(path, key, size, etag, adopted) of objects recorded for files no longer uploadable."""
        return self.conn.execute(
            "SELECT u.path, u.key, u.size, u.etag, u.adopted FROM uploads u"
            f" WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.path = u.path AND {UPLOADABLE})"
            " ORDER BY u.path"
        ).fetchall()

    def gone_count(self) -> int:
        """How many :meth:`gone_uploads` there are (kept count, else a scan)."""
        kept = tallies.read_any(self.conn)
        return kept["gone"] if kept is not None else len(self.gone_uploads())

    def ensure_tallies(self, under: str) -> None:
        """Count where the mirror stands for ``under`` unless that is kept already; a
        writer's call (an old db, or another selection than the last one counted)."""
        with self.atomic() as conn:
            tallies.ensure(conn, under)

    def forget_uploads(self, paths: Iterable[str]) -> int:
        """Drop upload records (objects deleted, or found wrong); inside atomic. Returns
        how many there were."""
        paths = list(paths)
        before = tallies.snapshot(self.conn, paths) if paths else None
        tree_before = treetallies.states(self.conn, paths)
        cur = self.conn.executemany("DELETE FROM uploads WHERE path = ?", [(p,) for p in paths])
        if before is not None:
            tallies.apply_change(self.conn, before, tallies.snapshot(self.conn, paths))
        treetallies.apply_change(self.conn, tree_before, treetallies.states(self.conn, paths))
        return max(cur.rowcount, 0)

    # -- where the mirror stands ---------------------------------------------------------

    def failure_counts(self) -> dict[str, int]:
        """reason -> files not mirrored for it (:data:`OPEN_FAILURES`: uploadable files
        not done), as the tree's counts for the root hold them."""
        root = treetallies.of(self.conn, "")
        return {reason: root[reason][0] for reason in FAILURE_REASONS if reason in root}

    def recent_failures(self, limit: int) -> list[tuple[str, str, str, int]]:
        """(path, reason, error, attempts) of the latest failures that count, newest first."""
        return self.conn.execute(
            f"SELECT f.path, f.reason, f.error, f.attempts{OPEN_FAILURES}"
            " ORDER BY f.at DESC LIMIT ?",
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

    def proof_counts(self) -> dict[str, int]:
        """proof -> objects recorded with it (see :class:`UploadRecord`)."""
        kept = tallies.read_any(self.conn)
        if kept is not None:
            return tallies.proofs(kept)
        rows = self.conn.execute("SELECT coalesce(proof, 'none'), count(*) FROM uploads GROUP BY 1")
        return dict(rows)

    def adopted_count(self) -> int:
        """Objects found in the bucket and recorded without being sent."""
        kept = tallies.read_any(self.conn)
        if kept is not None:
            return kept["adopted"]
        return self.conn.execute("SELECT count(*) FROM uploads WHERE adopted").fetchone()[0]

    def paths_failed_for(self, reason: str) -> set[str]:
        """The paths whose last failure has ``reason``."""
        rows = self.conn.execute("SELECT path FROM failures WHERE reason = ?", (reason,))
        return {path for (path,) in rows}
