"""Integrity: published checksums are used, corruption is caught, content is proven.

The pure parts (sha256sum parsing, digests, composites, the hashing reader, the adaptive
limit, the schema migration) are tested directly; everything else drives the installed
``desimirror`` command against a real SeaweedFS, through the fault proxy when the test
needs to count what was sent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest

from desimirror.integrity.checksums import (
    HashingReader,
    composite_sha256,
    guess_part_sizes,
    hash_stream,
    parse_sha256sum,
)
from desimirror.integrity.releasemanifest import read_manifest
from desimirror.state.manifest import Manifest
from desimirror.storage.throttle import Concurrency
from helpers import assert_clean_error, run_cli
from integrity_helpers import (
    LISTING,
    MiB,
    bucket_matches_disk,
    corrupt_keeping_stat,
    make_release,
    prepare,
    random_files,
    rows,
    upload,
    uploads,
    verify,
    write_listing,
)

# -- the pure parts ----------------------------------------------------------------------


def test_parse_sha256sum_formats_and_refusals() -> None:
    a, b, c = "a" * 64, "B" * 64, "c" * 64
    text = (
        f"{a}  plain.fits\n"
        f"{b} *binary mode.fits\r\n"
        f"\\{c}  new\\nline\\\\name.fits\n"
        f"SHA256 (bsd.fits) = {a}\n"
        "\n# a comment\n"
        f"{a}  ../../../escape.fits\n"
        f"{a}  /etc/passwd\n"
        f"{a}  sub/./deeper.fits\n"
        f"{b}  plain.fits\n"
        "not a checksum line\n"
    ).encode()
    listing = parse_sha256sum(text, "spectro/redux")
    assert listing.claims == {
        "spectro/redux/plain.fits": a,
        "spectro/redux/binary mode.fits": "b" * 64,
        "spectro/redux/new\nline\\name.fits": c,
        "spectro/redux/bsd.fits": a,
        "spectro/redux/sub/deeper.fits": a,
    }
    problems = " | ".join(listing.errors)
    assert "escape.fits" in problems
    assert "/etc/passwd" in problems
    assert "listed twice" in problems
    assert "not a sha256sum line" in problems
    # a listing at the root may not climb out either
    assert parse_sha256sum(f"{a}  ../x\n".encode(), "").claims == {}


@pytest.mark.parametrize("size", [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 12 * MiB + 7])
def test_digests_match_what_s3_computes(size: int) -> None:
    data = os.urandom(size)
    part = 5 * MiB
    d = hash_stream(io.BytesIO(data), part)
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.size == size
    chunks = [data[i : i + part] for i in range(0, size, part)] or [b""]
    assert d.parts_sha256 == tuple(
        base64.b64encode(hashlib.sha256(c).digest()).decode() for c in chunks
    )
    assert hash_stream(io.BytesIO(data), part, md5=False).parts_sha256 == d.parts_sha256
    if len(chunks) == 1:
        assert d.etag == hashlib.md5(data).hexdigest()
        assert d.composite is None
    else:
        md5s = b"".join(hashlib.md5(c).digest() for c in chunks)
        assert d.etag == f"{hashlib.md5(md5s).hexdigest()}-{len(chunks)}"
        shas = [base64.b64encode(hashlib.sha256(c).digest()).decode() for c in chunks]
        joined = b"".join(hashlib.sha256(c).digest() for c in chunks)
        expected = f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(chunks)}"
        assert d.composite == expected == composite_sha256(shas)
        assert part in guess_part_sizes(size, d.etag, [part])


def test_hashing_reader_describes_the_last_full_pass(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    with open(path, "rb") as raw:
        reader = HashingReader(raw, len(data))
        reader.read(1000)
        reader.seek(0, 2)  # botocore measuring the length
        assert reader.hexdigest() is None
        reader.seek(0)
        while reader.read(65536):
            pass
        assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
        reader.seek(0)  # a retry starts a fresh digest
        reader.read(10)
        assert reader.hexdigest() is None


def test_concurrency_halves_once_per_round_and_recovers_slowly() -> None:
    limit = Concurrency(16)
    limit.throttled()
    assert limit.limit == 8
    limit.throttled()  # the same burst: ignored until a round of completions
    assert limit.limit == 8
    for _ in range(8):
        limit.completed(ok=False)
    limit.throttled()
    assert limit.limit == 4
    for _ in range(4):
        limit.completed()
    assert limit.limit == 5  # +1 per round of clean completions
    for _ in range(500):
        limit.completed()
    assert limit.limit == 16
    assert limit.as_dict()["workers_lowest"] == 4


def test_an_older_db_gains_the_new_columns_in_place(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('app', 'desimirror'), ('schema_version', '1');"
        "CREATE TABLE uploads (path TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL,"
        " mtime_ns INTEGER NOT NULL, etag TEXT, uploaded_at REAL NOT NULL) WITHOUT ROWID;"
        "INSERT INTO uploads VALUES ('a', 'k/a', 1, 2, 'e', 3.0);"
    )
    conn.commit()
    conn.close()
    with Manifest.open(db) as manifest:
        record = manifest.upload_record("a")
        tables = {r[0] for r in manifest.conn.execute("SELECT name FROM sqlite_master")}
    assert record is not None
    assert record.etag == "e"
    assert record.proof == "none"
    assert {"published", "checksum_files"} <= tables


# -- published checksums at work -------------------------------------------------------------


def _release(tmp_path: Path, seed: int = 1, count: int = 24) -> Path:
    """``count`` small files and a 3-part file, all listed, plus one unlisted loose file."""
    root = tmp_path / "edr"
    files = random_files(seed, count)
    files["big/zcatalog.fits"] = os.urandom(12 * MiB + 5)  # 3 parts of 5 MiB
    files["loose.txt"] = b"no listing in the root for me\n"
    make_release(root, files)
    (root / LISTING).unlink()  # the root has no listing: loose.txt gets a computed checksum
    return root


@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_published_checksums_are_sent_and_recorded(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str
) -> None:
    root = _release(tmp_path)
    db = tmp_path / "m.db"
    prepare(root, db)
    args = ("--backend", backend, "--part-size", "5MiB")
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, *args)
    assert proc.returncode == 0, proc.stderr
    assert report["checksums"]["files_with_published"] == 24 + 1
    assert report["checksums"]["errors"] == 0
    client = s3.client()
    assert bucket_matches_disk(client, bucket, root, db) == report["files_sent"]
    proofs = {p: proof for p, (_, proof, _, _) in uploads(db).items()}
    if backend == "native":
        assert set(proofs.values()) == {"sha256", "composite"}
        assert proofs["big/zcatalog.fits"] == "composite"
        head = client.head_object(
            Bucket=bucket, Key="edr/d0/sub0/f0000.fits", ChecksumMode="ENABLED"
        )
        published = hashlib.sha256((root / "d0/sub0/f0000.fits").read_bytes()).digest()
        assert head["ChecksumSHA256"] == base64.b64encode(published).decode()
    else:
        assert set(proofs.values()) == {"etag"}
    # the loose file without a listing got the checksum computed on the way
    sha = rows(db, "SELECT sha256 FROM entries WHERE path = 'loose.txt'")[0][0]
    assert sha == hashlib.sha256((root / "loose.txt").read_bytes()).hexdigest()
    big = rows(db, "SELECT part_size, parts FROM uploads WHERE path = 'big/zcatalog.fits'")[0]
    assert big[0] == 5 * MiB
    assert len(big[1].split()) == 3

    proc, verdict = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict["content_ok"] == verdict["expected_files"]
    expected_methods = {"sha256", "composite"} if backend == "native" else {"etag"}
    assert set(verdict["proven_by"]) == expected_methods


@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_corrupt_source_files_are_reported_and_not_uploaded(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str, fault_proxy
) -> None:
    root = _release(tmp_path, seed=2, count=10)
    corrupt_keeping_stat(root / "d1/sub1/f0001.fits", offset=7)
    corrupt_keeping_stat(root / "big/zcatalog.fits", offset=11 * MiB)  # in the last part
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(
        db, bucket, fault_proxy.endpoint_url, cli_env, "--backend", backend, "--part-size", "5MiB"
    )
    assert_clean_error(proc, "corrupt")
    assert proc.returncode == 5
    assert report["files_corrupt"] == 2
    assert report["files_failed"] == 0
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "edr/d1/sub1/f0001.fits" not in keys
    assert "edr/big/zcatalog.fits" not in keys
    assert len(keys) == report["files_sent"]
    if backend == "s5cmd":  # caught before anything was sent
        assert fault_proxy.puts["edr/d1/sub1/f0001.fits"] == 0
        assert fault_proxy.puts["edr/big/zcatalog.fits"] == 0
    status = json.loads(run_cli("status", "--db", str(db), "--json", check=True).stdout)
    assert status["failed"] == {"corrupt": 2}
    assert {f["path"] for f in status["failures"]} == {"d1/sub1/f0001.fits", "big/zcatalog.fits"}


def test_a_changed_listing_returns_a_mirrored_file_to_pending(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    """The release republishes a checksum for a file that did not change: the mirrored
    object no longer matches what the release says, so the file is flagged, not kept done."""
    root = tmp_path / "edr"
    make_release(root, {"a/x.fits": b"x" * 100, "a/y.fits": b"y" * 100})
    db = tmp_path / "m.db"
    prepare(root, db)
    assert upload(db, bucket, s3.endpoint_url, cli_env)[0].returncode == 0
    listing = root / "a" / LISTING
    listing.write_text(
        listing.read_text().replace(hashlib.sha256(b"x" * 100).hexdigest(), "0" * 64)
    )
    run_cli("crawl", str(root), "--db", str(db), check=True)
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env)
    assert proc.returncode == 5
    assert report["files_corrupt"] == 1
    assert "a/x.fits" in report["errors"][0]


# -- adopting what the bucket already holds ---------------------------------------------


def _seed_bucket(client, bucket: str, root: Path) -> None:
    """Objects as the original tool left them: no checksums, one multipart of 5 MiB parts."""
    for rel in ("d0/sub0/f0000.fits", "d1/sub1/f0001.fits"):
        client.put_object(Bucket=bucket, Key=f"edr/{rel}", Body=(root / rel).read_bytes())
    data = (root / "big/zcatalog.fits").read_bytes()
    mpu = client.create_multipart_upload(Bucket=bucket, Key="edr/big/zcatalog.fits")
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MiB), start=1):
        part = client.upload_part(
            Bucket=bucket,
            Key="edr/big/zcatalog.fits",
            UploadId=mpu["UploadId"],
            PartNumber=number,
            Body=data[start : start + 5 * MiB],
        )
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="edr/big/zcatalog.fits",
        UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": parts},
    )
    same_size = bytearray((root / "d2/sub0/f0002.fits").read_bytes())
    same_size[0] ^= 1
    client.put_object(Bucket=bucket, Key="edr/d2/sub0/f0002.fits", Body=bytes(same_size))
    client.put_object(Bucket=bucket, Key="edr/d3/sub1/f0003.fits", Body=b"wrong size")


def test_adopt_with_checksum_sends_only_what_differs(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = _release(tmp_path, seed=3, count=8)
    _seed_bucket(s3.client(), bucket, root)
    db = tmp_path / "m.db"
    prepare(root, db)
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env, "--backend", "native")
    assert proc.returncode == 0, proc.stderr
    assert report["files_adopted"] == 3
    adopted_bytes = sum(
        (root / p).stat().st_size
        for p in ("d0/sub0/f0000.fits", "d1/sub1/f0001.fits", "big/zcatalog.fits")
    )
    assert report["bytes_adopted"] == adopted_bytes
    for key in ("edr/d0/sub0/f0000.fits", "edr/d1/sub1/f0001.fits", "edr/big/zcatalog.fits"):
        assert fault_proxy.puts[key] == 0, key
    for key in ("edr/d2/sub0/f0002.fits", "edr/d3/sub1/f0003.fits"):
        assert fault_proxy.puts[key] == 1, key  # replaced: same size with other bytes, wrong size
    recorded = uploads(db)
    assert recorded["big/zcatalog.fits"][1:3] == ("etag", 1)
    assert bucket_matches_disk(s3.client(), bucket, root, db) == report["files_sent"] + 3
    assert verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")[0].returncode == 0


def test_adopt_size_is_fast_and_says_so_and_verify_checksum_catches_it(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = _release(tmp_path, seed=4, count=8)
    _seed_bucket(s3.client(), bucket, root)
    db = tmp_path / "m.db"
    prepare(root, db)
    proc = run_cli(
        "upload",
        "--db",
        str(db),
        "--bucket",
        f"s3://{bucket}",
        "--endpoint-url",
        s3.endpoint_url,
        "--adopt",
        "size",
        env=cli_env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "by size only (content unproven)" in proc.stdout
    assert "verify --checksum" in proc.stdout
    # the same-size impostor was adopted: only a content check can tell
    assert uploads(db)["d2/sub0/f0002.fits"][1] == "size"
    assert verify(db, bucket, s3.endpoint_url, cli_env)[0].returncode == 0
    proc, verdict = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 5
    assert verdict["corrupt"] == 1
    assert verdict["examples"]["corrupt"][0].startswith("edr/d2/sub0/f0002.fits")
    assert verdict["returned_to_pending"] == 1
    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, "--adopt", "size")
    assert report["files_sent"] == 1
    assert verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")[0].returncode == 0


# -- a release that changes ----------------------------------------------------------------


def test_recrawl_sends_only_what_changed_and_delete_stays_in_the_prefix(
    tmp_path: Path, s3, bucket: str, cli_env: dict, fault_proxy
) -> None:
    root = tmp_path / "edr"
    make_release(root, random_files(5, 12, dirs=2))
    db = tmp_path / "m.db"
    prepare(root, db)
    assert upload(db, bucket, fault_proxy.endpoint_url, cli_env)[0].returncode == 0
    client = s3.client()
    client.put_object(Bucket=bucket, Key="elsewhere/keep.txt", Body=b"not ours")
    client.put_object(Bucket=bucket, Key="edr/d0/unrecorded.txt", Body=b"not recorded")

    d0 = root / "d0/sub0"
    (d0 / "new.fits").write_bytes(b"a new file")
    (d0 / "f0000.fits").write_bytes(b"changed content")
    (d0 / "f0002.fits").unlink()
    write_listing(d0, sorted(p.name for p in d0.iterdir() if p.name != LISTING))
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", "1MB", check=True)
    fault_proxy.reset_counts()
    proc, report = upload(db, bucket, fault_proxy.endpoint_url, cli_env)
    assert proc.returncode == 0, proc.stderr
    sent = {k for k, n in fault_proxy.puts.items() if n}
    assert sent == {f"edr/d0/sub0/{n}" for n in ("new.fits", "f0000.fits", LISTING)}
    assert report["files_gone"] == 1
    assert any("gone from the source" in w for w in report["warnings"])
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "edr/d0/sub0/f0002.fits" in keys  # reported, not deleted without --delete

    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, "--delete")
    assert proc.returncode == 0, proc.stderr
    assert report["files_deleted"] == 1
    assert report["files_gone"] == 0
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "edr/d0/sub0/f0002.fits" not in keys
    assert {"elsewhere/keep.txt", "edr/d0/unrecorded.txt"} <= keys
    proc, verdict = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum")
    assert proc.returncode == 0
    assert verdict["unexpected"] == 1  # edr/d0/unrecorded.txt: reported by verify only


# -- verify --checksum ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "s5cmd"])
def test_verify_checksum_finds_an_object_replaced_by_same_size_bytes(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str
) -> None:
    root = _release(tmp_path, seed=6, count=8)
    db = tmp_path / "m.db"
    prepare(root, db)
    args = ("--backend", backend, "--part-size", "5MiB")
    assert upload(db, bucket, s3.endpoint_url, cli_env, *args)[0].returncode == 0
    client = s3.client()
    victim = "edr/d0/sub0/f0000.fits"
    data = bytearray(client.get_object(Bucket=bucket, Key=victim)["Body"].read())
    data[-1] ^= 0x55
    client.put_object(Bucket=bucket, Key=victim, Body=bytes(data))  # no SHA-256 this time

    report_file = tmp_path / "problems.txt"
    proc, verdict = verify(
        db, bucket, s3.endpoint_url, cli_env, "--checksum", "--report", str(report_file)
    )
    assert proc.returncode == 5
    assert verdict["corrupt"] == 1
    assert verdict["missing"] == verdict["differ"] == 0
    assert report_file.read_text().splitlines() == [f"! {victim}"]
    assert "corrupt" in proc.stderr

    proc, verdict = verify(
        db, bucket, s3.endpoint_url, cli_env, "--checksum", "--reread", "--sample", "0.5"
    )
    assert verdict["proven_by"].keys() <= {"reread"}
    assert 0 < verdict["content_checked"] < verdict["expected_files"]

    assert upload(db, bucket, s3.endpoint_url, cli_env, *args)[1]["files_sent"] == 1
    proc, verdict = verify(db, bucket, s3.endpoint_url, cli_env, "--checksum", "--reread")
    assert proc.returncode == 0, proc.stdout
    assert verdict["bytes_reread"] == verdict["expected_bytes"]


# -- the published manifest ----------------------------------------------------------------


def test_manifest_publish_lists_files_dirs_and_links(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    root = tmp_path / "edr"
    make_release(root, {"spectro/data/a.fits": b"A" * 10, "target/t\tab.fits": b"T" * 5})
    (root / "empty" / "deeper").mkdir(parents=True)
    (root / "links").mkdir()
    (root / "links" / "to-a.fits").symlink_to("../spectro/data/a.fits")
    (root / "links" / "outside").symlink_to("/etc/hostname")
    db = tmp_path / "m.db"
    prepare(root, db)
    remap = ("--remap", "edr/spectro/data=raw_spectro_data")
    args = ["--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url", s3.endpoint_url]
    refused = run_cli("manifest", "publish", *args, env=cli_env)
    assert_clean_error(refused, "not been uploaded")
    assert upload(db, bucket, s3.endpoint_url, cli_env, *remap)[0].returncode == 0

    proc = run_cli("manifest", "publish", *args, "--json", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    client = s3.client()
    body = client.get_object(Bucket=bucket, Key=report["manifest_key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == report["sha256"]
    summary = json.loads(client.get_object(Bucket=bucket, Key=report["summary_key"])["Body"].read())
    assert summary["manifest"]["sha256"] == report["sha256"]
    assert summary["remap"] == ["edr/spectro/data=raw_spectro_data"]
    header, entries = read_manifest(io.BytesIO(body))
    by_path = {e.path: e for e in entries}
    assert header["release"] == "edr"
    assert header["complete"] == "yes"
    a = by_path["spectro/data/a.fits"]
    assert (a.type, a.size, a.key, a.origin) == ("f", 10, "raw_spectro_data/a.fits", "p")
    assert a.sha256 == hashlib.sha256(b"A" * 10).hexdigest()
    assert by_path["target/t\tab.fits"].key == "edr/target/t\tab.fits"
    assert by_path["empty/deeper"].type == "d"
    link = by_path["links/to-a.fits"]
    assert (link.type, link.link_kind, link.size) == ("l", "file", 10)
    assert by_path["links/outside"].link_kind == "outside"
    assert by_path["links/outside"].key is None
    gz = gzip.decompress(body).decode()
    assert "t\\tab.fits" in gz  # tabs in names are escaped, never break a line
    # the manifest itself is not an unexpected object, and it carries its own checksum
    proc, _ = verify(db, bucket, s3.endpoint_url, cli_env, "--strict")
    assert proc.returncode == 0, proc.stdout
    head = client.head_object(Bucket=bucket, Key=report["manifest_key"], ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(report["sha256"])).decode()


# -- nothing outside the root ----------------------------------------------------------------


def test_nothing_outside_the_root_is_read_or_uploaded(
    tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the release")
    root = tmp_path / "edr"
    make_release(root, {"a/inside.fits": b"inside", "a/swapped.fits": b"will become a link"})
    # a listing that claims paths outside, and one that is a symlink out of the tree
    (root / "a" / "evil.sha256sum").write_text(
        f"{hashlib.sha256(b'x').hexdigest()}  ../../secret.txt\n"
        f"{hashlib.sha256(b'x').hexdigest()}  {outside}\n"
    )
    (root / "b").mkdir()
    (root / "b" / "linked.sha256sum").symlink_to(outside)
    db = tmp_path / "m.db"
    prepare(root, db)
    (root / "a" / "swapped.fits").unlink()
    (root / "a" / "swapped.fits").symlink_to(outside)  # after the crawl

    proc, report = upload(db, bucket, s3.endpoint_url, cli_env, "--backend", "native")
    assert proc.returncode == 5
    assert report["files_changed"] + report["files_unsafe"] == 1
    sums = report["checksums"]
    assert sums["errors"] == 2  # the two claims outside the tree
    assert sums["listings"] == 2  # a/checksums and a/evil; the symlinked listing is not read
    claims = {p for (p,) in rows(db, "SELECT path FROM published")}
    assert claims == {"a/inside.fits", "a/swapped.fits"}
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "edr/a/swapped.fits" not in keys
    assert not any("secret" in k for k in keys)
    for obj in keys:
        body = s3.client().get_object(Bucket=bucket, Key=obj)["Body"].read()
        assert b"outside the release" not in body

    for bad in (("--remap", "edr/a=../up"), ("--prefix", "../edr"), ("--remap", "edr/../x=y")):
        refused = run_cli(
            "upload",
            "--db",
            str(db),
            "--bucket",
            f"s3://{bucket}",
            "--endpoint-url",
            s3.endpoint_url,
            *bad,
            env=cli_env,
        )
        assert_clean_error(refused)
        assert refused.returncode == 2


@pytest.mark.parametrize("name", ["/etc", "..", "a/../../etc"])
def test_an_imported_find_json_cannot_name_paths_outside(tmp_path: Path, name: str) -> None:
    tree = ["edr", 0, 10, [name, 0, 10, ["passwd", 1, 10]]]
    source = tmp_path / "find.json"
    source.write_text(json.dumps(tree))
    db = tmp_path / "m.db"
    proc = run_cli("crawl", "--from-json", str(source), "--root", str(tmp_path), "--db", str(db))
    if proc.returncode == 0:  # accepted only by skipping the bad name
        with Manifest.open(db) as manifest:
            paths = [r[0] for r in manifest.conn.execute("SELECT path FROM entries")]
        assert all(not p.startswith(("/", "..")) and "/../" not in f"/{p}/" for p in paths)
        assert "etc/passwd" not in paths or name == "/etc"
    else:
        assert_clean_error(proc)
