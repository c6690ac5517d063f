"""``desimirror serve``: a live, read-only web view of the state db."""

from __future__ import annotations

import click

from desimirror.cli.common import db_option
from desimirror.state.writelock import reader_warning
from desimirror.view.page import check_assets
from desimirror.view.server import ViewServer, check_address


@click.command("serve")
@db_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: any free one; the URL is printed).",
)
@click.option(
    "--ip",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; another than loopback needs --token.",
)
@click.option(
    "--token",
    envvar="DESIMIRROR_VIEW_TOKEN",
    help="Access token the page's URL must carry (also $DESIMIRROR_VIEW_TOKEN).",
)
@click.option(
    "--refresh",
    type=click.FloatRange(0.5, 3600),
    default=3.0,
    show_default=True,
    help="Seconds between the page's updates.",
)
def command(db: str, port: int, ip: str, token: str | None, refresh: float) -> None:
    """Serve the mirror as a web page: sizes as a treemap coloured by state (click into a
    directory), totals as `status` gives them, throughput per minute and run, ETA, and
    the files not mirrored, refreshed every few seconds. Reads only: safe beside a running
    upload (no write lock taken, none waited for). Ctrl-C stops it."""
    check_address(ip, token)
    check_assets()
    warning = reader_warning(db)
    if warning:
        click.echo(f"desimirror: warning: {warning}", err=True)
    server = ViewServer(db, ip, port, token, refresh)
    try:
        click.echo(f"serving {db} at {server.url} (Ctrl-C to stop)")
        click.get_text_stream("stdout").flush()
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)
    finally:
        server.server_close()
