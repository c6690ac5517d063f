"""The crawler: what lands in the manifest, how errors are kept, how the CLI fails."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

import desimirror.pipeline.crawl
from desimirror.errors import StateError, UsageError
from desimirror.pipeline.crawl import crawl, resolve_root, scan_directory
from desimirror.pipeline.crawl.tasklimit import TaskLimit
from desimirror.state.manifest import Entry, Manifest
from helpers import SHARED, assert_clean_error, run_cli

FIND_PY = SHARED / "peers" / "desi-aws" / "find.py"
ODD_NAMES = [
    "with space.fits",
    'quote\'s "double".txt',
    "hash#tag",
    "ünïcødé ελληνικά 日本.txt",
    "new\nline",
    "back\\slash",
    "-leading-dash",
    "tab\tname",
]


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree with every kind of entry a crawler has to classify."""
    root = tmp_path / "edr"
    write(root / "a" / "one.fits", 100)
    write(root / "a" / "b" / "two.fits", 20)
    write(root / "top.txt", 3)
    (root / "empty").mkdir()
    os.symlink("a/one.fits", root / "link-file")
    os.symlink("a", root / "link-dir")
    os.symlink("missing", root / "link-broken")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    write(tmp_path / "outside.fits", 7)
    os.symlink("../outside.fits", root / "link-outside")
    os.symlink(str(root / "a" / "b"), root / "a" / "abs-link-dir")
    os.mkfifo(root / "fifo")
    return root


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    with Manifest.open(tmp_path / "mirror.db", create=True) as m:
        yield m


def rows(manifest: Manifest) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    stack = [""]
    root = manifest.get("")
    if root is not None:
        found[""] = root
    while stack:
        for entry in manifest.children(stack.pop()):
            found[entry.path] = entry
            if entry.kind == "dir":
                stack.append(entry.path)
    return found


def test_kinds_sizes_mtimes_and_links(tree: Path, manifest: Manifest) -> None:
    summary = crawl(tree, manifest, workers=4)
    got = rows(manifest)
    assert set(got) == {
        "",
        "a",
        "a/one.fits",
        "a/b",
        "a/b/two.fits",
        "a/abs-link-dir",
        "top.txt",
        "empty",
        "link-file",
        "link-dir",
        "link-broken",
        "loop1",
        "loop2",
        "link-outside",
        "fifo",
    }
    one = got["a/one.fits"]
    assert (one.kind, one.size, one.mtime_ns) == (
        "file",
        100,
        os.lstat(tree / "a/one.fits").st_mtime_ns,
    )
    assert got["a/b"].mtime_ns == os.lstat(tree / "a/b").st_mtime_ns
    link = got["link-file"]
    assert (link.kind, link.link_kind, link.link_target) == ("link", "file", "a/one.fits")
    assert (link.size, link.mtime_ns) == (100, one.mtime_ns)  # the target's: what is uploaded
    assert got["link-dir"].link_kind == "dir"
    assert got["a/abs-link-dir"].link_kind == "dir"
    assert got["link-broken"].link_kind == "broken"
    assert got["loop1"].link_kind == got["loop2"].link_kind == "broken"
    assert got["link-outside"].link_kind == "outside"
    assert got["fifo"].kind == "other"
    assert got["empty"].kind == "dir"
    assert [e.path for e in manifest.children("empty")] == []
    # directory sizes are recursive sums of uploadables (files and links to files)
    assert got["a/b"].size == 20
    assert got["a"].size == 120
    assert got[""].size == 100 + 20 + 3 + 100
    assert (summary.files, summary.bytes, summary.errors) == (4, 223, 0)
    assert summary.kinds == {"dir": 4, "file": 3, "link": 7, "other": 1}
    assert summary.entries == len(got)
    assert manifest.root == str(tree)
    assert manifest.root_name == "edr"


def test_odd_names_are_recorded_as_they_are(tmp_path: Path, manifest: Manifest) -> None:
    root = tmp_path / "odd"
    for i, name in enumerate(ODD_NAMES):
        write(root / name, i)
        write(root / f"dir {name}" / name, 10 + i)
    crawl(root, manifest, workers=3)
    got = rows(manifest)
    for i, name in enumerate(ODD_NAMES):
        assert got[name].size == i
        assert got[f"dir {name}/{name}"].size == 10 + i
        assert got[f"dir {name}"].size == 10 + i


def test_non_utf8_names_are_skipped_and_reported(tmp_path: Path, manifest: Manifest) -> None:
    root = tmp_path / "r"
    write(root / "good.txt", 1)
    bad_file = os.fsencode(root) + b"/bad-\xff.txt"
    os.close(os.open(bad_file, os.O_CREAT | os.O_WRONLY, 0o644))
    bad_dir = os.fsencode(root) + b"/dir-\xfe"
    os.mkdir(bad_dir)
    os.close(os.open(bad_dir + b"/inside", os.O_CREAT | os.O_WRONLY, 0o644))
    summary = crawl(root, manifest)
    assert set(rows(manifest)) == {"", "good.txt"}
    assert summary.errors == 2
    messages = sorted(summary.error_examples)
    assert messages[0] == ("bad-\\xff.txt", "name is not valid UTF-8: b'bad-\\xff.txt'")
    assert messages[1][0] == "dir-\\xfe"
    assert summary.complete  # nothing the manifest could hold was hidden
    stored = manifest.conn.execute("SELECT path, error FROM crawl_errors").fetchall()
    assert sorted(stored) == messages


def test_recrawl_picks_up_changes_and_drops_what_vanished(tmp_path: Path, tree: Path) -> None:
    db = tmp_path / "mirror.db"
    with Manifest.open(db, create=True) as manifest:
        first = crawl(tree, manifest)
        (tree / "top.txt").unlink()
        (tree / "a" / "b" / "two.fits").unlink()
        (tree / "a" / "b").rmdir()
        write(tree / "new" / "three.fits", 5)
        write(tree / "a" / "one.fits", 150)
        second = crawl(tree, manifest)
        got = rows(manifest)
    assert second.crawl_id == first.crawl_id + 1
    assert second.vanished == 3  # top.txt, a/b, a/b/two.fits (abs-link-dir is now broken)
    assert "top.txt" not in got
    assert "a/b" not in got
    assert got["new/three.fits"].size == 5
    assert got["a/one.fits"].size == 150
    assert got["link-file"].size == 150
    assert got["a/abs-link-dir"].link_kind == "broken"
    assert got[""].size == 150 + 150 + 5
    assert all(
        c == second.crawl_id for (c,) in sqlite3.connect(db).execute("SELECT crawl_id FROM entries")
    )


def test_entries_that_vanish_between_listing_and_stat(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race, provoked on demand: entries deleted after the listing, before lstat."""
    root = tmp_path / "r"
    write(root / "sub" / "gone.fits", 1)
    write(root / "sub" / "kept.fits", 2)
    write(root / "sub" / "dir" / "inner.fits", 3)

    def delete(directory: str, names: list[str]) -> None:
        if directory.endswith("/sub"):
            assert sorted(names) == ["dir", "gone.fits", "kept.fits"]
            os.unlink(os.path.join(directory, "gone.fits"))
            os.unlink(os.path.join(directory, "dir", "inner.fits"))
            os.rmdir(os.path.join(directory, "dir"))

    monkeypatch.setattr(desimirror.pipeline.crawl.walk, "before_stat", delete)
    summary = crawl(root, manifest, workers=2)
    assert set(rows(manifest)) == {"", "sub", "sub/kept.fits"}
    assert sorted(summary.error_examples) == [
        ("sub/dir", "vanished during the crawl"),
        ("sub/gone.fits", "vanished during the crawl"),
    ]
    assert summary.complete  # what vanished is gone: nothing is hidden
    assert manifest.get("sub").size == 2
    vanished = scan_directory(resolve_root(root), "no-such-dir")
    assert [(e.path, e.message, e.hides) for e in vanished.errors] == [
        ("no-such-dir", "directory vanished during the crawl", False)
    ]


@pytest.mark.parametrize(
    ("name", "rate", "low", "high"),
    [
        # 1 ms a call: each task in flight adds its share, up to 64 of them
        ("latency-bound", lambda n: 500.0 * min(n, 64), 64, 128),
        # CPU-bound under the GIL: every thread beyond one costs (measured: 250k/s with
        # 1 in flight, 150k with 2, 35k with 8)
        ("cpu-bound", lambda n: 250_000.0 / (1 + 0.7 * (n - 1)), 1, 1),
    ],
)
def test_tasks_in_flight_follow_the_rate(name: str, rate, low: int, high: int) -> None:
    """The crawl keeps as many tasks in flight as make it faster: many on a filesystem
    with latency, one where threads only fight over the GIL. A simulated clock: each
    finished task of 100 entries takes the time the modelled rate gives it."""
    now = [0.0]
    concurrency = TaskLimit(128, adaptive=True, clock=lambda: now[0])
    limits = []
    for _ in range(20_000):
        concurrency.limited = True  # work is always waiting
        now[0] += 100 / rate(concurrency.limit)
        concurrency.update(100, 0)
        limits.append(concurrency.limit)
    settled = limits[len(limits) // 2 :]
    assert low <= sorted(settled)[len(settled) // 2] <= high, name
    assert TaskLimit(8, adaptive=False).limit == 8  # other executors: fixed


def test_any_executor_will_do(tree: Path, tmp_path: Path) -> None:
    """Tasks are plain picklable functions over plain data, so a process pool (or a Dask
    cluster's executor) runs them as well as threads."""
    results = []
    for name, make in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
        with make(2) as pool, Manifest.open(tmp_path / f"{name}.db", create=True) as m:
            crawl(tree, m, executor=pool, workers=2)
            results.append(rows(m))
    assert results[0] == results[1]


def test_db_inside_the_tree_is_not_crawled(tree: Path) -> None:
    with Manifest.open(tree / "mirror.db", create=True) as manifest:
        crawl(tree, manifest)
        crawl(tree, manifest)
        assert not [p for p in rows(manifest) if p.startswith("mirror.db")]


def test_root_must_be_a_readable_directory(tmp_path: Path, manifest: Manifest) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        crawl(tmp_path / "nope", manifest)
    write(tmp_path / "file", 1)
    with pytest.raises(UsageError, match="not a directory"):
        crawl(tmp_path / "file", manifest)
    with pytest.raises(UsageError, match="named directory"):
        resolve_root("/")


def test_db_of_another_tree_is_refused(tmp_path: Path, tree: Path, manifest: Manifest) -> None:
    crawl(tree, manifest)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(StateError, match="another --db"):
        crawl(other, manifest)


# ---------------------------------------------------------------- find.json vs the original


def run_original(root: Path, out: Path) -> bytes:
    """The original find.py's output, its sibling order made canonical.

    The original sorts a directory's children by (type, name) while their stat jobs may
    still be running, and an unfinished child sorts as type -1: its order varies from run
    to run (even with one worker). Sizes and types are right. The order it means, which
    the real EDR sample has throughout, is (type, name); that is what is compared.
    """
    subprocess.run(
        [sys.executable, str(FIND_PY), str(root), "--max-workers", "4", "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )

    def canonical(node: list) -> list:
        name, typ, size, *children = node
        ordered = sorted((canonical(c) for c in children), key=lambda c: (c[1], c[0]))
        return [name, typ, size, *ordered]

    raw = out.read_bytes()
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    tree = canonical(json.loads(raw))
    return (json.dumps(tree, separators=(",", ":")) + "\n").encode()


@pytest.mark.skipif(not FIND_PY.exists(), reason="the original find.py is not here")
def test_find_json_is_byte_identical_to_the_original(tmp_path: Path) -> None:
    root = tmp_path / "release"
    for i, name in enumerate(ODD_NAMES):
        write(root / "odd" / name, i * 3)
    write(root / "a" / "z.fits", 1000)
    write(root / "a" / "B.fits", 10)
    write(root / "a" / "sub" / "deep" / "x", 5)
    write(root / "Zed" / "y", 0)
    (root / "a" / "empty").mkdir()
    (root / "empty").mkdir()
    os.mkfifo(root / "a" / "fifo")
    os.symlink("nowhere", root / "dangling")  # the original calls these unknown (-1) too
    expected = run_original(root, tmp_path / "orig.json")
    proc = run_crawl(str(root), "--db", str(tmp_path / "m.db"), "--json", str(tmp_path / "f.json"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f.json").read_bytes() == expected
    assert expected.endswith(b"]\n")
    assert b"\\u00fc" in expected


# ---------------------------------------------------------------- the command


def run_crawl(*args: str) -> subprocess.CompletedProcess:
    return run_cli("crawl", *args)


def test_cli_report_and_summary(tree: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    proc = run_crawl(str(tree), "--db", db, "--workers", "3")
    assert proc.returncode == 0, proc.stderr
    assert "crawled" in proc.stdout
    assert "15 entries" in proc.stdout
    assert "1 outside the tree" in proc.stdout
    proc = run_crawl(str(tree), "--db", db, "--json")
    report = json.loads(proc.stdout)
    assert report["entries"] == 15
    assert report["errors"] == 0
    assert report["bytes"] == 223
    assert report["crawl_id"] == 2
    out = tmp_path / "find.json"
    proc = run_crawl(str(tree), "--db", db, "--json-report", "--json", str(out))
    report = json.loads(proc.stdout)
    assert report["find_json"] == str(out)
    assert json.loads(out.read_text())[:3] == ["edr", 0, 223]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["MISSING"], "does not exist"),
        (["FILE"], "is not a directory"),
        ([], "give a directory"),
        (["TREE", "--root", "/tmp"], "--root goes with --from-json"),
        (["TREE", "--from-json", "FILE"], "not both"),
    ],
)
def test_cli_bad_roots(tree: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    write(tmp_path / "file", 3)
    subst = {
        "MISSING": str(tmp_path / "missing"),
        "FILE": str(tmp_path / "file"),
        "TREE": str(tree),
    }
    db = tmp_path / "new.db"
    proc = run_crawl(*[subst.get(a, a) for a in args], "--db", str(db))
    assert_clean_error(proc, fragment)
    assert proc.stderr.startswith("desimirror: error:")
    assert len(proc.stderr.splitlines()) == 1
    assert not db.exists()  # a typo leaves no empty state db behind


@pytest.mark.parametrize("kind", ["foreign-sqlite", "garbage", "other-root"])
def test_cli_refuses_a_db_it_does_not_own(tree: Path, tmp_path: Path, kind: str) -> None:
    db = tmp_path / "x.db"
    if kind == "foreign-sqlite":
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO photos (name) VALUES ('cat.jpg')")
        conn.commit()
        conn.close()
    elif kind == "garbage":
        db.write_bytes(b"this is not a database\n" * 100)
    else:
        other = tmp_path / "other"
        other.mkdir()
        assert run_crawl(str(other), "--db", str(db)).returncode == 0
    before = db.read_bytes()
    proc = run_crawl(str(tree), "--db", str(db))
    assert_clean_error(proc)
    assert proc.returncode == 3
    assert proc.stderr.startswith("desimirror: error:")
    assert len(proc.stderr.splitlines()) == 1
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists() or kind == "other-root"


# ---------------------------------------------------------------- permissions

NOBODY = 65534
_AS_NOBODY = """
import os, sys
import concurrent.futures.thread, sqlite3, json
import desimirror.cli, desimirror.pipeline.crawl, desimirror.pipeline.findjson
for name in desimirror.cli.COMMANDS:  # imported when run: nobody could not
    desimirror.cli.cli.get_command(None, name)
os.setgroups([]); os.setgid({uid}); os.setuid({uid})
desimirror.cli.main(sys.argv[1:])
"""


def crawl_as_nobody(*args: str) -> subprocess.CompletedProcess:
    """Root reads everything; the crawl must run unprivileged to meet a permission error.
    The interpreter lives where nobody may not read, so privileges are dropped after the
    imports rather than before exec."""
    code = _AS_NOBODY.format(uid=NOBODY)
    return subprocess.run(
        [sys.executable, "-c", code, "crawl", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_unreadable_subtree_is_an_error_and_keeps_its_earlier_entries() -> None:
    base = Path(tempfile.mkdtemp(prefix="desimirror-perm-"))
    try:
        base.chmod(0o777)
        root = base / "rel"
        write(root / "open" / "a.fits", 10)
        write(root / "open" / "gone.fits", 1)
        write(root / "secret" / "s.fits", 50)
        write(root / "secret" / "deeper" / "d.fits", 5)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        db = base / "m.db"
        assert run_crawl(str(root), "--db", str(db)).returncode == 0  # as root: all of it
        db.chmod(0o666)
        (root / "secret").chmod(0o000)
        (root / "open" / "gone.fits").unlink()
        proc = crawl_as_nobody(str(root), "--db", str(db), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["errors"] == 1
        assert not report["complete"]
        assert report["error_examples"] == [
            {"path": "secret", "error": "cannot list directory: Permission denied"}
        ]
        assert report["vanished"] == 1  # gone.fits: seen gone where the crawl could look
        with Manifest.open(db) as manifest:
            got = rows(manifest)
            assert "open/gone.fits" not in got
            assert got["secret/deeper/d.fits"].size == 5  # kept from the earlier crawl
            assert got["secret"].size == 55
            assert got[""].size == 65
        proc = crawl_as_nobody(str(root), "--db", str(db))
        assert proc.returncode == 0
        assert "1 CRAWL ERRORS" in proc.stderr
        assert "secret: cannot list directory" in proc.stderr
        (root / "secret").chmod(0o777)
        (root / "secret" / "deeper" / "d.fits").unlink()
        report = json.loads(run_crawl(str(root), "--db", str(db), "--json").stdout)
        assert report["complete"]
        assert report["vanished"] == 1
        assert report["bytes"] == 60
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)
