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
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from desimirror.errors import redact
from desimirror.integrity.checksums import SUFFIX, parse_sha256sum
from desimirror.integrity.sourcetree import SourceRefused, tree_at
from desimirror.state.manifest import Manifest

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
        # read listings are committed in groups, so a kill keeps what was read before it
        for group in _groups(zip(stale, contents, strict=True), COMMIT_EVERY):
            with manifest.atomic():
                for (path, size, mtime_ns), data in group:
                    _store(manifest, report, path, size, mtime_ns, data)
    report.references_updated = manifest.apply_published()
    for name, value in manifest.published_counts().items():
        setattr(report, name, value)
    return report


def _store(
    manifest: Manifest,
    report: ChecksumReport,
    path: str,
    size: int,
    mtime_ns: int | None,
    data: bytes | str,
) -> None:
    """Store what one listing claims (or count why it could not be used)."""
    if isinstance(data, str):
        report.error(f"{path}: {data}")
        return
    if len(data) != size:
        report.error(f"{path}: changed while being read")
        return
    listing = parse_sha256sum(data, posixpath.dirname(path))
    for message in listing.errors:
        report.error(f"{path}: {message}")
    manifest.replace_listing(path, size, mtime_ns, listing.claims, len(listing.errors))
    report.listings_read += 1


def _groups(items: Iterable, size: int) -> Iterator[list]:
    group: list = []
    for item in items:
        group.append(item)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group
