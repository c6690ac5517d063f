"""``desimirror verify``: prove the bucket holds every file of the manifest."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.cli.common import db_option, finish, json_option, pinned_target, target_options
from desimirror.errors import DesimirrorError, UsageError
from desimirror.pipeline.verify import VerifyReport, verify
from desimirror.progress import for_terminal
from desimirror.state.manifest import Manifest
from desimirror.text import plural, shown
from desimirror.units import format_size


@click.command("verify")
@db_option
@target_options
@click.option(
    "--subdir", default=None, help="Verify only this part of the tree (default: the plan's)."
)
@click.option("--strict", is_flag=True, help="Also fail on unexpected objects under the prefixes.")
@click.option(
    "--checksum",
    is_flag=True,
    help="Prove content too: each object's checksum (or ETag) against the file's SHA-256, "
    "re-reading objects that carry none.",
)
@click.option(
    "--sample",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="FRACTION",
    help="With --checksum: check only this random fraction of the objects.",
)
@click.option(
    "--reread",
    is_flag=True,
    help="With --checksum: read every checked object back and hash its bytes.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Requests at once: listings of parts of the prefixes, and objects checked.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every problem to FILE, one per line: '- key' missing, '* key' differs, "
    "'+ key' unexpected.",
)
@json_option
def command(
    db: str,
    bucket: str | None,
    endpoint_url: str | None,
    no_sign_request: bool,
    subdir: str | None,
    strict: bool,
    checksum: bool,
    sample: float,
    reread: bool,
    workers: int,
    report_file: Path | None,
    json_output: bool,
) -> None:
    """Compare the bucket listing with the manifest: missing, size-mismatched, unexpected;
    with --checksum, content that differs from the file's SHA-256 too.

    Exits 0 only when every expected object is present with the right size (and, with
    --checksum, proven content). Files found missing or wrong are returned to pending, so
    'desimirror upload' repairs them. A file that changed since the crawl is reported as
    changed, not corrupt: re-crawl, then upload.

    The bucket, prefix and endpoint default to the ones the db's uploads pinned.
    """
    if (sample < 1.0 or reread) and not checksum:
        raise UsageError("--sample and --reread go with --checksum")
    with Manifest.open(db, writer="verify") as manifest:
        target, keymap = pinned_target(manifest, bucket, endpoint_url, no_sign_request)
        selection = manifest.get_meta("plan_subdir") or "" if subdir is None else subdir.strip("/")
        try:
            report = verify(
                manifest,
                target,
                keymap,
                subdir=selection,
                strict=strict,
                report_file=report_file,
                progress=for_terminal(json_output),
                checksum=checksum,
                sample=sample,
                reread=reread,
                workers=workers,
            )
        except DesimirrorError as exc:
            if exc.report:
                finish(exc.report, json_output, _lines(VerifyReport(**_fields(exc.report))))
            raise
    finish(report.as_dict(), json_output, _lines(report))


def _fields(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "complete"}


def _lines(r: VerifyReport) -> list[str]:
    lines = [
        f"expected {plural(r.expected_files, 'object')} ({format_size(r.expected_bytes)}) "
        f"under {', '.join(shown('s3://' + r.bucket + '/' + p) for p in r.prefixes)}; "
        f"listed {r.listed_objects:,}",
        f"matched {r.matched:,}, missing {r.missing:,}, differ {r.differ:,}, "
        f"unexpected {r.unexpected:,}",
    ]
    if r.checksum:
        methods = ", ".join(f"{n:,} by {m}" for m, n in sorted(r.proven_by.items())) or "none"
        sampled = f" (a {r.sample:g} sample)" if r.sample < 1.0 else ""
        lines.append(
            f"content: checked {r.content_checked:,}{sampled}, proven {r.content_ok:,} "
            f"({methods}), corrupt {r.corrupt:,}, unproven {r.unproven:,}, "
            f"changed since the crawl {r.changed:,}"
        )
    for problem in ("missing", "differ", "corrupt", "unproven", "changed", "unexpected"):
        for key in r.examples.get(problem, [])[:5]:
            lines.append(f"  {problem}: {shown(key)}")
    if r.store_validation:
        lines.append(f"note: at upload, {r.store_validation}")
    if r.returned_to_pending:
        lines.append(
            f"{plural(r.returned_to_pending, 'file')} returned to pending: run upload again"
        )
    if r.complete and r.checksum:
        lines.append("verified: the bucket holds every file of the mirror, content proven")
    elif r.complete:
        lines.append("verified: the bucket holds every file of the mirror")
    return lines
