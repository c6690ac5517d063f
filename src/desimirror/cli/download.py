"""``desimirror download``: a local copy of a mirrored release, every file proven."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.cli.common import endpoint_option, finish, json_option
from desimirror.errors import DesimirrorError, UsageError
from desimirror.pipeline.download import DownloadOptions, DownloadReport, download, includes
from desimirror.progress import for_terminal, set_resume_command
from desimirror.text import plural, shown
from desimirror.units import format_size


@click.command("download")
@click.argument("source", metavar="s3://BUCKET/RELEASE[/SUBDIR]")
@click.argument("dest", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files whose path below SOURCE matches (repeatable; '*' crosses '/'), "
    "e.g. --include 'spectro/redux/fuji/tiles-*'.",
)
@endpoint_option("S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS).")
@click.option(
    "--no-sign-request",
    is_flag=True,
    help="Send unsigned requests (public buckets; the default for s3://desidata on AWS).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be fetched; fetch and write nothing.")
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=32,
    show_default=True,
    help="Objects fetched at once.",
)
@json_option
def command(
    source: str,
    dest: str,
    include: tuple[str, ...],
    endpoint_url: str | None,
    no_sign_request: bool,
    dry_run: bool,
    workers: int,
    json_output: bool,
) -> None:
    """Download a release (or one directory of it) into DIR, laid out as the bucket
    (RELEASE/, raw_spectro_data/, target/), so that 'desimirror env --data DIR' and
    'desimirror jupyter --local DIR' use it as they are.

    Every file is proven as it is written: against the SHA-256 of the release manifest
    published beside it ('desimirror manifest publish'), else the release's *.sha256sum
    listings, else the object's own checksum or MD5 ETag. It is written under a temporary
    name and renamed into place only once proven. Run the same command again after any
    stop (kill -9 included): files already complete are not fetched again.
    """
    from desimirror.access.config import unsigned_default
    from desimirror.cli.common import make_target

    # DESI's public bucket on AWS needs no credentials, as for 'desimirror mount'
    unsigned = no_sign_request or unsigned_default(source, endpoint_url)
    target, prefix = make_target(source, endpoint_url, unsigned)
    if not prefix:
        raise UsageError(f"give the release to download: s3://{target.bucket}/RELEASE[/SUBDIR]")
    options = DownloadOptions(
        target=target,
        prefix=prefix,
        dest=Path(dest),
        include=includes(include),
        dry_run=dry_run,
        workers=workers,
    )
    set_resume_command(_resume_argv(source, dest, options))
    try:
        report = download(options, progress=for_terminal(json_output))
    except DesimirrorError as exc:
        if json_output and exc.report:
            finish(exc.report, True, [])
        raise
    finish(report.as_dict(), json_output, _lines(report))


def _resume_argv(source: str, dest: str, o: DownloadOptions) -> list[str]:
    argv = ["desimirror", "download", source, dest]
    for glob in o.include:
        argv += ["--include", glob]
    argv += ["--endpoint-url", o.target.endpoint_url] if o.target.endpoint_url else []
    argv += ["--no-sign-request"] if o.target.no_sign_request else []
    return argv


def _lines(r: DownloadReport) -> list[str]:
    against = {
        "manifest": "the SHA-256 of the release manifest published in the bucket",
        "listing": "the release's *.sha256sum listings, else each object's checksum or ETag",
    }[r.reference]
    if r.dry_run:
        return [
            f"would fetch {plural(r.files_to_fetch, 'file')} ({format_size(r.bytes_to_fetch)}) "
            f"of {r.files:,} from {r.source} into {shown(r.dest)}; "
            f"{plural(r.files_kept, 'file')} complete already (dry run: nothing fetched)",
            f"each file would be proven against {against}",
        ]
    lines = [
        f"fetched {plural(r.files_fetched, 'file')}, {format_size(r.bytes_fetched)} in "
        f"{r.seconds:,.1f}s ({format_size(r.rate)}/s) into {shown(r.dest)}; "
        f"{plural(r.files_kept, 'file')} ({format_size(r.bytes_kept)}) complete already"
    ]
    if r.files_proven_in_place:
        lines.append(
            f"{plural(r.files_proven_in_place, 'file')} found in place without a record "
            "were hashed and proven, not fetched"
        )
    proofs = ", ".join(f"{k} {v:,}" for k, v in sorted(r.proofs.items()))
    lines.append(f"proven against {against}" + (f" ({proofs})" if proofs else ""))
    lines.extend(f"warning: {w}" for w in r.warnings)
    return lines
