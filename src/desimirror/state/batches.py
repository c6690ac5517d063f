"""The plan in the state: its batches, the paths each covers, the options it was made
with, and which batches an upload found complete."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator

from desimirror.errors import UsageError
from desimirror.state import tallies
from desimirror.state.entries import EntryTables
from desimirror.state.records import Entry


class BatchTables(EntryTables):
    """The ``batches`` and ``batch_paths`` tables, and the plan's options in ``meta``."""

    def plan_options(self) -> dict:
        """What the stored plan was made with (see :func:`desimirror.pipeline.plan.store_plan`)."""
        return json.loads(self.get_meta("plan_options") or "{}")

    def require_whole_tree(self, command: str) -> str | None:
        """Refuse ``command`` over an unfinished crawl unless the plan was made over that
        very crawl with ``--partial``; then return the warning to repeat (else None)."""
        warning = self.partial_tree_warning()
        if warning is None:
            return None
        unfinished = self.unfinished_crawl()
        options = self.plan_options()
        if unfinished and options.get("partial") and options.get("crawl_id") == unfinished[0]:
            return warning + " (planned with --partial)"
        raise UsageError(
            f"{warning}; '{command}' refuses a partial tree (or run 'desimirror plan --partial'"
            " to mirror only what it saw)"
        )

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
            tallies.ensure(conn, self.get_meta("plan_subdir") or "")
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

    def batch_counts(self) -> tuple[int, int]:
        """(batches planned, batches an upload found complete)."""
        return self.conn.execute("SELECT count(*), count(completed) FROM batches").fetchone()
