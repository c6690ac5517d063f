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


def emit_json(report: dict[str, Any]) -> None:
    """Write a report as one JSON document on stdout."""
    json.dump(report, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
