"""The running counts status reads (state/tallies.py), and the per-directory ones the web
view reads (state/treetallies.py), always equal a full recount.

status must answer in well under 2 s at ten million files, so it reads counts kept as
uploads are recorded instead of joining entries with uploads; these tests replay the
operations that change what is done or pending and compare the kept counts with a scan
after each one.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from desimirror.pipeline.status import mirror_status
from desimirror.state import schema, tallies, treetallies, treeview
from desimirror.state.manifest import (
    FAILURE_REASONS,
    OPEN_FAILURES,
    Entry,
    Manifest,
    UploadRecord,
)


@pytest.fixture
def manifest(tmp_path: Path):
    with Manifest.open(tmp_path / "m.db", create=True) as m:
        yield m


def _crawl(manifest: Manifest, files: dict[str, tuple[int, int]], links: tuple = ()) -> None:
    """A crawl that sees ``files`` (path -> (size, mtime)) under dirs a/ and b/."""
    crawl = manifest.begin_crawl("/src")
    rows = [Entry("", "dir", 0), Entry("a", "dir", 0), Entry("b", "dir", 0)]
    rows += [Entry(p, "file", s, m, ino=1, ctime_ns=m, dev=1) for p, (s, m) in files.items()]
    rows += [Entry(p, "link", 0, 1, link_target="x", link_kind="file") for p in links]
    with manifest.atomic():
        manifest.put_entries(crawl, rows)
    manifest.close_crawl(crawl)


def _record(manifest: Manifest, path: str, size: int, mtime: int, proof: str, **kw) -> None:
    record = UploadRecord(
        path, "k/" + path, size, mtime, "e", proof=proof, ino=1, ctime_ns=mtime, dev=1, **kw
    )
    with manifest.atomic():
        manifest.record_mirrored([record])


def _assert_kept_equals_scan(manifest: Manifest, scope: str = "") -> None:
    kept = tallies.read(manifest.conn, scope)
    assert kept is not None, "no running counts kept"
    scanned = tallies.scan(manifest.conn, scope)
    assert {k: v for k, v in kept.items() if v} == {k: v for k, v in scanned.items() if v}
    assert manifest.totals(scope) == manifest.scanned_totals(scope)
    _assert_tree_equals_scan(manifest)


def _assert_tree_equals_scan(manifest: Manifest) -> None:
    """Every directory's kept states equal a recount, and the root's agree with status."""
    kept = treetallies.kept(manifest.conn)
    assert kept == {k: v for k, v in treetallies.scan(manifest.conn).items() if v != [0, 0]}
    assert treetallies.sent_kept(manifest.conn) == treetallies.sent_scan(manifest.conn)
    root = treetallies.of(manifest.conn, "")
    failed = {state: files for state, (files, _) in root.items() if state in FAILURE_REASONS}
    assert failed == manifest.failure_counts()
    open_failures = f"SELECT f.reason, count(*){OPEN_FAILURES} GROUP BY 1"
    assert failed == dict(manifest.conn.execute(open_failures))
    totals = manifest.scanned_totals()
    assert sum(f for s, (f, _) in root.items() if s != "gone") == totals["files"]
    done = sum(f for s, (f, _) in root.items() if s.startswith("done:"))
    assert done == totals["files"] - totals["pending_files"]


def test_kept_counts_equal_a_recount_through_crawl_upload_failure_and_recrawl(
    manifest: Manifest,
) -> None:
    rng = random.Random(7)
    files = {f"{d}/f{i:03d}.fits": (rng.randrange(1, 1000), 1) for d in "ab" for i in range(60)}
    _crawl(manifest, files, links=("a/link.fits",))
    _assert_kept_equals_scan(manifest)
    assert manifest.totals()["pending_files"] == 121

    paths = sorted(files)
    for path in paths[:50]:  # uploads, some adopted, some by size
        size, mtime = files[path]
        proof = rng.choice(["sha256", "etag", "size"])
        _record(manifest, path, size, mtime, proof, adopted=proof == "size")
    _record(manifest, paths[0], *files[paths[0]], "composite")  # recorded twice
    _assert_kept_equals_scan(manifest)
    assert manifest.totals()["pending_files"] == 71

    with manifest.atomic():  # failures change no count of done or pending
        manifest.record_failure(paths[60], "error", "boom")
        manifest.record_failure(paths[61], "corrupt", "bad bytes")
    _assert_kept_equals_scan(manifest)

    with manifest.atomic():  # verify found objects missing: back to pending
        assert manifest.forget_uploads(paths[10:15]) == 5
    _assert_kept_equals_scan(manifest)

    # a re-crawl: some files changed (size, mtime), some gone, some new
    changed = dict(files)
    for path in paths[20:25]:
        changed[path] = (files[path][0] + 1, 2)
    for path in paths[30:35]:
        changed[path] = (files[path][0], 3)
    for path in paths[40:45]:
        del changed[path]
    changed["b/new.fits"] = (5, 1)
    _crawl(manifest, changed)
    _assert_kept_equals_scan(manifest)
    assert manifest.gone_count() == 5
    assert manifest.totals()["files"] == len(changed)

    for path in paths[20:25]:  # the changed files uploaded again
        _record(manifest, path, *changed[path], "sha256")
    with manifest.atomic():  # --delete removed the objects of the gone files
        manifest.forget_uploads(paths[40:45])
    _assert_kept_equals_scan(manifest)
    assert manifest.gone_count() == 0
    report = mirror_status(manifest)
    assert report["pending_files"] == manifest.scanned_totals()["pending_files"]
    assert report["proof"] == dict(
        manifest.conn.execute("SELECT proof, count(*) FROM uploads GROUP BY proof")
    )


def test_a_published_checksum_that_contradicts_an_upload_makes_it_pending(
    manifest: Manifest,
) -> None:
    _crawl(manifest, {"a/x.fits": (3, 1), "a/y.fits": (4, 1)})
    _record(manifest, "a/x.fits", 3, 1, "sha256", sha256="11" * 32)
    assert manifest.totals()["pending_files"] == 1
    with manifest.atomic():
        manifest.replace_listing("a/x.sha256sum", 10, 1, {"a/x.fits": "22" * 32}, 0)
    manifest.apply_published()
    _assert_kept_equals_scan(manifest)
    assert manifest.totals()["pending_files"] == 2
    assert manifest.claim_count() == 1


def test_counts_follow_the_plans_selection(manifest: Manifest) -> None:
    _crawl(manifest, {"a/x.fits": (3, 1), "b/y.fits": (4, 1)})
    manifest.replace_plan([(3, 1, [("a", True)])], meta={"plan_subdir": "a"})
    _assert_kept_equals_scan(manifest, "a")
    _record(manifest, "a/x.fits", 3, 1, "sha256")
    _record(manifest, "b/y.fits", 4, 1, "sha256")  # outside the selection
    _assert_kept_equals_scan(manifest, "a")
    assert manifest.totals("a") == {"files": 1, "bytes": 3, "pending_files": 0, "pending_bytes": 0}
    assert manifest.totals("")["pending_files"] == 0  # another selection: scanned


def test_while_a_crawl_runs_readers_count_for_themselves(manifest: Manifest) -> None:
    _crawl(manifest, {"a/x.fits": (3, 1)})
    crawl = manifest.begin_crawl("/src")
    with manifest.atomic():
        manifest.put_entries(crawl, [Entry("a/z.fits", "file", 9, 1)])
    assert tallies.read(manifest.conn, "") is None
    assert manifest.totals()["files"] == 2  # from a scan, not a stale count


def test_a_db_from_before_the_counts_is_scanned_then_counted_once(manifest: Manifest) -> None:
    _crawl(manifest, {"a/x.fits": (3, 1), "a/y.fits": (4, 1)})
    _record(manifest, "a/x.fits", 3, 1, "etag")
    with manifest.atomic() as conn:  # as migration 3 leaves an older db: nothing kept
        conn.execute("DELETE FROM tallies")
    _record(manifest, "a/y.fits", 4, 1, "etag")  # recorded while nothing is kept
    assert tallies.read(manifest.conn, "") is None
    assert manifest.totals()["pending_files"] == 0  # from a scan
    manifest.ensure_tallies("")  # what an upload does first
    _assert_kept_equals_scan(manifest)
    assert manifest.proof_counts() == {"etag": 2}


def test_a_failure_counts_only_while_its_file_is_not_done(manifest: Manifest) -> None:
    """status, the view's cards and its tree count the same failures: of files not done."""
    _crawl(manifest, {"a/x.fits": (3, 1), "a/y.fits": (4, 1)})
    with manifest.atomic():
        manifest.record_failure("a/x.fits", "error", "HTTP 500")
        manifest.record_failure("a/y.fits", "error", "HTTP 503")
    _record(manifest, "a/y.fits", 4, 1, "sha256")  # mirrored since: its failure is history
    with manifest.atomic():  # a failure recorded for a file that is done changes nothing
        manifest.record_failure("a/y.fits", "mismatch", "late")
    _assert_kept_equals_scan(manifest)
    assert manifest.failure_counts() == {"error": 1}
    assert [p for p, *_ in manifest.recent_failures(10)] == ["a/x.fits"]
    assert treeview.failures(manifest)[0] == 1
    assert mirror_status(manifest)["failed"] == {"error": 1}
    a = {c.name: c for c in treeview.children(manifest, "")}["a"]
    assert a.states == {"error": (1, 3), "done:sha256": (1, 4)}


def test_the_migration_counts_the_tree_of_an_existing_db(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with Manifest.open(db, create=True) as m:
        _crawl(m, {"a/x.fits": (3, 1), "b/c/y.fits": (4, 1)})
        _record(m, "b/c/y.fits", 4, 1, "etag")
        with m.atomic() as conn:  # as a db of schema 3 has it: no such table
            conn.execute("DROP TABLE tree_tallies")
            conn.execute("PRAGMA user_version = 3")
    with Manifest.open(db) as m:
        assert schema.version(m.conn) == schema.LATEST
        _assert_tree_equals_scan(m)
        assert treetallies.of(m.conn, "b") == {"done:etag": (1, 4)}
        assert treetallies.below(m.conn, "") == {
            "a": {"pending": (1, 3)},
            "b": {"done:etag": (1, 4)},
        }
