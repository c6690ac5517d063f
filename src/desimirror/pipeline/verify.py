"""Prove the bucket matches the source: list it, compare with the manifest, report.

Both sides go into SQLite (the manifest's expected keys and the bucket listing, page by
page, into temporary tables) and are compared with joins, so a mirror of ten million
objects is checked in bounded memory. The report sorts problems as ``rclone check`` does:
missing (in the manifest, not in the bucket), differ (size mismatch), unexpected (in the
bucket under the mirror's prefixes, not in the manifest). A file recorded as uploaded
whose object is missing or wrong is returned to pending, so the next upload repairs it.

With ``--checksum`` every object of the right size (or a random ``--sample`` of them) is
also proven by content (:mod:`desimirror.pipeline.proof`): objects whose bytes differ from the
file's reference SHA-256 are reported as ``corrupt`` and returned to pending as well;
an object checked against the local file (no SHA-256 was recorded for it) whose file
changed since the crawl is reported as ``changed`` instead: the object may well be what
was crawled, and a re-crawl then an upload settles it.
The mirror's own metadata (the published manifest under ``PREFIX/.desimirror/``) is not
"unexpected".
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from desimirror.errors import IncompleteError, redact
from desimirror.pipeline.proof import Candidate, ContentChecker
from desimirror.progress import NullProgress, Progress
from desimirror.state.comparison import PROBLEMS, BucketComparison
from desimirror.state.manifest import MISMATCH, Manifest
from desimirror.storage.health import validation_text
from desimirror.storage.keys import KeyMap
from desimirror.storage.transfer import S3Target

SIGILS: dict[str, str] = {
    "missing": "-",
    "differ": "*",
    "unexpected": "+",
    "corrupt": "!",
    "unproven": "?",
    "changed": "~",
}
EXAMPLES = 20
#: Keys under ``PREFIX/`` + this hold the mirror's own metadata, not release files.
META_DIR = ".desimirror/"


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
    checksum: bool = False
    sample: float = 1.0
    content_checked: int = 0
    content_ok: int = 0
    corrupt: int = 0
    unproven: int = 0
    changed: int = 0
    proven_by: dict[str, int] = field(default_factory=dict)
    bytes_reread: int = 0
    partial_tree: str | None = None  # the manifest rests on a crawl that did not finish
    #: Set when the store validated no checksums at upload: what proved the content instead.
    store_validation: str | None = None

    @property
    def complete(self) -> bool:
        return (
            self.missing == 0
            and self.differ == 0
            and self.corrupt == 0
            and self.unproven == 0
            and self.changed == 0
        )

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "complete": self.complete}


def _load_listing(
    comparison: BucketComparison,
    objects: Iterator[tuple[str, int, str | None]],
    progress: Progress,
) -> int:
    n = 0
    chunk: list[tuple[str, int, str | None]] = []
    for obj in objects:
        chunk.append(obj)
        if len(chunk) >= 1000:
            n += _insert_listing(comparison, chunk, progress)
            chunk = []
    return n + _insert_listing(comparison, chunk, progress)


def _insert_listing(comparison: BucketComparison, chunk: list, progress: Progress) -> int:
    comparison.listed(chunk)
    progress.advance(len(chunk), sum(size for _, size, _ in chunk))
    return len(chunk)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def compare(
    manifest: Manifest,
    keymap: KeyMap,
    bucket: str,
    list_objects,
    *,
    subdir: str = "",
    report_file: Path | None = None,
    progress: Progress | None = None,
    content: ContentChecker | None = None,
    sample: float = 1.0,
    rng: random.Random | None = None,
) -> VerifyReport:
    """Compare the manifest with a listing; ``list_objects(prefix)`` yields (key, size, etag).

    With ``content``, also prove the content of (a ``sample`` fraction of) the objects of
    the right size. Returns the report; files whose object is missing, differs or is
    corrupt are returned to pending.
    """
    progress = progress or NullProgress()
    prefixes = keymap.list_prefixes(subdir)
    report = VerifyReport(bucket=bucket, prefixes=prefixes, checksum=content is not None)
    report.sample = sample
    with BucketComparison(manifest) as comparison:
        expected = ((keymap.key(e.path), e.path, e.size) for e in manifest.iter_uploadables(subdir))
        report.expected_files, report.expected_bytes = comparison.expect(expected)
        progress.start("list", report.expected_files, report.expected_bytes)
        try:
            report.listed_objects = _load_listing(
                comparison, (obj for p in prefixes for obj in list_objects(p)), progress
            )
        finally:
            progress.close()
        bad_paths, mismatched = _find_problems(
            manifest, comparison, report, keymap, report_file, content, sample, rng
        )
    report.matched = report.expected_files - report.missing - report.differ - report.corrupt
    with manifest.atomic():
        report.returned_to_pending = manifest.forget_uploads(bad_paths)
        # remembered until an upload replaces the object: status shows it, and an upload
        # never adopts such an object again by its size alone
        for path, message in mismatched:
            manifest.record_failure(path, MISMATCH, message)
    return report


def _find_problems(
    manifest: Manifest,
    comparison: BucketComparison,
    report: VerifyReport,
    keymap: KeyMap,
    report_file: Path | None,
    content: ContentChecker | None,
    sample: float,
    rng: random.Random | None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Count each kind of problem into ``report`` (and the report file); returns the paths
    to return to pending and the (path, why) of the objects whose content is wrong."""
    sink = report_file.open("w", encoding="utf-8") if report_file else None
    try:
        bad_paths: list[str] = []
        mismatched: list[tuple[str, str]] = []
        meta_glob = _glob_escape(keymap.prefix + "/" + META_DIR) + "*"
        for problem in PROBLEMS:
            count = 0
            examples: list[str] = []
            for key, path in comparison.problems(problem, meta_glob):
                count += 1
                if len(examples) < EXAMPLES:
                    examples.append(key)
                if path is not None:
                    bad_paths.append(path)
                if sink:
                    sink.write(f"{SIGILS[problem]} {key}\n")
            setattr(report, problem, count)
            report.examples[problem] = examples
        if content is not None:
            rows = comparison.content_candidates()
            mismatched = _check_content(manifest, report, content, rows, sample, rng, sink)
            bad_paths.extend(path for path, _ in mismatched)
    finally:
        if sink:
            sink.close()
    return bad_paths, mismatched


