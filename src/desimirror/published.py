"""Read the release's own ``*.sha256sum`` files into the manifest, as reference checksums.

A DESI release publishes, per product directory, the SHA-256 of every file. Those claims
are what the bytes in the bucket must be, so before anything is sent the uploader reads
every listing the crawl found (they are small) and records what each one claims. Only
listings that are new or changed since they were last read (size, mtime) are read again,
so a resumed upload of ten million files pays for this once.

Staleness: a claim belongs to its listing, not to the file it names. A file that changes
after the crawl loses its checksum in the crawl (size or mtime differ), gets the claim back
here, and is then caught at upload time if its bytes no longer match: that is either
corruption at the source or a change nobody published, and either way it must not be
mirrored as if it were the release. A listing that changes replaces all its claims.

Only regular files the crawl recorded inside the tree are read (never through a symlink),
and a listing may only make claims about paths inside the tree.
"""

from __future__ import annotations

import os
import posixpath
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from desimirror.checksums import SUFFIX, parse_sha256sum
from desimirror.errors import redact
from desimirror.manifest import UPLOADABLE, Manifest
from desimirror.sourcetree import SourceRefused, tree_at

#: A listing larger than this is not a checksum file of a product directory; skip it.
MAX_LISTING_BYTES = 256 << 20
EXAMPLES = 10
COMMIT_EVERY = 200


@dataclass
class ChecksumReport:
    """What the sync found; part of ``upload --json`` and ``manifest checksums --json``."""

    listings: int = 0
    listings_read: int = 0
    claims: int = 0
    files: int = 0
    files_with_published: int = 0
    files_with_computed: int = 0
    listed_but_absent: int = 0
    references_updated: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_examples) < EXAMPLES:
            self.error_examples.append(redact(text))


def _read(root: str, path: str, size: int, mtime_ns: int | None) -> bytes | str:
    """The listing's bytes, or why it cannot be used now (it changed, vanished, is huge)."""
    if size > MAX_LISTING_BYTES:
        return f"{size} bytes is too large for a checksum listing"
    try:
        with os.fdopen(tree_at(root).open_beneath(path), "rb") as stream:
            st = os.fstat(stream.fileno())
            if not stat.S_ISREG(st.st_mode):
                return "no longer a regular file"
            if st.st_size != size or (mtime_ns is not None and st.st_mtime_ns != mtime_ns):
                return "changed since the crawl; run 'desimirror crawl' again"
            return stream.read(size + 1)
    except SourceRefused as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def sync_published(manifest: Manifest, root: str, *, workers: int = 8) -> ChecksumReport:
    """Read new and changed listings, store their claims, and apply them to the entries."""
    report = ChecksumReport()
    listings = manifest.checksum_listings(SUFFIX)
    report.listings = len(listings)
    known = manifest.read_listings()
    current = {p for p, _, _ in listings}
    stale = [(p, s, m) for p, s, m in listings if known.get(p) != (s, m)]
    gone = [p for p in known if p not in current]
    if gone:
        with manifest.atomic():
            for path in gone:
                manifest.drop_listing(path)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="desimirror-sums") as pool:
        contents = pool.map(lambda row: _read(root, *row), stale)
        pending = 0
        manifest.conn.execute("BEGIN IMMEDIATE")
        try:
            for (path, size, mtime_ns), data in zip(stale, contents, strict=True):
                if isinstance(data, str):
                    report.error(f"{path}: {data}")
                    continue
                if len(data) != size:
                    report.error(f"{path}: changed while being read")
                    continue
                listing = parse_sha256sum(data, posixpath.dirname(path))
                for message in listing.errors:
                    report.error(f"{path}: {message}")
                manifest.replace_listing(path, size, mtime_ns, listing.claims, len(listing.errors))
                report.listings_read += 1
                pending += 1
                if pending >= COMMIT_EVERY:
                    manifest.conn.execute("COMMIT")
                    manifest.conn.execute("BEGIN IMMEDIATE")
                    pending = 0
        except BaseException:
            manifest.conn.execute("ROLLBACK")
            raise
        manifest.conn.execute("COMMIT")
    report.references_updated = manifest.apply_published()
    _count(manifest, report)
    return report


def _count(manifest: Manifest, report: ChecksumReport) -> None:
    conn = manifest.conn
    report.claims = conn.execute("SELECT count(*) FROM published").fetchone()[0]
    report.files, report.files_with_published, with_sha = conn.execute(
        "SELECT count(*), count(p.path), count(e.sha256) FROM entries e"
        f" LEFT JOIN published p ON p.path = e.path WHERE {UPLOADABLE}"
    ).fetchone()
    report.files_with_computed = with_sha - report.files_with_published
    report.listed_but_absent = conn.execute(
        "SELECT count(*) FROM published p WHERE NOT EXISTS"
        f" (SELECT 1 FROM entries e WHERE e.path = p.path AND {UPLOADABLE})"
    ).fetchone()[0]
