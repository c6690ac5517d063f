"""One mirror, one layout: the bucket and key map a mirror's state is pinned to.

A different bucket, prefix or remap on a later run would scatter one mirror over two
layouts and make "done" meaningless, so it is refused. The endpoint is kept too (without
credentials) as the default of later runs, but is not part of the layout: one store may be
reached by several URLs (a proxy, an internal name), so another endpoint is used, and then
kept, not refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from desimirror.errors import StateError, UsageError
from desimirror.state.manifest import Manifest
from desimirror.storage.keys import KeyMap
from desimirror.storage.s3client import without_userinfo


def keymap_for(manifest: Manifest, bucket: str, prefix: str | None, remap: Sequence[str]) -> KeyMap:
    """The key map for this run's options, refused if it differs from the pinned one."""
    root_name = manifest.root_name
    if root_name is None:
        raise UsageError(f"{manifest.path} has no crawl yet: run 'desimirror crawl' first")
    keymap = KeyMap.build(prefix or root_name, remap, root=manifest.root)
    wanted = _record(bucket, keymap)
    pinned = manifest.pinned_target()
    if pinned is not None and pinned != wanted:
        raise StateError(
            f"{manifest.path} mirrors to {describe(pinned)}, not {describe(wanted)}; "
            "use another --db for another target"
        )
    return keymap


def pin(manifest: Manifest, bucket: str, keymap: KeyMap, endpoint_url: str | None) -> None:
    """Pin the layout, once the bucket is known to be reachable and writable."""
    manifest.pin_target(_record(bucket, keymap))
    if endpoint_url:
        manifest.remember_endpoint(without_userinfo(endpoint_url))


def pinned_keymap(manifest: Manifest) -> tuple[str, KeyMap]:
    """The bucket and key map the last upload pinned (for verify, publish and status)."""
    pinned = manifest.pinned_target()
    if pinned is None:
        raise UsageError(f"{manifest.path} has not been uploaded anywhere yet")
    return pinned["bucket"], KeyMap.build(pinned["prefix"], pinned["remap"])


def describe(target: dict) -> str:
    """``s3://bucket/prefix/ (remap ...)`` for a message."""
    remap = " ".join(target.get("remap", []))
    text = f"s3://{target['bucket']}/{target['prefix']}/"
    return f"{text} (remap {remap})" if remap else text


def _record(bucket: str, keymap: KeyMap) -> dict:
    return {"bucket": bucket, **keymap.describe()}
