"""``desimirror plan``: cut the crawled selection into upload batches
(:mod:`desimirror.pipeline.plan`)."""

from __future__ import annotations

import click

from desimirror.cli.common import SIZE, db_option, deprecated_json_file, emit_json
from desimirror.errors import UsageError
from desimirror.pipeline.plan import (
    DEFAULT_MIN_BATCH_SIZE,
    Batch,
    Limits,
    Selection,
    resolve_subdir,
    store_plan,
    summarize,
    write_batch_json,
)
from desimirror.state.manifest import Manifest
from desimirror.text import plural
from desimirror.units import format_size

# ``--json`` alone asks for the stdout report like every other command; ``--json PATH``
# is the deprecated spelling of ``--batch-json PATH``.
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
    "--partial",
    is_flag=True,
    help="Plan even though the last crawl did not finish (only what it saw); status, "
    "upload and verify then keep saying so.",
)
@click.option(
    "--batch-json",
    "batch_json",
    metavar="FILE",
    help="Also write the plan to FILE in the seed's batch.json format.",
)
@click.option(
    "--json",
    "json_out",
    is_flag=False,
    flag_value=_REPORT,
    default=None,
    metavar="",
    help="Print one machine-readable JSON report on stdout. (--json FILE: the deprecated "
    "spelling of --batch-json FILE.)",
)
def command(
    db: str,
    subdir: str | None,
    max_batch_size: int,
    min_batch_size: int | None,
    max_files: int | None,
    partial: bool,
    batch_json: str | None,
    json_out: str | None,
) -> None:
    """Plan upload batches: directories that fit go whole, siblings are packed together.

    Replacing a plan loses no upload progress (that is kept per file).
    """
    batch_json = deprecated_json_file(json_out, _REPORT, batch_json, "--batch-json")
    sizes = (("--max-batch-size", max_batch_size), ("--min-batch-size", min_batch_size))
    for option, size in sizes:
        if size is not None and size < 1:
            # 0 would make one batch per file: a plan nobody wants, so refuse it
            raise UsageError(f"{option} must be at least 1 byte, e.g. 1TB (got {size})")
    if min_batch_size is None:
        min_batch_size = min(DEFAULT_MIN_BATCH_SIZE, max_batch_size)
    limits = Limits(max_batch_size, min_batch_size, max_files)
    with Manifest.open(db, writer="plan") as manifest:
        warning = manifest.partial_tree_warning()
        if warning and not partial:
            raise UsageError(
                f"{warning}; plan refuses a partial tree (--partial plans only what it saw)"
            )
        rel = resolve_subdir(manifest, subdir)
        selection = Selection.load(manifest, rel)
        batches = selection.plan(limits)
        original = selection.original_batch_count(limits.max_bytes)
        store_plan(manifest, rel, limits, batches, partial=warning is not None)
        root = manifest.root
        if batch_json:
            write_batch_json(batch_json, batches, root=root, subdir=rel, limits=limits)
    report = {
        "root": root,
        "subdir": rel,
        "max_batch_size": limits.max_bytes,
        "min_batch_size": limits.min_bytes,
        "max_files": limits.max_files,
        **summarize(batches, limits),
        "original_batches": original,
        "batch_json": batch_json,
        "warnings": [warning] if warning else [],
    }
    if json_out == _REPORT:
        emit_json(report)
    else:
        for line in _lines(report, batches):
            click.echo(line)


def _lines(r: dict, batches: list[Batch]) -> list[str]:
    where = f"'{r['subdir']}'" if r["subdir"] else "the whole tree"
    lines = [
        f"planned {plural(r['batches'], 'batch')} for {where}: {plural(r['files'], 'file')}, "
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
            f"  {plural(r['under_min'], 'batch')} under the {format_size(r['min_batch_size'])} "
            "minimum (no sibling left to pack with)"
        )
    if r["over_max"]:
        lines.append(f"  {plural(r['over_max'], 'single file')} larger than the maximum")
    lines.append(f"  (the original batch.py would make {plural(r['original_batches'], 'batch')})")
    if r["batch_json"]:
        lines.append(f"wrote {r['batch_json']}")
    lines.extend(f"warning: {w}" for w in r["warnings"])
    return lines
