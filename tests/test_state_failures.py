"""The state db's own failures, and stops from outside: each one clear line, nothing lost.

A full filesystem and a read-only one are real: a small tmpfs mounted for the test (root
only; skipped otherwise) and unmounted in ``finally``. A db deleted during an upload is
deleted by the test while the real upload runs; SIGTERM goes to a real upload process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from desimirror.errors import StateError, sqlite_failure
from desimirror.state.manifest import Manifest, UploadRecord
from helpers import DESIMIRROR, assert_clean_error, run_cli
from integrity_helpers import count_files, make_release, prepare, random_files, rows, upload

MOUNT_ERROR = "cannot mount a tmpfs here (needs root): the full and read-only filesystem tests"


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; unmounted on the way out."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"{MOUNT_ERROR}: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=60)


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its filesystem is full; returns the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1):  # big writes, then what is left of the last page
            for _ in range(100_000):  # bounded: far beyond any tmpfs of these tests
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.s3
def test_a_full_filesystem_under_the_db_stops_the_upload_with_one_line_and_loses_nothing(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(21, 24, dirs=2))
    with small_filesystem(tmp_path / "state", "4m") as state:
        db = state / "m.db"
        prepare(root, db)
        filled: list[Path] = []

        def fill_once(_key: str) -> None:
            if not filled:
                filled.append(fill(state))  # the disk fills up in the middle of the upload

        fault_proxy.on_put = fill_once
        proc, _ = upload(db, bucket, fault_proxy.endpoint_url, cli_env, "--backend", "native")
        assert filled
        assert_clean_error(proc, "full", "kept", "run the same command again")
        assert proc.returncode == 3
        one_line(proc)
        assert rows(db, "PRAGMA quick_check") == [("ok",)]

        filled[0].unlink()  # space again: the same command resumes and finishes
        fault_proxy.on_put = None
        again, report = upload(db, bucket, s3.endpoint_url, cli_env, "--backend", "native")
        assert again.returncode == 0, again.stderr
        assert report["pending_files"] == 0
        assert len(rows(db, "SELECT path FROM uploads")) == count_files(root)


def test_sqlite_full_is_one_state_error_saying_what_was_kept(tmp_path: Path) -> None:
    """SQLITE_FULL for real, without root: the db may not grow past its pages."""
    db = tmp_path / "m.db"
    with Manifest.open(db, create=True) as manifest:
        pages = manifest.conn.execute("PRAGMA page_count").fetchone()[0]
        manifest.conn.execute(f"PRAGMA max_page_count = {pages}")
        records = [UploadRecord(f"p/{i}", f"k/{i}", i, i, "e" * 32) for i in range(5000)]
        with pytest.raises(sqlite3.OperationalError) as caught, manifest.atomic():
            manifest.record_mirrored(records)
    failure = sqlite_failure(caught.value, db)
    assert isinstance(failure, StateError)
    assert failure.exit_code == 3
    assert f"{db} is full" in str(failure)
    assert "kept" in str(failure)
    assert "\n" not in str(failure)


@pytest.mark.s3
def test_a_db_deleted_during_an_upload_stops_it_with_one_line(
    tmp_path: Path, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(22, 30, dirs=2))
    db = tmp_path / "m.db"
    prepare(root, db)
    puts: list[str] = []

    def delete_the_db_at_the_third_put(key: str) -> None:
        puts.append(key)
        if len(puts) == 3:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{db}{suffix}")

    fault_proxy.on_put = delete_the_db_at_the_third_put
    args = ("--backend", "native", "--workers", "2")
    proc, _ = upload(db, bucket, fault_proxy.endpoint_url, cli_env, *args)
    assert len(puts) >= 3
    assert_clean_error(proc, f"the state db {db} was deleted", "stopped")
    assert proc.returncode == 3
    assert "every planned file is in the bucket" not in proc.stdout + proc.stderr
    one_line(proc)


def test_a_read_only_directory_is_reported_as_such(tmp_path: Path) -> None:
    tree = tmp_path / "edr"
    tree.mkdir()
    (tree / "a.fits").write_bytes(b"x" * 100)
    with small_filesystem(tmp_path / "state", "4m") as state:
        db = state / "m.db"
        run_cli("crawl", str(tree), "--db", str(db), check=True)
        remount = ["mount", "-o", "remount,ro", str(state)]
        subprocess.run(remount, check=True, timeout=60)
        for command in (["status"], ["plan"], ["crawl", str(tree)]):
            proc = run_cli(*command, "--db", str(db))
            assert_clean_error(proc, "is not writable", str(state))
            assert proc.returncode == 3, proc.stderr
            assert "not a usable" not in proc.stderr
            one_line(proc)


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_sigterm_stops_an_upload_cleanly_and_the_same_command_resumes(
    tmp_path: Path, bucket: str, cli_env: dict, fault_proxy, backend: str
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(23, 60, dirs=2, low=1000, high=5000))
    db = tmp_path / "m.db"
    prepare(root, db, "--max-batch-size", "12kB", "--min-batch-size", "1kB")  # many batches
    fault_proxy.methods = {"PUT"}
    fault_proxy.rates = {"stall": 1.0}  # every PUT takes a moment: the upload is mid-run
    fault_proxy.stall_seconds = 0.1
    command = [DESIMIRROR, "upload", "--db", str(db), "--bucket", f"s3://{bucket}"]
    command += ["--endpoint-url", fault_proxy.endpoint_url, "--workers", "2", "--backend", backend]
    victim = subprocess.Popen(command, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and victim.poll() is None:
            if rows(db, "SELECT count(*) FROM uploads")[0][0] >= 3:
                break
            time.sleep(0.02)
        assert victim.poll() is None, "the upload finished before it could be stopped"
        seen = {p for (p,) in rows(db, "SELECT path FROM uploads")}
        os.kill(victim.pid, signal.SIGTERM)
        _, err = victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=30)
    assert victim.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith("desimirror: interrupted (SIGTERM)"), err
    assert "saved" in message
    assert "to resume" in message
    recorded = {p: k for p, k in rows(db, "SELECT path, key FROM uploads")}
    assert seen <= set(recorded)
    assert len(recorded) < count_files(root)
    puts_before = dict(fault_proxy.puts)

    fault_proxy.rates = {}
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert report["pending_files"] == 0
    assert len(rows(db, "SELECT path FROM uploads")) == count_files(root)
    resent = [k for k in recorded.values() if fault_proxy.puts[k] != puts_before.get(k, 0)]
    assert resent == []  # what was confirmed before the SIGTERM was not sent again


SIGTERM_IN_AT_FORK_HOOK = textwrap.dedent(
    """
    import os, signal, subprocess, time
    from desimirror import cli

    @cli.cli.command("spawn")
    def spawn():
        # SIGTERM lands while an at-fork hook runs (as when s5cmd starts), where Python
        # drops the exception a signal handler raises
        kill = lambda: os.kill(os.getpid(), signal.SIGTERM)
        os.register_at_fork(after_in_parent=kill)
        subprocess.run(["true"], preexec_fn=lambda: None, check=True)
        for _ in range(500):  # the work goes on, as an upload's would
            time.sleep(0.01)
        print("not stopped")

    cli.main(["spawn"])
    """
)


def test_a_sigterm_that_lands_in_an_at_fork_hook_still_stops_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_AT_FORK_HOOK], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout + proc.stderr
    assert "not stopped" not in proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("desimirror: interrupted (SIGTERM)")


def test_a_batch_size_of_zero_or_less_is_refused(tmp_path: Path) -> None:
    tree = tmp_path / "edr"
    tree.mkdir()
    for i in range(3):
        (tree / f"f{i}.fits").write_bytes(b"x" * 10)
    db = tmp_path / "m.db"
    run_cli("crawl", str(tree), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), check=True)
    plan = rows(db, "SELECT * FROM batches")
    for option, value in (
        ("--max-batch-size", "0"),
        ("--min-batch-size", "0"),
        ("--max-batch-size", "0.4"),
        ("--max-batch-size", "-1"),
    ):
        proc = run_cli("plan", "--db", str(db), option, value)
        assert_clean_error(proc, option)
        assert proc.returncode == 2, proc.stderr
        one_line(proc)
    assert rows(db, "SELECT * FROM batches") == plan  # the plan in place stays
