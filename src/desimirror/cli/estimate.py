"""``desimirror estimate``: what the planned upload will cost in requests, hours and dollars."""

from __future__ import annotations

import click

from desimirror.cli.common import SIZE, db_option, finish, json_option
from desimirror.errors import UsageError
from desimirror.pipeline.upload.estimate import BILLED_AS, estimate, parse_price
from desimirror.state.manifest import Manifest
from desimirror.storage.transfer import BACKENDS
from desimirror.units import MiB, format_size


@click.command("estimate")
@db_option
@click.option(
    "--gbps",
    type=click.FloatRange(min=0.001),
    default=10.0,
    show_default=True,
    help="Bandwidth to the store, in gigabits per second.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="Requests in flight (the upload's --workers), for the request-bound time.",
)
@click.option(
    "--request-ms",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    help="Milliseconds one request takes, for the request-bound time.",
)
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    default="s5cmd",
    show_default=True,
    help="The upload's --backend: s5cmd also lists each chunk's objects back for their ETags.",
)
@click.option(
    "--part-size",
    type=SIZE,
    default="50MiB",
    show_default=True,
    help="Multipart part size (the upload's --part-size).",
)
@click.option(
    "--price-put",
    metavar="USD/N",
    help="Price of PUT, COPY, POST and LIST requests, e.g. 0.005/1000 (default: S3 Standard).",
)
@click.option(
    "--price-get",
    metavar="USD/N",
    help="Price of GET and HEAD requests, e.g. 0.0004/1000 (default: S3 Standard).",
)
@json_option
def command(
    db: str,
    gbps: float,
    workers: int,
    request_ms: float,
    backend: str,
    part_size: int,
    price_put: str | None,
    price_get: str | None,
    json_output: bool,
) -> None:
    """Requests by kind (PUT, multipart create/part/complete, LIST, HEAD), bytes, hours and
    request cost of uploading what the plan still has pending, into a bucket that does not
    hold it yet. Reads the db only; contacts nothing."""
    if part_size < 5 * MiB or part_size % MiB:
        raise UsageError("--part-size must be a whole number of MiB, at least 5 MiB")
    prices = {}
    if price_put is not None:
        prices["put"] = parse_price(price_put)
    if price_get is not None:
        prices["get"] = parse_price(price_get)
    with Manifest.open(db) as manifest:
        report = estimate(
            manifest,
            backend=backend,
            part_size=part_size,
            gbps=gbps,
            workers=workers,
            request_ms=request_ms,
            prices=prices,
        ).as_dict()
    finish(report, json_output, _lines(report))


def _lines(r: dict) -> list[str]:
    lines = [
        f"upload of {r['files']:,} files, {format_size(r['bytes'])} in {r['batches']:,} batches "
        f"({r['backend']}, parts of {format_size(r['part_size'])})",
        f"time     {r['hours']:,.1f} h ({r['hours_at_bandwidth']:,.1f} h at {r['gbps']:g} Gbit/s;"
        f" {r['hours_request_bound']:,.1f} h for the requests at {r['request_ms']:g} ms"
        f" with {r['workers']} in flight)",
        "requests",
    ]
    for kind, n in r["requests"].items():
        if n:
            billed = {"put": "PUT/POST/LIST", "get": "GET/HEAD", "free": "DELETE: free"}[
                BILLED_AS[kind]
            ]
            lines.append(
                f"  {kind:<20} {n:>14,}  ${r['cost_usd'][kind]:>12,.2f}  (billed as {billed})"
            )
    lines.append(f"  {'total':<20} {r['requests_total']:>14,}  ${r['cost_usd_total']:>12,.2f}")
    put, get = r["prices"]["put"] * 1000, r["prices"]["get"] * 1000
    lines.append(
        f"prices   ${put:g} per 1,000 PUT/COPY/POST/LIST, ${get:g} per 1,000 GET/HEAD: "
        f"{r['prices_source']}, as of {r['prices_as_of']} (--price-put, --price-get)"
    )
    lines.append(f"assumes  {r['assumes']}; transfer into S3 is free")
    return lines
