"""Nothing from outside the root, and no bytes recorded that are not the crawled file's.

Against the real SeaweedFS, through the installed command (and, where a rewrite must land
at an exact moment of a transfer, through the uploader in-process with a hook on the real
backend): a directory swapped for a symlink out of the tree after the crawl, and files
rewritten with their size and mtime kept (``touch -r``) or renamed over before, during and
after an upload.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from desimirror.errors import IncompleteError
from desimirror.integrity.prehash import Prehasher
from desimirror.integrity.sourcetree import SourceRefused, SourceTree
from desimirror.pipeline.upload import UploadOptions, upload
from desimirror.state.manifest import Manifest
from desimirror.storage.transfer import S3Target
from desimirror.storage.transfer.crt import _CrtSender
from desimirror.storage.transfer.native import NativeBackend
from helpers import run_cli
from integrity_helpers import MiB, make_release, prepare, rows, uploads
from integrity_helpers import upload as upload_cli
from integrity_helpers import verify as verify_cli

BACKENDS = ["s5cmd", "native", "crt"]


def _objects(client, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What ``touch -r`` after a rewrite leaves: same size, same mtime, other bytes."""
    st = path.stat()
    assert len(data) == st.st_size
    with open(path, "r+b") as stream:
        stream.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rename_over_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    st = path.stat()
    other = path.with_name(path.name + ".new")
    other.write_bytes(data)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(other, path)


CHANGES = {
    "rewrite": _rewrite_keeping_size_and_mtime,
    "rename": _rename_over_keeping_size_and_mtime,
}


