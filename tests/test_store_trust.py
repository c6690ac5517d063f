"""Trusting the store only as far as it proves things (issue 13, items 6, 7, 8, 10).

* A malformed endpoint is one line and exit 2 from every command that takes one.
* A store that ignores checksums (Ceph radosgw 16: accepts any ``x-amz-checksum-sha256``,
  returns none) is modelled by a relay in front of the real SeaweedFS that strips those
  headers both ways and signs the request again; the native backend must then prove every
  file by its ETag, and the upload, ``status`` and ``verify`` must say so.
* Composite checksums are compared as values (moto returns them without ``-N``).
* Keys a store rewrites (SeaweedFS keeps ``\\`` as ``/``) are refused as colliding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from desimirror.errors import UsageError
from desimirror.integrity.checksums import composite_sha256, same_composite, split_composite
from desimirror.storage.keys import KeyMap, first_collision
from desimirror.storage.s3client import check_endpoint_url, one_line, parse_bucket_url
from faultproxy import FaultProxy, sigv4_resigner
from helpers import DESIMIRROR, assert_clean_error, run_cli
from integrity_helpers import (
    MiB,
    bucket_matches_disk,
    corrupt_keeping_stat,
    count_files,
    make_release,
    prepare,
    random_files,
    rows,
    upload,
    uploads,
    verify,
)

MALFORMED = ("127.0.0.1:9000", "http:/127.0.0.1:9000", "htp://127.0.0.1:9000")


# -- item 6: endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9000", "https://s3.us-west-2.amazonaws.com", "http://[::1]:8333/"]
)
def test_well_formed_endpoints_pass(url: str) -> None:
    assert check_endpoint_url(url) == url


@pytest.mark.parametrize("url", [*MALFORMED, "http://", "http://host:99999", "http://h:port"])
def test_malformed_endpoints_are_one_usage_error(url: str) -> None:
    with pytest.raises(UsageError, match=r"invalid S3 endpoint .* from --endpoint-url"):
        check_endpoint_url(url)


def test_one_bucket_url_parser() -> None:
    assert parse_bucket_url("s3://desidata/edr/x/") == ("desidata", "edr/x")
    assert parse_bucket_url("desidata") == ("desidata", "")
    for bad in ("https://desidata", "s3://", "s3://UPPER", "gs://desidata/x"):
        with pytest.raises(UsageError, match="invalid bucket"):
            parse_bucket_url(bad)


@pytest.fixture
def uploaded(tmp_path: Path, s3, bucket: str, cli_env: dict) -> tuple[Path, dict]:
    """A small mirror crawled, planned and uploaded, so every command gets past its db."""
    root = tmp_path / "edr"
    make_release(root, random_files(6, 4))
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, _ = upload(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    return db, cli_env


@pytest.mark.s3
@pytest.mark.parametrize("command", ["upload", "verify", "manifest publish"])
def test_pipeline_commands_refuse_a_malformed_endpoint(uploaded, bucket, command):
    db, env = uploaded
    args = [*command.split(), "--db", str(db), "--bucket", f"s3://{bucket}"]
    for endpoint in MALFORMED:
        proc = run_cli(*args, "--endpoint-url", endpoint, env=env)
        assert proc.returncode == 2, proc.stderr
        assert_clean_error(proc, "invalid S3 endpoint", repr(endpoint))


@pytest.mark.s3
def test_a_malformed_endpoint_from_the_environment_names_its_source(uploaded, bucket):
    db, env = uploaded
    env = {**env, "AWS_ENDPOINT_URL": MALFORMED[0]}
    proc = run_cli("verify", "--db", str(db), "--bucket", f"s3://{bucket}", env=env)
    assert proc.returncode == 2, proc.stderr
    assert_clean_error(proc, "invalid S3 endpoint '127.0.0.1:9000' from $AWS_ENDPOINT_URL")


def _access_env(tmp_path: Path) -> dict[str, str]:
    """The environment without any endpoint, and a state directory of the test's own."""
    env = {k: v for k, v in os.environ.items() if "ENDPOINT_URL" not in k}
    return {**env, "HOME": str(tmp_path), "DESIMIRROR_STATE": str(tmp_path)}


