"""``desimirror upload``: send the planned batches, resumable, one proven record per file."""

from __future__ import annotations

import shlex

import click

from desimirror.cli.common import (
    DURATION,
    SIZE,
    db_option,
    finish,
    json_option,
    resolve_target,
    target_options,
)
from desimirror.errors import DesimirrorError, UsageError
from desimirror.pipeline.upload import ADOPT_MODES, UploadOptions, UploadSummary, upload
from desimirror.pipeline.upload.dryrun import dry_run as run_dry
from desimirror.progress import (
    describe_workers,
    for_terminal,
    set_resume_command,
    worker_rates,
)
from desimirror.state.manifest import Manifest
from desimirror.storage.transfer import BACKENDS, DEFAULT_BACKEND
from desimirror.text import plural
from desimirror.units import MiB, format_size


@click.command("upload")
@db_option
@target_options
@click.option(
    "--prefix",
    help="Key prefix (default: the one the db is pinned to, else the crawled directory's name).",
)
@click.option(
    "--remap",
    multiple=True,
    metavar="SRC=DST",
    help="Rewrite a key prefix, e.g. edr/spectro/data=raw_spectro_data (repeatable; "
    "default: the remaps the db is pinned to).",
)
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    default=DEFAULT_BACKEND,
    show_default=True,
    help="crt: each file read once and sent by the AWS Common Runtime with its SHA-256 "
    "(the published one where there is one), so the store refuses other bytes. native: the "
    "same proofs sent by boto3. s5cmd: the s5cmd tool sends; each file is hashed first (a "
    "second read) and its object's ETag checked after.",
)
@click.option("--max-batches", type=click.IntRange(min=1), help="Stop cleanly after N batches.")
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="Transfers in flight at once, at most; fewer while the store throttles (503).",
)
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
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Send on the workers of this Dask scheduler (tcp://HOST:8786), each with --workers "
    "transfers in flight; this process checks and records. Workers must see the tree at "
    "the same path and take credentials from their own AWS chain. Needs desimirror[dask].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what would be sent, adopted and skipped, and send nothing: reads the db only "
    "(no lock, nothing pinned) and makes no request unless --check-bucket.",
)
@click.option(
    "--check-bucket",
    is_flag=True,
    help="With --dry-run: list the bucket (LIST and HEAD requests only, nothing written) to "
    "count the objects already there that would be adopted.",
)
@json_option
def command(
    db: str,
    bucket: str | None,
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
    scheduler: str | None,
    dry_run: bool,
    check_bucket: bool,
    json_output: bool,
) -> None:
    """Upload pending files batch by batch; run it again to resume after any stop.

    A file counts as mirrored only once the store holds it with its checksum verified
    (the release's published SHA-256, or the file's own) and it still has the size and
    mtime of the crawl. Exits non-zero if any file failed, changed or is corrupt.

    The first upload pins the db to its bucket, prefix and remaps (and remembers the
    endpoint): later runs need none of them, 'desimirror upload --db m.db' resumes, and
    options that differ from the pin are refused.

    Credentials come from the standard AWS chain, for either backend:
    AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the
    environment, else the profile named by AWS_PROFILE (or the default one) in
    ~/.aws/credentials and ~/.aws/config, else the instance or container role.
    """
    if part_size < 5 * MiB or part_size % MiB:
        raise UsageError("--part-size must be a whole number of MiB, at least 5 MiB")
    if check_bucket and not dry_run:
        raise UsageError("--check-bucket goes with --dry-run")
    with Manifest.open(db, writer=None if dry_run else "upload") as manifest:
        dest = resolve_target(
            manifest, bucket, endpoint_url, no_sign_request, prefix=prefix, remap=remap
        )
        options = UploadOptions(
            target=dest.target,
            prefix=dest.prefix,
            remap=dest.remap,
            backend=backend,
            workers=workers,
            max_batches=max_batches,
            max_attempts=retries + 1,
            backoff_seconds=backoff,
            adopt=adopt,
            delete=delete,
            part_size=part_size,
            give_up_after=give_up_after,
            scheduler=scheduler,
        )
        if dry_run:
            report = run_dry(manifest, options, check_bucket=check_bucket).as_dict()
            finish(report, json_output, _dry_lines(report))
            return
        set_resume_command(_resume_argv(db, options, pinned=dest.pinned))
        try:
            summary = upload(manifest, options, progress=for_terminal(json_output))
            manifest.check_in_place()  # a db deleted under the last commits: say so
        except DesimirrorError as exc:
            if json_output and exc.report:
                finish(exc.report, True, [])
            raise
    finish(summary.as_dict(), json_output, _lines(summary, _resume_argv(db, options)))


