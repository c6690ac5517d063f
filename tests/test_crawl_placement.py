"""The crawl on processes and on a real Dask cluster gives the manifest that threads give.

The cluster is a ``distributed.LocalCluster`` of worker processes on 127.0.0.1, started
and closed by the fixture: the same scheduler protocol a dask-jobqueue cluster at NERSC
speaks, with the workers seeing the tree at the same path.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from desimirror.errors import UsageError
from desimirror.pipeline import executors
from helpers import assert_clean_error, local_cluster, run_cli


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("placement") / "edr"
    run_cli("synth", str(root), "--scale", "0.1", "--seed", "5", check=True)
    return root


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with local_cluster(4) as cluster:
        yield cluster.scheduler_address


def _manifest_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT path, kind, size, mtime_ns, link_target, link_kind FROM entries ORDER BY path"
        ).fetchall()


def _crawl(release: Path, db: Path, *args: str) -> dict:
    proc = run_cli("crawl", str(release), "--db", str(db), "--json", *args, check=True)
    return json.loads(proc.stdout)


def test_processes_and_a_dask_cluster_give_the_manifest_threads_give(
    release: Path, tmp_path: Path, scheduler: str
) -> None:
    by_threads = _crawl(release, tmp_path / "threads.db")
    by_processes = _crawl(release, tmp_path / "processes.db", "--processes", "2")
    on_dask = _crawl(release, tmp_path / "dask.db", "--scheduler", scheduler)
    assert by_threads["ran_on"] == "threads"
    assert by_processes["ran_on"] == "2 processes"
    assert on_dask["ran_on"] == f"Dask at {scheduler} (2 workers)"
    expected = _manifest_rows(tmp_path / "threads.db")
    assert len(expected) == by_threads["entries"] > 100
    assert _manifest_rows(tmp_path / "processes.db") == expected
    assert _manifest_rows(tmp_path / "dask.db") == expected
    for report in (by_processes, on_dask):
        assert (report["files"], report["bytes"]) == (by_threads["files"], by_threads["bytes"])


def test_an_unreachable_scheduler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setattr(executors, "CONNECT_SECONDS", 1)
    with (
        pytest.raises(UsageError, match=re.escape("cannot reach the Dask scheduler at tcp://")),
        executors.crawl_placement(None, "tcp://127.0.0.1:9"),
    ):
        pass


def test_processes_and_scheduler_do_not_go_together(release: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "crawl", str(release), "--db", str(tmp_path / "m.db"), "--processes", "2",
        "--scheduler", "tcp://127.0.0.1:9",
    )  # fmt: skip
    assert_clean_error(proc, "either --processes or --scheduler")
