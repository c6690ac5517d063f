"""One writer per mirror: the write lock beside the state db (``mirror.db.lock``).

The holder is a real process that takes the lock through :mod:`desimirror.state.writelock` and
sleeps; the second writer is the real ``desimirror`` command. Holders are stopped by PID.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from desimirror.errors import StateError
from desimirror.state import writelock
from desimirror.state.manifest import Manifest
from helpers import assert_clean_error, run_cli
from integrity_helpers import rows

HOLDER = textwrap.dedent(
    """
    import socket, sys, time
    if len(sys.argv) > 3:  # a holder on another node of a shared filesystem
        socket.gethostname = lambda: sys.argv[3]
    from desimirror.state import writelock
    writelock.acquire(sys.argv[1], sys.argv[2])
    print("held", flush=True)
    time.sleep(600)
    """
)

# Every command that writes the db, with the arguments it needs to get as far as the lock.
NO_STORE = ["--bucket", "s3://nowhere-bucket", "--endpoint-url", "http://127.0.0.1:9"]
WRITERS = {
    "crawl": ["crawl", "TREE"],
    "plan": ["plan"],
    "upload": ["upload", *NO_STORE],
    "verify": ["verify", *NO_STORE],
    "manifest checksums": ["manifest", "checksums"],
    "manifest publish": ["manifest", "publish", *NO_STORE],
}


@contextmanager
def holding(
    db: Path, command: str = "upload", host: str | None = None
) -> Iterator[subprocess.Popen]:
    """A real process holding ``db``'s write lock until the block ends (stopped by PID)."""
    args = [sys.executable, "-c", HOLDER, str(db), command, *([host] if host else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the holder did not take the lock"
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture
def mirror(tmp_path: Path) -> tuple[Path, Path]:
    """A crawled and planned tree: (tree, db)."""
    tree = tmp_path / "edr"
    for i in range(6):
        (tree / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 2}" / f"f{i}.fits").write_bytes(os.urandom(100 + i))
    db = tmp_path / "mirror.db"
    run_cli("crawl", str(tree), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), check=True)
    return tree, db


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_second_writer_is_refused_at_once_naming_the_holder(
    mirror: tuple[Path, Path], writer: str
) -> None:
    tree, db = mirror
    before = rows(db, "SELECT count(*) FROM crawls") + rows(db, "SELECT * FROM batches")
    with holding(db, "upload") as holder:
        pid = holder.pid
        args = [str(tree) if a == "TREE" else a for a in WRITERS[writer]]
        proc = run_cli(*args, "--db", str(db))
    assert_clean_error(proc, f"pid {pid}", f"host {socket.gethostname()}", "upload", "since")
    assert proc.returncode == 3, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert rows(db, "SELECT count(*) FROM crawls") + rows(db, "SELECT * FROM batches") == before


def test_status_reads_while_the_lock_is_held_and_does_not_take_it(
    mirror: tuple[Path, Path],
) -> None:
    _, db = mirror
    with holding(db, "upload") as holder:
        pid = holder.pid
        proc = run_cli("status", "--db", str(db), "--json")
        assert proc.returncode == 0, proc.stderr
        assert '"pending_files": 6' in proc.stdout
        assert proc.stderr == ""  # a writer on this host: nothing to warn about
        # status took nothing: the holder still holds, so a writer is still refused
        still = run_cli("plan", "--db", str(db))
        assert still.returncode == 3
        assert f"pid {pid}" in still.stderr


def test_a_holder_killed_with_sigkill_does_not_block_the_next_run(
    mirror: tuple[Path, Path],
) -> None:
    tree, db = mirror
    with holding(db, "crawl") as holder:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no clean-up ran
        holder.wait(timeout=30)
        assert f'"pid": {holder.pid}' in writelock.lock_path(db).read_text()  # still says so
        proc = run_cli("plan", "--db", str(db))
        assert proc.returncode == 0, proc.stderr
        again = run_cli("crawl", str(tree), "--db", str(db))
        assert again.returncode == 0, again.stderr
    assert not writelock.lock_path(db).exists()  # released: the last writer removed it


def test_a_holder_on_another_host_is_named_and_readers_are_warned(
    mirror: tuple[Path, Path],
) -> None:
    _, db = mirror
    with holding(db, "upload", host="login05.test") as holder:
        pid = holder.pid
        refused = run_cli("upload", "--db", str(db), *NO_STORE)
        status = run_cli("status", "--db", str(db))
    assert_clean_error(refused, f"pid {pid}", "host login05.test", "another host")
    assert refused.returncode == 3
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout
    warning = status.stderr.strip()
    assert warning.startswith("desimirror: warning:")
    assert "\n" not in warning
    assert "another host" in warning
    assert "login05.test" in warning


def test_one_process_holding_the_lock_keeps_it_through_nested_opens_and_reads(
    mirror: tuple[Path, Path],
) -> None:
    """POSIX locks belong to the process: closing *any* descriptor of the lock file would
    drop them. A nested writer and a reader in the holder's own process must not."""
    _, db = mirror
    lock = writelock.acquire(db, "test")
    try:
        with Manifest.open(db, writer="nested"):
            pass
        assert writelock.current_holder(db).command == "test"
        assert writelock.reader_warning(db) is None
        proc = run_cli("plan", "--db", str(db))
        assert proc.returncode == 3, proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr
    finally:
        lock.release()
    assert run_cli("plan", "--db", str(db)).returncode == 0
    assert writelock.current_holder(db) is None


def test_the_lock_file_of_a_db_inside_the_tree_is_not_crawled(tmp_path: Path) -> None:
    tree = tmp_path / "edr"
    tree.mkdir()
    (tree / "a.fits").write_bytes(b"x")
    db = tree / "mirror.db"
    run_cli("crawl", str(tree), "--db", str(db), check=True)  # its lock file is in the tree
    run_cli("crawl", str(tree), "--db", str(db), check=True)
    assert rows(db, "SELECT path FROM entries ORDER BY path") == [("",), ("a.fits",)]


def test_a_writer_whose_lock_file_is_removed_stops_at_its_next_check(
    mirror: tuple[Path, Path],
) -> None:
    """Deleting a running writer's lock file lets a second writer in: the first stops."""
    _, db = mirror
    with Manifest.open(db, writer="upload") as manifest:
        manifest.check_in_place()
        writelock.lock_path(db).unlink()
        assert run_cli("plan", "--db", str(db)).returncode == 0  # the second writer got in
        with pytest.raises(StateError, match=r"lock file .* was removed"):
            manifest.check_in_place()