@pytest.mark.parametrize("endpoint", MALFORMED)
def test_mount_refuses_a_malformed_endpoint(tmp_path: Path, endpoint: str) -> None:
    (tmp_path / "mnt").mkdir()
    env = _access_env(tmp_path)
    proc = run_cli(
        "mount", "s3://some-bucket", str(tmp_path / "mnt"), "--endpoint-url", endpoint, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert_clean_error(proc, "invalid S3 endpoint", repr(endpoint))
    proc = run_cli(
        "mount",
        "s3://some-bucket",
        str(tmp_path / "mnt"),
        env={**env, "DESIMIRROR_ENDPOINT_URL": endpoint},
    )
    assert proc.returncode == 2, proc.stderr
    assert_clean_error(proc, "invalid S3 endpoint", "$DESIMIRROR_ENDPOINT_URL")


@pytest.mark.parametrize("endpoint", MALFORMED)
def test_jupyter_refuses_a_malformed_endpoint(tmp_path: Path, endpoint: str) -> None:
    env = _access_env(tmp_path)
    argv = [DESIMIRROR, "jupyter", "--bucket", "s3://some-bucket", "--endpoint-url", endpoint]
    # bounded: without the check this would start JupyterLab
    proc = subprocess.run(
        [*argv, "--no-mount"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert_clean_error(proc, "invalid S3 endpoint", repr(endpoint))


# -- small items: a missing or wrong bucket, a key too long ------------------------------


@pytest.mark.s3
def test_a_missing_bucket_names_the_endpoint_asked(tmp_path: Path, s3, cli_env) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(1, 2))
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, _ = upload(db, "no-such-bucket-here", s3.endpoint_url, cli_env)
    assert proc.returncode == 4
    assert_clean_error(proc, f"bucket no-such-bucket-here does not exist at {s3.endpoint_url}")


@pytest.mark.s3
def test_a_wrong_bucket_is_the_same_state_error_for_upload_verify_publish(
    uploaded, s3, bucket
) -> None:
    db, env = uploaded
    other = f"{bucket[:40]}-other"
    s3.client().create_bucket(Bucket=other)
    for command in ("upload", "verify", "manifest publish"):
        args = [*command.split(), "--db", str(db), "--bucket", f"s3://{other}"]
        proc = run_cli(*args, "--endpoint-url", s3.endpoint_url, env=env)
        assert proc.returncode == 3, (command, proc.stderr)
        assert_clean_error(proc, f"s3://{bucket}", f"s3://{other}", "use another --db")


def test_one_line_keeps_the_cause_of_an_error_about_a_long_key() -> None:
    key = "d/" * 600 + "f.fits"
    text = one_line(f"PUT s3://bucket/{key}: the key is 1,206 bytes long; S3 allows 1024")
    assert len(text) <= 300
    assert text.startswith("PUT s3://bucket/d/d/")
    assert text.endswith("the key is 1,206 bytes long; S3 allows 1024")


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["native", "s5cmd"])  # crt: native's key check
def test_a_key_over_1024_bytes_is_refused_with_its_cause(tmp_path, s3, bucket, cli_env, backend):
    root = tmp_path / "edr"
    deep = "/".join(["x" * 200] * 6)  # 1,200+ bytes of key, each component a legal name
    make_release(root, {f"{deep}/long.fits": b"data", "short.fits": b"ok"})
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 5, proc.stderr
    assert_clean_error(proc, "KeyTooLong")  # refused here (native) or by the store (s5cmd)
    assert all("KeyTooLong" in e for e in report["errors"])


# -- item 10: keys a store rewrites --------------------------------------------------------


def test_backslash_and_slash_spellings_collide() -> None:
    keymap = KeyMap.build("edr")
    for paths in (["a\\b.txt", "a/b.txt"], ["a/b.txt", "c", "a\\b.txt"]):
        found = first_collision(keymap, paths)
        assert found is not None
        assert found.rewritten
        assert {found.path, found.other} == {"a\\b.txt", "a/b.txt"}
        assert "a\\\\b.txt" in found.message()
        assert "a/b.txt" in found.message()
    assert first_collision(keymap, ["a\\b.txt", "a/c.txt"]) is None
    remapped = KeyMap.build("edr", ("edr/x=y",))
    found = first_collision(remapped, ["x/a\\b", "x/a/b"])
    assert found is not None
    assert found.rewritten


@pytest.mark.s3
def test_upload_refuses_files_a_store_would_make_one_object(tmp_path, s3, bucket, cli_env):
    root = tmp_path / "edr"
    (root / "a").mkdir(parents=True)
    (root / "a\\b.txt").write_bytes(b"backslash")
    (root / "a" / "b.txt").write_bytes(b"slash")
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, _ = upload(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 2, proc.stderr
    assert_clean_error(proc, "a\\\\b.txt", "a/b.txt", "store '\\' in a key as '/'")
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # nothing sent


# -- item 8: composites as values ----------------------------------------------------------


def test_composites_compare_digest_and_part_count_in_either_form() -> None:
    parts = [base64.b64encode(hashlib.sha256(bytes([i])).digest()).decode() for i in (1, 2)]
    full = composite_sha256(parts)
    bare = full.rsplit("-", 1)[0]
    assert full.endswith("-2")
    assert split_composite(full)[1] == 2
    assert split_composite(bare)[1] is None
    assert same_composite(bare, full)
    assert same_composite(full, bare)
    assert same_composite(full, full)
    assert not same_composite(bare + "-3", full)  # another part count
    assert not same_composite(composite_sha256(parts[:1] * 2), full)  # another digest
    assert not same_composite(None, full)
    assert not same_composite("not base64!", full)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch):
    """moto in this process: the one store at hand that returns a bare composite."""
    moto = pytest.importorskip("moto")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="composite")
        yield client


