"""Files gone from the source: reported always, deleted from the bucket only on request.

A re-crawl drops entries for files that vanished, but their upload records stay, so the
mirror knows which objects it made for them. Every upload reports them; ``--delete``
removes those objects, under strict conditions, because a mirror's keys may be shared
(``raw_spectro_data`` holds the nights of edr *and* dr1 under the same remapped keys):

* only keys under the mirror's own key prefixes (its prefix and its remap destinations);
* only objects this mirror *sent* — never objects it adopted (someone else wrote them);
* only while the object still has the ETag recorded when it was sent (else someone has
  replaced it since, and it is theirs now).

Skipped objects stay reported. The uploader's IAM policy needs ``s3:DeleteObject`` only
for this mode (see ``docs/iam-policy.json``).
"""

from __future__ import annotations

from typing import Any

from desimirror.errors import redact
from desimirror.state.manifest import Manifest
from desimirror.storage.keys import KeyMap
from desimirror.storage.lookup import ObjectInfo, ObjectLookup
from desimirror.storage.s3client import describe_error

EXAMPLES = 10


def within(key: str, prefixes: list[str]) -> bool:
    """Whether ``key`` lies under one of the mirror's key prefixes (each ends in '/')."""
    return any(key.startswith(p) for p in prefixes) and ".." not in key.split("/")


def prune_gone(
    manifest: Manifest, keymap: KeyMap, lookup: ObjectLookup, summary: Any, *, delete: bool
) -> None:
    """Count (and with ``delete``, remove) the objects of files gone from the source.

    ``summary`` is the upload summary: ``files_gone``, ``bytes_gone``, ``files_deleted``,
    ``warnings`` are updated.
    """
    if manifest.gone_count() == 0:  # the kept count: no scan of every upload record
        return
    gone = manifest.gone_uploads()
    summary.files_gone = len(gone)
    summary.bytes_gone = sum(size for _, _, size, _, _ in gone)
    if not gone:
        return
    if not delete:
        summary.warnings.append(
            f"{len(gone):,} files mirrored earlier are gone from the source; their objects "
            "stay in the bucket (use --delete to remove them)"
        )
        return
    prefixes = keymap.list_prefixes("")
    forget: list[str] = []
    kept: list[str] = []
    for path, key, _size, etag, adopted in gone:
        if not within(key, prefixes):
            kept.append(f"{key}: outside the mirror's prefixes")
            continue
        if adopted:
            kept.append(f"{key}: adopted, not written by this mirror")
            continue
        info = lookup.head(key, checksums=False)
        if info is None:
            forget.append(path)  # already gone
            continue
        if not isinstance(info, ObjectInfo):
            kept.append(f"{key}: could not be checked")
            continue
        if etag and info.etag != etag:
            kept.append(f"{key}: replaced since it was sent (ETag differs)")
            continue
        try:
            lookup.client.delete_object(Bucket=lookup.bucket, Key=key)
        except Exception as exc:
            text, _ = describe_error(exc)
            kept.append(f"{key}: {text}")
            continue
        forget.append(path)
        summary.files_deleted += 1
    with manifest.atomic():
        manifest.forget_uploads(forget)
    forgotten = set(forget)
    summary.files_gone = len(gone) - len(forgotten)
    summary.bytes_gone = sum(s for p, _, s, _, _ in gone if p not in forgotten)
    for text in kept[:EXAMPLES]:
        summary.warnings.append(redact(f"not deleted: {text}"))
