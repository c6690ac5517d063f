"""Per-file outcomes into the state db, in small transactions: a kill -9 loses at most
the files in flight, and a db that cannot be written stops the run."""

from __future__ import annotations

import time

from desimirror.errors import redact
from desimirror.pipeline.upload.options import UploadSummary
from desimirror.state.manifest import Entry, Manifest, UploadRecord
from desimirror.storage.health import StoreHealth
from desimirror.text import shown

COMMIT_EVERY_SECONDS = 1.0
COMMIT_EVERY_RESULTS = 500
#: The WAL is truncated when it has grown past this, checked this often (see bound_wal).
WAL_LIMIT_BYTES = 64 << 20
WAL_CHECK_SECONDS = 30.0


_COUNTERS = {
    "changed": "files_changed",
    "unsafe": "files_unsafe",
    "corrupt": "files_corrupt",
}


class Recorder:
    """Buffers per-file outcomes and commits them in small transactions."""

    def __init__(self, manifest: Manifest, run_id: int, summary: UploadSummary) -> None:
        self.manifest, self.run_id, self.summary = manifest, run_id, summary
        self.done: list[UploadRecord] = []
        self.failed: list[tuple[str, str, str]] = []
        self.last_commit = time.monotonic()
        self.last_wal_check = self.last_commit
        self.health: StoreHealth | None = None  # kept in the db at each commit, for status
        #: worker -> [files, bytes] sent by each Dask worker since the last commit
        self.by_worker: dict[str, list[int]] = {}

    def confirmed(
        self, record: UploadRecord, *, counted_as_adopted: bool, worker: str | None = None
    ) -> None:
        """A file proven in the bucket; ``worker``: the Dask worker that sent it, if any."""
        self.done.append(record)
        if worker is not None and not counted_as_adopted:
            for counts in (self.by_worker, self.summary.workers):
                tally = counts.setdefault(worker, [0, 0])
                tally[0] += 1
                tally[1] += record.size
        proven = self.summary.proven_by
        proven[record.proof] = proven.get(record.proof, 0) + 1
        if counted_as_adopted:
            self.summary.files_adopted += 1
            self.summary.bytes_adopted += record.size
        else:
            self.summary.files_sent += 1
            self.summary.bytes_sent += record.size
        self._maybe_commit()

    def failed_file(self, entry: Entry, reason: str, message: str) -> None:
        self.failed.append((entry.path, reason, redact(message)))
        counter = _COUNTERS.get(reason, "files_failed")
        setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        if reason in ("error", "corrupt") and len(self.summary.errors) < 20:
            self.summary.errors.append(f"{shown(entry.path)}: {redact(message)}")
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        due = time.monotonic() - self.last_commit >= COMMIT_EVERY_SECONDS
        if due or len(self.done) + len(self.failed) >= COMMIT_EVERY_RESULTS:
            self.commit()

    def commit(self) -> None:
        if not (self.done or self.failed or (self.health and self.health.failing)):
            return
        sent = [r for r in self.done if not r.adopted]
        try:
            self.manifest.check_in_place()  # a db deleted or replaced: stop, do not go on
            with self.manifest.atomic():
                self.manifest.record_mirrored(self.done)
                for path, reason, message in self.failed:
                    self.manifest.record_failure(path, reason, message)
                self.manifest.tick_upload_run(
                    self.run_id,
                    len(sent),
                    sum(r.size for r in sent),
                    {w: (f, b) for w, (f, b) in self.by_worker.items()},
                )
                if self.health is not None:
                    self.manifest.record_store_note("health", self.health.as_dict())
        except Exception:  # cannot be recorded (db gone, disk full): the next run adopts them
            self.done, self.failed, self.by_worker = [], [], {}
            raise
        self.done, self.failed, self.by_worker = [], [], {}
        self.last_commit = time.monotonic()
        if self.last_commit - self.last_wal_check >= WAL_CHECK_SECONDS:
            self.last_wal_check = self.last_commit
            self.manifest.bound_wal(WAL_LIMIT_BYTES)
