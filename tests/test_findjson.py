"""find.json: the original's files load, round-trip byte for byte, and bad ones are refused."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import desimirror.pipeline.findjson as treejson
from desimirror.errors import StateError, UsageError
from desimirror.pipeline.findjson import (
    export_tree_json,
    import_tree_json,
    iter_tree_json,
    write_tree_json,
)
from desimirror.state import treetallies
from desimirror.state.manifest import Manifest
from helpers import SHARED, assert_clean_error, run_cli

EDR = SHARED / "data" / "edr-calibnight-find.json"
needs_edr = pytest.mark.skipif(not EDR.exists(), reason="the EDR sample is not here")


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    with Manifest.open(tmp_path / "mirror.db", create=True) as m:
        yield m


def dump(tree: list) -> str:
    return json.dumps(tree, separators=(",", ":")) + "\n"


def load(tmp_path: Path, tree: list | str, manifest: Manifest, **kw):
    path = tmp_path / "find.json"
    path.write_text(tree if isinstance(tree, str) else dump(tree))
    return import_tree_json(path, manifest, **kw)


def export(manifest: Manifest) -> str:
    out = io.StringIO()
    write_tree_json(manifest, out)
    return out.getvalue()


SMALL = [
    "rel",
    0,
    36,
    ["weird", -1, 0],
    ["a", 0, 30, ["b", 0, 0], ["f", 1, 30]],
    ['new\nline \u00fc "q" \\', 0, 0],
    ["x.fits", 1, 6],
]


@needs_edr
def test_edr_sample_round_trips_byte_for_byte(tmp_path: Path, manifest: Manifest) -> None:
    original = EDR.read_bytes()
    assert original.endswith(b"]\n")
    summary = import_tree_json(EDR, manifest)
    assert (summary.entries, summary.bytes, summary.errors) == (13003, 131896668454, 0)
    assert summary.kinds == {"dir": 109, "file": 12894}
    assert not summary.warnings
    assert manifest.root is None
    assert manifest.root_name == "calibnight"
    assert manifest.get("20201214/badcolumns-b0-20201214.csv").size == 33
    assert manifest.get("20201214/badcolumns-b0-20201214.csv").mtime_ns is None
    out = tmp_path / "out.json"
    assert export_tree_json(manifest, out) == 13003
    assert out.read_bytes() == original


@needs_edr
def test_edr_round_trip_through_the_command(tmp_path: Path) -> None:
    db, out = tmp_path / "m.db", tmp_path / "out.json"
    proc = run_cli("crawl", "--from-json", str(EDR), "--db", str(db), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "imported calibnight: 13,003 entries" in proc.stdout
    assert "132 GB" in proc.stdout
    assert out.read_bytes() == EDR.read_bytes()
    report = json.loads(run_cli("crawl", "--from-json", str(EDR), "--db", str(db), "--json").stdout)
    assert report["source"] == "json"
    assert report["entries"] == 13003
    assert report["vanished"] == 0


def test_small_tree_round_trip_with_unknowns_and_odd_names(
    tmp_path: Path, manifest: Manifest
) -> None:
    summary = load(tmp_path, SMALL, manifest)
    assert summary.kinds == {"dir": 4, "file": 2, "other": 1}
    assert manifest.get("weird").kind == "other"
    assert manifest.get('new\nline \u00fc "q" \\').kind == "dir"
    assert export(manifest) == dump(SMALL)


def test_reader_is_incremental_and_tolerates_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk boundaries anywhere, indented files (as in the seed README) read the same."""
    expected = list(iter_tree_json(io.StringIO(dump(SMALL))))
    assert expected[:3] == [("rel", 0, 36, False), ("weird", -1, 0, True), ("a", 0, 30, False)]
    assert expected[-1] is None
    assert len(expected) == 7 + 2  # one per node, and one leaving each of rel and a
    for chunk in (1, 2, 3, 7, 64):
        monkeypatch.setattr(treejson, "_READ_CHARS", chunk)
        for text in (dump(SMALL), json.dumps(SMALL, indent=2) + "\n\n"):
            assert list(iter_tree_json(io.StringIO(text))) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ('["r",0,1,["a",1,1]', "truncated"),
        ('["r",0,1,["a",1,1]]]', "stray"),
        ('["r",0,1,["a",1,1]] x', "unexpected input"),
        ('["r",0,1["a",1,1]]', "bad separator"),
        ('["r",0,1,,["a",1,1]]', "unexpected input"),
        ('["r",0,1]["s",0,1]', "bad separator"),
        ('{"r": 1}', "unexpected input"),
        ('["r",0,1,["a",1,1,["b",1,1]]]', "has children but is a file"),
        ('["r",0,1,["a",2,1]]', "unknown node type 2"),
        ('["r",0,1,["a",1,-1]]', "negative size"),
        ('["r",1,1]', "must be a directory"),
        ('["r",0,1,["bad\\q",1,1]]', "bad name"),
    ],
)
def test_bad_files_are_refused(
    tmp_path: Path, manifest: Manifest, text: str, fragment: str
) -> None:
    with pytest.raises(UsageError, match=fragment):
        load(tmp_path, text, manifest)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "/etc", "../../etc", "nul\0"])
