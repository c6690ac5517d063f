"""What confused first-time users (issue 13), each checked through the command as they ran it.

The upload tests run against the session's real SeaweedFS; the Ctrl-C test runs the
command on a real pseudo-terminal, presses Ctrl-C there (the terminal sends SIGINT to the
whole foreground group and echoes ``^C``, as a user's terminal does) and replays what was
drawn on a screen of the same width.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from desimirror.progress import LineProgress
from helpers import DESIMIRROR, assert_clean_error, run_cli

REMAP = ("--remap", "edr/spectro/data=raw_spectro_data", "--remap", "edr/target=target")
FILES = {
    "spectro/data/a.fits": b"a" * 100,
    "target/t.fits": b"t" * 50,
    "doc/readme.txt": b"hello",
}


def tiny_release(tmp_path: Path, files: dict[str, bytes] = FILES) -> Path:
    root = tmp_path / "edr"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def crawl_and_plan(root: Path, db: Path, max_batch: str = "60") -> None:
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", max_batch, "--min-batch-size", "1",
            check=True)  # fmt: skip


def all_keys(s3, bucket: str) -> set[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return {o["Key"] for o in listing.get("Contents", [])}


def flat(text: str) -> str:
    """Help text with click's line wrapping undone."""
    return " ".join(text.split())


# -- progress and status: one rate, one ETA, and the phase ---------------------------------


def test_piped_progress_names_each_phase_and_no_eta_before_it_means_something() -> None:
    out = io.StringIO()
    bar = LineProgress(interval=3600, stream=out)
    bar.start("upload", 10_491, 300 * 10**12)
    bar.phase("listing the bucket")
    bar.phase("hashing")
    bar.advance(1, 1000)
    bar.phase("sending")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("upload (listing the bucket): 0/10,491 files")
    assert lines[1].startswith("upload (hashing): 0/10,491 files")
    assert lines[2].startswith("upload (sending): 1/10,491 files, 1 kB/300 TB")
    assert len(lines) == 4  # and one when it closed
    assert "ETA" not in out.getvalue()  # a second's average says nothing about 300 TB


def test_status_and_the_bar_give_the_same_rate_and_eta(tmp_path: Path) -> None:
    root = tiny_release(tmp_path)
    db = tmp_path / "m.db"
    crawl_and_plan(root, db)
    conn = sqlite3.connect(db)
    with conn:  # an old slow run, then the one going on now: 396 MB in 20 s
        conn.execute("INSERT INTO upload_runs (started, finished, files, bytes) "
                     "VALUES (0, 1000, 10, 1000000000)")  # fmt: skip
        conn.execute("INSERT INTO upload_runs (started, finished, files, bytes) "
                     "VALUES (5000, 5020, 10, 396000000)")  # fmt: skip
    conn.close()
    report = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert report["bytes_per_second"] == 19_800_000.0  # the run going on, as its bar says
    assert report["eta_seconds"] == round(report["pending_bytes"] / 19_800_000)

    # the bar of that run, 20 s and 396 MB in, shows the same words
    out = io.StringIO()
    bar = LineProgress(interval=3600, stream=out)
    bar.start("upload", 3, 396_000_000 + report["pending_bytes"])
    bar.t0 -= 20.0
    bar.advance(10, 396_000_000)
    bar.close()
    shown = "19.8 MB/s, ETA 0s"
    assert out.getvalue().endswith(f", {shown}\n")
    text = run_cli("status", "--db", str(db), check=True).stdout
    assert f"rate     {shown} (latest upload run" in text
    assert "over 2 runs" in text


# -- re-runs need no target flags; what upload says at the end -----------------------------


