"""A crawl that did not finish is never taken for the tree.

A real crawl process gets SIGINT part-way through a tree (its directories slowed down as
on a network filesystem, so that the signal lands mid-crawl). Before, plan planned what it
had seen, upload and verify called the mirror complete and status showed 100%.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_clean_error, run_cli
from integrity_helpers import upload, verify

DIRS, FILES = 60, 20
# The crawl as the installed command runs it, each directory slowed to 50 ms.
SLOW_CRAWL = (
    "import sys, time; import desimirror.pipeline.crawl as c, desimirror.pipeline.crawl.walk as w; "
    "w.before_stat = lambda d, names: time.sleep(0.05); "
    "from desimirror.cli import main; sys.argv[0] = 'desimirror'; main()"
)


def _tree(root: Path) -> None:
    for d in range(DIRS):
        directory = root / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES):
            (directory / f"f{f:02d}.fits").write_bytes(b"%d/%d" % (d, f))


def _entries(db: Path, *, of_unfinished_crawl: bool = False) -> int:
    query = "SELECT count(*) FROM entries"
    if of_unfinished_crawl:
        query += " WHERE crawl_id = (SELECT max(id) FROM crawls WHERE finished IS NULL)"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(query).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _interrupt_a_crawl(root: Path, db: Path) -> subprocess.CompletedProcess:
    """Start a real crawl, SIGINT it once it has written some entries, and wait for it."""
    cmd = [sys.executable, "-c", SLOW_CRAWL, "crawl", str(root), "--db", str(db), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _entries(db, of_unfinished_crawl=True) < 3 * FILES and time.monotonic() < deadline:
            assert proc.poll() is None, "the crawl ended before it could be interrupted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.s3
def test_an_interrupted_crawl_is_refused_until_a_crawl_finishes(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    _tree(root)
    db = tmp_path / "m.db"
    crawled = _interrupt_a_crawl(root, db)
    assert crawled.returncode == 130, crawled.stderr
    seen = _entries(db)
    assert 0 < seen < DIRS * (FILES + 1), seen  # part of the tree, and only part

    refused = run_cli("plan", "--db", str(db))
    assert_clean_error(refused, "did not finish", "--partial")
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert "did not finish" in status["partial_tree"]

    # planned explicitly over the partial tree: every command keeps saying so
    planned = run_cli("plan", "--db", str(db), "--partial", check=True)
    assert "did not finish" in planned.stdout
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert any("did not finish" in w for w in report["warnings"])
    text = run_cli("status", "--db", str(db), check=True).stdout
    assert "partial tree" in text
    assert "did not finish" in text
    proc, report = verify(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 5, proc.stderr
    assert "did not finish" in proc.stderr

    # the next crawl redoes the tree; then everything is mirrored and verified
    run_cli("crawl", str(root), "--db", str(db), check=True)
    assert _entries(db) == 1 + DIRS * (FILES + 1)
    run_cli("plan", "--db", str(db), check=True)
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert report["warnings"] == []
    proc, report = verify(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert report["matched"] == DIRS * FILES


def test_upload_refuses_a_plan_made_before_an_interrupted_recrawl(tmp_path: Path) -> None:
    root = tmp_path / "edr"
    _tree(root)
    db = tmp_path / "m.db"
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), check=True)
    assert _interrupt_a_crawl(root, db).returncode == 130
    proc = run_cli("upload", "--db", str(db), "--bucket", "s3://some-bucket")
    assert_clean_error(proc, "did not finish")
