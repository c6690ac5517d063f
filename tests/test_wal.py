"""A days-long upload keeps the state db's WAL bounded while ``status`` readers overlap.

SQLite's automatic checkpoints never rewind the WAL while some reader holds a snapshot in
it, so under readers that always overlap (``watch desimirror status``, two terminals) the
WAL of an upload grows with every commit. The upload's recorder truncates it once it has
grown past a limit (``Manifest.bound_wal``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from desimirror.pipeline.upload import recorder as recorder_module
from desimirror.pipeline.upload.options import UploadSummary
from desimirror.pipeline.upload.recorder import Recorder
from desimirror.state.manifest import Entry, Manifest, UploadRecord

FILES = 12000
LIMIT = 256 << 10


def _overlapping_readers(db: Path, stop: threading.Event) -> None:
    """Two connections taking turns so that one always holds a snapshot, as ``status``
    run in a loop from two terminals does; each snapshot lasts about 40 ms."""
    conns = [sqlite3.connect(db, isolation_level=None) for _ in range(2)]
    try:
        turn = 0
        conns[0].execute("BEGIN")
        conns[0].execute("SELECT count(*) FROM uploads").fetchone()
        while not stop.is_set():
            time.sleep(0.02)
            other = conns[1 - turn]
            other.execute("BEGIN")
            other.execute("SELECT count(*) FROM uploads").fetchone()
            conns[turn].execute("COMMIT")
            turn = 1 - turn
        conns[turn].execute("COMMIT")
    finally:
        for conn in conns:
            conn.close()


@pytest.fixture
def crawled(tmp_path: Path) -> Path:
    db = tmp_path / "m.db"
    with Manifest.open(db, create=True) as manifest:
        crawl = manifest.begin_crawl("/src")
        rows = [Entry("", "dir", 0)] + [
            Entry(f"f{i:05d}.fits", "file", 100 + i, 1) for i in range(FILES)
        ]
        with manifest.atomic():
            manifest.put_entries(crawl, rows)
        manifest.close_crawl(crawl)
    return db


def test_the_wal_stays_bounded_under_overlapping_readers(
    crawled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "WAL_LIMIT_BYTES", LIMIT)
    monkeypatch.setattr(recorder_module, "WAL_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(recorder_module, "COMMIT_EVERY_RESULTS", 50)
    stop = threading.Event()
    readers = threading.Thread(target=_overlapping_readers, args=(crawled, stop))
    sizes = []
    with Manifest.open(crawled, writer="upload") as manifest:
        recorder = Recorder(manifest, manifest.begin_upload_run(), UploadSummary("b", "native"))
        readers.start()
        try:
            for i in range(FILES):
                record = UploadRecord(f"f{i:05d}.fits", f"k/{i}", 100 + i, 1, "e", proof="etag")
                recorder.confirmed(record, counted_as_adopted=False)
                if i % 50 == 49:
                    sizes.append(os.path.getsize(f"{crawled}-wal"))
            recorder.commit()
        finally:
            stop.set()
            readers.join(timeout=30)
        assert manifest.totals()["pending_files"] == 0
    grown = max(sizes)
    # unbounded, it passes SQLite's own checkpoint threshold (1,000 pages, 4 MB) and goes on
    assert grown < 4 * LIMIT, f"the WAL grew to {grown:,} bytes (limit {LIMIT:,})"
