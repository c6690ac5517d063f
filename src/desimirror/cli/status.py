"""``desimirror status``: where the mirror stands; safe to run while an upload runs."""

from __future__ import annotations

import click

from desimirror.cli.common import db_option, finish, json_option
from desimirror.pipeline.status import mirror_status
from desimirror.progress import Throughput, describe_rate, describe_workers
from desimirror.state.manifest import Manifest
from desimirror.state.writelock import reader_warning
from desimirror.storage.health import health_text, validation_text
from desimirror.text import plural, shown
from desimirror.units import format_size


@click.command("status")
@db_option
@json_option
def command(db: str, json_output: bool) -> None:
    """Files and bytes done, pending and failed (with the last error), batches, the latest
    upload run's rate, and an ETA at that rate (computed as the upload's bar does). Never
    takes the write lock, never waits for it."""
    warning = reader_warning(db)  # a writer on another host: WAL is not shared across hosts
    if warning:
        click.echo(f"desimirror: warning: {warning}", err=True)
    with Manifest.open(db) as manifest:
        report = mirror_status(manifest)
    finish(report, json_output, _lines(report))


def _lines(r: dict) -> list[str]:
    pct = 100.0 * r["done_bytes"] / r["bytes"] if r["bytes"] else 100.0
    of_what = " of a partial tree" if r["partial_tree"] else ""
    lines = [
        f"mirror of {shown(r['root'] or '')} (selection: {shown(r['selection'])})",
        f"done     {_count(r['done_files'])}  {format_size(r['done_bytes']):>10}  "
        f"({pct:.1f}%{of_what})",
        f"pending  {_count(r['pending_files'])}  {format_size(r['pending_bytes']):>10}",
        f"batches  {r['batches_done']:>12,} of {r['batches']:,} complete",
    ]
    for reason, count in sorted(r["failed"].items()):
        lines.append(f"failed   {_count(count)}  ({reason})")
    if r["proof"]:
        proven = ", ".join(f"{n:,} by {how}" for how, n in sorted(r["proof"].items()))
        lines.append(
            f"content  {proven}"
            + (f"; {r['adopted_files']:,} adopted" if r["adopted_files"] else "")
        )
    if r["gone_files"]:
        lines.append(f"gone     {_count(r['gone_files'])} mirrored earlier, gone from the source")
    lines.extend(_store_lines(r.get("store") or {}))
    for failure in r["failures"][:5]:
        lines.append(f"  {shown(failure['path'])}: {_one_line(failure['error'])}")
    if r["bytes_per_second"]:
        rate = describe_rate(Throughput(r["bytes_per_second"], r["eta_seconds"]))
        runs = plural(r["upload_runs"], "run")
        average = format_size(r["bytes_per_second_all_runs"])
        lines.append(f"rate     {rate} (latest upload run; {average}/s over {runs})")
    if r["workers"]:
        rates = {w["worker"]: w["bytes_per_second"] for w in r["workers"]}
        lines.append(f"sent by  {describe_workers(rates)} (latest upload run)")
    crawl = r["last_crawl"]
    if crawl and crawl["finished"] is not None:
        lines.append(
            f"crawl    {plural(crawl['entries'], 'entry')}, {plural(crawl['errors'], 'error')}"
        )
    if r["partial_tree"]:
        lines.append(f"warning: {r['partial_tree']}")
    return lines


def _count(files: int) -> str:
    """A right-aligned count of files, with its noun: ``           1 file ``."""
    number, noun = plural(files, "file").split(" ", 1)
    return f"{number:>12} {noun:<5}"


def _one_line(text: str) -> str:
    """An error message as one status line (it may quote a name with a newline)."""
    return text if text.isprintable() else repr(text)[1:-1]


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
