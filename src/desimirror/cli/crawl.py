"""``desimirror crawl``: record a tree in the state db; see :mod:`desimirror.pipeline.crawl`.

Also the seed's ``find.json`` both ways: ``--find-json FILE`` writes it after the crawl,
and ``--from-json FILE`` loads one written by the original ``find.py`` instead of crawling.
"""

from __future__ import annotations

import os

import click

from desimirror.cli.common import db_option, deprecated_json_file, emit_json
from desimirror.errors import UsageError
from desimirror.pipeline.crawl import DEFAULT_WORKERS, CrawlSummary, crawl, resolve_root
from desimirror.pipeline.executors import crawl_placement
from desimirror.pipeline.findjson import export_tree_json, import_tree_json
from desimirror.progress import for_terminal
from desimirror.state.manifest import Manifest
from desimirror.text import plural, shown
from desimirror.units import format_size

# ``--json`` alone asks for the stdout report like every other command; ``--json PATH``
# is the deprecated spelling of ``--find-json PATH`` (the same convention as ``plan``).
_REPORT = "\0report"
_SHOWN_ERRORS = 5


@click.command("crawl")
@click.argument("root", required=False, metavar="[DIR]")
@db_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Threads listing directories, at most; how many are busy adapts to the filesystem "
    "(a network filesystem wants many, a local disk one or two). With --processes or "
    "--scheduler, twice this many tasks are kept in flight.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="List directories in this many processes instead of threads (when the client's "
    "CPU, not the filesystem's latency, is the limit).",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="List directories on the workers of this Dask scheduler (tcp://HOST:8786); they "
    "must see the tree at the same path. Needs desimirror[dask].",
)
@click.option(
    "--find-json",
    "find_json",
    metavar="FILE",
    help="Also write the tree to FILE in the seed's find.json format.",
)
@click.option(
    "--json",
    "json_out",
    is_flag=False,
    flag_value=_REPORT,
    default=None,
    metavar="",
    help="Print one machine-readable JSON report on stdout. (--json FILE: the deprecated "
    "spelling of --find-json FILE.)",
)
@click.option("--json-report", is_flag=True, hidden=True, help="The same as --json.")
@click.option(
    "--from-json",
    "from_json",
    metavar="FILE",
    help="Load a find.json written by the original find.py instead of crawling.",
)
@click.option(
    "--root",
    "tree_root",
    metavar="DIR",
    help="With --from-json: where that tree is on this machine; every path is stat'ed "
    "there, as a crawl does, so that the import can be uploaded.",
)
def command(
    root: str | None,
    db: str,
    workers: int,
    processes: int | None,
    scheduler: str | None,
    find_json: str | None,
    json_out: str | None,
    json_report: bool,
    from_json: str | None,
    tree_root: str | None,
) -> None:
    """Crawl DIR into the state db: every file, directory and symlink, with sizes and mtimes.

    Run it again to refresh: changed files are noticed, vanished ones dropped. Unreadable
    directories are recorded as errors and kept from the last crawl; the exit status is 0.
    --find-json FILE also writes the seed's find.json; --from-json FILE loads one instead.
    """
    report_json = json_report or json_out == _REPORT
    if root is None and from_json is None and json_out and os.path.isdir(json_out):
        raise UsageError(
            f"--json took {json_out!r} as the find.json to write: put the directory first, "
            f"e.g. 'desimirror crawl {json_out} --db {db} --json'"
        )
    tree_json = deprecated_json_file(json_out, _REPORT, find_json, "--find-json")
    if from_json is not None:
        if root is not None:
            raise UsageError("give either a directory to crawl or --from-json FILE, not both")
        if processes or scheduler:
            raise UsageError("--processes and --scheduler go with a crawl, not --from-json")
        summary, ran_on = _import(from_json, tree_root, db, report_json), None
    else:
        summary, ran_on = _crawl(root, tree_root, db, workers, report_json, processes, scheduler)
    if tree_json is not None:
        with Manifest.open(db) as manifest:
            export_tree_json(manifest, tree_json)
    report = {**summary.as_dict(), "db": db, "find_json": tree_json, "ran_on": ran_on}
    if report_json:
        emit_json(report)
        return
    for line in _lines(report):
        click.echo(line)
    _warn_errors(report)


