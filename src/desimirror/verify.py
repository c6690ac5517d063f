"""Prove the bucket matches the source: list it, compare with the manifest, report.

Both sides go into SQLite (the manifest's expected keys and the bucket listing, page by
page, into temporary tables) and are compared with joins, so a mirror of ten million
objects is checked in bounded memory. The report sorts problems as ``rclone check`` does:
missing (in the manifest, not in the bucket), differ (size mismatch), unexpected (in the
bucket under the mirror's prefixes, not in the manifest). A file recorded as uploaded
whose object is missing or wrong is returned to pending, so the next upload repairs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from desimirror.errors import IncompleteError
from desimirror.keys import KeyMap
from desimirror.manifest import Manifest
from desimirror.progress import NullProgress, Progress
from desimirror.transfer import S3Target

Problem = Literal["missing", "differ", "unexpected"]
SIGILS: dict[Problem, str] = {"missing": "-", "differ": "*", "unexpected": "+"}
EXAMPLES = 20


@dataclass
class VerifyReport:
    """Counts and the first few examples of each problem; the ``--json`` report."""

    bucket: str
    prefixes: list[str]
    expected_files: int = 0
    expected_bytes: int = 0
    listed_objects: int = 0
    matched: int = 0
    missing: int = 0
    differ: int = 0
    unexpected: int = 0
    returned_to_pending: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.missing == 0 and self.differ == 0

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "complete": self.complete}


def _load_expected(manifest: Manifest, keymap: KeyMap, subdir: str) -> tuple[int, int]:
    conn = manifest.conn
    conn.execute("DROP TABLE IF EXISTS temp.expected")
    conn.execute(
        "CREATE TEMP TABLE expected (key TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER)"
    )
    rows = ((keymap.key(e.path), e.path, e.size) for e in manifest.iter_uploadables(subdir))
    with manifest.atomic():
        conn.executemany("INSERT OR REPLACE INTO temp.expected VALUES (?, ?, ?)", rows)
    return conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM temp.expected").fetchone()


def _load_listing(
    manifest: Manifest, objects: Iterator[tuple[str, int, str | None]], progress: Progress
) -> int:
    conn = manifest.conn
    conn.execute("DROP TABLE IF EXISTS temp.listed")
    conn.execute("CREATE TEMP TABLE listed (key TEXT PRIMARY KEY, size INTEGER, etag TEXT)")
    n = 0
    chunk: list[tuple[str, int, str | None]] = []
    for obj in objects:
        chunk.append(obj)
        if len(chunk) >= 1000:
            n += _insert_listing(manifest, chunk, progress)
            chunk = []
    return n + _insert_listing(manifest, chunk, progress)


def _insert_listing(manifest: Manifest, chunk: list, progress: Progress) -> int:
    with manifest.atomic() as conn:
        conn.executemany("INSERT OR REPLACE INTO temp.listed VALUES (?, ?, ?)", chunk)
    progress.advance(len(chunk), sum(size for _, size, _ in chunk))
    return len(chunk)


_QUERIES: dict[Problem, str] = {
    "missing": "SELECT e.key, e.path FROM temp.expected e LEFT JOIN temp.listed l"
    " ON l.key = e.key WHERE l.key IS NULL ORDER BY e.key",
    "differ": "SELECT e.key, e.path FROM temp.expected e JOIN temp.listed l"
    " ON l.key = e.key WHERE l.size != e.size ORDER BY e.key",
    "unexpected": "SELECT l.key, NULL FROM temp.listed l LEFT JOIN temp.expected e"
    " ON e.key = l.key WHERE e.key IS NULL ORDER BY l.key",
}


def compare(
    manifest: Manifest,
    keymap: KeyMap,
    bucket: str,
    list_objects,
    *,
    subdir: str = "",
    report_file: Path | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Compare the manifest with a listing; ``list_objects(prefix)`` yields (key, size, etag).

    Returns the report and returns files whose object is missing or differs to pending.
    """
    progress = progress or NullProgress()
    prefixes = keymap.list_prefixes(subdir)
    report = VerifyReport(bucket=bucket, prefixes=prefixes)
    report.expected_files, report.expected_bytes = _load_expected(manifest, keymap, subdir)
    progress.start("list", report.expected_files, report.expected_bytes)
    try:
        report.listed_objects = _load_listing(
            manifest, (obj for p in prefixes for obj in list_objects(p)), progress
        )
    finally:
        progress.close()
    conn = manifest.conn
    sink = report_file.open("w", encoding="utf-8") if report_file else None
    try:
        bad_paths: list[str] = []
        for problem, query in _QUERIES.items():
            count = 0
            examples: list[str] = []
            for key, path in conn.execute(query):
                count += 1
                if len(examples) < EXAMPLES:
                    examples.append(key)
                if path is not None:
                    bad_paths.append(path)
                if sink:
                    sink.write(f"{SIGILS[problem]} {key}\n")
            setattr(report, problem, count)
            report.examples[problem] = examples
    finally:
        if sink:
            sink.close()
    report.matched = report.expected_files - report.missing - report.differ
    with manifest.atomic():
        cur = conn.executemany("DELETE FROM uploads WHERE path = ?", ((p,) for p in bad_paths))
        report.returned_to_pending = cur.rowcount if cur.rowcount > 0 else 0
    conn.execute("DROP TABLE temp.expected")
    conn.execute("DROP TABLE temp.listed")
    return report


def verify(
    manifest: Manifest,
    target: S3Target,
    keymap: KeyMap,
    *,
    subdir: str = "",
    strict: bool = False,
    report_file: Path | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """List the bucket under the mirror's prefixes and compare; raise if incomplete."""
    from desimirror.s3client import check_bucket, list_objects, make_client

    client = make_client(target)
    check_bucket(client, target.bucket)
    report = compare(
        manifest,
        keymap,
        target.bucket,
        lambda prefix: list_objects(client, target.bucket, prefix),
        subdir=subdir,
        report_file=report_file,
        progress=progress,
    )
    if not report.complete or (strict and report.unexpected):
        raise IncompleteError(_summary_line(report), report=report.as_dict())
    return report


def _summary_line(report: VerifyReport) -> str:
    return (
        f"mirror incomplete: {report.missing:,} missing, {report.differ:,} differ in size, "
        f"{report.unexpected:,} unexpected, of {report.expected_files:,} expected objects"
    )
