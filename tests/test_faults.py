"""Faults: a hostile network, a throttling store, kill -9, files that change, damaged state.

Uploads go through :class:`faultproxy.FaultProxy` in front of the real SeaweedFS; proofs
are taken directly from SeaweedFS (``verify --checksum`` and byte-for-byte reads), never
through the proxy. Nothing here asserts a wall-clock time.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import DESIMIRROR, assert_clean_error, run_cli
from integrity_helpers import (
    MiB,
    bucket_matches_disk,
    count_files,
    make_release,
    prepare,
    random_files,
    rows,
    upload,
    uploads,
    verify,
)

pytestmark = pytest.mark.s3
EVERY_FAULT = ("slowdown", "error500", "reset", "stall", "truncate")


@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_upload_through_ten_percent_of_every_fault_is_complete_and_intact(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy, backend: str
) -> None:
    root = tmp_path / "edr"
    files = random_files(11, 30, dirs=3)
    files["big/zcatalog.fits"] = os.urandom(11 * MiB)  # 3 parts of 5 MiB
    make_release(root, files)
    db = tmp_path / "m.db"
    prepare(root, db)
    fault_proxy.rates = {kind: 0.10 for kind in EVERY_FAULT}
    fault_proxy.stall_seconds = 0.3
    args = ("--backend", backend, "--workers", "8", "--retries", "8", "--backoff", "0.05")
    proc, report = upload(
        db, bucket, fault_proxy.endpoint_url, cli_env, *args, "--part-size", "5MiB"
    )
    assert proc.returncode == 0, proc.stderr
    assert report["pending_files"] == 0
    assert report["files_failed"] == 0
    assert all(fault_proxy.faults[kind] > 0 for kind in EVERY_FAULT), fault_proxy.faults
    # what is recorded as done is in the bucket, intact (read directly, not via the fault_proxy)
    client = s3.client()
    assert bucket_matches_disk(client, bucket, root, db) == count_files(root)
    checked, verdict = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert verdict["content_ok"] == verdict["expected_files"] == count_files(root)
    print(f"\n{backend}: faults {dict(fault_proxy.faults)}, PUTs {sum(fault_proxy.puts.values())}")


def test_sustained_slowdown_backs_off_and_lowers_concurrency(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(12, 40, dirs=1, high=20_000))
    db = tmp_path / "m.db"
    prepare(root, db)
    workers = 8
    fault_proxy.methods = {"PUT"}
    fault_proxy.rates = {"stall": 1.0}  # every PUT takes a moment, so that PUTs overlap
    fault_proxy.stall_seconds = 0.1
    # the first round of files is refused on every attempt botocore makes (1 + 3 retries)...
    attempts = 4
    fault_proxy.slowdown_keys, fault_proxy.slowdown_per_key = workers, attempts
    fault_proxy.error_delay = 0.5  # ... after a moment, so that the whole first round overlaps
    args = ("--backend", "native", "--workers", str(workers), "--backoff", "0.2")
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env, *args)
    assert proc.returncode == 0, proc.stderr
    assert report["pending_files"] == 0
    throttle = report["concurrency"]
    assert throttle["throttle_events"] >= attempts * workers
    assert throttle["concurrency_decreases"] >= 1
    assert throttle["workers_lowest"] <= workers // 2
    assert report["retries"] >= workers  # the refused files went again, after a backoff
    assert report["backoff_seconds"] > 0
    puts = [a for a in fault_proxy.arrivals if a.method == "PUT"]
    refused = [a for a in puts if a.fault == "slowdown"]
    assert max(a.puts_in_flight for a in refused) > workers // 2, refused  # all were busy
    # other files start only as the lowered limit allows, and it grows back one worker per
    # round of clean completions: never all workers at once
    first_of_new_keys = [
        a
        for a in puts
        if a.key not in fault_proxy.throttled_keys
        and fault_proxy.arrivals.index(a) > refused[0].seq
    ]
    assert max(a.puts_in_flight for a in first_of_new_keys[:workers]) <= workers // 2 + 1
    assert verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")[0].returncode == 0


def test_twenty_kills_converge_and_never_resend_what_was_confirmed(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(13, 150, dirs=4, low=5_000, high=50_000))
    db = tmp_path / "m.db"
    prepare(root, db)
    fault_proxy.methods = {"PUT"}
    fault_proxy.rates = {"stall": 1.0}
    fault_proxy.stall_seconds = 0.1
    rng = random.Random(6)
    confirmed_at: dict[str, int] = {}  # key -> PUTs seen when the db first had it confirmed
    stamps: dict[str, float] = {}
    kills = 0
    for attempt in range(20):
        backend = ("native", "s5cmd")[attempt % 2]
        victim = subprocess.Popen(
            [
                DESIMIRROR,
                "upload",
                "--db",
                str(db),
                "--bucket",
                f"s3://{bucket}",
                "--endpoint-url",
                fault_proxy.endpoint_url,
                "--backend",
                backend,
                "--workers",
                "4",
                "--json",
            ],
            env=cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # a random moment: after a few PUTs (mid-transfer, mid-commit) or after a random
            # time (start-up, the checksum sync, the lookups)
            sent_before = sum(fault_proxy.puts.values())
            enough = sent_before + rng.randint(1, 6)
            deadline = time.monotonic() + (rng.uniform(0.05, 1.0) if rng.random() < 0.3 else 60)
            while time.monotonic() < deadline and victim.poll() is None:
                if sum(fault_proxy.puts.values()) >= enough:
                    break
                time.sleep(0.005)
            if victim.poll() is None:
                os.kill(victim.pid, signal.SIGKILL)
                kills += 1
            victim.wait(timeout=30)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait(timeout=30)
        assert rows(db, "PRAGMA quick_check") == [("ok",)]
        for path, (key, _, _, stamp) in uploads(db).items():
            confirmed_at.setdefault(key, fault_proxy.puts[key])
            stamps.setdefault(path, stamp)
    assert kills == 20, "an upload finished before it could be killed: grow the tree"
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    assert report["pending_files"] == 0
    # files confirmed before a kill were never sent again, and their records never rewritten
    resent = {
        k: (n, fault_proxy.puts[k]) for k, n in confirmed_at.items() if fault_proxy.puts[k] != n
    }
    assert resent == {}
    after = uploads(db)
    assert all(after[path][3] == stamp for path, stamp in stamps.items())
    assert len(after) == count_files(root)
    checked, _ = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert checked.returncode == 0, checked.stdout
    assert bucket_matches_disk(s3.client(), bucket, root, db) == count_files(root)
    total = sum(fault_proxy.puts.values())
    print(f"\n{kills} kills; {total} PUTs for {len(after)} files; {len(confirmed_at)} confirmed")


@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_a_file_modified_while_its_put_is_in_flight_is_not_recorded(
    tmp_path: Path, bucket: str, cli_env: dict, fault_proxy, backend: str
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(14, 6, dirs=1))
    db = tmp_path / "m.db"
    prepare(root, db)
    victim = root / "d0/sub0/f0002.fits"
    touched: list[str] = []

    def modify(key: str) -> None:
        if key == "edr/d0/sub0/f0002.fits" and not touched:
            touched.append(key)
            with open(victim, "ab") as stream:
                stream.write(b"appended while the PUT was in flight")

    fault_proxy.on_put = modify
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env, "--backend", backend)
    assert touched
    assert_clean_error(proc, "changed")
    assert report["files_changed"] == 1, report["errors"]
    assert report["files_sent"] == count_files(root) - 1
    assert "d0/sub0/f0002.fits" not in uploads(db)
    failures = rows(db, "SELECT path, reason, error FROM failures")
    assert failures == [("d0/sub0/f0002.fits", "changed", failures[0][2])]
    assert "changed" in failures[0][2]


WRITER = textwrap.dedent(
    """
    import sys
    from desimirror.state.manifest import Manifest, UploadRecord
    manifest = Manifest.open(sys.argv[1], create=True)
    print("open", flush=True)
    n = 0
    while True:
        records = [UploadRecord(f"p{n}/{i}", f"k/{n}/{i}", i, i, "e" * 32, "0" * 64)
                   for i in range(1000)]
        with manifest.atomic():
            manifest.record_mirrored(records)
        n += 1
    """
)


def test_the_state_db_survives_kill_9_in_the_middle_of_writes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    rng = random.Random(3)
    for _ in range(5):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
        )
        try:
            # the kill must land among the writes, however slowly a loaded machine starts it
            assert select.select([writer.stdout], [], [], 120)[0], "the writer never opened"
            assert writer.stdout.readline() == "open\n"
            time.sleep(rng.uniform(0.1, 0.5))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            count = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
        finally:
            conn.close()
        assert count % 1000 == 0  # whole transactions, never half of one
    assert count > 0
    assert run_cli("status", "--db", str(db), "--json").returncode == 0


def test_a_corrupt_foreign_or_cut_db_is_refused_and_left_alone(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(15, 30, dirs=2))
    good = tmp_path / "good.db"
    prepare(root, good)
    assert upload(good, bucket, s3.endpoint_url, cli_env)[0].returncode == 0
    conn = sqlite3.connect(good)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.executescript(
        "CREATE TABLE meta (key TEXT, value TEXT); INSERT INTO meta VALUES ('app', 'x');"
    )
    conn.close()
    cut = tmp_path / "cut.db"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    target = ["--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url]
    commands = [
        (["upload"], target),
        (["verify"], ["--checksum", *target]),
        (["status"], []),
        (["manifest", "checksums"], []),
        (["manifest", "publish"], target),
    ]
    for db in (garbage, foreign, cut):
        before = db.read_bytes()
        for command, extra in commands:
            proc = run_cli(*command, "--db", str(db), *extra, env=cli_env)
            assert_clean_error(proc)
            assert proc.returncode == 3, (db.name, command, proc.stderr)
        assert db.read_bytes() == before, db.name


def test_secrets_never_reach_output_state_or_reports(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    secret = cli_env["AWS_SECRET_ACCESS_KEY"]
    key_id = cli_env["AWS_ACCESS_KEY_ID"]
    root = tmp_path / "edr"
    make_release(root, random_files(16, 20, dirs=2))
    db = tmp_path / "m.db"
    prepare(root, db)
    outputs: list[str] = []

    def run(*args: str, env: dict = cli_env) -> subprocess.CompletedProcess:
        proc = run_cli(*args, env=env)
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    target = ["--db", str(db), "--bucket", f"s3://{bucket}"]
    # a store that echoes the request headers (the signature, the key id) in its errors
    fault_proxy.rates = {"echo_auth": 0.8}
    fault_proxy.methods = {"PUT"}
    for json_flag in ((), ("--json",)):
        run(
            "upload",
            *target,
            "--endpoint-url",
            fault_proxy.endpoint_url,
            "--backend",
            "native",
            "--retries",
            "0",
            "--backoff",
            "0",
            *json_flag,
        )
    assert fault_proxy.faults["echo_auth"] > 0
    assert any("Credential=***" in o for o in outputs), outputs  # the echo, redacted
    fault_proxy.rates = {}
    run("upload", *target, "--endpoint-url", fault_proxy.endpoint_url)
    report_file = tmp_path / "report.txt"
    run(
        "verify",
        *target,
        "--endpoint-url",
        s3.endpoint_url,
        "--checksum",
        "--report",
        str(report_file),
    )
    run("status", "--db", str(db), "--json")
    run("status", "--db", str(db))
    run("manifest", "checksums", "--db", str(db), "--json")
    run("manifest", "publish", *target, "--endpoint-url", s3.endpoint_url, "--json")
    wrong = "Wr0ng+Secret/Value-ThatMustNotShow"
    for command in ("upload", "verify"):
        run(
            command,
            *target,
            "--endpoint-url",
            fault_proxy.endpoint_url,
            "--json",
            env={**cli_env, "AWS_SECRET_ACCESS_KEY": wrong},
        )
    stored = (
        b"".join(p.read_bytes() for p in tmp_path.glob("m.db*") if p.is_file())
        + report_file.read_bytes()
    )
    for value in (secret, key_id, wrong):
        assert not any(value in o for o in outputs), value
        assert value.encode() not in stored, value
    assert rows(
        db,
        "SELECT count(*) FROM failures WHERE error LIKE '%Signature=%' "
        "AND error NOT LIKE '%Signature=***%'",
    ) == [(0,)]


def test_s5cmd_error_lines_lose_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """s5cmd's own error text goes through the same redaction as boto3's."""
    from desimirror.storage.transfer import S3Target, TransferItem
    from desimirror.storage.transfer.s5cmd import _Book

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE1234")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t/Value+xyz")
    book = _Book(S3Target("b"))
    item = TransferItem("/x/a.fits", "edr/a.fits", 1)
    book.add(item)
    line = json.dumps(
        {
            "operation": "cp",
            "command": "cp --raw /x/a.fits s3://b/edr/a.fits",
            "error": "InternalError: bad Authorization: AWS4-HMAC-SHA256 "
            "Credential=AKIDEXAMPLE1234/20240101/us-east-1/s3/aws4_request, "
            "Signature=0123abcd; also s3cr3t/Value+xyz",
        }
    )
    assert book.line("err", line) is None
    (result,) = list(book.leftovers())
    assert not result.ok
    for secret in ("AKIDEXAMPLE1234", "s3cr3t/Value+xyz", "0123abcd"):
        assert secret not in (result.error or "")
