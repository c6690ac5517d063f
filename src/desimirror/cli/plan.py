"""``desimirror plan``: cut the crawled selection into upload batches (:mod:`desimirror.plan`)."""

from __future__ import annotations

import click

from desimirror.cli.common import SIZE, db_option, emit_json
from desimirror.errors import UsageError
from desimirror.manifest import Manifest
from desimirror.plan import (
    DEFAULT_MIN_BATCH_SIZE,
    Batch,
    Limits,
    Selection,
    resolve_subdir,
    store_plan,
    summarize,
    write_batch_json,
)
from desimirror.units import format_size

# ``--json`` alone asks for the stdout report like every other command; ``--json PATH``
# writes batch.json, as the seed's makefile target does.
_REPORT = "\0report"


@click.command("plan")
@db_option
@click.option(
    "--subdir",
    help="Plan only this part of the tree: relative to the crawled root, or an absolute "
    "path under it.",
)
@click.option(
    "--max-batch-size",
    type=SIZE,
    default="1TB",
    show_default=True,
    help="Directories up to this size go whole; no batch is larger, except a single file.",
)
@click.option(
    "--min-batch-size",
    type=SIZE,
    help="Siblings smaller than this are packed together until a batch reaches it "
    "[default: 10GB, or the max if smaller].",
)
@click.option(
    "--max-files",
    type=click.IntRange(min=1),
    help="Also cap the number of files per batch (a larger directory is split).",
)
@click.option(
    "--json",
    "json_out",
    is_flag=False,
    flag_value=_REPORT,
    default=None,
    metavar="[PATH]",
    help="Write the plan to PATH as batch.json; alone, print a JSON report on stdout.",
)
def command(
    db: str,
    subdir: str | None,
    max_batch_size: int,
    min_batch_size: int | None,
    max_files: int | None,
    json_out: str | None,
) -> None:
    """Plan upload batches: directories that fit go whole, siblings are packed together.

    Replacing a plan loses no upload progress (that is kept per file).
    """
    sizes = (("--max-batch-size", max_batch_size), ("--min-batch-size", min_batch_size))
    for option, size in sizes:
        if size is not None and size < 1:
            # 0 would make one batch per file: a plan nobody wants, so refuse it
            raise UsageError(f"{option} must be at least 1 byte, e.g. 1TB (got {size})")
    if min_batch_size is None:
        min_batch_size = min(DEFAULT_MIN_BATCH_SIZE, max_batch_size)
    limits = Limits(max_batch_size, min_batch_size, max_files)
    with Manifest.open(db, writer="plan") as manifest:
        rel = resolve_subdir(manifest, subdir)
        selection = Selection.load(manifest, rel)
        batches = selection.plan(limits)
        original = selection.original_batch_count(limits.max_bytes)
        store_plan(manifest, rel, limits, batches)
        root = manifest.root
        if json_out and json_out != _REPORT:
            write_batch_json(json_out, batches, root=root, subdir=rel, limits=limits)
    report = {
        "root": root,
        "subdir": rel,
        "max_batch_size": limits.max_bytes,
        "min_batch_size": limits.min_bytes,
        "max_files": limits.max_files,
        **summarize(batches, limits),
        "original_batches": original,
        "batch_json": json_out if json_out != _REPORT else None,
    }
    if json_out == _REPORT:
        emit_json(report)
    else:
        for line in _lines(report, batches):
            click.echo(line)


def _lines(r: dict, batches: list[Batch]) -> list[str]:
    where = f"'{r['subdir']}'" if r["subdir"] else "the whole tree"
    lines = [
        f"planned {_n(r['batches'], 'batch')} for {where}: {_n(r['files'], 'file')}, "
        f"{format_size(r['bytes'])}",
        f"  whole directories {r['whole_dirs']:,}, packed groups {r['packed_groups']:,}, "
        f"single files {r['single_files']:,}",
    ]
    if batches:
        i = max(range(len(batches)), key=lambda k: batches[k].bytes)
        first = batches[i].paths[0][0] or "."
        more = f" + {len(batches[i].paths) - 1:,} more" if len(batches[i].paths) > 1 else ""
        lines.append(
            f"  largest batch {format_size(r['largest_batch_bytes'])} (#{i + 1}: {first}{more}), "
            f"smallest {format_size(r['smallest_batch_bytes'])}"
        )
    if r["under_min"] and len(batches) > 1 and r["min_batch_size"] < r["max_batch_size"]:
        lines.append(
            f"  {_n(r['under_min'], 'batch')} under the {format_size(r['min_batch_size'])} "
            "minimum (no sibling left to pack with)"
        )
    if r["over_max"]:
        lines.append(f"  {_n(r['over_max'], 'single file')} larger than the maximum")
    lines.append(f"  (the original batch.py would make {_n(r['original_batches'], 'batch')})")
    if r["batch_json"]:
        lines.append(f"wrote {r['batch_json']}")
    return lines


def _n(count: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{count:,} {noun if count == 1 else plural}"