def test_native_multipart_accepts_a_composite_without_its_part_count(moto_s3, tmp_path):
    from desimirror.pipeline.proof import Candidate, ContentChecker
    from desimirror.storage.transfer import S3Target, TransferItem
    from desimirror.storage.transfer.native import NativeBackend

    data = bytes(range(256)) * (44 * 1024)  # 11 MiB: three parts of 5 MiB
    path = tmp_path / "big.fits"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    backend = NativeBackend(S3Target("composite"), workers=2, part_size=5 * MiB)
    try:
        [result] = backend.put_batch([TransferItem(str(path), "edr/big.fits", len(data), sha)])
    finally:
        backend.close()
    assert result.ok, result.error
    assert result.proof == "composite"
    assert len(result.parts) == 3
    stored = moto_s3.head_object(Bucket="composite", Key="edr/big.fits", ChecksumMode="ENABLED")
    assert "-" not in stored["ChecksumSHA256"]  # what the issue saw: no "-3"
    # verify --checksum proves it the same way, not as a whole-file SHA-256 that differs
    candidate = Candidate(
        "edr/big.fits", "big.fits", len(data), result.etag, sha, result.etag, sha,
        5 * MiB, " ".join(result.parts), "composite",
    )  # fmt: skip
    checker = ContentChecker(moto_s3, "composite", root=str(tmp_path), reread=False, workers=1)
    [verdict] = list(checker.run([candidate]))
    assert verdict.ok, verdict
    assert verdict.method == "composite"


# -- item 7: a store that validates nothing ------------------------------------------------