def _one_file_release(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, its one file, the db), crawled and planned."""
    root = tmp_path / "edr"
    root.mkdir()
    victim = root / "coadd.fits"
    victim.write_bytes(b"A" * 4096)
    db = tmp_path / "m.db"
    prepare(root, db)
    return root, victim, db


# ---------------------------------------------------------------- outside the root


@pytest.mark.s3
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_directory_swapped_for_a_symlink_out_of_the_root_is_never_read(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str
) -> None:
    root = tmp_path / "edr"
    (root / "spectro").mkdir(parents=True)
    (root / "spectro" / "frame.fits").write_bytes(b"the release's own bytes " * 40)
    (root / "keep.fits").write_bytes(b"a file that stays where it was")
    db = tmp_path / "m.db"
    prepare(root, db)
    crawled = (root / "spectro" / "frame.fits").stat()

    # after the crawl: the directory goes, a symlink to a directory outside takes its place,
    # holding a private file of the same name, size and mtime (anyone can stat those)
    outside = tmp_path / "private" / "spectro"
    outside.mkdir(parents=True)
    secret = outside / "frame.fits"
    secret.write_bytes((b"SECRET, never to be read " * 40)[:960])
    assert secret.stat().st_size == crawled.st_size
    secret.chmod(0o600)
    os.utime(secret, ns=(crawled.st_atime_ns, crawled.st_mtime_ns))
    shutil.rmtree(root / "spectro")
    (root / "spectro").symlink_to(outside, target_is_directory=True)

    proc, report = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 5, proc.stderr
    assert report["files_unsafe"] == 1, report
    objects = _objects(s3.client(), bucket)
    assert not any(b"SECRET" in body for body in objects.values())
    assert "edr/spectro/frame.fits" not in objects
    assert objects["edr/keep.fits"] == b"a file that stays where it was"
    failures = rows(db, "SELECT path, reason FROM failures")
    assert failures == [("spectro/frame.fits", "unsafe")]


def test_open_beneath_refuses_every_symlinked_component(tmp_path: Path) -> None:
    """Both ways of opening (openat2, and the walk a kernel without it gets) refuse."""
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"inside")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_bytes(b"outside")
    (root / "a" / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "a" / "rel").symlink_to("b", target_is_directory=True)
    (root / "a" / "b" / "leaf").symlink_to(root / "a" / "b" / "f")
    for use_openat2 in (True, False):
        with SourceTree(str(root)) as tree:
            if not use_openat2:
                tree._openat2 = None
            fd = tree.open_beneath("a/b/f")
            assert os.read(fd, 100) == b"inside"
            os.close(fd)
            for rel in ("a/link/f", "a/rel/f", "a/b/leaf", "../out/f", "/etc/passwd"):
                with pytest.raises(SourceRefused) as refused:
                    os.close(tree.open_beneath(rel))
                assert refused.value.reason == "unsafe", (rel, use_openat2)


# ---------------------------------------------------------------- other bytes, same stat


@pytest.mark.s3
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["rewrite", "rename"])
def test_same_size_same_mtime_change_before_the_upload_is_refused_until_recrawled(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str, how: str
) -> None:
    root, victim, db = _one_file_release(tmp_path)
    CHANGES[how](victim, b"B" * 4096)

    proc, report = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 5, proc.stderr
    assert report["files_changed"] == 1
    assert uploads(db) == {}

    run_cli("crawl", str(root), "--db", str(db), check=True)
    proc, _ = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert _objects(s3.client(), bucket) == {"edr/coadd.fits": b"B" * 4096}


@pytest.mark.s3
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["rewrite", "rename"])
def test_same_size_same_mtime_change_after_the_upload_is_sent_again_after_a_recrawl(
    tmp_path: Path, s3, bucket: str, cli_env: dict, backend: str, how: str
) -> None:
    root, victim, db = _one_file_release(tmp_path)
    proc, _ = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 0, proc.stderr

    CHANGES[how](victim, b"B" * 4096)
    run_cli("crawl", str(root), "--db", str(db), check=True)
    status = run_cli("status", "--db", str(db), "--json", check=True).stdout
    assert '"pending_files": 1' in status

    proc, report = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--backend", backend)
    assert proc.returncode == 0, proc.stderr
    assert report["files_sent"] + report["files_adopted"] == 1
    assert _objects(s3.client(), bucket) == {"edr/coadd.fits": b"B" * 4096}
    proc, report = verify_cli(db, bucket, s3.endpoint_url, cli_env, "--checksum", "--reread")
    assert proc.returncode == 0, proc.stderr


def _in_process_upload(db: Path, bucket: str, s3, backend: str) -> None:
    os.environ.update(s3.env)
    target = S3Target(bucket=bucket, endpoint_url=s3.endpoint_url)
    with Manifest.open(db) as manifest:
        upload(manifest, UploadOptions(target=target, backend=backend, part_size=5 * MiB))


@pytest.mark.s3
@pytest.mark.parametrize("backend", ["native", "crt"])  # crt: NativeBackend's parts, sent by awscrt
def test_a_file_rewritten_during_a_multipart_upload_never_becomes_an_object(
    tmp_path: Path, s3, bucket: str, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """The native and crt backends read a 12 MiB file in 5 MiB parts; after the first part is sent
    the rest of the file is rewritten in place and its mtime set back. Before, the object
    was completed torn (old first part, new rest) and recorded as proven."""
    root = tmp_path / "edr"
    root.mkdir()
    victim = root / "big.fits"
    victim.write_bytes(b"o" * (12 * MiB))
    db = tmp_path / "m.db"
    prepare(root, db, "--max-batch-size", "100MB")
    before = victim.stat()
    real_send_part = NativeBackend._send_part

    def send_part_then_rewrite(self, client, item, upload_id, reads, number, *rest):
        result = real_send_part(self, client, item, upload_id, reads, number, *rest)
        if number == 1:
            with open(victim, "r+b") as stream:
                stream.seek(5 * MiB)
                stream.write(b"n" * (7 * MiB))
            os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        return result

    monkeypatch.setattr(NativeBackend, "_send_part", send_part_then_rewrite)
    with pytest.raises(IncompleteError):
        _in_process_upload(db, bucket, s3, backend)
    assert victim.stat().st_mtime_ns == before.st_mtime_ns  # the mtime says nothing changed
    assert _objects(s3.client(), bucket) == {}
    assert uploads(db) == {}
    assert rows(db, "SELECT reason FROM failures") == [("changed",)]


@pytest.mark.s3
def test_a_file_rewritten_between_hashing_and_sending_is_not_recorded(
    tmp_path: Path, s3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s5cmd reads the file by path after the uploader hashed it: a rewrite in between (its
    mtime set back) must not be recorded as the hashed file's object."""
    _, victim, db = _one_file_release(tmp_path)
    real_hash = Prehasher._hash

    def hash_then_rewrite(self, source, entry, part_size):
        digests = real_hash(self, source, entry, part_size)
        if entry.path == "coadd.fits":
            _rewrite_keeping_size_and_mtime(victim, b"B" * 4096)
        return digests

    monkeypatch.setattr(Prehasher, "_hash", hash_then_rewrite)
    with pytest.raises(IncompleteError):
        _in_process_upload(db, bucket, s3, "s5cmd")
    assert uploads(db) == {}
    assert rows(db, "SELECT reason FROM failures") == [("changed",)]