@pytest.mark.s3
def test_a_pinned_db_resumes_with_no_target_flags(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tiny_release(tmp_path)
    db = tmp_path / "m.db"
    crawl_and_plan(root, db)
    env = {k: v for k, v in cli_env.items() if k != "AWS_ENDPOINT_URL"}
    target = ["--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url, *REMAP]
    first = run_cli("upload", "--db", str(db), *target, "--max-batches", "1", env=env)
    assert first.returncode == 0, first.stderr
    assert "sent 1 file, " in first.stdout
    assert f"run 'desimirror upload --db {db} --max-batches 1' to go on" in first.stdout

    rest = run_cli("upload", "--db", str(db), env=env)  # the db knows bucket, remaps, endpoint
    assert rest.returncode == 0, rest.stderr
    assert "every planned file was confirmed when sent; 'desimirror verify' checks" in rest.stdout
    assert all_keys(s3, bucket) == {"raw_spectro_data/a.fits", "target/t.fits",
                                    "edr/doc/readme.txt"}  # fmt: skip
    status = run_cli("status", "--db", str(db), check=True).stdout
    assert "over 2 runs" in status
    assert "1 runs" not in status

    agreeing = run_cli("upload", "--db", str(db), "--bucket", f"s3://{bucket}", *REMAP, env=env)
    assert agreeing.returncode == 0, agreeing.stderr
    other = run_cli("upload", "--db", str(db), "--remap", "edr/target=elsewhere", env=env)
    assert_clean_error(other, "another --db")

    assert run_cli("verify", "--db", str(db), env=env).returncode == 0
    # a prefix in the bucket URL is the key prefix: one that is not the mirror's is refused
    wrong = run_cli("verify", "--db", str(db), "--bucket", f"s3://{bucket}/elsewhere", env=env)
    assert_clean_error(wrong, f"not s3://{bucket}/elsewhere/")


@pytest.mark.s3
def test_a_db_never_uploaded_asks_for_the_bucket(tmp_path: Path, cli_env: dict) -> None:
    db = tmp_path / "m.db"
    crawl_and_plan(tiny_release(tmp_path), db)
    proc = run_cli("upload", "--db", str(db), env=cli_env)
    assert_clean_error(proc, "--bucket is required", "not been uploaded anywhere yet")


def test_upload_help_says_what_the_options_mean_and_where_credentials_come_from() -> None:
    text = flat(run_cli("upload", "--help", check=True).stdout)
    for fragment in (
        "s3://NAME/PREFIX is the same as --prefix PREFIX",
        "--workers INTEGER RANGE Transfers in flight at once",
        "crt: each file read once and sent by the AWS Common Runtime with its SHA-256",
        "native: the same proofs sent by boto3",
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "~/.aws/credentials",
        "instance or container role",
        "'desimirror upload --db m.db' resumes",
    ):
        assert fragment in text, fragment


def test_crawl_and_plan_name_the_seed_files_they_write(tmp_path: Path) -> None:
    root = tiny_release(tmp_path)
    db = tmp_path / "m.db"
    find_json = tmp_path / "find.json"
    proc = run_cli("crawl", str(root), "--db", str(db), "--find-json", str(find_json), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["find_json"] == str(find_json)  # --json: the report
    assert json.loads(find_json.read_text())[0] == "edr"

    batch_json = tmp_path / "batch.json"
    proc = run_cli("plan", "--db", str(db), "--batch-json", str(batch_json), check=True)
    assert json.loads(batch_json.read_text())["batches"]
    assert "planned 1 batch for the whole tree: 3 files" in proc.stdout

    # the old spelling still works, and says what to write instead
    old = tmp_path / "old.json"
    proc = run_cli("crawl", str(root), "--db", str(db), "--json", str(old))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(old.read_text())[0] == "edr"
    assert f"use --find-json {old}" in proc.stderr
    proc = run_cli("plan", "--db", str(db), "--json", str(old))
    assert proc.returncode == 0
    assert json.loads(old.read_text())["batches"]
    assert f"use --batch-json {old}" in proc.stderr
    one = tiny_release(tmp_path / "one", {"a.fits": b"x"})
    summary = run_cli("crawl", str(one), "--db", str(tmp_path / "one.db"), check=True).stdout
    assert "2 entries (1 file, 1 dir, 0 symlinks, 0 other)" in summary
    assert "to upload: 1 file, 1 B; 0 errors" in summary


# -- names with a newline stay on their line; a changed file is not "corrupt" --------------


@pytest.mark.s3
def test_a_newline_in_a_name_does_not_split_status_lines(
    tmp_path: Path, bucket: str, cli_env: dict
) -> None:
    root = tiny_release(tmp_path, {**FILES, "doc/bad\nname.fits": b"x" * 10})
    db = tmp_path / "m.db"
    crawl_and_plan(root, db, max_batch="1MB")
    (root / "doc" / "bad\nname.fits").write_bytes(b"y" * 11)  # changed since the crawl
    proc = run_cli("upload", "--db", str(db), "--bucket", f"s3://{bucket}", env=cli_env)
    assert proc.returncode == 5, proc.stderr
    status = run_cli("status", "--db", str(db), check=True).stdout
    assert "  'doc/bad\\nname.fits': its size is 11 bytes, the crawl saw 10" in status
    assert not any(line.startswith("name.fits") for line in status.splitlines())


@pytest.mark.s3
def test_verify_calls_a_file_changed_since_the_crawl_changed_not_corrupt(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tiny_release(tmp_path)
    db = tmp_path / "m.db"
    crawl_and_plan(root, db, max_batch="1MB")
    client = s3.client()
    for rel, data in FILES.items():  # already there, recorded by size: no checksum kept
        client.put_object(Bucket=bucket, Key=f"edr/{rel}", Body=data)
    args = ["--db", str(db), "--bucket", f"s3://{bucket}"]
    sent = run_cli("upload", *args, "--adopt", "size", "--json", env=cli_env)
    assert json.loads(sent.stdout)["files_adopted"] == 3, sent.stderr
    (root / "doc" / "readme.txt").write_bytes(b"HELLO")  # same size, other bytes

    proc = run_cli("verify", *args, "--checksum", "--json", env=cli_env)
    assert proc.returncode == 5, proc.stderr
    report = json.loads(proc.stdout)
    assert report["corrupt"] == 0
    assert report["changed"] == 1
    assert report["examples"]["changed"][0].startswith("edr/doc/readme.txt: the file changed")
    text = run_cli("verify", *args, "--checksum", env=cli_env)
    assert "corrupt 0" in text.stdout
    assert "changed since the crawl 1" in text.stdout
    assert "1 changed since the crawl" in text.stderr.splitlines()[-1]


# -- env --data --------------------------------------------------------------------------


def test_env_warns_when_data_is_missing_or_is_the_release_itself(tmp_path: Path) -> None:
    missing = run_cli("env", "--release", "edr", "--data", str(tmp_path / "nope"))
    assert missing.returncode == 0
    assert "desimirror: warning:" in missing.stderr
    assert "does not exist" in missing.stderr
    assert "export DESI_ROOT=" in missing.stdout  # eval "$(...)" still gets its lines

    (tmp_path / "desidata" / "edr" / "spectro").mkdir(parents=True)
    inside = run_cli("env", "--release", "edr", "--data", str(tmp_path / "desidata" / "edr"))
    assert "looks like the release itself" in inside.stderr
    assert f"--data {tmp_path / 'desidata'}" in inside.stderr

    right = run_cli("env", "--release", "edr", "--data", str(tmp_path / "desidata"))
    assert right.returncode == 0
    assert right.stderr == ""


# -- Ctrl-C on a terminal ----------------------------------------------------------------

WIDTH = 72


def _screen(raw: bytes, width: int) -> list[str]:
    """The lines a terminal of ``width`` columns shows after ``raw``: printing wraps at the
    last column, CR, LF, erase-line and cursor-up move as a terminal does; colours and
    other escapes are dropped."""
    text = raw.decode("utf-8", "replace")
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        escape = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", text[i:])
        if escape:
            args, command = escape.groups()
            i += escape.end()
            if command == "K" and args == "2":
                rows[row] = []
            elif command == "A":
                row = max(0, row - int(args or 1))
            continue
        ch = text[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch.isprintable():
            if col >= width:
                row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        while len(rows) <= row:
            rows.append([])
    return ["".join(r).rstrip() for r in rows]


def _confirmed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


@pytest.mark.s3
def test_ctrl_c_draws_the_bar_once_and_says_what_was_saved(
    tmp_path: Path, bucket: str, cli_env: dict, fault_proxy
) -> None:
    files = {f"d{i // 40}/f{i:03d}.fits": bytes([i % 251]) * 1000 for i in range(400)}
    root = tiny_release(tmp_path, files)
    db = tmp_path / "m.db"
    crawl_and_plan(root, db, max_batch="1MB")
    fault_proxy.on_put = lambda _key: time.sleep(0.05)  # a slow store: a run of 20 s
    env = {k: v for k, v in cli_env.items() if k not in ("COLUMNS", "LINES", "AWS_ENDPOINT_URL")}
    env["TERM"] = "xterm"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, WIDTH, 0, 0))
    argv = [DESIMIRROR, "upload", "--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url",
            fault_proxy.endpoint_url, "--backend", "native", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # the pty is its terminal
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 120
        pressed = False
        while time.monotonic() < deadline:
            if not pressed and _confirmed(db) >= 5:
                os.write(master, b"\x03")  # Ctrl-C, typed on the terminal
                pressed = True
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed: the command has exited
                    break
                if not chunk:
                    break
                out += chunk
        assert pressed, "the upload never confirmed a file"
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        os.close(master)
    screen = _screen(out, WIDTH)
    bars = [line for line in screen if line.startswith("upload")]
    assert len(bars) == 1, "\n".join(screen)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))
    text = " ".join(text.replace("\r", "").split())
    assert text.count("desimirror: interrupted") == 1, text
    message = text[text.index("desimirror: interrupted") :]
    expected = r"desimirror: interrupted \(SIGINT\): [\d,]+ files of 400 \(.*\) confirmed"
    assert re.match(expected, message)
    assert "are saved in the state db" in message
    assert f"run 'desimirror upload --db {db} --bucket s3://{bucket}" in message
    assert "to resume" in message
