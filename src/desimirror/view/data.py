"""What the page shows, as JSON-ready dicts: the totals (exactly ``status --json``), the
throughput per minute and per run, one directory level of the tree with the state of
everything below each child, and the failures. The server sends these one at a time; the
HTML export embeds a snapshot of them."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from desimirror.pipeline.status import mirror_status
from desimirror.state import treeview
from desimirror.state.manifest import Manifest
from desimirror.storage.health import health_text, validation_text
from desimirror.storage.keys import KeyMap

#: At most this many children of one directory are sent; the rest are summed as one.
CHILDREN_SHOWN = 300
#: Throughput points: per minute, coarser when the upload records span longer.
MAX_POINTS = 1500


def summary(manifest: Manifest) -> dict[str, Any]:
    """The status report, the upload runs and what they sent per interval."""
    status = mirror_status(manifest)
    runs = treeview.upload_runs(manifest)
    step = 60
    series = treeview.sent_per_interval(manifest, step)
    while len(series) > MAX_POINTS:
        step *= 4
        series = treeview.sent_per_interval(manifest, step)
    store = status.get("store") or {}
    health = health_text(store["health"]) if store.get("health") else None
    validation = validation_text(store["validation"]) if store.get("validation") else None
    return {
        "generated": time.time(),
        "status": status,
        "store_text": [text for text in (health, validation) if text],
        "runs": [run._asdict() for run in runs],
        "throughput": {
            "step": step,
            "points": [
                {"t": t, "files": files, "bytes": nbytes, "run": _run_at(runs, t, step)}
                for t, files, nbytes in series
            ],
        },
    }


def _run_at(runs: list[treeview.Run], t: float, step: int) -> int | None:
    """The upload run whose span overlaps the interval starting at ``t``, latest first."""
    for run in reversed(runs):
        end = run.finished if run.finished is not None else time.time()
        if run.started < t + step and t <= end:
            return run.id
    return None


def keymap(manifest: Manifest) -> KeyMap | None:
    """The pinned bucket layout (prefix and remaps), None before the first upload."""
    pinned = manifest.get_meta("target")
    if not pinned:
        return None
    target = json.loads(pinned)
    return KeyMap.build(target["prefix"], target.get("remap", []))


def tree(
    manifest: Manifest, path: str, layout: KeyMap | None, *, quick: bool = False
) -> dict[str, Any] | None:
    """One directory level: its children by size with their states, the breadcrumbs, and
    the key each child lands under when a remap moves it. None if ``path`` is not a
    directory of the tree. ``quick``: sizes only (no file counts, no states), from one
    index lookup, for the page to draw while the states below are summed."""
    entry = manifest.get(path)
    if entry is None or entry.kind != "dir":
        return None
    if quick:
        found = [treeview.Child(n, k, 0, b, {}) for n, k, b in treeview.sizes(manifest, path)]
    else:
        found = treeview.children(manifest, path)
    shown, rest = found[:CHILDREN_SHOWN], found[CHILDREN_SHOWN:]
    children = [_child(path, child, layout) for child in shown]
    return {
        "path": path,
        "crumbs": _crumbs(path),
        "key": layout.key(path) if layout else None,
        "remaps": [{"source": s, "destination": d} for s, d in layout.rules] if layout else [],
        "children": children,
        "more": _summed(rest) if rest else None,
        "quick": quick,
    }


def _child(parent: str, child: treeview.Child, layout: KeyMap | None) -> dict[str, Any]:
    path = f"{parent}/{child.name}" if parent else child.name
    key = layout.key(path) if layout else None
    remapped = layout is not None and key != f"{layout.prefix}/{path}"
    return {
        "name": child.name,
        "path": path,
        "kind": child.kind,
        "files": child.files,
        "bytes": child.bytes,
        "states": {state: list(v) for state, v in sorted(child.states.items())},
        "key": key,
        "remapped": remapped,
    }


def _summed(rest: list[treeview.Child]) -> dict[str, Any]:
    states: dict[str, list[int]] = {}
    for child in rest:
        for state, (files, nbytes) in child.states.items():
            total = states.setdefault(state, [0, 0])
            total[0] += files
            total[1] += nbytes
    return {
        "count": len(rest),
        "files": sum(c.files for c in rest),
        "bytes": sum(c.bytes for c in rest),
        "states": dict(sorted(states.items())),
    }


def _crumbs(path: str) -> list[dict[str, str]]:
    crumbs = [{"name": "(root)", "path": ""}]
    parts = path.split("/") if path else []
    for i, part in enumerate(parts):
        crumbs.append({"name": part, "path": "/".join(parts[: i + 1])})
    return crumbs


def failures(
    manifest: Manifest,
    *,
    reason: str | None = None,
    text: str = "",
    under: str = "",
    limit: int = 200,
) -> dict[str, Any]:
    """The files not mirrored that match, newest first, with their last error."""
    count, rows = treeview.failures(manifest, reason=reason, text=text, under=under, limit=limit)
    return {"count": count, "failures": [row._asdict() for row in rows]}


def snapshot(manifest: Manifest, *, depth: int = 3, max_dirs: int = 2000) -> dict[str, Any]:
    """Everything the export shows: the summary, the tree down to ``depth`` levels below
    the root (at most ``max_dirs`` directories, the largest first at each level) and the
    newest failures, to be browsed with no server."""
    top = summary(manifest)
    layout = keymap(manifest)
    trees: dict[str, Any] = {}
    queue: deque[tuple[str, int]] = deque([("", 0)])
    while queue and len(trees) < max_dirs:
        path, level = queue.popleft()
        level_tree = tree(manifest, path, layout)
        if level_tree is None:
            continue
        trees[path] = level_tree
        if level < depth:
            queue.extend(
                (c["path"], level + 1) for c in level_tree["children"] if c["kind"] == "dir"
            )
    return {**top, "trees": trees, "depth": depth, "failures": failures(manifest, limit=1000)}