def _resume_argv(db: str, options: UploadOptions, *, pinned: bool = True) -> list[str]:
    """The command that goes on with this upload: the db alone names the target once it
    is pinned; the few options that change what a run does are kept."""
    argv = ["desimirror", "upload", "--db", db]
    if not pinned:
        t = options.target
        argv += ["--bucket", f"s3://{t.bucket}"]
        argv += ["--prefix", options.prefix] if options.prefix else []
        for rule in options.remap:
            argv += ["--remap", rule]
        argv += ["--endpoint-url", t.endpoint_url] if t.endpoint_url else []
        argv += ["--no-sign-request"] if t.no_sign_request else []
    if options.backend != DEFAULT_BACKEND:
        argv += ["--backend", options.backend]
    if options.max_batches is not None:
        argv += ["--max-batches", str(options.max_batches)]
    if options.scheduler is not None:
        argv += ["--scheduler", options.scheduler]
    return argv


def _lines(s: UploadSummary, resume: list[str]) -> list[str]:
    where = "" if s.ran_on == "here" else f" on {s.ran_on}"
    lines = [
        f"sent {plural(s.files_sent, 'file')}, {format_size(s.bytes_sent)} in "
        f"{s.seconds:,.1f}s ({format_size(s.rate)}/s) with {s.backend}{where}; "
        f"batches: {s.batches_done:,}/{s.batches_total:,} complete"
    ]
    if s.workers:
        lines.append(f"sent by {describe_workers(worker_rates(s.workers, s.seconds))}")
    if s.files_adopted:
        how = "by size only (content unproven)" if s.adopt_mode == "size" else "with checksum"
        lines.append(
            f"adopted {plural(s.files_adopted, 'file')} ({format_size(s.bytes_adopted)}) "
            f"already in the bucket, {how}"
        )
    if s.proven_by:
        how = ", ".join(f"{n:,} by {proof}" for proof, n in sorted(s.proven_by.items()))
        lines.append(f"proven: {how}")
    if s.concurrency.get("throttle_events"):
        c = s.concurrency
        lines.append(
            f"throttled {plural(c['throttle_events'], 'time')}: concurrency lowered to "
            f"{c['workers_lowest']} of {plural(c['workers_max'], 'worker')}, backed off "
            f"{s.backoff_seconds:,.1f}s"
        )
    if s.files_gone:
        lines.append(
            f"{plural(s.files_gone, 'file')} ({format_size(s.bytes_gone)}) gone from the source"
        )
    if s.files_deleted:
        lines.append(f"deleted {plural(s.files_deleted, 'object')} of files gone from the source")
    lines.extend(f"warning: {w}" for w in s.warnings)
    if s.pending_files:
        why = " (stopped at --max-batches)" if s.stopped_early else ""
        lines.append(
            f"{plural(s.pending_files, 'file')} ({format_size(s.pending_bytes)}) still "
            f"pending{why}: run '{shlex.join(resume)}' to go on"
        )
    else:
        lines.append(
            "every planned file was confirmed when sent; 'desimirror verify' checks the "
            "bucket now (--checksum: the content too)"
        )
    return lines


def _dry_lines(r: dict) -> list[str]:
    """The dry run's report for a terminal."""
    batches = f"{r['batches_to_run']:,} of {r['batches_total']:,} batches would run"
    lines = [f"dry run: nothing sent ({batches})"]
    for label, files, nbytes in (
        ("send", r["files_to_send"], r["bytes_to_send"]),
        ("adopt", r["files_to_adopt"], r["bytes_to_adopt"]),
        ("check", r["files_to_check"], r["bytes_to_check"]),
        ("skip", r["files_skipped"], r["bytes_skipped"]),
        ("later", r["files_left"], r["bytes_left"]),
    ):
        if files or label == "send":
            lines.append(f"  {label:<6} {plural(files, 'file'):>18}  {format_size(nbytes):>10}")
    if r["files_multipart"]:
        lines.append(
            f"  of which {r['files_multipart']:,} multipart ({r['parts_to_send']:,} parts)"
        )
    if r["files_to_check"]:
        lines.append("  check: in the bucket with the same size; adopted if the checksum matches")
    if not r["bucket_checked"]:
        lines.append("  (the bucket was not asked: --check-bucket counts what would be adopted)")
    if r["files_gone"]:
        lines.append(
            f"  gone   {plural(r['files_gone'], 'file')} mirrored earlier, gone from the source"
        )
    lines.extend(f"warning: {w}" for w in r["warnings"])
    return lines
