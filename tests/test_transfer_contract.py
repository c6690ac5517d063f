"""What every transfer backend must do, run against each: the in-memory reference backend
(no server), and the native and s5cmd backends against the real SeaweedFS.

The contract (``desimirror.storage.transfer.base``): one result per item, also when the
items come from a generator; a file that cannot be read fails alone; a backend that sends
checksums refuses bytes that differ from the published SHA-256 as corrupt (never retried,
never stored), opens files beneath the root and checks them against the crawl, and says
what the object holds; a batch closed early leaves what it reported sent intact. A backend
that proves nothing itself (s5cmd) is run behind ProvenTransfer, as the uploader runs it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desimirror.integrity.prehash import Prehasher
from desimirror.integrity.sourcetree import Signature, SourceTree
from desimirror.state.manifest import PROOFS
from desimirror.storage import transfer
from desimirror.storage.lookup import ObjectLookup
from desimirror.storage.transfer import S3Target, TransferItem
from desimirror.storage.transfer.base import DEFAULT_PART_SIZE
from desimirror.storage.transfer.memory import MemoryBackend
from desimirror.storage.transfer.proving import with_proof

Read = Callable[[str], "bytes | None"]


@pytest.fixture(
    params=[
        "memory",
        pytest.param("native", marks=pytest.mark.s3),
        pytest.param("crt", marks=pytest.mark.s3),
        pytest.param("s5cmd", marks=pytest.mark.s3),
    ]
)
def backend(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator:
    """(backend, read(key) -> the object's bytes or None); files go under ``tmp_path``.

    s5cmd is run as the uploader runs it: behind :class:`ProvenTransfer`, which hashes
    ahead and compares ETags, so it keeps the whole contract too."""
    if request.param == "memory":
        memory = MemoryBackend(S3Target("contract"))
        yield memory, memory.objects.get
        return
    s3 = request.getfixturevalue("s3")
    bucket = request.getfixturevalue("bucket")
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    target = S3Target(bucket, endpoint_url=s3.endpoint_url)
    client = s3.client()
    tree = SourceTree(str(tmp_path))
    hasher = Prehasher(2, tree)
    real = with_proof(
        transfer.get(request.param, target, 4),
        lookup=ObjectLookup(client, bucket),
        hasher=hasher,
        tree=tree,
        part_size=DEFAULT_PART_SIZE,
    )

    def read(key: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    try:
        yield real, read
    finally:
        real.close()
        hasher.close()
        tree.close()


def _file(root: Path, rel: str, data: bytes) -> TransferItem:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    st = path.stat()
    return TransferItem(
        str(path),
        f"edr/{rel}",
        len(data),
        root=str(root),
        rel=rel,
        signature=Signature(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev),
    )


def test_one_result_per_item_also_from_a_generator(backend, tmp_path: Path) -> None:
    sender, read = backend
    files = {f"d/f{i}.fits": os.urandom(100 + i) for i in range(6)}
    items = [_file(tmp_path, rel, data) for rel, data in files.items()]
    missing = TransferItem(str(tmp_path / "gone.fits"), "edr/gone.fits", 5)
    results = list(sender.put_batch(item for item in [*items, missing]))
    assert sorted(r.item.key for r in results) == sorted(i.key for i in [*items, missing])
    by_key = {r.item.key: r for r in results}
    assert not by_key["edr/gone.fits"].ok
    assert "edr/gone.fits" in (by_key["edr/gone.fits"].error or "")
    for rel, data in files.items():
        assert by_key[f"edr/{rel}"].ok, by_key[f"edr/{rel}"].error
        assert read(f"edr/{rel}") == data
    note = sender.validation_note()  # what status and verify say about the store
    if note is not None:
        assert sum(note["proven_by"].values()) == note["files"] <= len(files)


def test_corrupt_bytes_are_refused_and_each_result_says_what_the_object_holds(
    backend, tmp_path: Path
) -> None:
    sender, read = backend
    good = _file(tmp_path, "good.fits", b"g" * 3000)
    good = TransferItem(**{**good.__dict__, "sha256": hashlib.sha256(b"g" * 3000).hexdigest()})
    bad = _file(tmp_path, "bad.fits", b"b" * 3000)
    bad = TransferItem(**{**bad.__dict__, "sha256": hashlib.sha256(b"other").hexdigest()})
    # the good file first: a backend that learns the store validates checksums (crt) then
    # sends the bad one without hashing it, and the store must refuse it
    results = {r.item.key: r for r in sender.put_batch([good])}
    results |= {r.item.key: r for r in sender.put_batch([bad])}
    assert results["edr/good.fits"].ok
    assert results["edr/good.fits"].sha256 == good.sha256
    assert results["edr/good.fits"].proof in PROOFS
    refused = results["edr/bad.fits"]
    assert (refused.ok, refused.reason, refused.retryable) == (False, "corrupt", False)
    assert read("edr/bad.fits") is None


def test_files_are_read_beneath_the_root_as_the_crawl_saw_them(
    backend, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sender, read = backend
    root = tmp_path
    item = _file(root, "dir/f.fits", b"inside")
    changed = _file(root, "changed.fits", b"12345")
    st = (root / "changed.fits").stat()
    (root / "other").write_bytes(b"54321")  # renamed over it: same size and mtime, other file
    os.utime(root / "other", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(root / "other", root / "changed.fits")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "f.fits").write_bytes(b"SECRET")
    os.rename(root / "dir", outside / "moved")
    (root / "dir").symlink_to(outside, target_is_directory=True)
    results = {r.item.key: r for r in sender.put_batch([item, changed])}
    assert (results["edr/dir/f.fits"].ok, results["edr/dir/f.fits"].reason) == (False, "unsafe")
    assert (results["edr/changed.fits"].ok, results["edr/changed.fits"].reason) == (
        False,
        "changed",
    )
    assert read("edr/dir/f.fits") is None
    assert read("edr/changed.fits") is None


def test_a_batch_closed_early_leaves_what_it_reported_intact(backend, tmp_path: Path) -> None:
    sender, read = backend
    files = {f"f{i}.fits": os.urandom(2000) for i in range(20)}
    results = sender.put_batch(_file(tmp_path, rel, data) for rel, data in files.items())
    first = next(results)
    results.close()  # the caller stops listening (a kill, an error elsewhere)
    sender.close()
    if first.ok:
        assert read(first.item.key) == files[first.item.key.removeprefix("edr/")]