def _crawl(
    root: str | None,
    tree_root: str | None,
    db: str,
    workers: int,
    quiet: bool,
    processes: int | None,
    scheduler: str | None,
) -> tuple[CrawlSummary, str]:
    if root is None:
        raise UsageError("give a directory to crawl, or --from-json FILE")
    if tree_root is not None:
        raise UsageError("--root goes with --from-json; to crawl, give the directory itself")
    tree = resolve_root(root, db)  # before the db exists: a typo must not leave a db behind
    with crawl_placement(processes, scheduler) as placement:
        budget = {"task_seconds": placement.task_seconds} if placement.task_seconds else {}
        with Manifest.open(db, create=True, writer="crawl") as manifest:
            summary = crawl(
                tree,
                manifest,
                executor=placement.executor,
                workers=workers,
                progress=for_terminal(quiet),
                **budget,
            )
    return summary, placement.where


def _import(source: str, tree_root: str | None, db: str, quiet: bool) -> CrawlSummary:
    if not os.path.isfile(source):
        raise UsageError(f"--from-json {source}: no such file")
    root = None
    if tree_root is not None:
        root = resolve_root(tree_root).path
    with Manifest.open(db, create=True, writer="crawl --from-json") as manifest:
        return import_tree_json(source, manifest, root=root, progress=for_terminal(quiet))


def _lines(r: dict) -> list[str]:
    kinds = r["kinds"]
    verb = "crawled" if r["source"] == "crawl" else "imported"
    what = r["root"] or r["root_name"]
    lines = [
        f"{verb} {shown(what)}: {plural(r['entries'], 'entry')} "
        f"({plural(kinds.get('file', 0), 'file')}, {plural(kinds.get('dir', 0), 'dir')}, "
        f"{plural(kinds.get('link', 0), 'symlink')}, "
        f"{kinds.get('other', 0):,} other) in {r['seconds']:.1f}s"
        + (f" on {r['ran_on']}" if r["ran_on"] not in (None, "threads") else "")
        + " "
        f"({r['entries_per_second']:,.0f} entries/s, {r['dirs_per_second']:,.0f} dirs/s)",
        f"  to upload: {plural(r['files'], 'file')}, {format_size(r['bytes'])}; "
        f"{plural(r['errors'], 'error')}",
    ]
    links = r["link_kinds"]
    if links:
        lines.append(
            f"  symlinks: {links.get('file', 0):,} to files, {links.get('dir', 0):,} to dirs, "
            f"{links.get('outside', 0):,} outside the tree (not uploaded), "
            f"{links.get('broken', 0):,} broken"
        )
    if r["vanished"]:
        lines.append(
            f"  {plural(r['vanished'], 'entry')} of earlier crawls gone, dropped from the db"
        )
    lines += [f"  warning: {w}" for w in r["warnings"]]
    if r["find_json"]:
        lines.append(f"wrote {r['find_json']}")
    return lines


def _warn_errors(r: dict) -> None:
    """Errors go to stderr, where they are seen even when the summary is piped away."""
    if not r["errors"]:
        return
    note = "" if r["complete"] else "; what is below unreadable paths is kept from earlier crawls"
    click.echo(f"desimirror: {r['errors']:,} CRAWL ERRORS recorded in {r['db']}{note}", err=True)
    for example in r["error_examples"][:_SHOWN_ERRORS]:
        click.echo(f"  {shown(example['path'])}: {example['error']}", err=True)
    if r["errors"] > _SHOWN_ERRORS:
        click.echo(f"  ... and {r['errors'] - _SHOWN_ERRORS:,} more", err=True)
