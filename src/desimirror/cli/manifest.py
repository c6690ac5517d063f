"""``desimirror manifest``: the release's checksums in, the release's manifest out."""

from __future__ import annotations

import click

from desimirror.cli.common import db_option, finish, json_option, pinned_target, target_options
from desimirror.errors import DesimirrorError, UsageError
from desimirror.integrity.published import sync_published
from desimirror.state.manifest import Manifest
from desimirror.units import format_size


@click.group("manifest")
def command() -> None:
    """Published checksums and the published manifest of a mirror."""


@command.command("checksums")
@db_option
@json_option
def checksums(db: str, json_output: bool) -> None:
    """Read the release's *.sha256sum files into the state db (upload does this too).

    Only listings that are new or changed since they were last read are read. Reports how
    many files have a published SHA-256, and any listing that could not be used.
    """
    with Manifest.open(db, writer="manifest checksums") as manifest:
        root = manifest.root
        if root is None:
            raise UsageError(f"{db} was imported without --root: there are no files to read")
        report = sync_published(manifest, root)
    r = report.as_dict()
    lines = [
        f"{report.listings:,} checksum listings ({report.listings_read:,} read now), "
        f"{report.claims:,} published digests",
        f"{report.files_with_published:,} of {report.files:,} files have a published SHA-256; "
        f"{report.files_with_computed:,} more a computed one",
    ]
    if report.listed_but_absent:
        lines.append(f"{report.listed_but_absent:,} listed files are not in the tree")
    lines.extend(f"  error: {e}" for e in report.error_examples)
    finish(r, json_output, lines)


@command.command("publish")
@db_option
@target_options
@click.option(
    "--allow-incomplete",
    is_flag=True,
    help="Publish even if files are still pending (the manifest then says complete: no).",
)
@json_option
def publish_command(
    db: str,
    bucket: str | None,
    endpoint_url: str | None,
    no_sign_request: bool,
    allow_incomplete: bool,
    json_output: bool,
) -> None:
    """Write the release's manifest into the bucket, under PREFIX/.desimirror/.

    One gzip'd TSV line per entry (paths, sizes, mtimes, SHA-256s, keys, and the empty
    directories and symlinks S3 cannot hold) and a JSON summary; see
    docs/manifest-format.md.
    """
    from desimirror.pipeline.publish import publish

    with Manifest.open(db, writer="manifest publish") as manifest:
        target, keymap = pinned_target(manifest, bucket, endpoint_url, no_sign_request)
        try:
            report = publish(manifest, target, keymap, allow_incomplete=allow_incomplete)
        except DesimirrorError as exc:
            if json_output and exc.report:
                finish(exc.report, True, [])
            raise
    r = report
    finish(
        r.as_dict(),
        json_output,
        [
            f"published s3://{r.bucket}/{r.manifest_key} ({format_size(r.compressed_bytes)}, "
            f"sha256 {r.sha256}) and s3://{r.bucket}/{r.summary_key}",
            f"{r.files:,} files ({format_size(r.bytes)}), {r.dirs:,} directories, "
            f"{r.links:,} symlinks; {r.files_with_sha256:,} files with a SHA-256 "
            f"({r.files_published_sha256:,} published by the release)",
        ]
        + ([] if r.complete else [f"warning: {r.pending_files:,} files still pending"]),
    )
