"""``desimirror verify``: prove the bucket holds every file of the manifest."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.cli.common import db_option, finish, json_option, make_target, target_options
from desimirror.errors import DesimirrorError, UsageError
from desimirror.manifest import Manifest
from desimirror.progress import for_terminal
from desimirror.units import format_size
from desimirror.upload import pinned_keymap
from desimirror.verify import VerifyReport, verify


@click.command("verify")
@db_option
@target_options
@click.option(
    "--subdir", default=None, help="Verify only this part of the tree (default: the plan's)."
)
@click.option("--strict", is_flag=True, help="Also fail on unexpected objects under the prefixes.")
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
    bucket: str,
    endpoint_url: str | None,
    no_sign_request: bool,
    subdir: str | None,
    strict: bool,
    report_file: Path | None,
    json_output: bool,
) -> None:
    """Compare the bucket listing with the manifest: missing, size-mismatched, unexpected.

    Exits 0 only when every expected object is present with the right size. Files found
    missing or wrong are returned to pending, so 'desimirror upload' repairs them.
    """
    target, _ = make_target(bucket, endpoint_url, no_sign_request)
    with Manifest.open(db) as manifest:
        pinned_bucket, keymap = pinned_keymap(manifest)
        if pinned_bucket != target.bucket:
            raise UsageError(f"{db} mirrors to s3://{pinned_bucket}, not s3://{target.bucket}")
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
        f"expected {r.expected_files:,} objects ({format_size(r.expected_bytes)}) under "
        f"{', '.join('s3://' + r.bucket + '/' + p for p in r.prefixes)}; "
        f"listed {r.listed_objects:,}",
        f"matched {r.matched:,}, missing {r.missing:,}, differ {r.differ:,}, "
        f"unexpected {r.unexpected:,}",
    ]
    for problem in ("missing", "differ", "unexpected"):
        for key in r.examples.get(problem, [])[:5]:
            lines.append(f"  {problem}: {key}")
    if r.returned_to_pending:
        lines.append(f"{r.returned_to_pending:,} files returned to pending: run upload again")
    if r.complete:
        lines.append("verified: the bucket holds every file of the mirror")
    return lines
