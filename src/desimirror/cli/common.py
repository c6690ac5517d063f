"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from desimirror.errors import StateError, UsageError
from desimirror.units import parse_size

db_option = click.option(
    "--db",
    "db",
    required=True,
    type=click.Path(dir_okay=False),
    help="The mirror's state db (SQLite), e.g. mirror.db.",
)
json_option = click.option(
    "--json", "json_output", is_flag=True, help="Print one machine-readable JSON report on stdout."
)


class SizeType(click.ParamType):
    """A byte size option: ``10GB``, ``1TiB`` or plain bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class DurationType(click.ParamType):
    """A duration option: ``300``, ``300s``, ``5m`` or ``1h`` (seconds, more than zero)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip().lower()
        scale = _DURATION_UNITS.get(text[-1:])
        number = text[:-1] if scale else text
        try:
            seconds = float(number) * (scale or 1.0)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            self.fail(f"{value!r} is not a duration such as 300s, 5m or 1h", param, ctx)
        return seconds


DURATION = DurationType()


def emit_json(report: dict[str, Any]) -> None:
    """Write a report as one JSON document on stdout."""
    json.dump(report, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def deprecated_json_file(
    json_out: str | None, report: str, new_value: str | None, new_name: str
) -> str | None:
    """The file that ``--json FILE`` (old spelling) or ``new_name FILE`` asks to write.

    ``--json`` prints a report on stdout in every command; crawl and plan once took
    ``--json FILE`` for the seed's find.json / batch.json, which still works, with a note.
    """
    old = json_out if json_out not in (None, report) else None
    if old is None:
        return new_value
    if new_value is not None:
        raise UsageError(f"give the file once: {new_name} FILE (--json FILE is its old name)")
    click.echo(f"desimirror: note: --json FILE is deprecated here; use {new_name} {old}", err=True)
    return old


def _checked_endpoint(ctx: click.Context, param: click.Parameter, value: str | None):
    """The endpoint option, refused in one line (naming where it came from) if malformed."""
    from desimirror.storage.s3client import check_endpoint_url

    from_env = ctx.get_parameter_source(param.name or "") == click.core.ParameterSource.ENVIRONMENT
    return check_endpoint_url(value, "$AWS_ENDPOINT_URL" if from_env else "--endpoint-url")


def endpoint_option(help_text: str):
    """``--endpoint-url`` (also from ``$AWS_ENDPOINT_URL``), refused in one line if malformed."""
    return click.option(
        "--endpoint-url", envvar="AWS_ENDPOINT_URL", callback=_checked_endpoint, help=help_text
    )


def target_options(func):
    """--bucket, --endpoint-url and --no-sign-request, shared by upload and verify.

    None is required once the db has pinned its target: see :func:`resolve_target`.
    """
    func = click.option(
        "--no-sign-request", is_flag=True, help="Send unsigned requests (public buckets)."
    )(func)
    func = endpoint_option(
        "S3 endpoint (default: $AWS_ENDPOINT_URL, else the one the db's last upload "
        "used, else AWS)."
    )(func)
    return click.option(
        "--bucket",
        default=None,
        metavar="s3://NAME[/PREFIX]",
        help="Destination bucket; s3://NAME/PREFIX is the same as --prefix PREFIX "
        "(default: the bucket the db is pinned to).",
    )(func)


@dataclass(frozen=True)
class Destination:
    """Where a command goes: the S3 target, and the key layout asked for on the command
    line or, where nothing was asked, the one the db pinned."""

    target: Any
    prefix: str | None
    remap: tuple[str, ...]
    pinned: bool


def resolve_target(
    manifest: Any,
    bucket: str | None,
    endpoint_url: str | None,
    no_sign_request: bool,
    *,
    prefix: str | None = None,
    remap: tuple[str, ...] = (),
) -> Destination:
    """The target for ``upload`` or ``verify``: what the options say, completed by what
    the db pinned (bucket, prefix, remaps, endpoint), so a re-run needs no target flags.

    Options that disagree with the pin are passed on as given, for the caller to refuse.
    """
    from desimirror.storage.s3client import endpoint_url as resolved_endpoint
    from desimirror.storage.s3client import parse_bucket_url
    from desimirror.storage.target import pinned_keymap
    from desimirror.storage.transfer import S3Target

    pinned_bucket, layout = None, None
    if manifest.pinned_target() is not None:
        pinned_bucket, keymap = pinned_keymap(manifest)
        layout = keymap.describe()
    if bucket is None:
        if pinned_bucket is None:
            raise UsageError(
                f"--bucket is required: {manifest.path} has not been uploaded anywhere yet"
            )
        name, url_prefix = pinned_bucket, None
    else:
        name, url_prefix = parse_bucket_url(bucket)
        url_prefix = url_prefix or None
    if url_prefix and prefix:
        raise UsageError("give the key prefix once: either s3://NAME/PREFIX or --prefix")
    prefix = prefix or url_prefix
    same_bucket = layout is not None and name == pinned_bucket
    if same_bucket and prefix is None:
        prefix = str(layout["prefix"])
    if same_bucket and not remap:
        remap = tuple(layout["remap"])  # type: ignore[arg-type]
    endpoint = endpoint_url or manifest.last_endpoint()
    target = S3Target(bucket=name, endpoint_url=endpoint, no_sign_request=no_sign_request)
    resolved_endpoint(target)  # a malformed one (given, from the environment or pinned): exit 2
    return Destination(target, prefix, tuple(remap), pinned=same_bucket)


def pinned_target(
    manifest: Any, bucket: str | None, endpoint_url: str | None, no_sign_request: bool
) -> tuple[Any, Any]:
    """(target, key map) for commands that read a mirror (verify, manifest publish): the
    db's pinned target, which --bucket, if given, must name (with its prefix, if any)."""
    from desimirror.storage.target import pinned_keymap

    pinned_bucket, keymap = pinned_keymap(manifest)
    dest = resolve_target(manifest, bucket, endpoint_url, no_sign_request)
    if dest.target.bucket != pinned_bucket:  # another mirror's db: exit 3, as upload says
        raise StateError(
            f"{manifest.path} mirrors to s3://{pinned_bucket}, not s3://{dest.target.bucket}; "
            "use another --db for another target"
        )
    if dest.prefix != keymap.prefix:
        raise StateError(
            f"{manifest.path} mirrors to s3://{pinned_bucket}/{keymap.prefix}/, "
            f"not s3://{pinned_bucket}/{dest.prefix}/"
        )
    return dest.target, keymap


def finish(report: dict[str, Any], json_output: bool, lines: list[str]) -> None:
    """Print the outcome: JSON on stdout with --json, else readable lines."""
    if json_output:
        emit_json(report)
    else:
        for line in lines:
            click.echo(line)


def make_target(bucket: str, endpoint_url: str | None, no_sign_request: bool) -> tuple:
    """Build the S3Target for the options; returns (target, prefix given in the URL or None).

    The bucket URL and the endpoint (given, or from the environment) are checked here,
    before any command opens its db, so a malformed one is a single line and exit 2.
    """
    from desimirror.storage.s3client import endpoint_url as resolved_endpoint
    from desimirror.storage.s3client import parse_bucket_url
    from desimirror.storage.transfer import S3Target

    name, url_prefix = parse_bucket_url(bucket)
    target = S3Target(bucket=name, endpoint_url=endpoint_url, no_sign_request=no_sign_request)
    resolved_endpoint(target)  # raises UsageError for a malformed one
    return target, url_prefix or None
