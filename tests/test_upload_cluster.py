"""The upload on a real Dask cluster (``upload --scheduler``) against the real SeaweedFS.

The cluster is a ``distributed.LocalCluster`` of two worker processes on 127.0.0.1, the
same scheduler protocol a dask-jobqueue cluster speaks, its workers seeing the tree at the
same path and taking credentials from their own environment (the AWS chain). The
coordinator is the installed ``desimirror`` command, as a data manager runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from desimirror import processes
from desimirror.pipeline.upload.cluster import SendSpec, send_chunk
from desimirror.storage.keys import KeyMap
from desimirror.storage.transfer import S3Target, TransferItem
from faultproxy import FaultProxy
from helpers import assert_clean_error, local_cluster, run_cli
from test_pipeline import (
    assert_bucket_equals_disk,
    kill_upload_then_resume,
    target_args,
)

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def cluster(s3) -> Iterator[object]:
    """Two worker processes, one thread each, with the test server's credentials in
    their environment; shared by this module's tests (a killed worker is restarted by
    its nanny, and the test that kills one waits for it to come back)."""
    distributed = pytest.importorskip("distributed")
    with local_cluster(1, s3.env) as local:
        client = distributed.Client(local, set_as_default=False)
        try:
            yield client
        finally:
            client.close()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "edr"
    run_cli("synth", str(root), "--scale", "0.05", "--seed", "11", check=True)
    return root


@pytest.fixture(scope="module")
def planned(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A crawled and planned db that the tests of refusals share (they send nothing)."""
    db = tmp_path_factory.mktemp("planned") / "mirror.db"
    _crawl_and_plan(release, db)
    return db


def _copy_of(planned: Path, tmp_path: Path) -> Path:
    """A fresh copy of the planned db (each upload pins its own bucket)."""
    db = tmp_path / "mirror.db"
    source, copy = sqlite3.connect(planned), sqlite3.connect(db)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return db


def _crawl_and_plan(root: Path, db: Path) -> None:
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", "20MB", check=True)


