"""What a crawl or an import found, and closing it in the state."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from desimirror.state.manifest import Manifest

#: Errors kept in memory for the report; all of them go to the db.
ERROR_EXAMPLES = 20


@dataclass
class CrawlSummary:
    """The outcome of a crawl or an import, for the CLI report and for callers."""

    crawl_id: int
    root: str | None
    root_name: str
    source: str  # "crawl" or "json"
    entries: int = 0
    kinds: Counter = field(default_factory=Counter)
    link_kinds: Counter = field(default_factory=Counter)
    files: int = 0  # uploadables: regular files and links to files inside the tree
    bytes: int = 0  # their total size
    dirs_scanned: int = 0
    errors: int = 0
    error_examples: list[tuple[str, str]] = field(default_factory=list)
    vanished: int = 0  # entries of earlier crawls dropped because they are gone
    complete: bool = True  # False when unreadable parts kept their earlier records
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(self.seconds, 1e-9)
        return {
            "source": self.source,
            "root": self.root,
            "root_name": self.root_name,
            "crawl_id": self.crawl_id,
            "entries": self.entries,
            "kinds": dict(sorted(self.kinds.items())),
            "link_kinds": dict(sorted(self.link_kinds.items())),
            "files": self.files,
            "bytes": self.bytes,
            "dirs_scanned": self.dirs_scanned,
            "errors": self.errors,
            "error_examples": [{"path": p, "error": m} for p, m in self.error_examples],
            "vanished": self.vanished,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "entries_per_second": round(self.entries / elapsed, 1),
            "dirs_per_second": round(self.dirs_scanned / elapsed, 1),
            "warnings": self.warnings,
        }


def close_crawl(
    manifest: Manifest,
    summary: CrawlSummary,
    keep: list[str],
    *,
    totals: tuple[int, int] | None = None,
    tree_counted: bool = False,
) -> None:
    """Close a crawl: drop what vanished except under ``keep``, total the directories.

    A crawl that met unreadable directories (or entries it could not stat) does not know
    what is below them now. Dropping their earlier records would make a transient
    permission or filesystem hiccup look like deleted data, and status would under-count
    the release; so those subtrees keep what an earlier crawl saw (the uploader re-checks
    every file before sending it), while everything the crawl did see is authoritative.
    ``totals`` and ``tree_counted`` (an import, which writes the directory sizes as it
    reads): see :meth:`Manifest.close_crawl`.
    """
    summary.vanished = manifest.close_crawl(
        summary.crawl_id,
        keep=keep,
        sizes_written=totals is not None,
        totals=totals,
        tree_counted=tree_counted,
    )
    summary.complete = not keep
    if totals is not None and not keep:  # summed as the rows were written
        summary.files, summary.bytes = totals
    else:
        summary.files, summary.bytes = manifest.uploadable_totals()
