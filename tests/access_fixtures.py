"""Fixtures for the access tests (mount, data, jupyter), loaded with ``pytest_plugins``.

- ``public_s3``: a second SeaweedFS for the session whose buckets are world-readable (an
  ``anonymous`` identity with Read and List), because DESI's bucket is read unsigned and
  the tests must exercise exactly that, with no credentials in the client's environment.
- ``release_bucket``: a small DESI-shaped release in that server, written once: real FITS
  files made with astropy (a healpix coadd with B/R/Z spectra, a raw exposure, a target
  catalogue) and one 300 MB FITS file (a real primary header over a data unit of zeros).
- ``synth_bucket``: ``desimirror synth``'s release (valid FITS) in the mirror layout, in
  a bucket of that server, for the welcome notebook and the compressed-file reads.
- ``proxy``: a byte-counting TCP relay in front of the server, so tests assert how many
  bytes the *server* sent, not what a client reports.
- ``access_env``: state and cache directories in the test's tmp dir, as environment
  variables for the ``desimirror`` command, and no AWS credentials.
- ``cleanup_mounts``: mount points detached after the test whatever happened.

Every server, mount and proxy is stopped by PID or path in ``finally`` blocks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from access_helpers import (
    BIG_SIZE,
    COADD,
    RAW,
    TARGETS,
    ReleaseBucket,
    make_coadd,
    make_table,
)
from desimirror.access.mount import find_mount, unmount
from desimirror.dev.relay import CountingProxy
from desimirror.dev.s3server import SeaweedServer
from desimirror.dev.synth import synthesize, write_large_fits
from helpers import S3Endpoint

SYNTH_BUCKET = "desidata-synth"


@pytest.fixture(scope="session")
def public_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    server = SeaweedServer(tmp_path_factory.mktemp("public-seaweedfs"), anonymous_read=True)
    server.start()
    try:
        yield S3Endpoint(server.endpoint_url, server.env())
    finally:
        server.stop()


@pytest.fixture(scope="session")
def release_bucket(
    public_s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory
) -> ReleaseBucket:
    """Mirror layout, as the pipeline uploads it: edr/, raw_spectro_data/, target/."""
    local = tmp_path_factory.mktemp("release")
    make_coadd(local / "edr" / COADD)
    make_table(local / "edr" / "spectro/redux/fuji/tiles-fuji.fits")
    make_table(local / "raw_spectro_data" / RAW, seed=3)
    make_table(local / "target" / TARGETS, seed=4)
    (local / "edr/vac/edr").mkdir(parents=True)
    (local / "edr/vac/edr/README.txt").write_text("value-added catalogues\n")
    write_large_fits(local / "edr/big.fits", BIG_SIZE)
    client = public_s3.client()
    client.create_bucket(Bucket="desidata-test")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), "desidata-test", path.relative_to(local).as_posix())
    return ReleaseBucket("desidata-test", local, "edr/big.fits", public_s3)


@pytest.fixture(scope="session")
def synth_bucket(public_s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> ReleaseBucket:
    """``desimirror synth`` (valid DESI-shaped FITS) in the mirror layout, as ``make demo``
    uploads it: ``edr/``, with ``raw_spectro_data/`` and ``target/`` moved beside it."""
    local = tmp_path_factory.mktemp("synth-release")
    synthesize(local / "edr", 0.05, seed=3)
    (local / "edr/spectro/data").rename(local / "raw_spectro_data")
    (local / "edr/target").rename(local / "target")
    client = public_s3.client()
    client.create_bucket(Bucket=SYNTH_BUCKET)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink())
    with ThreadPoolExecutor(8) as pool:
        for done in pool.map(
            lambda p: client.upload_file(str(p), SYNTH_BUCKET, p.relative_to(local).as_posix()),
            files,
        ):
            del done
    return ReleaseBucket(SYNTH_BUCKET, local, "", public_s3)


@pytest.fixture
def proxy(public_s3: S3Endpoint) -> Iterator[CountingProxy]:
    with CountingProxy.for_url(public_s3.endpoint_url) as relay:
        yield relay


@pytest.fixture
def access_env(tmp_path: Path) -> dict[str, str]:
    """Environment for the command: private state/cache dirs, no AWS credentials at all."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DESIMIRROR_", "DESI_", "RCLONE_", "JUPYTER_"))
    }
    env.update(
        {
            "DESIMIRROR_STATE": str(tmp_path / "state"),
            "DESIMIRROR_CACHE": str(tmp_path / "cache"),
            "HOME": str(tmp_path / "home"),
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }
    )
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def cleanup_mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points to detach after the test, whatever happened (append them)."""
    points: list[Path] = []
    yield points
    for point in points:
        if find_mount(point) is not None:
            try:
                unmount(point, state_dir=tmp_path / "state", lazy=True)
            except Exception:  # best effort in teardown: never mask the test's own failure
                subprocess.run(["fusermount3", "-uz", str(point)], check=False)


@pytest.fixture
def fresh_fsspec() -> Iterator[None]:
    """fsspec caches filesystem instances (and their listings): none may leak between tests."""
    import fsspec

    fsspec.AbstractFileSystem.clear_instance_cache()
    yield
    fsspec.AbstractFileSystem.clear_instance_cache()
