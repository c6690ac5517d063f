"""``desimirror.access.data``: the release from Python with no mount, read unsigned from a real S3.

Byte counts are taken at a counting relay in front of SeaweedFS: what the server sent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table

from access_helpers import COADD, RAW, TARGETS, ReleaseBucket, make_table
from desimirror.access import data
from desimirror.access.config import AccessConfig, load_config
from desimirror.dev.relay import CountingProxy
from desimirror.errors import UsageError

pytest_plugins = ["access_fixtures"]
pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("fresh_fsspec")]

MB = 10**6


def _config(release: ReleaseBucket, endpoint: str, tmp_path: Path, **extra: str) -> AccessConfig:
    return load_config(
        {
            "HOME": str(tmp_path),
            "DESIMIRROR_BUCKET": f"s3://{release.bucket}",
            "DESIMIRROR_ENDPOINT_URL": endpoint,
            "DESIMIRROR_NO_SIGN_REQUEST": "1",
            "DESIMIRROR_REGION": "us-east-1",
            "DESIMIRROR_CACHE": str(tmp_path / "cache"),
            "DESIMIRROR_RELEASE": "EDR",
            **extra,
        }
    )


@pytest.fixture(autouse=True)
def _no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsigned means unsigned: no AWS credentials anywhere in reach."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def test_filesystem_is_rooted_at_the_release(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    cfg = _config(release_bucket, proxy.url, tmp_path)
    fs = data.filesystem(config=cfg)
    assert sorted(fs.ls("", detail=False)) == ["big.fits", "spectro", "vac"]
    assert data.ls("spectro/redux/fuji", config=cfg) == ["healpix", "tiles-fuji.fits"]
    with fs.open(COADD) as f, fits.open(f) as hdul:
        assert hdul["B_FLUX"].data.shape == (8, 2751)
        expected = fits.getdata(release_bucket.local / "edr" / COADD, "B_FLUX")
        assert (hdul["B_FLUX"].data == expected).all()


def test_header_of_a_300mb_file_fetches_little(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    cfg = _config(release_bucket, proxy.url, tmp_path)
    proxy.reset()
    with data.open("big.fits", config=cfg) as f:
        header = fits.getheader(f)
    time.sleep(0.2)
    assert header["NAXIS"] == 2
    assert proxy.downstream <= 4 * MB, proxy.downstream
    # The block cache keeps what was read: the same header again costs no data transfer.
    proxy.reset()
    with data.open("big.fits", config=cfg) as f:
        fits.getheader(f)
    assert proxy.downstream < 100_000, proxy.downstream  # a HEAD for the ETag check, no data


def test_data_model_variables_resolve_onto_the_mirror_layout(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    cfg = _config(release_bucket, proxy.url, tmp_path)
    assert data.resolve("$DESI_SPECTRO_DATA/" + RAW, config=cfg) == "raw_spectro_data/" + RAW
    assert data.resolve("${DESI_TARGET}/" + TARGETS, config=cfg) == "target/" + TARGETS
    assert data.resolve("$DESI_ROOT/" + COADD, config=cfg) == "edr/" + COADD
    with data.open("$DESI_TARGET/" + TARGETS, config=cfg) as f:
        assert len(Table.read(f)) == 100
    with pytest.raises(UsageError):
        data.resolve("../../etc/passwd", config=cfg)
    with pytest.raises(UsageError):
        data.resolve("$HOME/x", config=cfg)
    with pytest.raises(UsageError):
        data.open(COADD, "wb", config=cfg)


def test_local_path_fetches_once_and_refetches_when_the_object_changes(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    client = release_bucket.s3.client()
    key = "edr/spectro/redux/fuji/changing.fits"
    first = tmp_path / "first.fits"
    make_table(first, rows=10)
    client.upload_file(str(first), release_bucket.bucket, key)
    cfg = _config(release_bucket, proxy.url, tmp_path)
    rel = "spectro/redux/fuji/changing.fits"

    proxy.reset()
    path = data.local_path(rel, config=cfg)
    assert path.endswith("-changing.fits")  # named like the file, for readers that care
    assert Path(path).read_bytes() == first.read_bytes()
    assert proxy.downstream >= first.stat().st_size

    proxy.reset()
    assert data.local_path(rel, config=cfg) == path
    assert proxy.downstream < first.stat().st_size  # re-used: only the ETag was checked

    second = tmp_path / "second.fits"
    make_table(second, rows=2000, seed=9)
    client.upload_file(str(second), release_bucket.bucket, key)
    import fsspec

    fsspec.AbstractFileSystem.clear_instance_cache()  # a new session, as a new kernel would be
    again = data.local_path(rel, config=cfg)
    assert len(Table.read(again)) == 2000
    assert Path(again).read_bytes() == second.read_bytes()


def test_local_path_works_for_c_readers(
    release_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    fitsio = pytest.importorskip("fitsio")
    cfg = _config(release_bucket, proxy.url, tmp_path)
    path = data.local_path("$DESI_SPECTRO_DATA/" + RAW, config=cfg)
    assert len(fitsio.read(path, ext=1)) == 100


def test_a_local_copy_needs_no_s3(release_bucket: ReleaseBucket, tmp_path: Path) -> None:
    cfg = load_config(
        {
            "HOME": str(tmp_path),
            "DESIMIRROR_LOCAL": str(release_bucket.local),
            "DESIMIRROR_RELEASE": "edr",
            "DESIMIRROR_ENDPOINT_URL": "http://127.0.0.1:9",  # would fail if used
        }
    )
    assert data.ls("spectro/redux/fuji", config=cfg) == ["healpix", "tiles-fuji.fits"]
    path = data.local_path("$DESI_TARGET/" + TARGETS, config=cfg)
    assert Path(path) == (release_bucket.local / "target" / TARGETS).resolve()
    with data.open(COADD, config=cfg) as f:
        assert fits.getheader(f, "FIBERMAP")["NAXIS2"] == 8
    with pytest.raises(UsageError):
        data.local_path("spectro/nothing.fits", config=cfg)


COMPRESSED = (
    "$DESI_SPECTRO_DATA/{raw}",  # .fits.fz: tile-compressed raw frame
    "$DESI_SPECTRO_DATA/{fiberassign}",  # .fits.gz: a gzipped table
)


def _compressed_paths(synth: ReleaseBucket) -> list[str]:
    raw = synth.local / "raw_spectro_data"
    fz = next(raw.glob("*/*/desi-*.fits.fz")).relative_to(raw).as_posix()
    gz = next(raw.glob("*/*/fiberassign-*.fits.gz")).relative_to(raw).as_posix()
    return [p.format(raw=fz, fiberassign=gz) for p in COMPRESSED]


def test_compressed_files_open_on_a_cold_cache_with_astropy_and_fitsio(
    synth_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    fitsio = pytest.importorskip("fitsio")
    for path in _compressed_paths(synth_bucket):
        cfg = _config(synth_bucket, proxy.url, tmp_path / path[-8:].replace(".", "-"))
        with data.open(path, config=cfg) as f, fits.open(f, checksum=True) as hdul:
            names = [h.name for h in hdul]
            first = hdul[1].data
        expected = ["PRIMARY", "SPEC", "B0"] if path.endswith(".fz") else ["PRIMARY", "FIBERASSIGN"]
        assert names[: len(expected)] == expected, path
        again = fitsio.read(data.local_path(path, config=cfg), ext=1)
        assert len(again) == len(first), path


def test_any_release_the_bucket_holds_is_accepted(
    synth_bucket: ReleaseBucket, proxy: CountingProxy, tmp_path: Path
) -> None:
    client = synth_bucket.s3.client()
    client.put_object(Bucket=synth_bucket.bucket, Key="dr7x/README.txt", Body=b"a release\n")
    cfg = _config(synth_bucket, proxy.url, tmp_path, DESIMIRROR_RELEASE="DR7X")
    assert data.ls(config=cfg) == ["README.txt"]
    with data.open("README.txt", config=cfg) as f:
        assert f.read() == b"a release\n"
    bad = _config(synth_bucket, proxy.url, tmp_path, DESIMIRROR_RELEASE="nothere")
    with pytest.raises(UsageError, match="unknown release"):
        data.ls(config=bad)
    with pytest.raises(UsageError, match="no such file"):
        data.open("spectro/nothing.fits", config=_config(synth_bucket, proxy.url, tmp_path))
