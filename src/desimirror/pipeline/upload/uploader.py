"""One batch after another to the bucket: each pending file checked against the crawl,
adopted where the bucket already holds it proven, else sent through the backend, retried
with backoff, and its outcome handed to the :class:`~.recorder.Recorder`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from desimirror.errors import UsageError
from desimirror.integrity.checksums import (
    corrupt_text,
    guess_part_sizes,
    hex_of_b64,
    same_composite,
)
from desimirror.integrity.prehash import FileChanged, Prehasher
from desimirror.integrity.sourcetree import SourceRefused, SourceTree, unreadable
from desimirror.pipeline.upload.options import UploadOptions
from desimirror.pipeline.upload.recorder import Recorder
from desimirror.progress import Progress, describe_workers, worker_rates
from desimirror.retrying import backoff_delay
from desimirror.state.manifest import MISMATCH, Entry, Manifest, UploadRecord
from desimirror.storage import transfer
from desimirror.storage.health import StoreHealth
from desimirror.storage.keys import KeyMap, first_collision
from desimirror.storage.lookup import ObjectInfo, ObjectLookup
from desimirror.storage.transfer import TransferItem, TransferResult


def _check_source(tree: SourceTree, entry: Entry) -> tuple[str, str | None, str]:
    """(reason, message, rel): why the file must not be sent as it stands (reason "" if it
    may), and the manifest path whose bytes are read.

    The path must still lead, beneath the root and through no symlink, to the file the
    crawl saw (same size, mtime and identity); a symlink must still resolve to that file
    inside the root. See :mod:`desimirror.integrity.sourcetree`.
    """
    try:
        rel = tree.rel_to_read(entry)
        tree.check_entry(entry)
    except SourceRefused as exc:
        return exc.reason, str(exc), entry.path
    return "", None, rel


@dataclass
class _Job:
    """One file of a batch on its way to the bucket."""

    entry: Entry
    rel: str  # the manifest path whose bytes are sent (a link's target for a link)
    attempts: int = 0  # failed attempts that were not throttling
    throttled: int = 0  # rounds refused by throttling
    sent: bool = False  # a transfer was started in this run (so not "adopted" if found)
    last_error: str | None = None  # of the last failed attempt, recorded if the run gives up


class Uploader:
    """Sends the pending files of one batch after another; see the module docstring."""

    def __init__(
        self,
        *,
        options: UploadOptions,
        tree: SourceTree,
        keymap: KeyMap,
        backend: transfer.TransferBackend,
        lookup: ObjectLookup,
        hasher: Prehasher,
        recorder: Recorder,
        progress: Progress,
        sleep: Callable[[float], None],
    ) -> None:
        self.options, self.tree, self.keymap = options, tree, keymap
        self.backend, self.lookup, self.hasher = backend, lookup, hasher
        self.recorder, self.progress, self.sleep = recorder, progress, sleep
        self.summary = recorder.summary
        self.health = StoreHealth(options.give_up_after)
        recorder.health = self.health
        self.mismatched = recorder.manifest.paths_failed_for(MISMATCH)
        self.started = self.noted = time.monotonic()

    # -- one batch ------------------------------------------------------------------------

    def batch(self, entries: Sequence[Entry]) -> None:
        """Send (or adopt) one batch's pending files, retrying failures with backoff."""
        todo: dict[str, _Job] = {}
        for entry in entries:
            reason, message, rel = _check_source(self.tree, entry)
            if reason:
                self.recorder.failed_file(entry, reason, message or reason)
            else:
                todo[self.keymap.key(entry.path)] = _Job(entry, rel)
        rounds = 0
        try:
            while todo:
                rounds += 1
                if self.options.adopt != "none":
                    todo = self._adopt(todo)
                retry: dict[str, _Job] = {}
                try:
                    for job, result in self._send(todo):
                        if self._settle(job, result):
                            retry[result.item.key] = job
                except StoreGaveUp:
                    for job in retry.values():  # failed in this run: say so, never "done"
                        self.recorder.failed_file(job.entry, "error", job.last_error or "failed")
                    raise
                self.recorder.commit()
                todo = retry
                if todo:
                    self.summary.retries += len(todo)
                    delay = backoff_delay(
                        rounds, self.options.backoff_seconds, self.options.max_backoff_seconds
                    )
                    self.summary.backoff_seconds += delay
                    self.health.backing_off(delay)
                    self._show_health()
                    self.sleep(delay)
        finally:
            self.hasher.forget({e.path for e in entries})

    def prefetch(self, entries: Sequence[Entry]) -> None:
        """Tell the backend which files come next, while this batch is sent (a backend that
        hashes ahead starts on them)."""
        if self.options.adopt == "size":
            return
        self.backend.prepare(
            self._item(self.keymap.key(e.path), _Job(e, e.path))
            for e in entries
            if e.kind == "file"  # links are resolved and checked when their turn comes
        )

    def _settle(self, job: _Job, result: TransferResult) -> bool:
        """Record one result; True if the file is to be tried again. Raises
        :class:`StoreGaveUp` once the store has answered nothing but failures too long."""
        retry = self._settle_one(job, result)
        job.last_error = result.error
        if result.ok:
            self.health.success()
        elif result.reason not in ("corrupt", "changed"):  # the store's answer, not the file's
            self.health.failure(result.error or "upload failed")
            if self.health.should_give_up():
                if retry:
                    self.recorder.failed_file(job.entry, "error", result.error or "failed")
                raise StoreGaveUp(self.health.give_up_message(self._endpoint()))
        self._show_health()
        return retry

    def _show_health(self) -> None:
        self.progress.store(self.health.line() if self.health.failures else None)

    def _endpoint(self) -> str:
        from desimirror.storage.s3client import endpoint_url

        return endpoint_url(self.options.target) or "AWS"

    def _settle_one(self, job: _Job, result: TransferResult) -> bool:
        entry = job.entry
        if result.ok:
            # the backend checked the file it read against the crawl after its last byte
            # (ETags for a backend that reads by path): no second look at the path here,
            # which on a busy client costs a GIL hand-off per system call
            if entry.sha256 and result.sha256 and result.sha256 != entry.sha256:
                text = f"the object holds SHA-256 {result.sha256}, the release has {entry.sha256}"
                self.recorder.failed_file(entry, "corrupt", text)
            else:
                self._confirm(job, result.item.key, result, adopted=False)
            return False
        if result.reason in ("corrupt", "changed", "unsafe"):
            self.recorder.failed_file(entry, result.reason, result.error or result.reason)
            return False
        if result.retryable:
            if result.throttled and job.throttled < self.options.throttle_rounds:
                job.throttled += 1
                return True
            job.attempts += 1
            if job.attempts < self.options.max_attempts:
                return True
        self.recorder.failed_file(entry, "error", result.error or "upload failed")
        return False

    def _confirm(
        self,
        job: _Job,
        key: str,
        result: TransferResult | None = None,
        *,
        adopted: bool,
        info: ObjectInfo | None = None,
        proof: str | None = None,
        sha256: str | None = None,
    ) -> None:
        entry = job.entry
        multipart = result is not None and result.part_size is not None and len(result.parts) > 1
        record = UploadRecord(
            path=entry.path,
            key=key,
            size=entry.size,
            mtime_ns=entry.mtime_ns or 0,
            etag=(result.etag if result else None) or (info.etag if info else None),
            sha256=(result.sha256 if result else None) or sha256,
            part_size=result.part_size if multipart and result else None,
            parts=result.parts if multipart and result else (),
            proof=(result.proof if result else None) or proof or "none",
            adopted=adopted and not job.sent,
            ctime_ns=entry.ctime_ns,
            ino=entry.ino,
            dev=entry.dev,
        )
        self.recorder.confirmed(
            record,
            counted_as_adopted=adopted and not job.sent,
            worker=result.worker if result is not None else None,
        )
        self.progress.advance(1, entry.size)
        if result is not None and result.worker is not None:
            self._note_workers()

    def _note_workers(self) -> None:
        """Each Dask worker's throughput beside the bar, at most once a second."""
        now = time.monotonic()
        if now - self.noted >= 1.0:
            self.noted = now
            self.progress.note(
                describe_workers(worker_rates(self.summary.workers, now - self.started))
            )

    # -- adopting what the bucket already holds ----------------------------------------

    def _adopt(self, todo: dict[str, _Job]) -> dict[str, _Job]:
        """Record the files whose object is already right; return the ones still to send."""
        self.progress.phase("listing the bucket")
        found = self.lookup.find(todo)
        candidates = {
            k: j for k, j in todo.items() if (o := found.objects.get(k)) and o.size == j.entry.size
        }
        rest = {k: j for k, j in todo.items() if k not in candidates}
        if not candidates:
            return rest
        if self.options.adopt == "size":
            for key, job in candidates.items():
                if job.entry.path in self.mismatched:
                    rest[key] = job  # verify found this object wrong: never by size again
                else:
                    self._confirm(job, key, adopted=True, info=found.objects[key], proof="size")
            return rest
        unasked = [
            k
            for k, j in candidates.items()
            if j.entry.sha256 and not found.objects[k].checksum_known
        ]
        heads = self.lookup.find(unasked, checksums=True).objects if unasked else {}
        local: dict[str, tuple[_Job, ObjectInfo, int]] = {}
        for key, job in candidates.items():
            info = heads.get(key) or found.objects[key]
            full = hex_of_b64(info.checksum_sha256) if info.checksum_sha256 else None
            multipart = "-" in info.etag  # its checksum may be a composite without "-N"
            if (
                full is not None
                and job.entry.sha256
                and (full == job.entry.sha256 or not multipart)
            ):
                if full == job.entry.sha256:
                    self._confirm(job, key, adopted=True, info=info, proof="sha256", sha256=full)
                else:
                    rest[key] = job  # the object holds other bytes than the release
                continue
            part_size = self._part_size_of(info)
            if part_size is None:
                rest[key] = job  # cannot recompute its ETag: send the file instead
                continue
            local[key] = (job, info, part_size)
            self.hasher.submit(self._source(job), job.entry, part_size)
        for key, (job, info, part_size) in local.items():
            try:
                digests = self.hasher.digests(self._source(job), job.entry, part_size)
            except (FileChanged, SourceRefused, OSError) as exc:
                self.recorder.failed_file(job.entry, *unreadable(exc))
                continue
            if job.entry.sha256 and digests.sha256 != job.entry.sha256:
                self.recorder.failed_file(
                    job.entry, "corrupt", corrupt_text(digests.sha256, job.entry.sha256)
                )
                continue
            if info.etag == digests.etag:
                self._confirm(
                    job, key, adopted=True, info=info, proof="etag", sha256=digests.sha256
                )
            elif same_composite(info.checksum_sha256, digests.composite):
                self._confirm(
                    job, key, adopted=True, info=info, proof="composite", sha256=digests.sha256
                )
            else:
                rest[key] = job
        return rest

    def _source(self, job: _Job) -> str:
        return self.tree.path(job.rel)

    def _item(self, key: str, job: _Job) -> TransferItem:
        """What a backend needs to send the job's file, and to open it safely itself."""
        return TransferItem(
            self._source(job),
            key,
            job.entry.size,
            job.entry.sha256,
            root=self.tree.root,
            rel=job.rel,
            signature=self.tree.signature(job.entry),
        )

    def _part_size_of(self, info: ObjectInfo) -> int | None:
        """The part size with which the object's ETag can be recomputed from the file."""
        if "-" not in info.etag:
            return max(self.options.part_size, info.size, 1)
        guesses = guess_part_sizes(info.size, info.etag, [self.options.part_size])
        return guesses[0] if guesses else None

    # -- sending ----------------------------------------------------------------------------

    def _send(self, todo: dict[str, _Job]) -> Iterator[tuple[_Job, TransferResult]]:
        """Every file of ``todo`` through the backend; one proven result each (see
        :mod:`desimirror.storage.transfer.proving` for a backend that proves nothing)."""
        if not todo:
            return
        self.progress.phase("sending")
        items = []
        for key, job in todo.items():
            job.sent = True
            items.append(self._item(key, job))
        for result in self.backend.put_batch(items):
            yield todo[result.item.key], result


def planned_batches(manifest: Manifest, keymap: KeyMap) -> tuple[list, str]:
    """(the plan's batches, the plan's subdirectory), refused without a plan or when two
    paths of the selection would land on one key; for the upload and its dry run."""
    batches = list(manifest.iter_batches())
    if not batches:
        raise UsageError(f"{manifest.path} has no plan: run 'desimirror plan --db ...' first")
    subdir = manifest.get_meta("plan_subdir") or ""
    collision = first_collision(keymap, lambda: (e.path for e in manifest.iter_uploadables(subdir)))
    if collision:
        raise UsageError(collision.message())
    return batches, subdir


class StoreGaveUp(Exception):
    """The store answered nothing but failures for ``--give-up-after`` seconds."""
