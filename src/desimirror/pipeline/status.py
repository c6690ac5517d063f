"""Where a mirror stands, read from the state db alone (safe while an upload runs)."""

from __future__ import annotations

import json
import time

from desimirror.progress import throughput
from desimirror.state.manifest import Manifest

FAILURE_EXAMPLES = 10


def mirror_status(manifest: Manifest) -> dict[str, object]:
    """Files and bytes done and pending, failures with their last error, how the content
    of what is done was proven, batches, and the latest upload run's rate with an ETA for
    what is left at that rate.

    The rate is the latest run's (the one in progress, or the last one), computed by
    :func:`desimirror.progress.throughput` as the upload's own bar computes it, so the
    two agree while the upload runs; the average over all runs is reported beside it."""
    conn = manifest.conn
    subdir = manifest.get_meta("plan_subdir") or ""
    totals = manifest.totals(subdir)
    failures = dict(conn.execute("SELECT reason, count(*) FROM failures GROUP BY reason"))
    examples = [
        {"path": p, "reason": r, "error": e, "attempts": a}
        for p, r, e, a in conn.execute(
            "SELECT path, reason, error, attempts FROM failures ORDER BY at DESC LIMIT ?",
            (FAILURE_EXAMPLES,),
        )
    ]
    sent_bytes, busy_seconds, runs = conn.execute(
        "SELECT coalesce(sum(bytes), 0), coalesce(sum(finished - started), 0), count(*)"
        " FROM upload_runs WHERE finished IS NOT NULL"
    ).fetchone()
    average = sent_bytes / busy_seconds if busy_seconds > 0 else 0.0
    last_bytes, last_seconds = conn.execute(
        "SELECT bytes, finished - started FROM upload_runs WHERE finished IS NOT NULL"
        " ORDER BY id DESC LIMIT 1"
    ).fetchone() or (0, 0.0)
    latest = throughput(last_bytes, last_seconds, totals["pending_bytes"])
    # as of the last upload run: recomputing it here would cost a query per batch
    batches_total, batches_done = conn.execute(
        "SELECT count(*), count(completed) FROM batches"
    ).fetchone()
    crawl = conn.execute(
        "SELECT id, root, started, finished, entries, errors FROM crawls ORDER BY id DESC LIMIT 1"
    ).fetchone()
    pinned = manifest.get_meta("target")
    proofs = dict(conn.execute("SELECT coalesce(proof, 'none'), count(*) FROM uploads GROUP BY 1"))
    adopted = conn.execute("SELECT count(*) FROM uploads WHERE adopted").fetchone()[0]
    gone = len(manifest.gone_uploads())
    published = conn.execute("SELECT count(*) FROM published").fetchone()[0]
    store = {
        "health": manifest.store_note("health"),
        "validation": manifest.store_note("validation"),
    }
    return {
        "db": str(manifest.path),
        "root": manifest.root or manifest.root_name,
        "target": json.loads(pinned) if pinned else None,
        "selection": subdir or ".",
        "files": totals["files"],
        "bytes": totals["bytes"],
        "done_files": totals["files"] - totals["pending_files"],
        "done_bytes": totals["bytes"] - totals["pending_bytes"],
        "pending_files": totals["pending_files"],
        "pending_bytes": totals["pending_bytes"],
        "failed": failures,
        "failures": examples,
        "proof": proofs,
        "adopted_files": adopted,
        "gone_files": gone,
        "published_checksums": published,
        "store": store,
        "batches": batches_total,
        "batches_done": batches_done,
        "upload_runs": runs,
        "partial_tree": manifest.partial_tree_warning(),
        "bytes_per_second": round(latest.bytes_per_second, 1),
        "eta_seconds": None if latest.eta_seconds is None else round(latest.eta_seconds),
        "bytes_per_second_all_runs": round(average, 1),
        "last_crawl": None
        if crawl is None
        else {
            "id": crawl[0],
            "root": crawl[1],
            "started": crawl[2],
            "finished": crawl[3],
            "entries": crawl[4],
            "errors": crawl[5],
            "age_seconds": round(time.time() - crawl[2]),
        },
    }