def _check_content(
    manifest: Manifest,
    report: VerifyReport,
    checker: ContentChecker,
    rows: list[tuple],
    sample: float,
    rng: random.Random | None,
    sink: TextIO | None,
) -> list[tuple[str, str]]:
    """Run the content checks; count them into ``report``; (path, why) of those corrupt."""
    rng = rng or random.Random()
    chosen = [Candidate(*row) for row in rows if sample >= 1.0 or rng.random() < sample]
    bad: list[tuple[str, str]] = []
    for problem in ("corrupt", "unproven", "changed"):
        report.examples[problem] = []
    for verdict in checker.run(chosen):
        c = verdict.candidate
        report.content_checked += 1
        if verdict.ok:
            report.content_ok += 1
            report.proven_by[verdict.method] = report.proven_by.get(verdict.method, 0) + 1
            continue
        problem = "corrupt" if verdict.ok is False else "unproven"
        message = verdict.message
        if verdict.ok is False and _changed_since_crawl(manifest, c):
            problem = "changed"
            message = "the file changed since the crawl: re-crawl, then upload"
        setattr(report, problem, getattr(report, problem) + 1)
        if len(report.examples[problem]) < EXAMPLES:
            report.examples[problem].append(f"{c.key}: {redact(message)}")
        if sink:
            sink.write(f"{SIGILS[problem]} {c.key}\n")
        if problem == "corrupt":
            bad.append(
                (c.path, redact(f"verify: the object differs from the file: {verdict.message}"))
            )
    report.bytes_reread = checker.bytes_read
    return bad


def _changed_since_crawl(manifest: Manifest, c: Candidate) -> bool:
    """True when the object was judged against the local file (no SHA-256 was recorded)
    and that file no longer has the crawl's size and mtime: then the file changed, and
    nothing says the object is wrong."""
    if c.reference or c.sha256 or not manifest.root:
        return False
    entry = manifest.get(c.path)
    try:
        st = os.stat(os.path.join(manifest.root, c.path))
    except OSError:
        return True  # gone or unreadable since the crawl
    return entry is None or (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns)


def verify(
    manifest: Manifest,
    target: S3Target,
    keymap: KeyMap,
    *,
    subdir: str = "",
    strict: bool = False,
    report_file: Path | None = None,
    progress: Progress | None = None,
    checksum: bool = False,
    sample: float = 1.0,
    reread: bool = False,
    workers: int = 16,
) -> VerifyReport:
    """List the bucket under the mirror's prefixes and compare; raise if incomplete.

    ``checksum`` proves content too (see :mod:`desimirror.pipeline.proof`); ``sample`` checks a
    random fraction of the objects; ``reread`` hashes every checked object's bytes.
    """
    from desimirror.storage.listing import list_tree
    from desimirror.storage.s3client import check_bucket, make_client

    partial = manifest.require_whole_tree("verify")
    client = make_client(target, max_pool_connections=workers + 2)
    check_bucket(client, target.bucket)
    checker = None
    if checksum or reread:
        checker = ContentChecker(
            client, target.bucket, root=manifest.root, reread=reread, workers=workers
        )
    report = compare(
        manifest,
        keymap,
        target.bucket,
        lambda prefix: list_tree(client, target.bucket, prefix, workers=workers),
        subdir=subdir,
        report_file=report_file,
        progress=progress,
        content=checker,
        sample=sample,
    )
    note = manifest.store_note("validation")
    report.store_validation = validation_text(note) if note else None
    if not report.complete or (strict and report.unexpected):
        raise IncompleteError(_summary_line(report), report=report.as_dict())
    if partial:  # the bucket matches the manifest, and the manifest is not the whole tree
        report.partial_tree = partial
        raise IncompleteError(
            f"the bucket holds every file of the manifest, but {partial}",
            report=report.as_dict(),
        )
    return report


def _summary_line(report: VerifyReport) -> str:
    content = ""
    if report.checksum:
        content = (
            f", {report.corrupt:,} corrupt, {report.unproven:,} unproven, "
            f"{report.changed:,} changed since the crawl"
        )
    return (
        f"mirror incomplete: {report.missing:,} missing, {report.differ:,} differ in size"
        f"{content}, {report.unexpected:,} unexpected, of {report.expected_files:,} "
        "expected objects"
    )