def _rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_an_upload_on_the_cluster_puts_the_bytes_on_disk_in_the_bucket(
    planned: Path, tmp_path: Path, s3, bucket: str, cli_env: dict, cluster
) -> None:
    db = _copy_of(planned, tmp_path)
    run_cli("plan", "--db", str(db), "--max-batch-size", "5MB", check=True)  # a few batches
    address = cluster.scheduler.address
    args = [*target_args(db, bucket, s3), "--scheduler", address, "--workers", "4"]
    first = run_cli("upload", *args, "--max-batches", "1", env=cli_env)
    assert first.returncode == 0, first.stderr
    assert "pending (stopped at --max-batches)" in first.stdout
    assert f"--max-batches 1 --scheduler {address}' to go on" in first.stdout
    sent = run_cli("upload", *args, "--json", env=cli_env)
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert report["ran_on"] == f"Dask at {address} (2 workers)"
    assert report["pending_files"] == 0
    assert report["files_sent"] > 20
    # every file was sent by a worker, and each worker's share is kept for status
    assert sum(w["files"] for w in report["workers"].values()) == report["files_sent"]
    assert len(report["workers"]) == 2
    assert report["worker_cpu_seconds"] > 0
    assert assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr")) > report["files_sent"]

    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert {w["worker"] for w in status["workers"]} == set(report["workers"])
    assert sum(w["bytes"] for w in status["workers"]) == report["bytes_sent"]
    lines = run_cli("status", "--db", str(db), check=True).stdout
    assert "sent by  2 workers:" in lines

    again = run_cli("upload", *args, "--json", env=cli_env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_sent"] == 0


def test_a_worker_killed_mid_run_loses_nothing_and_records_nothing_twice(
    planned: Path, tmp_path: Path, s3, bucket: str, cli_env: dict, cluster
) -> None:
    db = _copy_of(planned, tmp_path)
    pids = cluster.run(os.getpid)  # worker address -> its process
    victim = sorted(pids.values())[0]
    killed = threading.Event()

    def kill_a_worker(_key: str) -> None:
        if not killed.is_set() and sum(proxy.puts.values()) >= 20:
            killed.set()
            os.kill(victim, signal.SIGKILL)

    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.on_put = kill_a_worker
        args = [
            "--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url",
            proxy.endpoint_url, "--scheduler", cluster.scheduler.address, "--workers", "2",
        ]  # fmt: skip
        sent = run_cli("upload", *args, "--json", env=cli_env)
        puts = dict(proxy.puts)
    cluster.wait_for_workers(2, timeout=60)  # its nanny restarts it, for the next test
    assert killed.is_set(), "the upload ended before a worker could be killed: grow the tree"
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert report["pending_files"] == 0
    uploads = _rows(db, "SELECT path FROM uploads")
    (run_files,) = _rows(db, "SELECT files FROM upload_runs ORDER BY id DESC LIMIT 1")[0]
    # each file recorded once: the run counted as many confirmations as there are records
    assert run_files == len(uploads) == report["files_sent"]
    # only what was in flight on the dead worker was sent again, once, by another worker
    again = {key: n for key, n in puts.items() if n > 1}
    assert set(again.values()) <= {2}, again
    assert len(again) < len(uploads) / 2, again
    assert assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr")) == len(uploads)


def test_a_worker_that_cannot_see_the_tree_fails_each_file_naming_itself(
    tmp_path: Path, s3, cluster
) -> None:
    missing = str(tmp_path / "not-mounted-here")
    items = tuple(
        TransferItem(f"{missing}/f{i}.fits", f"edr/f{i}.fits", 10, root=missing, rel=f"f{i}.fits")
        for i in range(3)
    )
    spec = SendSpec("crt", S3Target("anything", endpoint_url=s3.endpoint_url), 2, 8 << 20)
    outcome = cluster.submit(send_chunk, spec, items, pure=False).result(timeout=60)
    assert [r.item.key for r in outcome.results] == [i.key for i in items]
    for result in outcome.results:
        assert not result.ok
        assert result.retryable
        assert result.worker == outcome.worker
        assert "cannot see the source tree" in result.error
        assert f"(on worker {outcome.worker})" in result.error


_SHORT_CONNECT = """
import sys
import desimirror.cli, desimirror.pipeline.executors as executors
executors.CONNECT_SECONDS = 1
desimirror.cli.main(sys.argv[1:])
"""


def test_an_unreachable_scheduler_is_one_line_and_sends_nothing(
    planned: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = planned
    args = [*target_args(db, bucket, s3), "--scheduler", "tcp://127.0.0.1:9"]
    proc = subprocess.run(
        [sys.executable, "-c", _SHORT_CONNECT, "upload", *args],
        capture_output=True, text=True, env=cli_env, timeout=120,
    )  # fmt: skip
    assert_clean_error(proc, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert proc.returncode == 2
    assert _rows(db, "SELECT count(*) FROM uploads") == [(0,)]


def test_s5cmd_is_refused_on_a_cluster(planned: Path, s3, bucket: str) -> None:
    db = planned
    args = [*target_args(db, bucket, s3), "--scheduler", "tcp://127.0.0.1:9"]
    proc = run_cli("upload", *args, "--backend", "s5cmd")
    assert_clean_error(proc, "--scheduler sends with crt or native")


def test_the_coordinator_killed_mid_run_resumes_without_sending_again(
    planned: Path, tmp_path: Path, s3, bucket: str, cli_env: dict, cluster
) -> None:
    db = _copy_of(planned, tmp_path)
    args = [*target_args(db, bucket, s3), "--scheduler", cluster.scheduler.address]
    args += ["--workers", "2", "--json"]
    # in flight at the kill: chunks on the workers, adopted or sent by the next run
    after = kill_upload_then_resume(db, args, cli_env)
    assert assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr")) == len(after)


def test_a_scheduler_lost_mid_run_stops_cleanly_and_the_next_run_resumes(
    planned: Path, tmp_path: Path, s3, bucket: str, cli_env: dict, cluster
) -> None:
    db = _copy_of(planned, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        **quiet,
    )
    worker = subprocess.Popen(
        [dask, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
        env=cli_env,
        **quiet,
    )
    try:
        _wait_for_a_worker(address)

        def kill_the_scheduler(_key: str) -> None:
            if scheduler.poll() is None and sum(proxy.puts.values()) >= 20:
                os.kill(scheduler.pid, signal.SIGKILL)

        with FaultProxy(s3.endpoint_url) as proxy:
            proxy.on_put = kill_the_scheduler
            args = ["--db", str(db), "--bucket", f"s3://{bucket}", "--workers", "2"]
            lost = run_cli(
                "upload", *args, "--endpoint-url", proxy.endpoint_url, "--scheduler", address,
                env=cli_env,
            )  # fmt: skip
    finally:
        processes.stop(worker, terminate_first=False)
        processes.stop(scheduler, terminate_first=False)
    assert_clean_error(lost, "lost the Dask scheduler")
    assert lost.returncode == 4
    resumed = run_cli("upload", *args, "--scheduler", cluster.scheduler.address, env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr")) > 0


def _wait_for_a_worker(address: str) -> None:
    from distributed import Client

    with Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=60)
