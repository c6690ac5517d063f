"""The tree as the web view reads it (state/treeview.py): one directory level, with the state
of everything below each child, from the same definition of done that ``status`` uses."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from desimirror.state import treetallies, treeview
from desimirror.state.manifest import CHANGED, CORRUPT, FAILED, Entry, Manifest, UploadRecord


def _file(path: str, size: int, **kw) -> Entry:
    return Entry(path, "file", size, mtime_ns=7, **kw)


TREE = [
    Entry("", "dir", 0),
    Entry("spectro", "dir", 0),
    Entry("spectro/a", "dir", 0),
    _file("spectro/a/x.fits", 100),
    _file("spectro/a/y.fits", 200),
    _file("spectro/b.fits", 1000),
    Entry("target", "dir", 0),
    _file("target/t.fits", 10),
    _file("target/u.fits", 20),
    Entry("empty", "dir", 0),
    Entry("docs-link", "link", 0, link_target="/elsewhere", link_kind="outside"),
    _file("readme.txt", 5),
]


def _sent(path: str, size: int, proof: str = "sha256") -> UploadRecord:
    return UploadRecord(path, f"edr/{path}", size, 7, "etag", proof=proof)


@pytest.fixture
def manifest(tmp_path: Path):
    with Manifest.open(tmp_path / "m.db", create=True) as m:
        crawl = m.begin_crawl("/release/edr")
        with m.atomic():
            m.put_entries(crawl, TREE)
        m.close_crawl(crawl)
        with m.atomic():
            m.record_mirrored([_sent("spectro/a/x.fits", 100), _sent("target/t.fits", 10, "etag")])
            m.record_failure("spectro/b.fits", CORRUPT, "its bytes are not the published SHA-256")
            m.record_failure("target/u.fits", FAILED, "HTTP 500")
            m.record_failure("readme.txt", CHANGED, "changed since the crawl")
        yield m


def _by_name(children: list[treeview.Child]) -> dict[str, treeview.Child]:
    return {c.name: c for c in children}


def test_the_root_level_sums_each_subtree_by_state(manifest: Manifest) -> None:
    top = _by_name(treeview.children(manifest, ""))
    assert set(top) == {"spectro", "target", "empty", "docs-link", "readme.txt"}
    spectro = top["spectro"]
    assert (spectro.kind, spectro.files, spectro.bytes) == ("dir", 3, 1300)
    assert spectro.states == {"done:sha256": (1, 100), "pending": (1, 200), "corrupt": (1, 1000)}
    assert top["target"].states == {"done:etag": (1, 10), "error": (1, 20)}
    assert top["readme.txt"].states == {"changed": (1, 5)}
    # listed, with nothing uploadable in them
    assert (top["empty"].files, top["empty"].states) == (0, {})
    assert (top["docs-link"].kind, top["docs-link"].files) == ("link", 0)


def test_children_come_largest_first(manifest: Manifest) -> None:
    names = [c.name for c in treeview.children(manifest, "")]
    assert names[:3] == ["spectro", "target", "readme.txt"]


def test_the_quick_listing_gives_the_sizes_the_full_one_sums(manifest: Manifest) -> None:
    quick = treeview.sizes(manifest, "")
    full = treeview.children(manifest, "")
    assert [(c.name, c.kind, c.bytes) for c in full] == quick
    assert treeview.sizes(manifest, "spectro/a") == [
        ("y.fits", "file", 200),
        ("x.fits", "file", 100),
    ]


def test_a_deeper_level_holds_only_its_own_children(manifest: Manifest) -> None:
    spectro = _by_name(treeview.children(manifest, "spectro"))
    assert set(spectro) == {"a", "b.fits"}
    assert spectro["a"].states == {"done:sha256": (1, 100), "pending": (1, 200)}
    leaf = _by_name(treeview.children(manifest, "spectro/a"))
    assert leaf["y.fits"].states == {"pending": (1, 200)}
    assert leaf["x.fits"].kind == "file"


def test_the_levels_add_up_to_the_status_totals(manifest: Manifest) -> None:
    totals = manifest.totals()
    top = treeview.children(manifest, "")
    assert sum(c.files for c in top) == totals["files"]
    assert sum(c.bytes for c in top) == totals["bytes"]
    done = sum(v[0] for c in top for s, v in c.states.items() if s.startswith("done:"))
    assert done == totals["files"] - totals["pending_files"]


def test_a_file_changed_since_its_upload_is_not_done_again(manifest: Manifest) -> None:
    crawl = manifest.begin_crawl("/release/edr")
    with manifest.atomic():
        manifest.put_entries(crawl, [*TREE[:3], _file("spectro/a/x.fits", 101), *TREE[4:]])
    manifest.close_crawl(crawl)
    a = _by_name(treeview.children(manifest, "spectro"))["a"]
    assert a.states == {"pending": (2, 301)}


def test_objects_of_files_gone_from_the_source_are_shown_where_they_were(
    manifest: Manifest,
) -> None:
    crawl = manifest.begin_crawl("/release/edr")
    with manifest.atomic():
        manifest.put_entries(crawl, [e for e in TREE if e.path != "target/t.fits"])
    manifest.close_crawl(crawl)
    target = _by_name(treeview.children(manifest, ""))["target"]
    assert target.states["gone"] == (1, 10)
    assert target.files == 1  # the gone file is not part of the tree's totals
    inside = _by_name(treeview.children(manifest, "target"))
    assert inside["t.fits"].kind == "gone"


def test_a_directory_gone_whole_is_listed_by_its_objects(manifest: Manifest) -> None:
    crawl = manifest.begin_crawl("/release/edr")
    with manifest.atomic():
        manifest.put_entries(crawl, [e for e in TREE if not e.path.startswith("spectro/a")])
    manifest.close_crawl(crawl)
    spectro = _by_name(treeview.children(manifest, "spectro"))
    assert (spectro["a"].kind, spectro["a"].states) == ("gone", {"gone": (1, 100)})
    assert _by_name(treeview.children(manifest, ""))["spectro"].states["gone"] == (1, 100)


def test_failures_filter_by_reason_text_and_directory(manifest: Manifest) -> None:
    count, rows = treeview.failures(manifest)
    assert count == 3
    assert {r.path for r in rows} == {"spectro/b.fits", "target/u.fits", "readme.txt"}
    assert treeview.failures(manifest, reason=CORRUPT)[0] == 1
    count, rows = treeview.failures(manifest, text="http 500")
    assert (count, rows[0].path, rows[0].error) == (1, "target/u.fits", "HTTP 500")
    count, rows = treeview.failures(manifest, under="spectro")
    assert [r.path for r in rows] == ["spectro/b.fits"]
    assert treeview.failures(manifest, limit=1)[0] == 3
    assert len(treeview.failures(manifest, limit=1)[1]) == 1


def test_sent_per_interval_counts_sent_objects_not_adopted_ones(
    manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    with manifest.atomic():
        manifest.record_mirrored(
            [UploadRecord("spectro/a/y.fits", "k", 200, 7, None, adopted=True)]
        )
    for at, record in ((125.0, _sent("target/t.fits", 10)), (61.0, _sent("spectro/a/x.fits", 100))):
        monkeypatch.setattr(time, "time", lambda at=at: at)  # sent again, at a known time
        with manifest.atomic():
            manifest.record_mirrored([record])
    monkeypatch.undo()
    assert treeview.sent_per_interval(manifest, 60) == [(60, 1, 100), (120, 1, 10)]
    assert treeview.sent_per_interval(manifest, 600) == [(0, 2, 110)]
    assert treeview.sent_per_interval(manifest, 50) == [(50, 1, 100), (100, 1, 10)]  # a scan
    assert treetallies.sent_kept(manifest.conn) == treetallies.sent_scan(manifest.conn)
    with manifest.atomic():  # an object forgotten is no longer counted where it was sent
        manifest.forget_uploads(["target/t.fits"])
    assert treeview.sent_per_interval(manifest, 60) == [(60, 1, 100)]
    assert treetallies.sent_kept(manifest.conn) == treetallies.sent_scan(manifest.conn)


def test_a_read_only_view_cannot_write_and_sees_other_writers(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Manifest.open(db, create=True).close()
    with Manifest.open(db) as viewer:
        treeview.read_only(viewer)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            viewer.set_meta("x", "y")
        before = treeview.change_token(viewer)
        assert treeview.change_token(viewer) == before
        with Manifest.open(db) as writer:
            writer.set_meta("x", "y")
        assert treeview.change_token(viewer) != before


def test_gone_objects_directly_in_a_directory_and_below_are_each_counted_once(
    manifest: Manifest,
) -> None:
    """A directory "a.b" sorts after "a", its range before a/'s: each is counted once."""
    extra = [Entry("spectro/a.b", "dir", 0), _file("spectro/a.b/z.fits", 7), _file("spectro/c", 3)]
    crawl = manifest.begin_crawl("/release/edr")
    with manifest.atomic():
        manifest.put_entries(crawl, [*TREE, *extra])
    manifest.close_crawl(crawl)
    with manifest.atomic():
        manifest.record_mirrored([_sent("spectro/a.b/z.fits", 7), _sent("spectro/c", 3)])
    crawl = manifest.begin_crawl("/release/edr")
    with manifest.atomic():  # both gone from the source; their objects remain
        manifest.put_entries(crawl, TREE)
    manifest.close_crawl(crawl)
    spectro = _by_name(treeview.children(manifest, "spectro"))
    assert (spectro["a.b"].kind, spectro["a.b"].states) == ("gone", {"gone": (1, 7)})
    assert (spectro["c"].kind, spectro["c"].states) == ("gone", {"gone": (1, 3)})
    assert spectro["a"].states == {"done:sha256": (1, 100), "pending": (1, 200)}
    assert _by_name(treeview.children(manifest, ""))["spectro"].states["gone"] == (2, 10)
