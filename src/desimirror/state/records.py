"""What the state holds, as Python sees it: the entry and upload records, the vocabulary
of kinds, failure reasons and proofs, and the arithmetic of paths and directory sizes that
every stage shares. Pure: no connection, no SQL run here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Kind = Literal["file", "dir", "link", "other"]
LinkKind = Literal["file", "dir", "outside", "broken"]

#: Why a file is not mirrored (``failures.reason``): the store failed it, it is not the
#: crawl's file any more, its path leads out of the tree, its bytes differ from the published
#: SHA-256, or verify found its object wrong (never adopted by size again).
FAILED, CHANGED, UNSAFE, CORRUPT, MISMATCH = "error", "changed", "unsafe", "corrupt", "mismatch"
FAILURE_REASONS = (FAILED, CHANGED, UNSAFE, CORRUPT, MISMATCH)
#: How an object's content was proven (``uploads.proof``), strongest first; see UploadRecord.
PROOFS = ("sha256", "composite", "etag", "size", "none")

#: An entry the uploader sends: a regular file, or a symlink to a regular file inside the root.
UPLOADABLE = "(kind = 'file' OR (kind = 'link' AND link_kind = 'file'))"
#: The one definition of "not done", for an uploadable entry ``e`` LEFT JOINed with its
#: upload record ``u``: confirmed with the current size, mtime and identity (where both
#: sides know it), and not contradicted by the reference checksum (a *.sha256sum that
#: changed under an unchanged file). Used by :meth:`Manifest.totals` and the tree view.
NOT_DONE = (
    "(u.path IS NULL OR u.size != e.size OR u.mtime_ns IS NOT e.mtime_ns"
    " OR (u.ino IS NOT NULL AND e.ino IS NOT NULL AND (u.ino != e.ino"
    "     OR u.ctime_ns IS NOT e.ctime_ns OR u.dev IS NOT e.dev))"
    " OR (u.sha256 IS NOT NULL AND e.sha256 IS NOT NULL AND u.sha256 != e.sha256))"
)

#: The failures that count (as ``f``, with the entry ``e`` and its record ``u``): those of
#: an uploadable file not done. A failure of a file since mirrored, or of an entry that is
#: no longer uploaded, is history; ``status``, the view's cards and its tree all count
#: these alone.
OPEN_FAILURES = (
    " FROM failures f CROSS JOIN entries e ON e.path = f.path"
    f" LEFT JOIN uploads u ON u.path = f.path WHERE {UPLOADABLE} AND {NOT_DONE}"
)


@dataclass(frozen=True)
class Entry:
    """One crawled filesystem entry, as stored."""

    path: str
    kind: Kind
    size: int
    mtime_ns: int | None = None
    link_target: str | None = None
    link_kind: LinkKind | None = None
    sha256: str | None = None
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None

    @property
    def identity(self) -> tuple[int, int, int] | None:
        """(ctime_ns, ino, dev) as the crawl saw them, None where it did not stat."""
        if self.ino is None or self.ctime_ns is None or self.dev is None:
            return None
        return (self.ctime_ns, self.ino, self.dev)

    def row(self) -> tuple:
        """This entry as a crawl's row (see :meth:`Manifest.put_crawl_rows`): (path, parent,
        name, kind, size, mtime_ns, link_target, link_kind, ctime_ns, ino, dev)."""
        name = self.name if self.path else ""
        return (self.path, self.parent, name, self.kind, self.size, self.mtime_ns,
                self.link_target, self.link_kind, self.ctime_ns, self.ino, self.dev)  # fmt: skip

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str | None:
        if self.path == "":
            return None
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


@dataclass(frozen=True)
class UploadRecord:
    """One file confirmed in the bucket, and how its content was confirmed.

    ``proof`` is one of: ``sha256`` (the store validated the SHA-256 we sent, or returned
    one equal to the file's), ``composite`` (a multipart object: the store validated every
    part's SHA-256, and the parts were read in order into the whole-file SHA-256),
    ``etag`` (the object's MD5 ETag equals the one computed from the file), ``size``
    (adopted by size only, content unproven), ``none`` (sent; the store confirmed no checksum).
    ``ctime_ns``, ``ino`` and ``dev`` are the file's identity when it was sent: a later
    crawl that finds another identity makes the file pending again.
    """

    path: str
    key: str
    size: int
    mtime_ns: int
    etag: str | None
    sha256: str | None = None
    part_size: int | None = None
    parts: tuple[str, ...] = ()
    proof: str = "none"
    adopted: bool = False
    ctime_ns: int | None = None
    ino: int | None = None
    dev: int | None = None


class RunTotals(NamedTuple):
    """The upload runs so far (see :meth:`Manifest.upload_run_totals`)."""

    count: int
    bytes: int
    seconds: float
    last_bytes: int
    last_seconds: float


def roll_up(own: dict[str, int], top: str = "") -> dict[str, int]:
    """Recursive totals per directory from each directory's own (bytes, say): deepest
    first, each added into its parent when the parent is among them, never past ``top``.

    The one definition of a directory's size, for the manifest, the crawl (which sums as
    it lists) and the planner (over a selection).
    """
    totals = dict(own)
    for path in sorted(totals, key=_depth, reverse=True):
        if path != top and path:
            parent = path.rpartition("/")[0]
            if parent in totals:
                totals[parent] += totals[path]
    return totals


def _depth(path: str) -> int:
    return path.count("/") + (path != "")


def subtree_range(path: str) -> tuple[str, str]:
    """The half-open key range holding everything strictly below directory ``path``."""
    if path == "":
        return ("", "\U0010ffff")
    return (path + "/", path + "0")
