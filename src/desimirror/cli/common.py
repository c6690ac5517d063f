"""Options and output helpers shared by several subcommands."""

from __future__ import annotations

import json
import re
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


def emit_json(report: dict[str, Any]) -> None:
    """Write a report as one JSON document on stdout."""
    json.dump(report, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_bucket(url: str) -> tuple[str, str | None]:
    """``s3://NAME[/PREFIX]`` (or a bare NAME) → (NAME, PREFIX or None)."""
    rest = url[5:] if url.startswith("s3://") else url
    name, _, prefix = rest.partition("/")
    if not _BUCKET.match(name):
        raise UsageError(
            f"invalid bucket {url!r}: expected s3://NAME with a 3-63 character bucket name"
        )
    return name, prefix.strip("/") or None


def target_options(func):
    """--bucket, --endpoint-url and --no-sign-request, shared by upload and verify."""
    func = click.option(
        "--no-sign-request", is_flag=True, help="Send unsigned requests (public buckets)."
    )(func)
    func = click.option(
        "--endpoint-url",
        envvar="AWS_ENDPOINT_URL",
        help="S3 endpoint (default: AWS, or $AWS_ENDPOINT_URL).",
    )(func)
    return click.option("--bucket", required=True, help="Destination, s3://NAME.")(func)


def make_target(bucket: str, endpoint_url: str | None, no_sign_request: bool) -> tuple:
    """Build the S3Target for the options; returns (target, prefix given in the URL)."""
    from desimirror.transfer import S3Target

    name, url_prefix = parse_bucket(bucket)
    target = S3Target(bucket=name, endpoint_url=endpoint_url, no_sign_request=no_sign_request)
    return target, url_prefix


def finish(report: dict[str, Any], json_output: bool, lines: list[str]) -> None:
    """Print the outcome: JSON on stdout with --json, else readable lines."""
    if json_output:
        emit_json(report)
    else:
        for line in lines:
            click.echo(line)