def test_unsafe_names_are_refused_and_nothing_is_written(
    tmp_path: Path, manifest: Manifest, name: str
) -> None:
    load(tmp_path, ["rel", 0, 1, ["keep", 1, 1]], manifest)
    before = manifest.conn.execute("SELECT * FROM entries ORDER BY path").fetchall()
    tree = ["rel", 0, 3, ["a", 0, 1, ["z", 1, 1]], ["b", 0, 2, [name, 1, 2]]]
    with pytest.raises(UsageError, match="unsafe name"):
        load(tmp_path, tree, manifest)
    assert manifest.conn.execute("SELECT * FROM entries ORDER BY path").fetchall() == before
    errors = manifest.conn.execute("SELECT path, error FROM crawl_errors").fetchall()
    assert len(errors) == 1
    assert "import failed" in errors[0][1]


def test_a_first_import_bad_half_way_leaves_no_entry(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first import commits its rows in chunks: a bad node after some were committed
    takes them all back out, and the db is as before, with the failure recorded."""
    monkeypatch.setattr(treejson, "CHUNK_ROWS", 2)
    good = [[f"f{i}", 1, 1] for i in range(9)]
    with pytest.raises(UsageError, match="unsafe name"):
        load(tmp_path, ["rel", 0, 10, ["a", 0, 9, *good], ["..", 1, 1]], manifest)
    assert manifest.conn.execute("SELECT count(*) FROM entries").fetchone() == (0,)
    errors = manifest.conn.execute("SELECT path, error FROM crawl_errors").fetchall()
    assert len(errors) == 1
    assert "import failed" in errors[0][1]
    assert manifest.unfinished_crawl() is not None
    summary = load(tmp_path, ["rel", 0, 9, ["a", 0, 9, *good]], manifest)  # then a good one
    assert (summary.files, summary.bytes) == (9, 9)
    assert manifest.get("a").size == 9
    assert manifest.unfinished_crawl() is None
    # the tree's counts, from the sums the import made as it read, equal a recount
    assert treetallies.kept(manifest.conn) == treetallies.scan(manifest.conn)
    assert treetallies.of(manifest.conn, "a") == {"pending": (9, 9)}


_KILLED_MID_IMPORT = """
import os, signal, sqlite3, sys, time
import desimirror.pipeline.crawl.rowwriter as rowwriter
import desimirror.pipeline.findjson as findjson
from desimirror.state.manifest import Manifest
findjson.CHUNK_ROWS = 1000
handed = []
put = rowwriter.RowWriter.put
def put_then_die(self, *batch):
    put(self, *batch)
    handed.append(1)
    if len(handed) == 3:  # once some rows are committed the node goes down: both processes
        db = sqlite3.connect(sys.argv[2], timeout=30)
        deadline = time.monotonic() + 30
        while not db.execute("SELECT count(*) FROM entries").fetchone()[0]:
            assert time.monotonic() < deadline, "no rows committed"
            time.sleep(0.02)
        os.kill(self.sink.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
rowwriter.RowWriter.put = put_then_die
with Manifest.open(sys.argv[2], create=True) as m:
    findjson.import_tree_json(sys.argv[1], m)
"""


def test_a_first_import_killed_mid_way_is_refused_then_run_again(tmp_path: Path) -> None:
    """The importing process and its writer are killed (a node going down) after some
    chunks are committed: the commands that need the whole tree refuse the db, and the
    same import run again completes it, index and counts included."""
    dirs = [[f"d{d}", 0, 1000 * d, *[[f"f{i:04}", 1, d] for i in range(1000)]] for d in range(5)]
    source = tmp_path / "find.json"
    source.write_text(dump(["rel", 0, 10000, *dirs]))
    db = tmp_path / "m.db"
    script = [sys.executable, "-c", _KILLED_MID_IMPORT, str(source), str(db)]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Manifest.open(db) as m:
        assert 0 < m.conn.execute("SELECT count(*) FROM entries").fetchone()[0] < 5006
        assert m.unfinished_crawl() is not None
    status = run_cli("status", "--db", str(db))
    assert "did not finish" in status.stdout + status.stderr
    assert_clean_error(run_cli("plan", "--db", str(db)), "refuses a partial tree")
    proc = run_cli("crawl", "--from-json", str(source), "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["entries"], report["files"], report["bytes"]) == (5006, 5000, 10000)
    with Manifest.open(db) as m:
        assert m.unfinished_crawl() is None
        assert [m.get(f"d{d}").size for d in range(5)] == [1000 * d for d in range(5)]
        indexes = m.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert "entries_by_parent" in {name for (name,) in indexes}
        assert treetallies.kept(m.conn) == treetallies.scan(m.conn)


@pytest.mark.parametrize("name", ["..", "a/b", ""])
def test_unsafe_root_names_are_refused(tmp_path: Path, manifest: Manifest, name: str) -> None:
    with pytest.raises(UsageError, match="unsafe name"):
        load(tmp_path, [name, 0, 0], manifest)
    assert manifest.root_name is None


def test_undecodable_and_duplicate_names_are_skipped(tmp_path: Path, manifest: Manifest) -> None:
    text = (
        '["rel",0,9,["d",0,4,["x",1,4]],["d",0,4,["y",1,4]],'
        '["bad\\udcff",0,1,["z",1,1]],["ok",1,0]]\n'
    )
    summary = load(tmp_path, text, manifest)
    assert summary.errors == 2
    assert [p for p, _ in summary.error_examples] == ["d", "bad\\udcff"]
    assert "not valid UTF-8" in summary.error_examples[1][1]
    assert [e.path for e in manifest.iter_uploadables()] == ["d/x", "ok"]
    assert manifest.get("").size == 4  # recomputed: what was skipped is not counted


def test_sizes_that_do_not_add_up_are_recomputed(tmp_path: Path, manifest: Manifest) -> None:
    summary = load(tmp_path, ["rel", 0, 99, ["a", 0, 5, ["f", 1, 3]]], manifest)
    assert summary.warnings
    assert "2 directory sizes" in summary.warnings[0]
    assert export(manifest) == dump(["rel", 0, 3, ["a", 0, 3, ["f", 1, 3]]])


def test_reimport_replaces_the_tree(tmp_path: Path, manifest: Manifest) -> None:
    load(tmp_path, ["rel", 0, 3, ["a", 1, 1], ["b", 1, 2]], manifest)
    summary = load(tmp_path, ["rel", 0, 5, ["b", 1, 2], ["c", 1, 3]], manifest)
    assert summary.vanished == 1
    assert [e.path for e in manifest.iter_uploadables()] == ["b", "c"]


def test_root_binding(tmp_path: Path, manifest: Manifest) -> None:
    here = tmp_path / "rel"
    here.mkdir()
    load(tmp_path, ["rel", 0, 0], manifest, root=str(here))
    assert (manifest.root, manifest.root_name) == (str(here), "rel")
    with pytest.raises(StateError):
        load(tmp_path, ["rel", 0, 0], manifest)  # same name, but no root: another mirror
    with pytest.raises(StateError):
        load(tmp_path, ["other", 0, 0], manifest, root=str(here))


def test_command_binds_root_and_refuses_bad_input(tmp_path: Path) -> None:
    tree = tmp_path / "find.json"
    tree.write_text(dump(["rel", 0, 1, ["f", 1, 1]]))
    here = tmp_path / "rel"
    here.mkdir()
    db = tmp_path / "m.db"
    proc = run_cli(
        "crawl", "--from-json", str(tree), "--db", str(db), "--root", "rel", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    with Manifest.open(db) as manifest:
        assert manifest.root == str(here)
    assert_clean_error(
        run_cli("crawl", "--from-json", str(tmp_path / "nope.json"), "--db", str(db)),
        "no such file",
    )
    bad = tmp_path / "bad.json"
    bad.write_text('["rel",0,1,["..",1,1]]\n')
    proc = run_cli("crawl", "--from-json", str(bad), "--db", str(db), "--root", str(here))
    assert_clean_error(proc, "unsafe name")
    assert proc.returncode == 2
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01 not sqlite" * 50)
    before = garbage.read_bytes()
    assert_clean_error(run_cli("crawl", "--from-json", str(tree), "--db", str(garbage)))
    assert garbage.read_bytes() == before


def test_export_needs_a_tree(manifest: Manifest) -> None:
    with pytest.raises(UsageError, match="no tree"):
        export(manifest)
    assert not sqlite3.connect(manifest.path).execute("SELECT * FROM entries").fetchall()
