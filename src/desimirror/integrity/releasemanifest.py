"""The published release manifest's format (``docs/manifest-format.md``): its names,
its escaping and its reader.

``manifest publish`` (a pipeline stage) writes it and ``download`` (another stage) reads
it to prove every file it fetches; stages never import each other, so the format both
speak lives here, below them, as the ``sha256sum`` format does in :mod:`.checksums`.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass

FORMAT = "desimirror-manifest"
VERSION = 1
#: The directory under a release's key prefix that holds the manifest and its summary.
META_DIR = ".desimirror"
COLUMNS = ("type", "path", "size", "mtime", "sha256", "origin", "key", "link_target", "link_kind")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def manifest_keys_for(prefix: str) -> tuple[str, str]:
    """The keys of the manifest and of its summary for a release under ``prefix``."""
    base = f"{prefix}/{META_DIR}/manifest"
    return base + ".tsv.gz", base + ".json"


def escape(text: str) -> str:
    """A path or link target as one TSV field: backslash, tab, CR and LF escaped."""
    return "".join(_ESCAPES.get(c, c) for c in text)


def unescape(field_text: str) -> str:
    out: list[str] = []
    chars = iter(field_text)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append(_UNESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a published manifest, parsed."""

    type: str
    path: str
    size: int | None
    mtime: int | None
    sha256: str | None
    origin: str | None
    key: str | None
    link_target: str | None
    link_kind: str | None


def read_manifest(stream: io.BufferedIOBase) -> tuple[dict[str, str], Iterator[ManifestEntry]]:
    """Parse a published ``manifest.tsv.gz`` stream: (header, entries), entries streamed."""
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=stream), encoding="utf-8", newline="\n")
    if text.readline().rstrip("\n").split("\t") != [f"#{FORMAT}", str(VERSION)]:
        raise ValueError("not a desimirror manifest (version 1)")
    header: dict[str, str] = {}
    line = text.readline()
    while line.startswith("#"):
        name, _, value = line[1:].rstrip("\n").partition("\t")
        header[name] = value
        line = text.readline()
    prefix = header.get("prefix", "")

    def entries(current: str) -> Iterator[ManifestEntry]:
        while current:
            cols = current.rstrip("\n").split("\t")
            cols += [""] * (len(COLUMNS) - len(cols))
            kind, path, size, mtime, sha, origin, key, target, link_kind = cols[: len(COLUMNS)]
            path = unescape(path)
            yield ManifestEntry(
                kind,
                path,
                int(size) if size else None,
                int(mtime) if mtime else None,
                sha or None,
                origin or None,
                unescape(key) if key else (f"{prefix}/{path}" if size else None),
                unescape(target) if target else None,
                link_kind or None,
            )
            current = text.readline()

    return header, entries(line)
