"""The mirror end to end against a real SeaweedFS: crawl → plan → upload → verify.

Every test drives the installed ``desimirror`` command as a data manager would and checks
what users rely on: the bytes in the bucket are the bytes on disk, a killed upload resumes
without loss, and bad input gets one clear line.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from desimirror.state.manifest import Manifest
from desimirror.storage.keys import KeyMap
from desimirror.storage.transfer import TransferItem
from desimirror.storage.transfer.proving import chunk_items
from helpers import DESIMIRROR, assert_clean_error, kill_once, run_cli

pytestmark = pytest.mark.s3
REMAP = ("--remap", "edr/spectro/data=raw_spectro_data", "--remap", "edr/target=target")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic release shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("rel") / "edr"
    run_cli("synth", str(root), "--scale", "0.05", "--seed", "7", check=True)
    return root


def crawl_and_plan(root: Path, db: Path, *plan_args: str) -> None:
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", "2MB", *plan_args, check=True)


def target_args(db: Path, bucket: str, s3) -> list[str]:
    return ["--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url]


def assert_bucket_equals_disk(s3, bucket: str, db: Path, keymap: KeyMap) -> int:
    """Every uploadable file's object exists and holds exactly the file's bytes."""
    client = s3.client()
    with Manifest.open(db) as manifest:
        root = Path(manifest.root)
        entries = list(manifest.iter_uploadables())
    for entry in entries:
        body = client.get_object(Bucket=bucket, Key=keymap.key(entry.path))["Body"].read()
        assert body == (root / entry.path).read_bytes(), entry.path
    return len(entries)


def all_keys(s3, bucket: str) -> set[str]:
    paginator = s3.client().get_paginator("list_objects_v2")
    return {
        o["Key"] for page in paginator.paginate(Bucket=bucket) for o in page.get("Contents", [])
    }


@pytest.mark.parametrize("backend", ["s5cmd", "native"])
def test_upload_then_verify_bucket_equals_disk(
    release: Path, tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str
) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    args = target_args(db, bucket, s3)
    sent = run_cli("upload", *args, *REMAP, "--backend", backend, "--json", env=cli_env)
    assert sent.returncode == 0, sent.stderr
    report = json.loads(sent.stdout)
    assert report["files_sent"] > 0
    assert report["pending_files"] == 0

    checked = run_cli("verify", *args, "--json", env=cli_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    verdict = json.loads(checked.stdout)
    assert verdict["complete"]
    assert verdict["missing"] == verdict["differ"] == 0
    assert verdict["matched"] == report["files_sent"]

    keymap = KeyMap.build("edr", REMAP[1::2])
    assert assert_bucket_equals_disk(s3, bucket, db, keymap) == report["files_sent"]
    keys = all_keys(s3, bucket)
    assert any(k.startswith("raw_spectro_data/") for k in keys)
    assert not any(k.startswith("edr/spectro/data/") for k in keys)

    # symlinks that leave the tree (or dangle) are never uploaded
    with Manifest.open(db) as manifest:
        links = [e for e in _all_entries(manifest) if e.kind == "link"]
    assert any(e.link_kind == "outside" for e in links), "synth should make an outside link"
    for link in links:
        if link.link_kind != "file":
            assert keymap.key(link.path) not in keys, link

    again = run_cli("upload", *args, *REMAP, "--backend", backend, "--json", env=cli_env)
    assert again.returncode == 0
    assert json.loads(again.stdout)["files_sent"] == 0


def _all_entries(manifest: Manifest):
    rows = manifest.conn.execute(f"SELECT {Manifest._COLS} FROM entries")
    return [manifest._entry(r) for r in rows]


def test_kill_minus_9_then_resume_loses_nothing(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    run_cli("synth", str(root), "--scale", "0.3", "--seed", "3", check=True)
    db = tmp_path / "mirror.db"
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", "200kB", check=True)
    args = [*target_args(db, bucket, s3), "--workers", "4", "--json"]
    kill_upload_then_resume(db, args, cli_env)

    checked = run_cli("verify", *target_args(db, bucket, s3), env=cli_env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr"))


def kill_upload_then_resume(db: Path, args: list[str], env: dict) -> dict[str, float]:
    """``upload ARGS`` (with ``--json``) killed -9 once it has confirmed 20 files, then run
    again: what was confirmed before the kill is not sent again, and a file stored just
    before the kill but not yet confirmed is adopted, not sent again. Returns the
    confirmations after the second run."""
    victim = subprocess.Popen(
        [DESIMIRROR, "upload", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_once(
        victim,
        lambda: len(uploaded_at(db)) >= 20,
        120,
        "upload finished before it could be killed: grow the tree",
    )
    before = uploaded_at(db)  # what the db holds after the kill
    assert len(before) > 0
    resumed = run_cli("upload", *args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    after = uploaded_at(db)
    assert all(after[path] == stamp for path, stamp in before.items())
    report = json.loads(resumed.stdout)
    assert report["files_sent"] + report["files_adopted"] == len(after) - len(before)
    return after


def uploaded_at(db: Path) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        return dict(conn.execute("SELECT path, uploaded_at FROM uploads"))
    finally:
        conn.close()


def test_max_batches_stops_cleanly_then_finishes(
    release: Path, tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    args = target_args(db, bucket, s3)
    first = run_cli("upload", *args, "--max-batches", "1", "--json", env=cli_env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["batches_run"] == 1
    assert report["stopped_early"]
    assert report["pending_files"] > 0

    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert status["pending_files"] == report["pending_files"]
    assert status["done_files"] == report["files_sent"]

    rest = run_cli("upload", *args, "--json", env=cli_env)
    assert rest.returncode == 0
    assert json.loads(rest.stdout)["pending_files"] == 0
    assert run_cli("verify", *args, env=cli_env).returncode == 0


def test_changed_file_is_not_recorded_until_recrawled(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    run_cli("synth", str(root), "--scale", "0.05", "--seed", "11", check=True)
    db = tmp_path / "mirror.db"
    crawl_and_plan(root, db)
    with Manifest.open(db) as manifest:
        victim = next(e for e in manifest.iter_uploadables() if e.kind == "file" and e.size > 10)
    (root / victim.path).write_bytes(b"rewritten after the crawl")

    args = target_args(db, bucket, s3)
    proc = run_cli("upload", *args, env=cli_env)
    assert_clean_error(proc, "changed")
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert status["failed"].get("changed") == 1
    assert any(f["path"] == victim.path for f in status["failures"])
    assert run_cli("verify", *args, env=cli_env).returncode != 0  # the file is missing

    run_cli("crawl", str(root), "--db", str(db), check=True)
    assert run_cli("upload", *args, env=cli_env).returncode == 0
    assert run_cli("verify", *args, env=cli_env).returncode == 0
    body = s3.client().get_object(Bucket=bucket, Key=f"edr/{victim.path}")["Body"].read()
    assert body == b"rewritten after the crawl"


def test_verify_finds_missing_and_unexpected_and_upload_repairs(
    release: Path, tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    args = target_args(db, bucket, s3)
    assert run_cli("upload", *args, env=cli_env).returncode == 0
    client = s3.client()
    gone = sorted(k for k in all_keys(s3, bucket))[3]
    client.delete_object(Bucket=bucket, Key=gone)
    client.put_object(Bucket=bucket, Key="edr/not/in/the/release.txt", Body=b"x")

    report_file = tmp_path / "problems.txt"
    proc = run_cli("verify", *args, "--json", "--report", str(report_file), env=cli_env)
    assert proc.returncode != 0
    verdict = json.loads(proc.stdout)
    assert verdict["missing"] == 1
    assert verdict["unexpected"] == 1
    assert verdict["returned_to_pending"] == 1
    assert report_file.read_text().splitlines() == [
        f"- {gone}",
        "+ edr/not/in/the/release.txt",
    ]
    repaired = run_cli("upload", *args, "--json", env=cli_env)
    assert json.loads(repaired.stdout)["files_sent"] == 1
    assert run_cli("verify", *args, env=cli_env).returncode == 0
    assert run_cli("verify", *args, "--strict", env=cli_env).returncode != 0


def test_odd_names_round_trip(tmp_path: Path, s3, bucket: str, cli_env: dict) -> None:
    root = tmp_path / "edr"
    names = [
        "sp ace.fits",
        "quo'te.txt",
        'dq"uote.txt',
        "hash#1.txt",
        "ünï cødé.fits",
        "star*.txt",
        "q?.txt",
        "[br].txt",
        "back\\slash.txt",
        "dollar$HOME.txt",
        "per%cent+plus=eq.txt",
    ]
    (root / "odd dir").mkdir(parents=True)
    for i, name in enumerate(names):
        (root / "odd dir" / name).write_bytes(f"{i} {name}".encode())
    db = tmp_path / "mirror.db"
    crawl_and_plan(root, db)
    for backend in ("s5cmd", "native"):
        with Manifest.open(db) as manifest:
            manifest.conn.execute("DELETE FROM uploads")
        proc = run_cli("upload", *target_args(db, bucket, s3), "--backend", backend, env=cli_env)
        assert proc.returncode == 0, proc.stderr
        assert assert_bucket_equals_disk(s3, bucket, db, KeyMap.build("edr")) == len(names)


# -- bad input: one clear line, a non-zero exit, nothing lost --------------------------


def test_unreachable_endpoint(release: Path, tmp_path: Path, cli_env: dict) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    proc = run_cli(
        "upload",
        "--db",
        str(db),
        "--bucket",
        "s3://desidata",
        "--endpoint-url",
        "http://127.0.0.1:9",
        env=cli_env,
    )
    assert_clean_error(proc, "127.0.0.1:9")


def test_missing_bucket(release: Path, tmp_path: Path, s3, cli_env: dict) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    proc = run_cli("upload", *target_args(db, "no-such-bucket-here", s3), env=cli_env)
    assert_clean_error(proc, "no-such-bucket-here")


def test_wrong_credentials_never_print_the_secret(
    release: Path, tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    secret = "wR0ngS3cretValue/ShouldNeverBePrinted+x"
    env = {**cli_env, "AWS_SECRET_ACCESS_KEY": secret}
    for command in ("upload", "verify"):
        proc = run_cli(command, *target_args(db, bucket, s3), "--json", env=env)
        assert_clean_error(proc)
        assert secret not in proc.stdout + proc.stderr
    assert secret.encode() not in db.read_bytes()


def test_invalid_bucket_and_size(release: Path, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    run_cli("crawl", str(release), "--db", str(db), check=True)
    assert_clean_error(run_cli("plan", "--db", str(db), "--max-batch-size", "lots"), "lots")
    assert_clean_error(run_cli("upload", "--db", str(db), "--bucket", "s3://X"), "invalid bucket")


def test_remap_collision_is_refused(tmp_path: Path, s3, bucket: str, cli_env: dict) -> None:
    root = tmp_path / "edr"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "same.txt").write_text("from a")
    (root / "b" / "same.txt").write_text("from b")
    db = tmp_path / "mirror.db"
    crawl_and_plan(root, db)
    proc = run_cli("upload", *target_args(db, bucket, s3), "--remap", "edr/a=edr/b", env=cli_env)
    assert_clean_error(proc, "share the key")
    assert all_keys(s3, bucket) == set()


def test_missing_root_and_foreign_or_corrupt_db(tmp_path: Path, release: Path) -> None:
    assert_clean_error(run_cli("crawl", str(tmp_path / "nope"), "--db", str(tmp_path / "m.db")))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.commit()
    conn.close()
    for db in (garbage, foreign):
        before = db.read_bytes()
        for args in (("crawl", str(release)), ("status",), ("plan",)):
            assert_clean_error(run_cli(*args, "--db", str(db)))
        assert db.read_bytes() == before

    other = tmp_path / "other-release"
    other.mkdir()
    (other / "f.txt").write_text("x")
    db = tmp_path / "mirror.db"
    run_cli("crawl", str(release), "--db", str(db), check=True)
    assert_clean_error(run_cli("crawl", str(other), "--db", str(db)), "another --db")


def test_upload_to_another_target_is_refused(
    release: Path, tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "mirror.db"
    crawl_and_plan(release, db)
    args = target_args(db, bucket, s3)
    assert run_cli("upload", *args, "--max-batches", "1", env=cli_env).returncode == 0
    proc = run_cli("upload", *args, "--prefix", "elsewhere", env=cli_env)
    assert_clean_error(proc, "another --db")


def test_demo_from_a_relative_dir_proves_serves_a_readable_bucket_and_stops_its_server(
    tmp_path: Path,
) -> None:
    # `make demo` passes a relative --dir; the embedded server runs with its data dir as cwd.
    # With --serve the bucket stays up, readable without keys, until SIGTERM.
    import re

    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    log = tmp_path / "demo.log"
    with open(log, "w") as err:
        demo = subprocess.Popen(
            [DESIMIRROR, "demo", "--dir", "demo", "--scale", "0.05", "--serve"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert demo.stdout is not None
        lines: list[str] = []
        for _ in range(40):  # the summary, then the commands to look at it
            lines.append(demo.stdout.readline())
            if "runs until Ctrl-C" in lines[-1] or not lines[-1]:
                break
        text = "".join(lines) + log.read_text()
        verify_line = next(line for line in lines if line.startswith("verify"))
        matched, expected = (int(n) for n in verify_line.split()[1:4:2])
        assert matched == expected > 0
        assert f"content proven for {expected}; complete: True" in verify_line
        (run_dir,) = (tmp_path / "demo").iterdir()
        look = next(i for i, line in enumerate(lines) if line.startswith("look"))
        assert lines[look].split() == [
            "look", "on", "disk:", "desimirror", "jupyter", "--release", "edr", "--local",
            str(Path("demo") / run_dir.name),
        ], text  # fmt: skip
        match = re.search(
            r"in the bucket: desimirror jupyter .*--endpoint-url (\S+) --no-sign-request",
            lines[look + 1],
        )
        assert match, text
        assert "--bucket s3://desidata" in lines[look + 1]
        client = boto3.client(
            "s3", endpoint_url=match.group(1), config=Config(signature_version=UNSIGNED)
        )
        listed = client.list_objects_v2(Bucket="desidata", Prefix="edr/spectro/redux/fuji/")
        assert listed["KeyCount"] > 0  # readable without keys, as the printed command needs
    finally:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=60) == 0
    assert not any(
        _cwd_is(p, run_dir / "s3") for p in Path("/proc").iterdir() if p.name.isdigit()
    ), "the demo's server is still running"


def _cwd_is(proc_dir: Path, path: Path) -> bool:
    try:
        return Path(os.readlink(proc_dir / "cwd")) == path.resolve()
    except OSError:
        return False


def test_the_seed_makefile_interface_runs_from_an_operators_directory(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    # the original's variables: DESI_ROOT, DESI_RELEASE (any case); outputs go to the cwd
    public = tmp_path / "public"
    run_cli("synth", str(public / "edr"), "--scale", "0.05", "--seed", "3", check=True)
    work = tmp_path / "operator"
    work.mkdir()
    makefile = Path(__file__).resolve().parent.parent / "Makefile"
    env = {**cli_env, "DESI_ROOT": str(public), "DESI_RELEASE": "EDR"}
    make = [
        "make",
        "-f",
        str(makefile),
        f"VENV={Path(DESIMIRROR).parent.parent}",
        f"bucket=s3://{bucket}",
        "crawl_workers=8",
    ]
    for target in ("find.json", "batch.json", "upload", "verify"):
        proc = subprocess.run(
            [*make, target], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"make {target}:\n{proc.stdout}\n{proc.stderr}"
    tree = json.loads((work / "find.json").read_text())
    assert tree[0] == "edr"
    assert tree[1] == 0  # a directory, sized as the sum of its files
    assert json.loads((work / "batch.json").read_text())["batches"]
    assert (work / "edr.db").exists()
    keys = all_keys(s3, bucket)
    assert any(k.startswith("raw_spectro_data/") for k in keys)  # the seed's remaps
    assert any(k.startswith("target/") for k in keys)
    assert not any(k.startswith(("edr/spectro/data/", "edr/target/")) for k in keys)
    with Manifest.open(work / "edr.db") as manifest:
        assert manifest.root == str(public / "edr")


@given(
    dirs=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=20),
    max_files=st.integers(min_value=1, max_value=25),
)
def test_chunks_cover_the_batch_in_order_and_cut_between_directories(
    dirs: list[int], max_files: int
) -> None:
    items = [
        TransferItem(f"/src/d{d}/f{i}", f"k/d{d}/f{i}", 1, rel=f"d{d}/f{i}")
        for d, count in enumerate(dirs)
        for i in range(count)
    ]
    chunks = chunk_items(items, max_files, max_bytes=1 << 40)
    assert [item for chunk in chunks for item in chunk] == items
    assert all(len(chunk) <= 2 * max_files for chunk in chunks)
    for chunk, following in itertools.pairwise(chunks):
        same_dir = chunk[-1].rel.split("/")[0] == following[0].rel.split("/")[0]
        # a directory is cut only where the chunk reached twice the limit
        assert not same_dir or len(chunk) == 2 * max_files
        assert len(chunk) >= max_files  # never cut before the chunk is full
