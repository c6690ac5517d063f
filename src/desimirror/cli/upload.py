"""``desimirror upload``: send the planned batches, resumable, one record per file."""

from __future__ import annotations

import click

from desimirror.cli.common import db_option, finish, json_option, make_target, target_options
from desimirror.errors import DesimirrorError, UsageError
from desimirror.manifest import Manifest
from desimirror.progress import for_terminal
from desimirror.transfer import BACKENDS
from desimirror.units import format_size
from desimirror.upload import UploadOptions, UploadSummary, upload


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
    json_output: bool,
) -> None:
    """Upload pending files batch by batch; run it again to resume after any stop.

    A file counts as mirrored only once the store confirmed it and it still has the size
    and mtime of the crawl. Exits non-zero if any file failed or changed.
    """
    target, url_prefix = make_target(bucket, endpoint_url, no_sign_request)
    if url_prefix and prefix:
        raise UsageError("give the key prefix once: either s3://NAME/PREFIX or --prefix")
    options = UploadOptions(
        target=target,
        prefix=prefix or url_prefix,
        remap=remap,
        backend=backend,
        workers=workers,
        max_batches=max_batches,
        max_attempts=retries + 1,
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
    if s.pending_files:
        why = " (stopped at --max-batches)" if s.stopped_early else ""
        lines.append(
            f"{s.pending_files:,} files ({format_size(s.pending_bytes)}) still pending{why}: "
            "run the same command again"
        )
    else:
        lines.append("every planned file is in the bucket; run 'desimirror verify' to prove it")
    return lines
