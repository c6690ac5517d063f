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

The parts: :mod:`.options` (what a run is asked, and what it did), :mod:`.uploader`
(checking, adopting and sending each batch), :mod:`.recorder` (outcomes into the db),
:mod:`.cluster` (the transfers on a Dask cluster's workers, ``--scheduler``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from desimirror.errors import IncompleteError, RemoteError, UsageError
from desimirror.integrity.prehash import Prehasher
from desimirror.integrity.published import sync_published
from desimirror.integrity.sourcetree import SourceTree
from desimirror.pipeline.executors import dask_client
from desimirror.pipeline.upload.cluster import ClusterBackend, SendSpec, check_backend
from desimirror.pipeline.upload.options import (
    ADOPT_MODES,
    UploadOptions,
    UploadSummary,
    incomplete_message,
)
from desimirror.pipeline.upload.recorder import Recorder
from desimirror.pipeline.upload.uploader import StoreGaveUp, Uploader, planned_batches
from desimirror.progress import NullProgress, Progress
from desimirror.state.manifest import Manifest
from desimirror.storage import target, transfer
from desimirror.storage.health import validation_text
from desimirror.storage.lookup import ObjectLookup
from desimirror.storage.transfer.proving import with_proof

__all__ = ["ADOPT_MODES", "StoreGaveUp", "UploadOptions", "UploadSummary", "upload"]


def upload(
    manifest: Manifest,
    options: UploadOptions,
    *,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> UploadSummary:
    """Upload every pending file of the plan, batch by batch; see the module docstring.
    With ``options.scheduler``, the transfers run on that Dask cluster's workers
    (:mod:`.cluster`) and this process records them, as it does its own.

    Raises :class:`IncompleteError` (after recording everything) when files failed, and
    :class:`RemoteError` when the store answered nothing but failures for
    ``give_up_after`` seconds (see :mod:`desimirror.storage.health`), or the scheduler
    was lost.
    """
    if options.scheduler is None:
        return _upload(manifest, options, None, progress=progress, sleep=sleep)
    check_backend(options.backend)
    with dask_client(options.scheduler) as cluster:
        return _upload(manifest, options, cluster, progress=progress, sleep=sleep)


def _upload(
    manifest: Manifest,
    options: UploadOptions,
    cluster: tuple[Any, str] | None,
    *,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> UploadSummary:
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
    keymap = target.keymap_for(manifest, options.target.bucket, options.prefix, options.remap)
    batches, subdir = planned_batches(manifest, keymap)
    client = make_client(options.target, max_pool_connections=32)
    check_bucket(client, options.target.bucket, sleep=sleep)
    target.pin(manifest, options.target.bucket, keymap, options.target.endpoint_url)

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
    manifest.ensure_tallies(subdir)  # a db from before the running counts: count it once
    totals = manifest.totals(subdir)
    progress.start("upload", totals["pending_files"], totals["pending_bytes"])
    run_id = manifest.begin_upload_run()
    recorder = Recorder(manifest, run_id, summary)
    tree = SourceTree(root, crawled_dev=_crawled_dev(manifest))
    if not tree.compare_dev:
        summary.warnings.append(
            "the tree's device number differs from the crawl's (another node or mount): "
            "files are identified by inode and ctime only"
        )
    hasher = Prehasher(options.hash_threads, tree)
    lookup = ObjectLookup(client, options.target.bucket, workers=16, sleep=sleep)
    backend: transfer.TransferBackend
    if cluster is not None:
        dask, summary.ran_on = cluster
        spec = SendSpec(
            options.backend,
            options.target,
            options.workers,
            options.part_size,
            _crawled_dev(manifest),
        )
        backend = ClusterBackend(dask, spec, address=options.scheduler or "")
    else:
        backend = with_proof(
            transfer.get(
                options.backend, options.target, options.workers, part_size=options.part_size
            ),
            lookup=lookup,
            hasher=hasher,
            tree=tree,
            part_size=options.part_size,
            chunk_files=options.chunk_files,
            chunk_bytes=options.chunk_bytes,
            on_phase=progress.phase,
        )
    limiter = backend.concurrency
    uploader = Uploader(
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
    started, cpu_started = time.monotonic(), time.process_time()
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
        summary.cpu_seconds = time.process_time() - cpu_started
        if isinstance(backend, ClusterBackend):
            summary.worker_cpu_seconds = backend.worker_cpu_seconds
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
        raise IncompleteError(incomplete_message(summary), report=summary.as_dict())
    if summary.files_corrupt:
        raise IncompleteError(incomplete_message(summary), report=summary.as_dict())
    return summary


def _crawled_dev(manifest: Manifest) -> int | None:
    root = manifest.get("")
    return root.dev if root is not None else None


def _note_validation(
    manifest: Manifest, backend: transfer.TransferBackend, summary: UploadSummary
) -> None:
    """Say it, and keep it for status and verify, when the store checked no checksums."""
    note = backend.validation_note()
    if note:
        summary.warnings.append(validation_text(note))
        manifest.record_store_note("validation", note)
