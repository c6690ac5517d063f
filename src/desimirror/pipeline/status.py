"""Where a mirror stands, read from the state db alone (safe while an upload runs)."""

from __future__ import annotations

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
    subdir = manifest.get_meta("plan_subdir") or ""
    totals = manifest.totals(subdir)
    failures = manifest.failure_counts()
    examples = [
        {"path": p, "reason": r, "error": e, "attempts": a}
        for p, r, e, a in manifest.recent_failures(FAILURE_EXAMPLES)
    ]
    runs = manifest.upload_run_totals()
    average = runs.bytes / runs.seconds if runs.seconds > 0 else 0.0
    latest = throughput(runs.last_bytes, runs.last_seconds, totals["pending_bytes"])
    # as of the last upload run: recomputing it here would cost a query per batch
    batches_total, batches_done = manifest.batch_counts()
    crawl = manifest.last_crawl()
    workers = [
        {
            "worker": worker,
            "files": files,
            "bytes": nbytes,
            "bytes_per_second": round(
                throughput(nbytes, runs.last_seconds, None).bytes_per_second, 1
            ),
        }
        for worker, files, nbytes in manifest.latest_run_workers()
    ]
    proofs = manifest.proof_counts()
    adopted = manifest.adopted_count()
    gone = manifest.gone_count()
    published = manifest.claim_count()
    store = {
        "health": manifest.store_note("health"),
        "validation": manifest.store_note("validation"),
    }
    return {
        "db": str(manifest.path),
        "root": manifest.root or manifest.root_name,
        "target": manifest.pinned_target(),
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
        "upload_runs": runs.count,
        "partial_tree": manifest.partial_tree_warning(),
        "bytes_per_second": round(latest.bytes_per_second, 1),
        "eta_seconds": None if latest.eta_seconds is None else round(latest.eta_seconds),
        "bytes_per_second_all_runs": round(average, 1),
        "workers": workers,
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
