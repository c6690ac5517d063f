"""``desimirror upload``: send the planned batches, resumable, one proven record per file."""

from __future__ import annotations

import click

from desimirror.cli.common import (
    DURATION,
    SIZE,
    db_option,
    finish,
    json_option,
    make_target,
    target_options,
)
from desimirror.errors import DesimirrorError, UsageError
from desimirror.manifest import Manifest
from desimirror.progress import for_terminal
from desimirror.transfer import BACKENDS
from desimirror.units import format_size
from desimirror.upload import ADOPT_MODES, UploadOptions, UploadSummary, upload

MiB = 1 << 20


@click.command("upload")
@db_option
@target_options
@click.option("--prefix", help="Key prefix (default: the crawled directory's name).")
@click.option(
    "--remap",
    multiple=True,
    metavar="SRC=DST",
    help="Rewrite a key prefix, e.g. edr/spectro/data=raw_spectro_data (repeatable).",
)
@click.option("--backend", type=click.Choice(sorted(BACKENDS)), default="s5cmd", show_default=True)
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop cleanly after N batches.")
@click.option("--workers", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries per failed file within this run, with exponential backoff.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(0.0, 60.0),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubled each round (jittered, at most 60 s).",
)
@click.option(
    "--adopt",
    type=click.Choice(ADOPT_MODES),
    default="checksum",
    show_default=True,
    help="Record objects already in the bucket instead of sending: when size and checksum "
    "match (checksum), when the size matches (size: fast, unproven), or never (none).",
)
@click.option(
    "--delete",
    is_flag=True,
    help="Delete the objects of files gone from the source (only objects this mirror sent, "
    "only under its key prefixes).",
)
@click.option(
    "--part-size",
    type=SIZE,
    default="50MiB",
    show_default=True,
    help="Multipart part size (whole MiB, at least 5 MiB); files above it go in parts.",
)
@click.option(
    "--give-up-after",
    type=DURATION,
    default="300s",
    show_default=True,
    help="Stop with exit 4 when the store has answered nothing but failures this long "
    "(e.g. a full disk, a dead server); what was confirmed stays done.",
)
@json_option
def command(
    db: str,
    bucket: str,
    endpoint_url: str | None,
    no_sign_request: bool,
    prefix: str | None,
    remap: tuple[str, ...],
    backend: str,
    max_batches: int | None,
    workers: int,
    retries: int,
    backoff: float,
    adopt: str,
    delete: bool,
    part_size: int,
    give_up_after: float,
    json_output: bool,
) -> None:
    """Upload pending files batch by batch; run it again to resume after any stop.

    A file counts as mirrored only once the store holds it with its checksum verified
    (the release's published SHA-256, or the file's own) and it still has the size and
    mtime of the crawl. Exits non-zero if any file failed, changed or is corrupt.
    """
    target, url_prefix = make_target(bucket, endpoint_url, no_sign_request)
    if url_prefix and prefix:
        raise UsageError("give the key prefix once: either s3://NAME/PREFIX or --prefix")
    if part_size < 5 * MiB or part_size % MiB:
        raise UsageError("--part-size must be a whole number of MiB, at least 5 MiB")
    options = UploadOptions(
        target=target,
        prefix=prefix or url_prefix,
        remap=remap,
        backend=backend,
        workers=workers,
        max_batches=max_batches,
        max_attempts=retries + 1,
        backoff_seconds=backoff,
        adopt=adopt,
        delete=delete,
        part_size=part_size,
        give_up_after=give_up_after,
    )
    with Manifest.open(db) as manifest:
        try:
            summary = upload(manifest, options, progress=for_terminal(json_output))
        except DesimirrorError as exc:
            if json_output and exc.report:
                finish(exc.report, True, [])
            raise
    finish(summary.as_dict(), json_output, _lines(summary))


def _lines(s: UploadSummary) -> list[str]:
    lines = [
        f"sent {s.files_sent:,} files, {format_size(s.bytes_sent)} in {s.seconds:,.1f}s "
        f"({format_size(s.rate)}/s) with {s.backend}; "
        f"batches: {s.batches_done:,}/{s.batches_total:,} complete"
    ]
    if s.files_adopted:
        how = "by size only (content unproven)" if s.adopt_mode == "size" else "with checksum"
        lines.append(
            f"adopted {s.files_adopted:,} files ({format_size(s.bytes_adopted)}) already in "
            f"the bucket, {how}"
        )
    if s.concurrency.get("throttle_events"):
        c = s.concurrency
        lines.append(
            f"throttled {c['throttle_events']:,} times: concurrency lowered to "
            f"{c['workers_lowest']} of {c['workers_max']} workers, backed off "
            f"{s.backoff_seconds:,.1f}s"
        )
    if s.files_gone:
        lines.append(f"{s.files_gone:,} files ({format_size(s.bytes_gone)}) gone from the source")
    if s.files_deleted:
        lines.append(f"deleted {s.files_deleted:,} objects of files gone from the source")
    lines.extend(f"warning: {w}" for w in s.warnings)
    if s.pending_files:
        why = " (stopped at --max-batches)" if s.stopped_early else ""
        lines.append(
            f"{s.pending_files:,} files ({format_size(s.pending_bytes)}) still pending{why}: "
            "run the same command again"
        )
    else:
        lines.append(
            "every planned file is in the bucket; 'desimirror verify --checksum' proves it"
        )
    return lines
