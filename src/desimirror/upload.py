"""Upload the planned batches, file by file, so that a kill at any instant loses nothing.

Batches are units of work, not of state: what is done is the set of files whose object
was confirmed by the backend *and* whose size and mtime, stat'ed again after the
transfer, still match the manifest. Confirmations are committed in small transactions as
they arrive, so a kill -9 costs at most the files in flight, and the same command picks up
where the last one stopped. Failed files are retried with backoff inside the run and then
reported, never marked done; a file that changed since the crawl is flagged for a
re-crawl instead of being recorded under a size the bucket does not have.
"""

from __future__ import annotations

import json
import os
import random
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from desimirror import transfer
from desimirror.errors import IncompleteError, StateError, UsageError, redact
from desimirror.keys import KeyMap, first_collision
from desimirror.manifest import Entry, Manifest
from desimirror.progress import NullProgress, Progress
from desimirror.transfer import S3Target, TransferItem, TransferResult

COMMIT_EVERY_SECONDS = 1.0
COMMIT_EVERY_RESULTS = 500


@dataclass(frozen=True)
class UploadOptions:
    """Everything ``desimirror upload`` was asked to do."""

    target: S3Target
    prefix: str | None = None
    remap: tuple[str, ...] = ()
    backend: str = "s5cmd"
    workers: int = 64
    max_batches: int | None = None
    max_attempts: int = 4
    backoff_seconds: float = 1.0


@dataclass
class UploadSummary:
    """What one run did; the JSON report of ``desimirror upload --json``."""

    bucket: str
    backend: str
    batches_total: int = 0
    batches_done: int = 0
    batches_run: int = 0
    files_sent: int = 0
    bytes_sent: int = 0
    files_failed: int = 0
    files_changed: int = 0
    files_unsafe: int = 0
    pending_files: int = 0
    pending_bytes: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        report = dict(self.__dict__)
        report["bytes_per_second"] = round(self.rate, 1)
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


def pin_target(manifest: Manifest, bucket: str, keymap: KeyMap) -> None:
    """Record the layout once the bucket is known to be reachable and writable."""
    if manifest.get_meta("target") is None:
        manifest.set_meta("target", json.dumps(_target_record(bucket, keymap), sort_keys=True))


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


def _check_source(root: str, entry: Entry) -> tuple[str, str | None]:
    """Return (reason, message) if the file must not be sent as it stands, else ("", None).

    Regular files must still be regular files with the crawled size and mtime; a symlink
    must still resolve to a regular file inside the root, so nothing outside the crawled
    tree is ever read.
    """
    path = os.path.join(root, entry.path)
    try:
        lst = os.lstat(path)
        if entry.kind == "link":
            real = os.path.realpath(path)
            real_root = os.path.realpath(root)
            if not real.startswith(real_root + os.sep):
                return "unsafe", "symlink now points outside the crawled tree"
            lst = os.stat(path)
    except OSError as exc:
        return "changed", f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(lst.st_mode):
        return "changed", "no longer a regular file"
    if (lst.st_size, lst.st_mtime_ns) != (entry.size, entry.mtime_ns):
        return "changed", "size or mtime changed since the crawl; run 'desimirror crawl' again"
    return "", None


class _Recorder:
    """Buffers per-file outcomes and commits them in small transactions."""

    def __init__(self, manifest: Manifest, run_id: int, summary: UploadSummary) -> None:
        self.manifest, self.run_id, self.summary = manifest, run_id, summary
        self.done: list[tuple[str, str, int, int, str | None]] = []
        self.failed: list[tuple[str, str, str]] = []
        self.last_commit = time.monotonic()

    def confirmed(self, entry: Entry, key: str, etag: str | None) -> None:
        self.done.append((entry.path, key, entry.size, entry.mtime_ns or 0, etag))
        self.summary.files_sent += 1
        self.summary.bytes_sent += entry.size
        self._maybe_commit()

    def failed_file(self, entry: Entry, reason: str, message: str) -> None:
        self.failed.append((entry.path, reason, redact(message)))
        counter = {"changed": "files_changed", "unsafe": "files_unsafe"}.get(reason, "files_failed")
        setattr(self.summary, counter, getattr(self.summary, counter) + 1)
        if reason == "error" and len(self.summary.errors) < 20:
            self.summary.errors.append(f"{entry.path}: {redact(message)}")
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        due = time.monotonic() - self.last_commit >= COMMIT_EVERY_SECONDS
        if due or len(self.done) + len(self.failed) >= COMMIT_EVERY_RESULTS:
            self.commit()

    def commit(self) -> None:
        if not (self.done or self.failed):
            return
        nbytes = sum(row[2] for row in self.done)
        with self.manifest.atomic():
            self.manifest.record_uploads(self.done)
            for path, reason, message in self.failed:
                self.manifest.record_failure(path, reason, message)
            self.manifest.tick_upload_run(self.run_id, len(self.done), nbytes)
        self.done, self.failed = [], []
        self.last_commit = time.monotonic()


