"""``desimirror status``: where the mirror stands; safe to run while an upload runs."""

from __future__ import annotations

import click

from desimirror.cli.common import db_option, finish, json_option
from desimirror.manifest import Manifest
from desimirror.status import mirror_status
from desimirror.storehealth import health_text, validation_text
from desimirror.units import format_size


@click.command("status")
@db_option
@json_option
def command(db: str, json_output: bool) -> None:
    """Files and bytes done, pending and failed (with the last error), batches, throughput
    so far, and an ETA at that rate."""
    with Manifest.open(db) as manifest:
        report = mirror_status(manifest)
    finish(report, json_output, _lines(report))


def _lines(r: dict) -> list[str]:
    pct = 100.0 * r["done_bytes"] / r["bytes"] if r["bytes"] else 100.0
    lines = [
        f"mirror of {r['root']} (selection: {r['selection']})",
        f"done     {r['done_files']:>12,} files  {format_size(r['done_bytes']):>10}  ({pct:.1f}%)",
        f"pending  {r['pending_files']:>12,} files  {format_size(r['pending_bytes']):>10}",
        f"batches  {r['batches_done']:>12,} of {r['batches']:,} complete",
    ]
    for reason, count in sorted(r["failed"].items()):
        lines.append(f"failed   {count:>12,} files  ({reason})")
    if r["proof"]:
        proven = ", ".join(f"{n:,} by {how}" for how, n in sorted(r["proof"].items()))
        lines.append(
            f"content  {proven}"
            + (f"; {r['adopted_files']:,} adopted" if r["adopted_files"] else "")
        )
    if r["gone_files"]:
        lines.append(
            f"gone     {r['gone_files']:>12,} files mirrored earlier, gone from the source"
        )
    lines.extend(_store_lines(r.get("store") or {}))
    for failure in r["failures"][:5]:
        lines.append(f"  {failure['path']}: {failure['error']}")
    if r["bytes_per_second"]:
        eta = r["eta_seconds"]
        lines.append(
            f"rate     {format_size(r['bytes_per_second'])}/s over {r['upload_runs']} runs"
            + (f", ETA {eta:,}s" if eta else "")
        )
    crawl = r["last_crawl"]
    if crawl:
        lines.append(f"crawl    {crawl['entries']:,} entries, {crawl['errors']:,} errors")
    return lines


def _store_lines(store: dict) -> list[str]:
    """What the store answered in the last upload, and whether it checked checksums."""
    lines = []
    health = store.get("health")
    text = health_text(health) if health else None
    if text:
        lines.append(f"store    {text}")
    if store.get("validation"):
        lines.append(f"store    {validation_text(store['validation'])}")
    return lines
