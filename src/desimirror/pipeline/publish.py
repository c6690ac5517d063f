"""Publish the release's manifest into the bucket, for downloaders and for the access side.

S3 holds objects, not a file system: it cannot show empty directories or symlinks, and it
says nothing about what a file's bytes should be. The published manifest does, in one
compact, documented file next to the data (format: ``docs/manifest-format.md``)::

    s3://BUCKET/PREFIX/.desimirror/manifest.tsv.gz   every entry: type, path, size, mtime,
                                                     SHA-256 (and whether the release
                                                     published it), key, symlink target
    s3://BUCKET/PREFIX/.desimirror/manifest.json     a summary: counts, the layout, and the
                                                     SHA-256 of the .tsv.gz

Anyone who downloads a file can check it against its line; the access side can list a
release (and show its empty directories and symlinks) from one GET instead of millions of
LIST calls. Both objects are uploaded with their SHA-256 checked by the store.

The manifest is written from the state db alone, streamed in path order through gzip into
a temporary file, so ten million entries need no more memory than a few.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, TextIO

from desimirror.errors import IncompleteError, RemoteError, UsageError
from desimirror.integrity.releasemanifest import (  # the format: read by download too
    COLUMNS,
    FORMAT,
    VERSION,
    escape,
    manifest_keys_for,
)
from desimirror.state.manifest import Manifest
from desimirror.storage import transfer
from desimirror.storage.keys import KeyMap
from desimirror.storage.transfer import S3Target, TransferItem

_TYPES = {"file": "f", "dir": "d", "link": "l", "other": "o"}


def manifest_keys(keymap: KeyMap) -> tuple[str, str]:
    """The keys of the manifest and of its summary for a mirror with this layout."""
    return manifest_keys_for(keymap.prefix)


@dataclass
class PublishReport:
    """What ``manifest publish`` wrote; its ``--json`` report."""

    bucket: str
    manifest_key: str
    summary_key: str
    entries: int = 0
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    links: int = 0
    files_with_sha256: int = 0
    files_published_sha256: int = 0
    pending_files: int = 0
    complete: bool = True
    compressed_bytes: int = 0
    sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def write_manifest(manifest: Manifest, keymap: KeyMap, out: TextIO, report: PublishReport) -> None:
    """Write the TSV (uncompressed text) of every entry to ``out``; count into ``report``."""
    header = {
        "release": manifest.root_name or "",
        "prefix": keymap.prefix,
        "remap": "\t".join(f"{s}={d}" for s, d in keymap.rules),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "complete": "yes" if report.complete else "no",
    }
    out.write(f"#{FORMAT}\t{VERSION}\n")
    for name, value in header.items():
        out.write(f"#{name}\t{value}\n")
    out.write("#columns\t" + "\t".join(COLUMNS) + "\n")
    uploadable = manifest.uploadable_links()
    for entry, published in manifest.iter_with_published():
        path, kind, size, mtime_ns = entry.path, entry.kind, entry.size, entry.mtime_ns
        sha, target, link_kind = entry.sha256, entry.link_target, entry.link_kind
        if path == "":
            continue  # the root itself: the prefix
        report.entries += 1
        is_file = kind == "file" or path in uploadable
        key = keymap.key(path) if is_file else ""
        if key == f"{keymap.prefix}/{path}":
            key = ""  # the default layout: PREFIX/path, left out to keep lines short
        origin = ""
        if sha:
            origin = "p" if published == sha else "c"
        fields = [
            _TYPES.get(kind, "o"),
            escape(path),
            str(size) if is_file else "",
            str(mtime_ns // 1_000_000_000) if mtime_ns is not None else "",
            (sha or "") if is_file else "",
            origin if is_file else "",
            escape(key),
            escape(target or "") if kind == "link" else "",
            (link_kind or "") if kind == "link" else "",
        ]
        out.write("\t".join(fields) + "\n")
        if kind == "dir":
            report.dirs += 1
        elif kind == "link":
            report.links += 1
        if is_file:
            report.files += 1
            report.bytes += size
            report.files_with_sha256 += bool(sha)
            report.files_published_sha256 += origin == "p"


def publish(
    manifest: Manifest,
    target: S3Target,
    keymap: KeyMap,
    *,
    allow_incomplete: bool = False,
) -> PublishReport:
    """Write and upload the manifest and its summary; see the module docstring."""
    from desimirror.storage.s3client import check_bucket, make_client

    if manifest.root_name is None:
        raise UsageError(f"{manifest.path} has no crawl yet: run 'desimirror crawl' first")
    tsv_key, json_key = manifest_keys(keymap)
    report = PublishReport(bucket=target.bucket, manifest_key=tsv_key, summary_key=json_key)
    totals = manifest.totals("")
    report.pending_files = totals["pending_files"]
    partial = manifest.partial_tree_warning()
    report.complete = report.pending_files == 0 and partial is None
    if not report.complete and not allow_incomplete:
        raise IncompleteError(
            f"{report.pending_files:,} files are not mirrored yet: finish the upload, or "
            "publish with --allow-incomplete (the manifest then says complete: no)",
            report=report.as_dict(),
        )
    client = make_client(target)
    check_bucket(client, target.bucket)
    with tempfile.TemporaryDirectory(prefix="desimirror-publish-") as tmp:
        path = os.path.join(tmp, "manifest.tsv.gz")
        with gzip.open(path, "wt", encoding="utf-8", newline="\n", compresslevel=6) as out:
            write_manifest(manifest, keymap, out, report)
        report.compressed_bytes = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        report.sha256 = digest.hexdigest()
        summary = _summary(manifest, keymap, report)
        summary_path = os.path.join(tmp, "manifest.json")
        with open(summary_path, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2, sort_keys=True)
            out.write("\n")
        backend = transfer.get("native", target, workers=2)
        try:
            items = [
                TransferItem(path, tsv_key, report.compressed_bytes, report.sha256),
                _item(summary_path, json_key),
            ]
            failures = [r for r in backend.put_batch(items) if not r.ok]
        finally:
            backend.close()
    if failures:
        raise RemoteError(failures[0].error or "publishing the manifest failed")
    return report


def _item(path: str, key: str) -> TransferItem:
    with open(path, "rb") as stream:
        data = stream.read()
    return TransferItem(path, key, len(data), hashlib.sha256(data).hexdigest())


def _summary(manifest: Manifest, keymap: KeyMap, report: PublishReport) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "release": manifest.root_name,
        "prefix": keymap.prefix,
        "remap": [f"{s}={d}" for s, d in keymap.rules],
        "manifest": {
            "key": report.manifest_key,
            "sha256": report.sha256,
            "bytes": report.compressed_bytes,
        },
        "complete": report.complete,
        "entries": report.entries,
        "files": report.files,
        "bytes": report.bytes,
        "dirs": report.dirs,
        "links": report.links,
        "files_with_sha256": report.files_with_sha256,
        "files_with_published_sha256": report.files_published_sha256,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
