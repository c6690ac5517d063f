"""Before an upload starts: ``upload --dry-run`` sends nothing and counts right, and
``desimirror estimate`` counts the requests a real upload then makes.

Both against the real SeaweedFS, through a relay (tests/faultproxy.py, no faults) that
records every request it forwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from helpers import assert_clean_error, run_cli
from integrity_helpers import make_release, prepare, upload

pytestmark = pytest.mark.s3


def _kind(method: str, key: str, query: str) -> str:
    """What an S3 request is, from its method, key and query string."""
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    if method == "PUT":
        return "multipart_part" if "partNumber" in params else "put"
    if method == "POST":
        return "multipart_create" if "uploads" in params else "multipart_complete"
    if method == "HEAD":
        return "head" if key else "head_bucket"
    if method == "GET":
        return "get" if key else "list"
    if method == "DELETE" and "uploadId" in params:
        return "multipart_abort"
    return method.lower()


def _counts(proxy: FaultProxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in proxy.requests:
        kind = _kind(*request)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _listing(s3, bucket: str) -> dict[str, int]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Four directories of small files, one of few files, and files for multipart at 5 MiB."""
    root = tmp_path / "edr"
    files = {
        f"d{d}/f{i:02d}.fits": bytes([d, i]) * (500 + 37 * i) for d in range(4) for i in range(20)
    }
    files.update({f"few/g{i}.fits": b"x" * (100 + i) for i in range(3)})
    files["big/cube.fits"] = bytes(range(256)) * (44 * 1024)  # 11 MiB: 3 parts of 5 MiB
    files["big/slab.fits"] = b"s" * (5 << 20)  # exactly one part: a single PUT
    make_release(root, files)
    return root


def test_dry_run_sends_nothing_and_counts_what_would_be_sent_adopted_and_skipped(
    tmp_path: Path, release: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "m.db"
    prepare(release, db)
    proc, first = upload(db, bucket, s3.endpoint_url, cli_env, "--max-batches", "1")
    assert proc.returncode == 0, proc.stderr
    done_files, done_bytes = first["files_sent"], first["bytes_sent"]
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    pending = status["pending_files"]
    # an object already there for one pending file, with its size: adopted by --adopt size
    one = release / "d3" / "f07.fits"
    s3.client().put_object(Bucket=bucket, Key="edr/d3/f07.fits", Body=one.read_bytes())
    before = _listing(s3, bucket)

    with FaultProxy(s3.endpoint_url) as proxy:
        proc = run_cli(
            "upload", "--db", str(db), "--endpoint-url", proxy.endpoint_url,
            "--dry-run", "--json", env=cli_env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proxy.requests == []  # by default a dry run asks the store nothing
        offline = json.loads(proc.stdout)

        proc = run_cli(
            "upload", "--db", str(db), "--endpoint-url", proxy.endpoint_url,
            "--dry-run", "--check-bucket", "--adopt", "size", "--part-size", "5MiB", "--json",
            env=cli_env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        checked = json.loads(proc.stdout)
        assert {m for m, _, _ in proxy.requests} <= {"GET", "HEAD"}  # nothing written

    assert _listing(s3, bucket) == before
    assert offline["files_to_send"] == pending
    assert offline["files_skipped"] == done_files
    assert offline["bytes_skipped"] == done_bytes
    assert offline["files_to_adopt"] == 0
    assert not offline["bucket_checked"]
    assert checked["files_to_adopt"] == 1
    assert checked["bytes_to_adopt"] == one.stat().st_size
    assert checked["files_to_send"] == pending - 1
    assert checked["files_multipart"] == 1
    assert checked["parts_to_send"] == 3
    assert checked["lookup_requests"] == len(proxy.requests) - 1  # and the bucket check
    after = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert after["pending_files"] == pending
    assert after["upload_runs"] == status["upload_runs"]


def test_estimate_counts_the_requests_a_real_upload_makes(
    tmp_path: Path, release: Path, s3, bucket: str, cli_env: dict
) -> None:
    db = tmp_path / "m.db"
    prepare(release, db)
    proc = run_cli(
        "estimate", "--db", str(db), "--backend", "native", "--part-size", "5MiB",
        "--price-put", "0.005/1000", "--price-get", "0.0004/1000", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    estimate = json.loads(proc.stdout)
    with FaultProxy(s3.endpoint_url) as proxy:
        proc, report = upload(
            db, bucket, proxy.endpoint_url, cli_env, "--backend", "native", "--part-size", "5MiB"
        )
        assert proc.returncode == 0, proc.stderr
        counted = _counts(proxy)
    assert report["retries"] == 0
    assert estimate["files"] == report["files_sent"]
    assert estimate["bytes"] == report["bytes_sent"]
    assert {k: n for k, n in estimate["requests"].items() if n} == counted
    assert estimate["requests"]["multipart_part"] == 3 + 2  # the cube's, the store's probe
    put_class = sum(
        n for k, n in counted.items() if k not in ("head", "head_bucket", "multipart_abort")
    )
    expected = put_class * 0.005 / 1000 + (counted.get("head", 0) + 1) * 0.0004 / 1000
    assert estimate["cost_usd_total"] == pytest.approx(expected, abs=1e-4)


def test_estimate_of_a_db_without_a_plan_is_one_clear_error(tmp_path: Path, release: Path) -> None:
    db = tmp_path / "m.db"
    run_cli("crawl", str(release), "--db", str(db), check=True)
    assert_clean_error(run_cli("estimate", "--db", str(db)), "has no plan")
    proc = run_cli("plan", "--db", str(db), check=True)
    assert_clean_error(run_cli("estimate", "--db", str(db), "--price-put", "cheap"), "price")
    del proc
