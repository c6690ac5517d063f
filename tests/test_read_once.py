"""The default backend reads every source byte once (issue 11).

At NERSC the source is a network filesystem (DVS) without a client cache, where a second
read of a file is a second trip to the file servers. The test serves the release through
``bench/latencyfs`` with ``--direct-io`` (no page cache: every read(2) reaches the FUSE
daemon, which counts the bytes it serves), uploads it with the default backend through the
installed command, and compares the bytes read with the bytes sent. Before, the default
(s5cmd behind a hash-ahead) read every file twice, and s5cmd itself reads a file twice
more to send it: 3.0 here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integrity_helpers import MiB, make_release, prepare, random_files, rows, uploads
from integrity_helpers import upload as upload_cli

LATENCYFS = Path(__file__).resolve().parent.parent / "bench" / "latencyfs" / "latencyfs.c"
COUNTER = ".latencyfs-bytes-read"


def _build(directory: Path) -> Path:
    """Compile latencyfs, or skip where FUSE or a compiler is missing (CI installs both)."""
    if not (shutil.which("gcc") and shutil.which("pkg-config") and shutil.which("fusermount3")):
        pytest.skip("needs gcc, pkg-config and fusermount3 (Debian: gcc libfuse3-dev fuse3)")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True)
    if flags.returncode != 0:
        pytest.skip("libfuse3 development files missing (Debian: libfuse3-dev)")
    binary = directory / "latencyfs"
    cc = ["gcc", "-O2", "-o", str(binary), str(LATENCYFS), *flags.stdout.decode().split()]
    subprocess.run(cc, check=True, capture_output=True, timeout=120)
    return binary


@pytest.fixture
def counting_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source directory to fill, the same tree served with direct I/O and counted)."""
    binary = _build(tmp_path)
    source, mountpoint = tmp_path / "disk" / "edr", tmp_path / "mnt" / "edr"
    source.mkdir(parents=True)
    mountpoint.mkdir(parents=True)
    argv = [str(binary), str(mountpoint), f"--source={source}", "--direct-io", "-f", "-o", "ro"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("latencyfs did not mount (FUSE not usable here)")
            time.sleep(0.05)
        yield source, mountpoint
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", str(mountpoint)], timeout=30, check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _bytes_read(mountpoint: Path) -> int:
    return int((mountpoint / COUNTER).read_text())


@pytest.mark.s3
def test_the_default_backend_reads_each_source_byte_once(
    counting_mount: tuple[Path, Path], tmp_path: Path, s3, bucket: str, cli_env: dict
) -> None:
    source, mounted = counting_mount
    files = random_files(11, 24, low=2_000, high=200_000)
    files["d0/big.fits"] = os.urandom(12 * MiB)  # three parts of 5 MiB
    make_release(source, dict(list(files.items())[:12]))  # half published, half not
    for rel, data in list(files.items())[12:]:
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    db = tmp_path / "m.db"
    prepare(mounted, db)  # the crawl reads the listings, not the files
    before = _bytes_read(mounted)
    proc, report = upload_cli(db, bucket, s3.endpoint_url, cli_env, "--part-size", "5MiB")
    read = _bytes_read(mounted) - before
    assert proc.returncode == 0, proc.stderr
    sent = report["bytes_sent"]  # the files and the listing, which is mirrored too
    assert sent > sum(len(data) for data in files.values())
    assert read <= 1.02 * sent, f"read {read:,} bytes through the mount to send {sent:,}"
    assert {p for p in uploads(db) if not p.endswith(".sha256sum")} == set(files)
    proofs = {proof for (proof,) in rows(db, "SELECT proof FROM uploads")}
    assert proofs <= {"sha256", "composite"}, proofs  # the store checked every object
    assert report["proven_by"] == {"sha256": len(uploads(db)) - 1, "composite": 1}
    assert not any("validated nothing" in w for w in report["warnings"])
