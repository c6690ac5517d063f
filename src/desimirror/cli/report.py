"""``desimirror report --html FILE``: the web view as one self-contained file."""

from __future__ import annotations

import os
from pathlib import Path

import click

from desimirror.cli.common import db_option
from desimirror.errors import UsageError
from desimirror.view.data import snapshot
from desimirror.view.page import check_assets, report_page
from desimirror.view.server import open_view


@click.command("report")
@db_option
@click.option(
    "--html",
    "html_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The HTML file to write (replaced if it exists).",
)
@click.option(
    "--depth",
    type=click.IntRange(0, 64),
    default=3,
    show_default=True,
    help="Directory levels below the root the file lets one click into.",
)
def command(db: str, html_file: str, depth: int) -> None:
    """Write the page `serve` shows, with its data and chart library inlined, into one
    HTML file that opens with no server and no network (to attach to a ticket or publish
    beside the release). Reads the db only."""
    check_assets()
    target = Path(html_file)
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {html_file}: {target.parent} is not a directory")
    with open_view(db) as manifest:
        body = report_page(snapshot(manifest, depth=depth))
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(body)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {html_file}: {exc.strerror}") from None
    click.echo(f"wrote {html_file} ({len(body) / 1e6:.1f} MB)")
