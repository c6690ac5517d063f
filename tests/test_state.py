"""The state layer on its own: schema and migrations, nested transactions, what is pending,
and whether the tree the manifest holds is whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from desimirror.errors import StateError, UsageError
from desimirror.state import schema
from desimirror.state.manifest import Entry, Manifest, UploadRecord


@pytest.fixture
def manifest(tmp_path: Path):
    with Manifest.open(tmp_path / "m.db", create=True) as m:
        yield m


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


# ---------------------------------------------------------------- schema


def test_a_new_db_has_had_every_migration(manifest: Manifest) -> None:
    assert schema.version(manifest.conn) == schema.LATEST
    assert {"ctime_ns", "ino", "dev"} <= _columns(manifest.conn, "entries")
    assert {"proof", "adopted", "ino"} <= _columns(manifest.conn, "uploads")
    tables = {r[0] for r in manifest.conn.execute("SELECT name FROM sqlite_master")}
    assert {"published", "checksum_files", "crawls", "batches"} <= tables


def _legacy_db(path: Path, *, with_proof_columns: bool) -> None:
    """A db as desimirror wrote it before migrations were numbered (user_version 0)."""
    conn = sqlite3.connect(path)
    conn.executescript(schema.BASE)
    conn.execute("INSERT INTO meta VALUES ('app', 'desimirror'), ('schema_version', '1')")
    conn.execute(
        "INSERT INTO entries (path, parent, name, kind, size, mtime_ns, crawl_id)"
        " VALUES ('a.fits', '', 'a.fits', 'file', 3, 7, 1)"
    )
    conn.execute("INSERT INTO uploads VALUES ('a.fits', 'edr/a.fits', 3, 7, 'etag', 1.0)")
    if with_proof_columns:  # an older build had already added part of migration 1 in place
        conn.execute("ALTER TABLE uploads ADD COLUMN sha256 TEXT")
        conn.execute("ALTER TABLE uploads ADD COLUMN proof TEXT")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("with_proof_columns", [False, True])
def test_an_old_db_is_migrated_in_place_keeping_its_rows(
    tmp_path: Path, with_proof_columns: bool
) -> None:
    db = tmp_path / "old.db"
    _legacy_db(db, with_proof_columns=with_proof_columns)
    with Manifest.open(db) as manifest:
        assert schema.version(manifest.conn) == schema.LATEST
        record = manifest.upload_record("a.fits")
        entry = manifest.get("a.fits")
    assert record is not None
    assert (record.etag, record.proof, record.ino) == ("etag", "none", None)
    assert entry == Entry("a.fits", "file", 3, 7)
    # an upload recorded before identities were kept stays done (compared by size, mtime)
    with Manifest.open(db) as manifest:
        crawl_id = manifest.begin_crawl("/r")
        with manifest.atomic():
            manifest.put_entries(
                crawl_id, [Entry("a.fits", "file", 3, 7, ctime_ns=1, ino=2, dev=3)]
            )
        assert manifest.pending_in([("a.fits", False)]) == []


def test_a_db_from_a_newer_desimirror_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    Manifest.open(db, create=True).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StateError, match="newer desimirror"):
        Manifest.open(db)
    assert db.read_bytes() == before


# ---------------------------------------------------------------- transactions


def _meta_value(manifest: Manifest, key: str) -> str | None:
    return manifest.get_meta(key)


def _write_then_fail(manifest: Manifest, key: str) -> None:
    with manifest.atomic():
        manifest._set_meta_raw(key, "1")
        raise RuntimeError("the block fails")


def _nested_write_then_outer_fails(manifest: Manifest) -> None:
    with manifest.atomic():
        with manifest.atomic():
            manifest._set_meta_raw("nested-then-outer-fails", "1")
        raise RuntimeError("the outer block fails")


def test_atomic_nests_as_savepoints(manifest: Manifest) -> None:
    with manifest.atomic():
        manifest._set_meta_raw("outer", "1")
        with pytest.raises(RuntimeError):
            _write_then_fail(manifest, "inner")
        with manifest.atomic():
            manifest._set_meta_raw("second", "1")
    assert _meta_value(manifest, "outer") == "1"
    assert _meta_value(manifest, "inner") is None  # rolled back alone
    assert _meta_value(manifest, "second") == "1"

    with pytest.raises(RuntimeError):
        _nested_write_then_outer_fails(manifest)
    assert _meta_value(manifest, "nested-then-outer-fails") is None
    assert not manifest.conn.in_transaction


# ---------------------------------------------------------------- what is done


def _crawled(manifest: Manifest, entry: Entry) -> None:
    crawl = manifest.begin_crawl("/src")
    with manifest.atomic():
        manifest.put_entries(crawl, [Entry("", "dir", 0), entry])
    manifest.close_crawl(crawl)


def _sent(manifest: Manifest, entry: Entry) -> None:
    record = UploadRecord(
        entry.path,
        "k/" + entry.path,
        entry.size,
        entry.mtime_ns or 0,
        "etag",
        ctime_ns=entry.ctime_ns,
        ino=entry.ino,
        dev=entry.dev,
    )
    with manifest.atomic():
        manifest.record_mirrored([record])


def test_another_identity_at_the_same_size_and_mtime_is_pending_again(
    manifest: Manifest,
) -> None:
    sent = Entry("f.fits", "file", 10, 5, ctime_ns=100, ino=42, dev=1)
    _crawled(manifest, sent)
    _sent(manifest, sent)
    assert manifest.totals()["pending_files"] == 0
    for changed in (
        Entry("f.fits", "file", 10, 5, ctime_ns=101, ino=42, dev=1),  # rewritten, touch -r
        Entry("f.fits", "file", 10, 5, ctime_ns=100, ino=43, dev=1),  # renamed over
    ):
        _crawled(manifest, changed)
        assert manifest.totals()["pending_files"] == 1
        assert [e.path for e in manifest.pending_in([("", True)])] == ["f.fits"]


def test_a_checksum_survives_a_recrawl_only_for_the_same_file(manifest: Manifest) -> None:
    first = Entry("f.fits", "file", 10, 5, sha256="ab" * 32, ctime_ns=100, ino=42, dev=1)
    _crawled(manifest, first)
    _crawled(manifest, Entry("f.fits", "file", 10, 5, ctime_ns=100, ino=42, dev=1))
    assert manifest.get("f.fits").sha256 == "ab" * 32
    _crawled(manifest, Entry("f.fits", "file", 10, 5, ctime_ns=200, ino=42, dev=1))
    assert manifest.get("f.fits").sha256 is None


# ---------------------------------------------------------------- a whole tree


def test_an_unfinished_crawl_is_refused_unless_planned_partial(manifest: Manifest) -> None:
    _crawled(manifest, Entry("f.fits", "file", 1, 1))
    assert manifest.partial_tree_warning() is None
    assert manifest.require_whole_tree("upload") is None
    crawl = manifest.begin_crawl("/src")  # never finished
    assert manifest.unfinished_crawl()[0] == crawl
    with pytest.raises(UsageError, match="did not finish"):
        manifest.require_whole_tree("upload")
    manifest.set_meta("plan_options", f'{{"partial": true, "crawl_id": {crawl}}}')
    assert "did not finish" in manifest.require_whole_tree("upload")
    manifest.close_crawl(crawl)
    assert manifest.require_whole_tree("upload") is None


def test_the_first_pinned_target_stays_and_the_endpoint_follows_the_last_run(
    manifest: Manifest,
) -> None:
    from desimirror.storage import target

    manifest.bind_root("/data/edr", "edr")
    keymap = target.keymap_for(manifest, "desidata", None, ())
    target.pin(manifest, "desidata", keymap, "http://user:secret@127.0.0.1:9000")
    assert manifest.pinned_target() == {"bucket": "desidata", "prefix": "edr", "remap": []}
    assert manifest.last_endpoint() == "http://127.0.0.1:9000"  # never the credentials
    with pytest.raises(StateError, match="mirrors to s3://desidata/edr/, not s3://other/edr/"):
        target.keymap_for(manifest, "other", None, ())
    with pytest.raises(StateError, match=r"not s3://desidata/edr/ \(remap"):
        target.keymap_for(manifest, "desidata", None, ("edr/a=edr/b",))
    target.pin(manifest, "desidata", keymap, "http://127.0.0.2:9000")
    assert manifest.last_endpoint() == "http://127.0.0.2:9000"
    assert target.pinned_keymap(manifest)[0] == "desidata"


def test_what_each_dask_worker_sent_is_kept_per_run(manifest: Manifest) -> None:
    first = manifest.begin_upload_run()
    with manifest.atomic():
        manifest.tick_upload_run(first, 3, 300, {"nid1/0": (2, 200), "nid2/0": (1, 100)})
    with manifest.atomic():
        manifest.tick_upload_run(first, 1, 50, {"nid1/0": (1, 50)})
    assert manifest.latest_run_workers() == [("nid1/0", 3, 250), ("nid2/0", 1, 100)]
    second = manifest.begin_upload_run()
    with manifest.atomic():
        manifest.tick_upload_run(second, 2, 20)  # one node: no worker counts
    assert manifest.latest_run_workers() == []