@pytest.mark.s3
def test_bytes_s5cmd_read_from_a_file_swapped_after_the_last_check_do_not_stay(
    tmp_path: Path, s3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest window: the path passes its last check, then the file is rewritten
    before s5cmd opens it. The ETag comparison catches the other bytes, and the object that
    holds them is deleted rather than left in the bucket."""
    _, victim, db = _one_file_release(tmp_path)
    import desimirror.storage.transfer.proving as proving

    real_check = proving.still_the_hashed_file

    def check_then_rewrite(tree, entry):
        real_check(tree, entry)  # passes: the line goes to s5cmd next
        _rewrite_keeping_size_and_mtime(victim, b"B" * 4096)

    monkeypatch.setattr(proving, "still_the_hashed_file", check_then_rewrite)
    with pytest.raises(IncompleteError):
        _in_process_upload(db, bucket, s3, "s5cmd")
    assert _objects(s3.client(), bucket) == {}
    assert uploads(db) == {}
    assert rows(db, "SELECT reason FROM failures") == [("changed",)]


@pytest.mark.s3
def test_a_published_file_rewritten_just_before_the_runtime_reads_it_is_never_recorded(
    tmp_path: Path, s3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the store has shown it validates checksums, crt hands a file with a published
    SHA-256 to the runtime unhashed, by its open descriptor. A rewrite just before the
    runtime reads it (size and mtime kept) must be refused by the store, reported as
    corrupt, and leave no object."""
    root = tmp_path / "edr"
    make_release(root, {"a/first.fits": b"1" * 4096, "b/victim.fits": b"A" * 4096})
    victim = root / "b" / "victim.fits"
    db = tmp_path / "m.db"
    prepare(root, db)
    real_put = _CrtSender.put

    def put_after_a_rewrite(self, key, query, body, *args, **kwargs):
        if key.endswith("victim.fits"):
            assert body is None, "sent from a buffer read before the rewrite"
            _rewrite_keeping_size_and_mtime(victim, b"B" * 4096)
        return real_put(self, key, query, body, *args, **kwargs)

    monkeypatch.setattr(_CrtSender, "put", put_after_a_rewrite)
    os.environ.update(s3.env)
    target = S3Target(bucket=bucket, endpoint_url=s3.endpoint_url)
    with Manifest.open(db) as manifest, pytest.raises(IncompleteError):
        upload(manifest, UploadOptions(target=target, backend="crt", workers=1))  # in order
    assert "edr/b/victim.fits" not in _objects(s3.client(), bucket)
    assert "b/victim.fits" not in uploads(db)
    assert "a/first.fits" in uploads(db)
    assert rows(db, "SELECT path, reason FROM failures") == [("b/victim.fits", "corrupt")]
