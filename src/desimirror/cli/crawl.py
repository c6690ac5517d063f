"""``desimirror crawl``: record a tree in the state db; see :mod:`desimirror.crawl`.

Also the seed's ``find.json`` both ways: ``--json PATH`` writes it after the crawl, and
``--from-json FILE`` loads one written by the original ``find.py`` instead of crawling.
"""

from __future__ import annotations

import os

import click

from desimirror.cli.common import db_option, emit_json
from desimirror.crawl import DEFAULT_WORKERS, CrawlSummary, crawl, resolve_root
from desimirror.errors import UsageError
from desimirror.executors import crawl_placement
from desimirror.manifest import Manifest
from desimirror.progress import for_terminal
from desimirror.treejson import export_tree_json, import_tree_json
from desimirror.units import format_size

# ``--json`` alone asks for the stdout report like every other command; ``--json PATH``
# writes find.json, as the seed's makefile target does (the same convention as ``plan``).
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
    "--json",
    "json_out",
    is_flag=False,
    flag_value=_REPORT,
    default=None,
    metavar="[PATH]",
    help="Write the tree to PATH in the seed's find.json format; alone, print a JSON report.",
)
@click.option(
    "--json-report", is_flag=True, help="Print a JSON report on stdout (also with --json PATH)."
)
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
    help="With --from-json: where that tree is on this machine (needed to upload from it).",
)
def command(
    root: str | None,
    db: str,
    workers: int,
    processes: int | None,
    scheduler: str | None,
    json_out: str | None,
    json_report: bool,
    from_json: str | None,
    tree_root: str | None,
) -> None:
    """Crawl DIR into the state db: every file, directory and symlink, with sizes and mtimes.

    Run it again to refresh: changed files are noticed, vanished ones dropped. Unreadable
    directories are recorded as errors and kept from the last crawl; the exit status is 0.
    --json PATH also writes the seed's find.json; --from-json FILE loads one instead.
    """
    report_json = json_report or json_out == _REPORT
    if root is None and from_json is None and json_out and os.path.isdir(json_out):
        raise UsageError(
            f"--json took {json_out!r} as the find.json to write: put the directory first, "
            f"e.g. 'desimirror crawl {json_out} --db {db} --json'"
        )
    tree_json = json_out if json_out not in (None, _REPORT) else None
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
        f"{verb} {what}: {r['entries']:,} entries ({kinds.get('file', 0):,} files, "
        f"{kinds.get('dir', 0):,} dirs, {kinds.get('link', 0):,} symlinks, "
        f"{kinds.get('other', 0):,} other) in {r['seconds']:.1f}s"
        + (f" on {r['ran_on']}" if r["ran_on"] not in (None, "threads") else "")
        + " "
        f"({r['entries_per_second']:,.0f} entries/s, {r['dirs_per_second']:,.0f} dirs/s)",
        f"  to upload: {r['files']:,} files, {format_size(r['bytes'])}; {r['errors']:,} errors",
    ]
    links = r["link_kinds"]
    if links:
        lines.append(
            f"  symlinks: {links.get('file', 0):,} to files, {links.get('dir', 0):,} to dirs, "
            f"{links.get('outside', 0):,} outside the tree (not uploaded), "
            f"{links.get('broken', 0):,} broken"
        )
    if r["vanished"]:
        lines.append(f"  {r['vanished']:,} entries of earlier crawls are gone and were dropped")
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
        click.echo(f"  {_shown(example['path'])}: {example['error']}", err=True)
    if r["errors"] > _SHOWN_ERRORS:
        click.echo(f"  ... and {r['errors'] - _SHOWN_ERRORS:,} more", err=True)


def _shown(path: str) -> str:
    """A path on one line: quoted if it holds a newline or another control character."""
    if not path:
        return "."
    return path if path.isprintable() else repr(path)
