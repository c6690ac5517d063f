"""Upload the planned batches, file by file, so that a kill at any instant loses nothing,
and so that every object's content is proven on the way.

Batches are units of work, not of state: what is done is the set of files whose object
was confirmed in the bucket, with its content checked, *and* whose file was the crawl's
(size, mtime, ctime, inode) when it was opened and still after its last byte was read.
Confirmations are committed in small transactions as they arrive, so a kill -9 costs at
most the files in flight, and the same command picks up where the last one stopped.

Content. Before the first batch the release's ``*.sha256sum`` listings are read
(:mod:`desimirror.integrity.published`): their digests are the reference for what the bytes must be.
Then each pending file goes one of three ways:

* **adopted**: the bucket already holds an object under the file's key with the same size
  and a matching checksum (its ``ChecksumSHA256`` against the reference, or its ETag
  against the file's MD5); it is recorded without being sent. ``--adopt size`` accepts a
  matching size alone (faster, unproven, and said so); ``--adopt none`` always sends.
* **sent by the native backend**, which sends the SHA-256 so that the store refuses bytes
  that differ, and hashes what it reads (one read of the file);
* **sent by s5cmd**, which cannot send checksums: the file is hashed here first
  (:mod:`desimirror.integrity.prehash`, one chunk ahead of the transfer) and the object's ETag is
  compared with the file's MD5 afterwards (a second read of the file).

A file whose bytes differ from its published SHA-256 is reported as corrupt and neither
sent nor adopted. Failed files are retried with jittered exponential backoff and then
reported, never marked done. Throttling (503 SlowDown) does not use up a file's attempts
(up to ``throttle_rounds`` extra rounds) and lowers the concurrency
(:mod:`desimirror.storage.throttle`). A file that changed since the crawl is flagged for a
re-crawl instead of being recorded under a size the bucket does not have.

Files gone from the source since they were mirrored are reported; ``--delete`` removes
their objects (see :mod:`desimirror.pipeline.prune`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from desimirror.errors import IncompleteError, RemoteError, StateError, UsageError, redact
from desimirror.integrity.checksums import (
    corrupt_text,
    guess_part_sizes,
    hex_of_b64,
    same_composite,
)
from desimirror.integrity.prehash import FileChanged, Prehasher
from desimirror.integrity.published import sync_published
from desimirror.integrity.sourcetree import SourceRefused, SourceTree, unreadable
from desimirror.progress import NullProgress, Progress
from desimirror.retrying import backoff_delay
from desimirror.state.manifest import MISMATCH, Entry, Manifest, UploadRecord
from desimirror.storage import transfer
from desimirror.storage.health import DEFAULT_GIVE_UP_SECONDS, StoreHealth, validation_text
from desimirror.storage.keys import KeyMap, first_collision
from desimirror.storage.lookup import ObjectInfo, ObjectLookup
from desimirror.storage.transfer import S3Target, TransferItem, TransferResult
from desimirror.storage.transfer.proving import with_proof
from desimirror.text import shown
from desimirror.units import MiB

COMMIT_EVERY_SECONDS = 1.0
COMMIT_EVERY_RESULTS = 500
ADOPT_MODES = ("checksum", "size", "none")


@dataclass(frozen=True)
class UploadOptions:
    """Everything ``desimirror upload`` was asked to do."""

    target: S3Target
    prefix: str | None = None
    remap: tuple[str, ...] = ()
    backend: str = transfer.DEFAULT_BACKEND
    workers: int = 64
    max_batches: int | None = None
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    #: Extra rounds a file may spend being refused by throttling, on top of its attempts.
    throttle_rounds: int = 30
    part_size: int = 50 * MiB
    adopt: str = "checksum"
    delete: bool = False
    hash_threads: int = 4
    #: s5cmd runs at most this much of a batch at once, hashing the next chunk meanwhile.
    chunk_files: int = 2000
    chunk_bytes: int = 8 << 30
    #: Give up (exit 4) after this long in which the store answered nothing but failures.
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS


@dataclass
class UploadSummary:
    """What one run did; the JSON report of ``desimirror upload --json``."""

    bucket: str
    backend: str
    adopt_mode: str = "checksum"
    batches_total: int = 0
    batches_done: int = 0
    batches_run: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    files_adopted: int = 0
    bytes_adopted: int = 0
    files_failed: int = 0
    files_changed: int = 0
    files_unsafe: int = 0
    files_corrupt: int = 0
    files_gone: int = 0
    bytes_gone: int = 0
    files_deleted: int = 0
    pending_files: int = 0
    pending_bytes: int = 0
    retries: int = 0
    backoff_seconds: float = 0.0
    bytes_hashed: int = 0
    hash_seconds: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False
    concurrency: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, object] = field(default_factory=dict)
    #: How each file confirmed in this run was tied to its bytes (proof -> files).
    proven_by: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        report = dict(self.__dict__)
        report["bytes_per_second"] = round(self.rate, 1)
        report["backoff_seconds"] = round(self.backoff_seconds, 3)
        report["hash_seconds"] = round(self.hash_seconds, 3)
        return report


def keymap_for(manifest: Manifest, options: UploadOptions) -> KeyMap:
    """The key layout of this mirror, checked against the one pinned by earlier runs.

    A different bucket, prefix or remap on a later run would scatter one mirror over two
    layouts and make "done" meaningless, so it is refused: use another --db for that.
    """
    root_name = manifest.root_name
    if root_name is None:
        raise UsageError(f"{manifest.path} has no crawl yet: run 'desimirror crawl' first")
    keymap = KeyMap.build(options.prefix or root_name, options.remap, root=manifest.root)
    wanted = _target_record(options.target.bucket, keymap)
    pinned = manifest.get_meta("target")
    if pinned is not None and json.loads(pinned) != wanted:
        raise StateError(
            f"{manifest.path} mirrors to {_describe_target(json.loads(pinned))}, not "
            f"{_describe_target(wanted)}; use another --db for another target"
        )
    return keymap


def _target_record(bucket: str, keymap: KeyMap) -> dict:
    return {"bucket": bucket, **keymap.describe()}


def pin_target(
    manifest: Manifest, bucket: str, keymap: KeyMap, endpoint_url: str | None = None
) -> None:
    """Record the layout once the bucket is known to be reachable and writable.

    The endpoint is recorded too (without credentials), as the default of later runs, but
    is not part of the layout: one store may be reached by several URLs (a proxy, an
    internal name), so another endpoint is used, and then recorded, not refused.
    """
    if manifest.get_meta("target") is None:
        manifest.set_meta("target", json.dumps(_target_record(bucket, keymap), sort_keys=True))
    if endpoint_url and manifest.get_meta("endpoint_url") != _without_userinfo(endpoint_url):
        manifest.set_meta("endpoint_url", _without_userinfo(endpoint_url))


def _without_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def pinned_keymap(manifest: Manifest) -> tuple[str, KeyMap]:
    """The bucket and key layout the last upload pinned (for verify and status)."""
    pinned = manifest.get_meta("target")
    if pinned is None:
        raise UsageError(f"{manifest.path} has not been uploaded anywhere yet")
    target = json.loads(pinned)
    return target["bucket"], KeyMap.build(target["prefix"], target["remap"])


def _describe_target(target: dict) -> str:
    remap = " ".join(target.get("remap", []))
    text = f"s3://{target['bucket']}/{target['prefix']}/"
    return f"{text} (remap {remap})" if remap else text


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


_COUNTERS = {
    "changed": "files_changed",
    "unsafe": "files_unsafe",
    "corrupt": "files_corrupt",
}


class _Recorder:
    """Buffers per-file outcomes and commits them in small transactions."""

    def __init__(self, manifest: Manifest, run_id: int, summary: UploadSummary) -> None:
        self.manifest, self.run_id, self.summary = manifest, run_id, summary
        self.done: list[UploadRecord] = []
        self.failed: list[tuple[str, str, str]] = []
        self.last_commit = time.monotonic()
        self.health: StoreHealth | None = None  # kept in the db at each commit, for status

    def confirmed(self, record: UploadRecord, *, counted_as_adopted: bool) -> None:
        self.done.append(record)
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
                self.manifest.tick_upload_run(self.run_id, len(sent), sum(r.size for r in sent))
                if self.health is not None:
                    self.manifest.record_store_note("health", self.health.as_dict())
        except Exception:  # cannot be recorded (db gone, disk full): the next run adopts them
            self.done, self.failed = [], []
            raise
        self.done, self.failed = [], []
        self.last_commit = time.monotonic()


@dataclass
class _Job:
    """One file of a batch on its way to the bucket."""

    entry: Entry
    rel: str  # the manifest path whose bytes are sent (a link's target for a link)
    attempts: int = 0  # failed attempts that were not throttling
    throttled: int = 0  # rounds refused by throttling
    sent: bool = False  # a transfer was started in this run (so not "adopted" if found)
    last_error: str | None = None  # of the last failed attempt, recorded if the run gives up


class _Uploader:
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
        recorder: _Recorder,
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
        self.recorder.confirmed(record, counted_as_adopted=adopted and not job.sent)
        proven = self.summary.proven_by
        proven[record.proof] = proven.get(record.proof, 0) + 1
        self.progress.advance(1, entry.size)

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


class StoreGaveUp(Exception):
    """The store answered nothing but failures for ``--give-up-after`` seconds."""


def upload(
    manifest: Manifest,
    options: UploadOptions,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadSummary:
    """Upload every pending file of the plan, batch by batch; see the module docstring.

    Raises :class:`IncompleteError` (after recording everything) when files failed, and
    :class:`RemoteError` when the store answered nothing but failures for
    ``give_up_after`` seconds (see :mod:`desimirror.storage.health`).
    """
    from desimirror.pipeline.prune import prune_gone
    from desimirror.storage.s3client import check_bucket, make_client

    if options.adopt not in ADOPT_MODES:
        raise UsageError(f"--adopt must be one of {', '.join(ADOPT_MODES)}")
    progress = progress or NullProgress()
    root = manifest.root
    if root is None:
        raise UsageError(
            f"{manifest.path} was imported from a find.json without --root: "
            "there is no local tree to upload from"
        )
    if not os.path.isdir(root):
        raise UsageError(f"the crawled root {root} is not a readable directory here")
    partial = manifest.require_whole_tree("upload")
    keymap = keymap_for(manifest, options)
    batches = list(manifest.iter_batches())
    if not batches:
        raise UsageError(f"{manifest.path} has no plan: run 'desimirror plan --db ...' first")
    subdir = manifest.get_meta("plan_subdir") or ""
    collision = first_collision(keymap, lambda: (e.path for e in manifest.iter_uploadables(subdir)))
    if collision:
        raise UsageError(collision.message())
    client = make_client(options.target, max_pool_connections=32)
    check_bucket(client, options.target.bucket, sleep=sleep)
    pin_target(manifest, options.target.bucket, keymap, options.target.endpoint_url)

    summary = UploadSummary(
        bucket=options.target.bucket, backend=options.backend, adopt_mode=options.adopt
    )
    if partial:
        summary.warnings.append(partial)
    summary.checksums = sync_published(manifest, root).as_dict()
    if options.adopt == "size":
        summary.warnings.append(
            "--adopt size: objects of the right size were recorded without checking their "
            "content; run 'desimirror verify --checksum' to prove them"
        )
    summary.batches_total = len(batches)
    totals = manifest.totals(subdir)
    progress.start("upload", totals["pending_files"], totals["pending_bytes"])
    run_id = manifest.begin_upload_run()
    recorder = _Recorder(manifest, run_id, summary)
    tree = SourceTree(root, crawled_dev=_crawled_dev(manifest))
    if not tree.compare_dev:
        summary.warnings.append(
            "the tree's device number differs from the crawl's (another node or mount): "
            "files are identified by inode and ctime only"
        )
    hasher = Prehasher(options.hash_threads, tree)
    lookup = ObjectLookup(client, options.target.bucket, workers=16, sleep=sleep)
    backend = with_proof(
        transfer.get(options.backend, options.target, options.workers, part_size=options.part_size),
        lookup=lookup,
        hasher=hasher,
        tree=tree,
        part_size=options.part_size,
        chunk_files=options.chunk_files,
        chunk_bytes=options.chunk_bytes,
        on_phase=progress.phase,
    )
    limiter = backend.concurrency
    uploader = _Uploader(
        options=options,
        tree=tree,
        keymap=keymap,
        backend=backend,
        lookup=lookup,
        hasher=hasher,
        recorder=recorder,
        progress=progress,
        sleep=sleep,
    )
    started = time.monotonic()
    gave_up: str | None = None
    try:
        for number, (batch_id, _nbytes, _nfiles, paths) in enumerate(batches):
            pending = manifest.pending_in(paths)
            if not pending:
                summary.batches_done += 1
                manifest.mark_batch_complete(batch_id)
                continue
            if options.max_batches is not None and summary.batches_run >= options.max_batches:
                summary.stopped_early = True
                break
            summary.batches_run += 1
            more = options.max_batches is None or summary.batches_run < options.max_batches
            if more and number + 1 < len(batches):
                uploader.prefetch(manifest.pending_in(batches[number + 1][3]))
            try:
                uploader.batch(pending)
            except StoreGaveUp as exc:
                gave_up = str(exc)
                break
            if not manifest.pending_in(paths):
                summary.batches_done += 1
                manifest.mark_batch_complete(batch_id)
    finally:
        recorder.commit()
        backend.close()
        hasher.close()
        tree.close()
        progress.close()
        summary.seconds = time.monotonic() - started
        summary.bytes_hashed, summary.hash_seconds = hasher.bytes, hasher.seconds
        summary.concurrency = limiter.as_dict()
        _note_validation(manifest, backend, summary)
    if gave_up:
        after = manifest.totals(subdir)
        summary.pending_files = after["pending_files"]
        summary.pending_bytes = after["pending_bytes"]
        summary.errors.insert(0, gave_up)
        raise RemoteError(gave_up, report=summary.as_dict())
    prune_gone(manifest, keymap, lookup, summary, delete=options.delete)
    after = manifest.totals(subdir)
    summary.pending_files, summary.pending_bytes = after["pending_files"], after["pending_bytes"]
    if summary.files_failed or summary.files_changed or summary.files_unsafe:
        raise IncompleteError(_incomplete_message(summary), report=summary.as_dict())
    if summary.files_corrupt:
        raise IncompleteError(_incomplete_message(summary), report=summary.as_dict())
    return summary


def _crawled_dev(manifest: Manifest) -> int | None:
    root = manifest.get("")
    return root.dev if root is not None else None


def _note_validation(
    manifest: Manifest, backend: transfer.TransferBackend, summary: UploadSummary
) -> None:
    """Say it, and keep it for status and verify, when the store checked no checksums."""
    note_of = getattr(backend, "validation_note", None)
    note = note_of() if note_of is not None else None
    if note:
        summary.warnings.append(validation_text(note))
        manifest.record_store_note("validation", note)


def _incomplete_message(summary: UploadSummary) -> str:
    parts = []
    if summary.files_failed:
        parts.append(f"{summary.files_failed} failed")
    if summary.files_corrupt:
        parts.append(f"{summary.files_corrupt} do not match their published SHA-256 (corrupt)")
    if summary.files_changed:
        parts.append(f"{summary.files_changed} changed since the crawl (re-crawl)")
    if summary.files_unsafe:
        parts.append(f"{summary.files_unsafe} refused (symlink outside the tree)")
    first = f"; first: {summary.errors[0]}" if summary.errors else ""
    return f"upload incomplete: {', '.join(parts)} of this run's files{first}"
