"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from desimirror.errors import UsageError
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


def _checked_endpoint(ctx: click.Context, param: click.Parameter, value: str | None):
    """The endpoint option, refused in one line (naming where it came from) if malformed."""
    from desimirror.s3client import check_endpoint_url

    from_env = ctx.get_parameter_source(param.name or "") == click.core.ParameterSource.ENVIRONMENT
    return check_endpoint_url(value, "$AWS_ENDPOINT_URL" if from_env else "--endpoint-url")


def target_options(func):
    """--bucket, --endpoint-url and --no-sign-request, shared by upload and verify."""
    func = click.option(
        "--no-sign-request", is_flag=True, help="Send unsigned requests (public buckets)."
    )(func)
    func = click.option(
        "--endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        callback=_checked_endpoint,
        help="S3 endpoint (default: AWS, or $AWS_ENDPOINT_URL).",
    )(func)
    return click.option("--bucket", required=True, help="Destination, s3://NAME.")(func)


def make_target(bucket: str, endpoint_url: str | None, no_sign_request: bool) -> tuple:
    """Build the S3Target for the options; returns (target, prefix given in the URL or None).

    The bucket URL and the endpoint (given, or from the environment) are checked here,
    before any command opens its db, so a malformed one is a single line and exit 2.
    """
    from desimirror.s3client import endpoint_url as resolved_endpoint
    from desimirror.s3client import parse_bucket_url
    from desimirror.transfer import S3Target

    name, url_prefix = parse_bucket_url(bucket)
    target = S3Target(bucket=name, endpoint_url=endpoint_url, no_sign_request=no_sign_request)
    resolved_endpoint(target)  # raises UsageError for a malformed one
    return target, url_prefix or None


def finish(report: dict[str, Any], json_output: bool, lines: list[str]) -> None:
    """Print the outcome: JSON on stdout with --json, else readable lines."""
    if json_output:
        emit_json(report)
    else:
        for line in lines:
            click.echo(line)