@pytest.fixture
def radosgw(s3):
    """A relay in front of SeaweedFS that behaves as Ceph radosgw 16.2 does with checksums:
    it never sees the ones sent (any value is accepted) and returns none."""
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.strip_headers = ("x-amz-checksum-", "x-amz-sdk-checksum-")
        proxy.resign = sigv4_resigner(s3.env["AWS_ACCESS_KEY_ID"], s3.env["AWS_SECRET_ACCESS_KEY"])
        yield proxy


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["native", "crt"])
def test_upload_proves_every_file_by_etag_when_the_store_checks_nothing(
    tmp_path: Path, bucket: str, cli_env: dict, radosgw: FaultProxy, backend: str
) -> None:
    root = tmp_path / "edr"
    files = random_files(7, 6)
    files["big/cube.fits"] = bytes(range(256)) * (44 * 1024)  # 11 MiB: multipart at 5 MiB
    make_release(root, files)
    (root / "unlisted.fits").write_bytes(b"no published checksum")  # SHA-256 computed here
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(
        db, bucket, radosgw.endpoint_url, cli_env, "--backend", backend, "--part-size", "5MiB"
    )
    assert proc.returncode == 0, proc.stderr
    done = uploads(db)
    assert len(done) == count_files(root)  # the release, its listings, the unlisted file
    assert {proof for _, proof, _, _ in done.values()} == {"etag"}
    assert report["proven_by"] == {"etag": len(done)}  # the summary says so too
    assert report["files_sent"] == len(done)  # each proven as it was sent: no retry, no adoption
    assert report["retries"] == 0
    [warning] = [w for w in report["warnings"] if "validated nothing" in w]
    assert radosgw.endpoint_url in warning
    assert "ETag" in warning

    status = run_cli("status", "--db", str(db), "--json", env=cli_env, check=True)
    note = json.loads(status.stdout)["store"]["validation"]
    assert note["files"] == len(done)
    assert note["proven_by"] == {"etag": len(done)}
    text = run_cli("status", "--db", str(db), env=cli_env, check=True).stdout
    assert "validated nothing" in text
    assert "ETag" in text

    proc, checked = verify(db, bucket, radosgw.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 0, proc.stderr
    assert checked["proven_by"] == {"etag": len(done)}
    assert "validated nothing" in checked["store_validation"]
    plain = run_cli(
        "verify", "--db", str(db), "--bucket", f"s3://{bucket}", "--checksum",
        "--endpoint-url", radosgw.endpoint_url, env=cli_env, check=True,
    )  # fmt: skip
    assert "note: at upload, the store" in plain.stdout


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["native"])  # crt: tests/test_read_once.py
def test_a_store_that_checks_leaves_no_warning(tmp_path, s3, bucket, cli_env, backend) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(8, 3))
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert not any("validated nothing" in w for w in report["warnings"])
    assert {proof for _, proof, _, _ in uploads(db).values()} == {"sha256"}
    conn = sqlite3.connect(db)
    try:
        assert (
            conn.execute("SELECT value FROM meta WHERE key = 'store_validation'").fetchone() is None
        )
    finally:
        conn.close()


@pytest.mark.s3
def test_a_store_that_checks_nothing_still_gets_no_corrupt_file(
    tmp_path: Path, bucket: str, cli_env: dict, radosgw: FaultProxy
) -> None:
    """The store would take any bytes with any checksum: the read itself must refuse them."""
    root = tmp_path / "edr"
    make_release(root, random_files(9, 4))
    victim = next(p for p in sorted(root.rglob("*.fits")))
    corrupt_keeping_stat(victim)  # rotted at the source: the crawl sees it as it is now
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(db, bucket, radosgw.endpoint_url, cli_env, "--backend", "native")
    assert proc.returncode == 5, proc.stderr
    assert report["files_corrupt"] == 1
    assert str(victim.relative_to(root)) not in uploads(db)


# -- issue 11: the crt backend's parts are sent with a CRC32C the store checks ------------