def _send_batch(
    backend: transfer.TransferBackend,
    root: str,
    entries: Sequence[Entry],
    keymap: KeyMap,
    recorder: _Recorder,
    progress: Progress,
    options: UploadOptions,
    sleep: Callable[[float], None],
) -> None:
    """Send one batch's pending files, retrying failures with exponential backoff."""
    todo: dict[str, Entry] = {}
    for entry in entries:
        reason, message = _check_source(root, entry)
        if reason:
            recorder.failed_file(entry, reason, message or reason)
        else:
            todo[keymap.key(entry.path)] = entry
    for attempt in range(1, options.max_attempts + 1):
        if not todo:
            return
        items = [TransferItem(os.path.join(root, e.path), k, e.size) for k, e in todo.items()]
        retry: dict[str, Entry] = {}
        last_error: dict[str, TransferResult] = {}
        for result in backend.put_batch(items):
            entry = todo[result.item.key]
            if result.ok:
                reason, message = _check_source(root, entry)
                if reason:
                    recorder.failed_file(entry, reason, f"changed during upload: {message}")
                else:
                    recorder.confirmed(entry, result.item.key, result.etag)
                    progress.advance(1, entry.size)
            elif result.retryable and attempt < options.max_attempts:
                retry[result.item.key] = entry
                last_error[result.item.key] = result
            else:
                recorder.failed_file(entry, "error", result.error or "upload failed")
        recorder.commit()
        todo = retry
        if todo:
            delay = options.backoff_seconds * 2 ** (attempt - 1)
            sleep(delay * (0.5 + random.random()))


def upload(
    manifest: Manifest,
    options: UploadOptions,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadSummary:
    """Upload every pending file of the plan, batch by batch; see the module docstring.

    Raises :class:`IncompleteError` (after recording everything) when files failed.
    """
    from desimirror.s3client import check_bucket, make_client

    progress = progress or NullProgress()
    root = manifest.root
    if root is None:
        raise UsageError(
            f"{manifest.path} was imported from a find.json without --root: "
            "there is no local tree to upload from"
        )
    if not os.path.isdir(root):
        raise UsageError(f"the crawled root {root} is not a readable directory here")
    keymap = keymap_for(manifest, options)
    batches = list(manifest.iter_batches())
    if not batches:
        raise UsageError(f"{manifest.path} has no plan: run 'desimirror plan --db ...' first")
    subdir = manifest.get_meta("plan_subdir") or ""
    collision = first_collision(keymap, (e.path for e in manifest.iter_uploadables(subdir)))
    if collision:
        a, b, key = collision
        raise UsageError(f"remap makes {a!r} and {b!r} share the key {key!r}; fix --remap")
    check_bucket(make_client(options.target), options.target.bucket)
    pin_target(manifest, options.target.bucket, keymap)

    summary = UploadSummary(bucket=options.target.bucket, backend=options.backend)
    summary.batches_total = len(batches)
    totals = manifest.totals(subdir)
    progress.start("upload", totals["pending_files"], totals["pending_bytes"])
    run_id = manifest.begin_upload_run()
    recorder = _Recorder(manifest, run_id, summary)
    backend = transfer.get(options.backend, options.target, options.workers)
    started = time.monotonic()
    try:
        for batch_id, _nbytes, _nfiles, paths in batches:
            pending = manifest.pending_in(paths)
            if not pending:
                summary.batches_done += 1
                manifest.mark_batch_complete(batch_id)
                continue
            if options.max_batches is not None and summary.batches_run >= options.max_batches:
                summary.stopped_early = True
                break
            summary.batches_run += 1
            _send_batch(backend, root, pending, keymap, recorder, progress, options, sleep)
            if not manifest.pending_in(paths):
                summary.batches_done += 1
                manifest.mark_batch_complete(batch_id)
    finally:
        recorder.commit()
        backend.close()
        progress.close()
        summary.seconds = time.monotonic() - started
    after = manifest.totals(subdir)
    summary.pending_files, summary.pending_bytes = after["pending_files"], after["pending_bytes"]
    if summary.files_failed or summary.files_changed or summary.files_unsafe:
        raise IncompleteError(_incomplete_message(summary), report=summary.as_dict())
    return summary


def _incomplete_message(summary: UploadSummary) -> str:
    parts = []
    if summary.files_failed:
        parts.append(f"{summary.files_failed} failed")
    if summary.files_changed:
        parts.append(f"{summary.files_changed} changed since the crawl (re-crawl)")
    if summary.files_unsafe:
        parts.append(f"{summary.files_unsafe} refused (symlink outside the tree)")
    first = f"; first: {summary.errors[0]}" if summary.errors else ""
    return f"upload incomplete: {', '.join(parts)} of this run's files{first}"
