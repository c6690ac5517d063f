"""``upload --dry-run``: what an upload would send, adopt and skip, without sending.

rclone's and s5cmd's users expect a dry run to send nothing, and so it is here: it reads
the state db (never writes it, never takes the write lock, pins nothing) and, by default,
makes no request at all. Every pending file of the batches the run would take is counted
as one to send; files already confirmed are skipped, as the upload skips them.

With ``check_bucket`` it also asks the bucket which keys exist (the upload's own lookup:
LIST requests, a HEAD each where a few keys are alone; nothing written), so that objects
already there with the file's size are counted as adopted (``--adopt size``) or as
candidates that the upload adopts if their checksum matches (``--adopt checksum``; the
dry run reads no file, so it cannot tell).

Cost: one pass over the plan's pending rows, a key per file only when the bucket is asked;
nothing kept per file beyond one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from desimirror.errors import UsageError
from desimirror.pipeline.upload.options import UploadOptions
from desimirror.pipeline.upload.uploader import planned_batches
from desimirror.progress import NullProgress, Progress
from desimirror.state.manifest import Manifest
from desimirror.storage import target
from desimirror.storage.keys import KeyMap


@dataclass
class DryRunReport:
    """The ``--json`` report of ``upload --dry-run``."""

    bucket: str
    backend: str
    adopt_mode: str
    bucket_checked: bool
    dry_run: bool = True
    batches_total: int = 0
    batches_done: int = 0  # nothing pending in them
    batches_to_run: int = 0
    batches_left: int = 0  # beyond --max-batches
    files_to_send: int = 0
    bytes_to_send: int = 0
    files_multipart: int = 0  # files_to_send above the part size
    parts_to_send: int = 0  # their parts
    files_to_adopt: int = 0  # --adopt size: same size in the bucket
    bytes_to_adopt: int = 0
    files_to_check: int = 0  # --adopt checksum: same size, adopted if the checksum matches
    bytes_to_check: int = 0
    files_skipped: int = 0  # confirmed already
    bytes_skipped: int = 0
    files_left: int = 0  # pending in the batches beyond --max-batches
    bytes_left: int = 0
    files_gone: int = 0  # mirrored earlier, gone from the source (--delete removes them)
    lookup_requests: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def dry_run(
    manifest: Manifest,
    options: UploadOptions,
    *,
    check_bucket: bool = False,
    progress: Progress | None = None,
    sleep: Callable[[float], None] | None = None,
) -> DryRunReport:
    """Count what :func:`desimirror.pipeline.upload.upload` would do; see the module doc."""
    progress = progress or NullProgress()
    keymap = target.keymap_for(manifest, options.target.bucket, options.prefix, options.remap)
    batches, subdir = planned_batches(manifest, keymap)
    report = DryRunReport(
        bucket=options.target.bucket,
        backend=options.backend,
        adopt_mode=options.adopt,
        bucket_checked=check_bucket,
        batches_total=len(batches),
    )
    _warn(manifest, report)
    totals = manifest.totals(subdir)
    report.files_skipped = totals["files"] - totals["pending_files"]
    report.bytes_skipped = totals["bytes"] - totals["pending_bytes"]
    report.files_gone = manifest.gone_count()
    lookup = _lookup(options, sleep) if check_bucket and options.adopt != "none" else None
    progress.start("dry run", totals["pending_files"], totals["pending_bytes"])
    try:
        for _batch_id, _nbytes, _nfiles, paths in batches:
            pending = manifest.pending_in(paths)
            if not pending:
                report.batches_done += 1
                continue
            if options.max_batches is not None and report.batches_to_run >= options.max_batches:
                report.batches_left += 1
                report.files_left += len(pending)
                report.bytes_left += sum(e.size for e in pending)
                continue
            report.batches_to_run += 1
            _count_batch(report, pending, options, keymap, lookup)
            progress.advance(len(pending), sum(e.size for e in pending))
    finally:
        progress.close()
    if lookup is not None:
        report.lookup_requests = lookup.requests
    return report


def _count_batch(
    report: DryRunReport, pending: list, options: UploadOptions, keymap: KeyMap, lookup
) -> None:
    """Sort one batch's pending files into sent, adopted and to be checked."""
    found = lookup.find(keymap.key(e.path) for e in pending).objects if lookup else {}
    part_size = options.part_size
    for entry in pending:
        size = entry.size
        obj = found.get(keymap.key(entry.path)) if found else None
        if obj is not None and obj.size == size:
            if options.adopt == "size":
                report.files_to_adopt += 1
                report.bytes_to_adopt += size
                continue
            report.files_to_check += 1
            report.bytes_to_check += size
            continue
        report.files_to_send += 1
        report.bytes_to_send += size
        if size > part_size:
            report.files_multipart += 1
            report.parts_to_send += -(-size // part_size)


def _lookup(options: UploadOptions, sleep: Callable[[float], None] | None):
    """The upload's own lookup of keys in the bucket (LIST and HEAD requests only)."""
    from desimirror.storage.lookup import ObjectLookup
    from desimirror.storage.s3client import check_readable, make_client

    client = make_client(options.target, max_pool_connections=32)
    check_readable(client, options.target.bucket)
    extra = {"sleep": sleep} if sleep is not None else {}
    return ObjectLookup(client, options.target.bucket, workers=16, **extra)


def _warn(manifest: Manifest, report: DryRunReport) -> None:
    """What would stop or change the real upload, said up front."""
    if manifest.root is None:
        report.warnings.append(
            f"{manifest.path} was imported from a find.json without --root: the upload "
            "itself would refuse it (no local tree to upload from)"
        )
    try:
        partial = manifest.require_whole_tree("upload")
    except UsageError as exc:
        report.warnings.append(str(exc))
    else:
        if partial:
            report.warnings.append(partial)


__all__ = ["DryRunReport", "dry_run"]