def _recorded_parts(db: Path, path: str) -> list[str]:
    [(parts,)] = rows(db, "SELECT parts FROM uploads WHERE path = ?", (path,))
    return parts.split()


@pytest.mark.s3
def test_a_part_damaged_on_the_way_is_refused_by_its_crc32c_and_sent_again(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy: FaultProxy
) -> None:
    from desimirror.integrity.checksums import composite_crc32c
    from desimirror.pipeline.proof import Candidate, ContentChecker

    root = tmp_path / "edr"
    files = {"big/cube.fits": os.urandom(11 * MiB), "small/a.fits": b"a small file"}
    make_release(root, files)  # both published: the big one is proven against its digest
    db = tmp_path / "m.db"
    prepare(root, db)
    fault_proxy.flip_parts = 1  # the first part of the big file arrives with a byte flipped
    proc, _ = upload(
        db, bucket, fault_proxy.endpoint_url, cli_env, "--backend", "crt", "--part-size", "5MiB"
    )
    assert proc.returncode == 0, proc.stderr
    [(key, status)] = fault_proxy.flipped
    assert key.endswith("big/cube.fits")
    assert status == 400  # the store refused the part by its checksum (BadDigest)
    assert uploads(db)["big/cube.fits"][1] == "composite"
    assert bucket_matches_disk(s3.client(), bucket, root, db) == count_files(root)

    parts = _recorded_parts(db, "big/cube.fits")
    assert [len(base64.b64decode(p)) for p in parts] == [4, 4, 4]  # three CRC32Cs
    head = s3.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert same_composite(head["ChecksumCRC32C"], composite_crc32c(parts))

    proc, checked = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 0, proc.stderr
    assert checked["proven_by"]["composite"] == 1

    # the comparison is real: part CRCs other than the object's do not prove it
    sha = hashlib.sha256(files["big/cube.fits"]).hexdigest()
    wrong = [base64.b64encode(b"\0\0\0\0").decode(), *parts[1:]]
    checker = ContentChecker(s3.client(), bucket, root=str(root), reread=False, workers=1)
    for recorded, ok in ((parts, True), (wrong, False)):
        candidate = Candidate(
            key, "big/cube.fits", len(files["big/cube.fits"]), head["ETag"].strip('"'),
            sha, head["ETag"].strip('"'), sha, 5 * MiB, " ".join(recorded), "composite",
        )  # fmt: skip
        [verdict] = list(checker.run([candidate]))
        assert (verdict.ok, verdict.method) == (ok, "composite"), verdict


@pytest.mark.s3
@pytest.mark.usefixtures("cli_env")  # the test's credentials in the environment
def test_a_part_refused_every_time_leaves_no_object(
    tmp_path: Path, s3, bucket: str, fault_proxy: FaultProxy
) -> None:
    from desimirror.integrity.sourcetree import Signature
    from desimirror.storage.transfer import S3Target, TransferItem
    from desimirror.storage.transfer.crt import CrtBackend

    path = tmp_path / "big.fits"
    path.write_bytes(os.urandom(6 * MiB))  # two parts of 5 MiB
    st = path.stat()
    item = TransferItem(
        str(path), "edr/big.fits", st.st_size, None, str(tmp_path), "big.fits",
        Signature(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev),
    )  # fmt: skip
    fault_proxy.flip_parts = 1_000  # every part, every attempt
    backend = CrtBackend(S3Target(bucket, fault_proxy.endpoint_url), 2, part_size=5 * MiB)
    backend.part_attempts = 2
    try:
        [result] = backend.put_batch([item])
    finally:
        backend.close()
    assert not result.ok
    assert result.retryable  # damage on the way, not a corrupt file
    assert "BadDigest" in (result.error or "")
    assert fault_proxy.flipped
    assert {status for _, status in fault_proxy.flipped} == {400}
    client = s3.client()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted
