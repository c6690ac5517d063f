"""The crawler against trees that are big, deep, changing, unreadable or odd.

Every case ends the same way: the crawl finishes, records what it could, and records an
error with the path for what it could not; ``status`` and the crawl summary count them.
Races are provoked deterministically through :data:`desimirror.pipeline.crawl.walk.before_stat`, the
moment between listing a directory and stat'ing its entries.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import desimirror.pipeline.crawl
from desimirror.errors import StateError
from desimirror.pipeline.crawl import crawl, resolve_root, scan_directory
from desimirror.pipeline.findjson import export_tree_json
from desimirror.state.manifest import Entry, Manifest
from helpers import run_cli

NOBODY = 65534


def touch(path: Path | bytes, size: int = 0) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        if size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def all_rows(manifest: Manifest) -> dict[str, Entry]:
    """Every entry, straight from the table."""
    cols = "path, kind, size, mtime_ns, link_target, link_kind, sha256"
    return {r[0]: Entry(*r) for r in manifest.conn.execute(f"SELECT {cols} FROM entries")}


def has_parent_index(manifest: Manifest) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'entries_by_parent'"
    return manifest.conn.execute(query).fetchone() is not None


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    with Manifest.open(tmp_path / "mirror.db", create=True) as m:
        yield m


# ---------------------------------------------------------------- size and shape


def test_a_directory_of_110k_entries(tmp_path: Path, manifest: Manifest) -> None:
    root = tmp_path / "big"
    (root / "wide").mkdir(parents=True)
    wide = os.fsencode(root / "wide")
    for i in range(110_000):
        touch(wide + b"/f%06d" % i)
    touch(root / "wide" / "sized", 12345)
    summary = crawl(root, manifest)
    assert summary.errors == 0
    assert summary.kinds == {"dir": 2, "file": 110_001}
    count = "SELECT count(*) FROM entries WHERE parent = 'wide'"
    assert manifest.conn.execute(count).fetchone()[0] == 110_001
    assert manifest.get("wide").size == 12345
    st = os.lstat(wide + b"/f109999")
    assert manifest.get("wide/f109999") == Entry(
        "wide/f109999",
        "file",
        0,
        st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        dev=st.st_dev,
    )
    assert has_parent_index(manifest)


def test_every_directory_split_into_slices(tmp_path: Path) -> None:
    """With no time budget, every directory goes out in slices, as on a slow filesystem;
    the result is the same, on threads and on a process pool."""
    root = tmp_path / "r"
    for d in range(5):
        for f in range(70):
            touch(_make(root / f"d{d}") / f"f{f}", f)
    expected = None
    for name, kwargs in (
        ("whole", {}),
        ("threads", {"task_seconds": 0.0}),
        ("processes", {"task_seconds": 0.0, "executor": ProcessPoolExecutor(2), "workers": 2}),
    ):
        with Manifest.open(tmp_path / f"{name}.db", create=True) as m:
            summary = crawl(root, m, **kwargs)
            got = all_rows(m)
        executor = kwargs.get("executor")
        if executor is not None:
            executor.shutdown()
        assert summary.entries == 1 + 5 + 350
        assert got[""].size == 5 * sum(range(70))
        expected = expected or got
        assert got == expected, name
    listing = scan_directory(resolve_root(root), "d0", budget=0.0)
    assert listing.rest is not None  # the budget ran out in the first directory
    assert listing.entries + len(listing.rest[1]) == 70


def _make(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_nesting_deeper_than_100_levels_and_past_path_max(
    tmp_path: Path, manifest: Manifest
) -> None:
    """150 levels; and a branch whose paths are longer than PATH_MAX (4096 bytes), which
    the OS refuses by path: the crawl gets there one directory at a time."""
    root = tmp_path / "deep"
    deep = root.joinpath(*["d"] * 150)
    deep.mkdir(parents=True)
    touch(deep / "bottom.fits", 7)
    long_name = "L" * 250
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 * 251 bytes: past PATH_MAX
            os.mkdir(long_name, dir_fd=fd)
            child = os.open(long_name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.fits", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.ftruncate(leaf, 11)
        os.close(leaf)
    finally:
        os.close(fd)
    summary = crawl(root, manifest)
    assert summary.errors == 0, summary.error_examples
    bottom = "/".join(["d"] * 150) + "/bottom.fits"
    assert manifest.get(bottom).size == 7
    leaf_path = "/".join([long_name] * 20) + "/leaf.fits"
    assert len(str(root)) + len(leaf_path) > 4096
    assert manifest.get(leaf_path).size == 11
    assert manifest.get("").size == 18
    assert manifest.get("d").size == 7
    out = tmp_path / "deep.json"
    export_tree_json(manifest, out)
    tree = json.loads(out.read_text())
    assert tree[:3] == ["deep", 0, 18]
    node, depth = tree, 0
    while len(node) > 3:
        node, depth = node[3], depth + 1
    assert depth == 21  # the deepest first child: the long branch sorts before "d"...
    shutil.rmtree(root)  # rmtree works by fd, so it can remove what it made


def test_a_root_named_through_a_symlink(tmp_path: Path, manifest: Manifest) -> None:
    """Release paths at NERSC often go through links (``/dvs_ro/...``): the root may be
    one; links below it are still never followed."""
    real = tmp_path / "real-release"
    touch(_make(real / "a") / "f.fits", 5)
    os.symlink("a", real / "link-a")
    os.symlink(real, tmp_path / "edr")
    summary = crawl(tmp_path / "edr", manifest)
    assert summary.errors == 0
    assert set(all_rows(manifest)) == {"", "a", "a/f.fits", "link-a"}
    assert manifest.get("link-a").link_kind == "dir"  # inside: resolved against the real root
    assert manifest.root_name == "edr"


# ---------------------------------------------------------------- a tree that changes


def test_entries_that_vanish_or_change_during_the_crawl(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "r"
    for name in ("gone.fits", "grows.fits", "becomes-dir", "kept.fits"):
        touch(_make(root / "busy") / name, 5)
    (root / "busy" / "dir-gone").mkdir()
    touch(root / "busy" / "dir-gone" / "x", 1)
    (root / "busy" / "dir-to-link").mkdir()
    touch(root / "busy" / "dir-to-link" / "y", 1)
    (root / "later").mkdir()
    touch(root / "later" / "z", 3)

    def change(directory: str, names: list[str]) -> None:
        if directory.endswith("/busy"):
            busy = Path(directory)
            (busy / "gone.fits").unlink()
            os.truncate(busy / "grows.fits", 500)
            (busy / "becomes-dir").unlink()
            (busy / "becomes-dir").mkdir()
            shutil.rmtree(busy / "dir-gone")
            shutil.rmtree(busy / "dir-to-link")
            os.symlink("../later", busy / "dir-to-link")
        elif directory == str(root):
            assert sorted(names) == ["busy", "later"]
            shutil.rmtree(root / "later")  # listed, gone before it is stat'ed

    monkeypatch.setattr(desimirror.pipeline.crawl.walk, "before_stat", change)
    summary = crawl(root, manifest, workers=4)
    got = all_rows(manifest)
    assert set(got) == {
        "",
        "busy",
        "busy/grows.fits",
        "busy/becomes-dir",
        "busy/kept.fits",
        "busy/dir-to-link",
    }
    assert got["busy/grows.fits"].size == 500  # what lstat said, after the change
    assert got["busy/becomes-dir"].kind == "dir"  # lstat decides, not the listing
    assert (got["busy/dir-to-link"].kind, got["busy/dir-to-link"].link_kind) == (
        "link",
        "broken",  # ../later is gone too
    )
    assert sorted(summary.error_examples) == [
        ("busy/dir-gone", "vanished during the crawl"),
        ("busy/gone.fits", "vanished during the crawl"),
        ("later", "vanished during the crawl"),
    ]
    assert summary.complete
    assert got[""].size == 505


def test_a_directory_replaced_after_it_was_stat_ed(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the parent's lstat (a directory) and its own listing, a directory becomes
    a symlink to outside the tree: the crawl must not follow it out."""
    root = tmp_path / "r"
    touch(_make(root / "sub") / "inside.fits", 1)
    outside = tmp_path / "outside"
    touch(_make(outside) / "secret.fits", 99)

    def swap(directory: str, names: list[str]) -> None:  # noqa: ARG001
        if directory == str(root):
            os.rename(root / "sub", tmp_path / "moved")
            os.symlink(outside, root / "sub")

    monkeypatch.setattr(desimirror.pipeline.crawl.walk, "before_stat", swap)
    # the root's own listing triggers the swap before "sub" is stat'ed: it is a link now
    summary = crawl(root, manifest)
    assert manifest.get("sub").kind == "link"
    assert manifest.get("sub/secret.fits") is None
    assert summary.bytes == 0
    # and when the swap comes after the lstat: the listing refuses the link
    monkeypatch.setattr(desimirror.pipeline.crawl.walk, "before_stat", None)
    tree = resolve_root(root)
    os.unlink(root / "sub")
    os.rename(tmp_path / "moved", root / "sub")
    listing = scan_directory(tree, "")
    assert "sub" in [name for _, items in listing.groups for name, *_ in items]
    os.rename(root / "sub", tmp_path / "moved")
    os.symlink(outside, root / "sub")
    inner = scan_directory(tree, "sub")
    assert inner.groups == []
    assert [(e.path, e.message) for e in inner.errors] == [
        ("sub", "directory vanished during the crawl")
    ]


def test_a_failing_stat_is_one_error_not_a_dead_crawl(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error on one entry (a bad disk block, a flaky server) is recorded with the
    path and hides what it might be: a later crawl's record of it is kept."""
    root = tmp_path / "r"
    touch(_make(root / "a") / "bad.fits", 4)
    touch(root / "a" / "good.fits", 6)
    crawl(root, manifest)
    real_stat = os.stat

    def flaky(path, *args, **kwargs):
        if path == "bad.fits":
            raise OSError(errno.EIO, "Input/output error")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(desimirror.pipeline.crawl.os, "stat", flaky)
    summary = crawl(root, manifest)
    monkeypatch.undo()
    assert summary.error_examples == [("a/bad.fits", "cannot stat: Input/output error")]
    assert not summary.complete
    assert manifest.get("a/bad.fits").size == 4  # kept from the first crawl
    assert manifest.get("a").size == 10
    stored = manifest.conn.execute(
        "SELECT path, error FROM crawl_errors WHERE crawl_id = ?", (summary.crawl_id,)
    ).fetchall()
    assert stored == [("a/bad.fits", "cannot stat: Input/output error")]


# ---------------------------------------------------------------- odd entries


def test_symlink_loops_and_links_to_ancestors(tmp_path: Path, manifest: Manifest) -> None:
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    touch(root / "a" / "b" / "f", 3)
    os.symlink("self", root / "self")
    os.symlink("ping", root / "pong")
    os.symlink("pong", root / "ping")
    os.symlink("..", root / "a" / "b" / "up")
    os.symlink(str(root), root / "a" / "root")
    os.symlink("chain1", root / "chain0")
    for i in range(1, 30):
        os.symlink(f"chain{i + 1}", root / f"chain{i}")
    os.symlink("a/b/f", root / "chain30")
    summary = crawl(root, manifest)
    got = all_rows(manifest)
    assert {got[p].link_kind for p in ("self", "ping", "pong")} == {"broken"}
    assert got["a/b/up"].link_kind == "dir"  # recorded, never followed
    assert got["a/root"].link_kind == "dir"
    assert (got["chain0"].link_kind, got["chain0"].size) == ("file", 3)
    assert summary.entries == len(got) == 1 + 3 + 3 + 2 + 31
    assert summary.errors == 0


def test_hard_links_count_once_per_path(tmp_path: Path, manifest: Manifest) -> None:
    root = tmp_path / "r"
    touch(_make(root / "x") / "data.fits", 1000)
    _make(root / "y")
    os.link(root / "x" / "data.fits", root / "y" / "same.fits")
    os.link(root / "x" / "data.fits", root / "x" / "again.fits")
    summary = crawl(root, manifest)
    got = all_rows(manifest)
    for path in ("x/data.fits", "x/again.fits", "y/same.fits"):
        assert (got[path].kind, got[path].size) == ("file", 1000)
    assert (got["x"].size, got["y"].size, got[""].size) == (2000, 1000, 3000)
    assert (summary.files, summary.bytes) == (3, 3000)


def test_sockets_and_fifos_are_other_and_never_uploaded(tmp_path: Path, manifest: Manifest) -> None:
    root = _make(tmp_path / "r")
    os.mkfifo(root / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(root / "sock"))
        os.symlink("pipe", root / "to-pipe")
        touch(root / "real", 2)
        summary = crawl(root, manifest)
    finally:
        sock.close()
    got = all_rows(manifest)
    assert got["pipe"].kind == got["sock"].kind == "other"
    assert got["to-pipe"].link_kind == "broken"  # a link to a FIFO is nothing to upload
    assert [e.path for e in manifest.iter_uploadables()] == ["real"]
    assert summary.kinds == {"dir": 1, "other": 2, "link": 1, "file": 1}
    out = tmp_path / "f.json"
    export_tree_json(manifest, out)
    assert json.loads(out.read_text()) == [
        "r", 0, 2, ["pipe", -1, 0], ["sock", -1, 0], ["to-pipe", -1, 0], ["real", 1, 2]
    ]  # fmt: skip


def test_names_with_newlines_quotes_backslashes_and_bad_bytes(
    tmp_path: Path, manifest: Manifest
) -> None:
    root = _make(tmp_path / "r")
    odd = ["new\nline", 'q"uote', "sin'gle", "back\\slash", "tab\t", " lead", "é😀", "-x"]
    for i, name in enumerate(odd):
        touch(root / name, i + 1)
        touch(_make(root / f"dir {name}") / name, 10)
    base = os.fsencode(root)
    touch(base + b"/bad-\xff-file")
    os.mkdir(base + b"/bad-\xc3-dir")
    touch(base + b"/bad-\xc3-dir/inside", 50)
    touch(base + b"/ok\xc3\xa9", 3)  # valid UTF-8
    summary = crawl(root, manifest)
    got = all_rows(manifest)
    for i, name in enumerate(odd):
        assert got[name].size == i + 1
        assert got[f"dir {name}/{name}"].size == 10
        assert got[f"dir {name}"].size == 10
    assert got["oké"].size == 3
    assert sorted(summary.error_examples) == [
        ("bad-\\xc3-dir", "name is not valid UTF-8: b'bad-\\xc3-dir'"),
        ("bad-\\xff-file", "name is not valid UTF-8: b'bad-\\xff-file'"),
    ]
    assert summary.complete  # the manifest cannot hold those names: nothing is hidden
    assert got[""].size == sum(range(1, 9)) + 80 + 3
    out = tmp_path / "f.json"
    export_tree_json(manifest, out)
    names = [node[0] for node in json.loads(out.read_text())[3:]]
    assert "new\nline" in names
    assert out.read_bytes().isascii()


# ---------------------------------------------------------------- permissions


_AS_NOBODY = """
import os, sys
import desimirror.cli, desimirror.pipeline.crawl, desimirror.pipeline.findjson
for name in desimirror.cli.COMMANDS:  # imported when run: nobody could not
    desimirror.cli.cli.get_command(None, name)
import desimirror.pipeline.status
os.setgroups([]); os.setgid({uid}); os.setuid({uid})
desimirror.cli.main(sys.argv[1:])
"""


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    """Root reads everything: drop to nobody after the imports (the interpreter lives
    where nobody may not read, so not before exec)."""
    return subprocess.run(
        [sys.executable, "-c", _AS_NOBODY.format(uid=NOBODY), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_permission_denied_subtrees_are_errors_and_status_counts_them() -> None:
    base = Path(tempfile.mkdtemp(prefix="desimirror-robust-"))
    try:
        base.chmod(0o777)
        root = base / "rel"
        touch(_make(root / "open") / "a.fits", 10)
        touch(_make(root / "locked") / "l.fits", 20)  # mode 000: cannot be listed
        touch(_make(root / "listonly") / "n.fits", 30)  # r--: listed, not stat'able
        touch(_make(root / "open") / "unreadable.fits", 40)  # mode 000 file: metadata ok
        for path in [root, *root.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o666)
        (root / "open" / "unreadable.fits").chmod(0o000)
        (root / "locked").chmod(0o000)
        (root / "listonly").chmod(0o444)
        db = base / "m.db"
        proc = as_nobody("crawl", str(root), "--db", str(db), "--json")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert sorted((e["path"], e["error"]) for e in report["error_examples"]) == [
            ("listonly/n.fits", "cannot stat: Permission denied"),
            ("locked", "cannot list directory: Permission denied"),
        ]
        assert report["errors"] == 2
        assert not report["complete"]
        assert report["bytes"] == 50  # a.fits and unreadable.fits
        proc = as_nobody("status", "--db", str(db), "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["last_crawl"]["errors"] == 2
        proc = as_nobody("status", "--db", str(db))
        assert "2 errors" in proc.stdout
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- the writer


def test_the_thread_writer_gives_the_same_manifest(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for d in range(3):
        touch(_make(root / f"d{d}") / "f", d + 1)
    os.symlink("d1/f", root / "link")
    results = []
    for process in (True, False):
        with Manifest.open(tmp_path / f"{process}.db", create=True) as m:
            crawl(root, m, writer_process=process)
            crawl(root, m, writer_process=process)  # and a re-crawl (upserts)
            results.append(all_rows(m))
            assert has_parent_index(m)
    assert results[0] == results[1]


def test_a_failing_writer_fails_the_crawl_cleanly(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer process dies of an SQLite error: the crawl says so (no hang, no half
    crawl marked finished), and the next crawl works, index and all."""
    root = tmp_path / "r"
    touch(_make(root / "a") / "f", 1)

    def broken(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(
        desimirror.pipeline.crawl.rowwriter, "_write_batch", broken
    )  # the fork inherits it
    with pytest.raises(StateError, match="database or disk is full"):
        crawl(root, manifest)
    monkeypatch.undo()
    finished = manifest.conn.execute("SELECT finished FROM crawls").fetchall()
    assert finished == [(None,)]
    summary = crawl(root, manifest)
    assert summary.entries == 3
    assert has_parent_index(manifest)


_KILLED_MID_CRAWL = """
import os, signal, sys
import desimirror.pipeline.crawl as c
import desimirror.pipeline.crawl.walk as w
from desimirror.state.manifest import Manifest
seen = []
def die(directory, names):
    seen.append(directory)
    if len(seen) == 40:
        os.kill(os.getpid(), signal.SIGKILL)
w.before_stat = die
with Manifest.open(sys.argv[2], create=True) as m:
    c.crawl(sys.argv[1], m, workers=2, task_seconds=0.0)
"""


def test_a_crawl_killed_mid_way_is_simply_run_again(tmp_path: Path) -> None:
    root = tmp_path / "r"
    for d in range(100):
        touch(_make(root / f"d{d:03}") / "f", d)
    db = tmp_path / "m.db"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_MID_CRAWL), str(root), str(db)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    # its orphaned writer process sees the pipe close, restores the index and exits
    proc = run_cli("crawl", str(root), "--db", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["entries"], report["errors"], report["bytes"]) == (201, 0, sum(range(100)))
    with Manifest.open(db) as m:
        assert has_parent_index(m)
        assert m.conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 201
        unfinished = m.conn.execute("SELECT count(*) FROM crawls WHERE finished IS NULL")
        assert unfinished.fetchone()[0] == 1  # the killed one, honestly unfinished


def test_the_summary_and_the_db_agree(tmp_path: Path, manifest: Manifest) -> None:
    """The crawl totals directories itself on a complete crawl: the same numbers the
    manifest computes from its rows."""
    root = tmp_path / "r"
    for i in range(40):
        touch(_make(root / f"a{i % 4}" / f"b{i % 3}") / f"f{i}", i * 7)
    os.symlink("a0/b0/f0", root / "lf")
    os.symlink("a1", root / "ld")
    summary = crawl(root, manifest)
    ours = {p: e.size for p, e in all_rows(manifest).items() if e.kind == "dir"}
    manifest.conn.execute("BEGIN")
    manifest._roll_up_dir_sizes()
    theirs = {p: e.size for p, e in all_rows(manifest).items() if e.kind == "dir"}
    manifest.conn.execute("ROLLBACK")
    assert ours == theirs
    files, nbytes = manifest.conn.execute(
        "SELECT count(*), sum(size) FROM entries WHERE kind = 'file' OR link_kind = 'file'"
    ).fetchone()
    assert (summary.files, summary.bytes) == (files, nbytes)
    crawl_row = manifest.conn.execute("SELECT entries, errors FROM crawls").fetchone()
    assert crawl_row == (summary.entries, 0)
    assert stat.S_ISDIR(os.lstat(root).st_mode)
