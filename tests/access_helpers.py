"""Helpers for the access tests: a public SeaweedFS, DESI-shaped FITS files, constants.

Plain functions and classes; the fixtures built on them are in ``access_fixtures``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import S3Endpoint

BIG_SIZE = 300 * 10**6
COADD = "spectro/redux/fuji/healpix/sv3/dark/100/10016/coadd-sv3-dark-10016.fits"
RAW = "20201214/00067972/desi-00067972.fits"
TARGETS = "catalogs/dr9/1.1.1/targets-dark.fits"


@dataclass(frozen=True)
class ReleaseBucket:
    """The test release: its bucket, the local copy it was made from, the big file."""

    bucket: str
    local: Path
    big_key: str
    s3: S3Endpoint


def make_coadd(path: Path, nspec: int = 8, seed: int = 1) -> None:
    """A healpix coadd shaped like DESI's: FIBERMAP and B/R/Z WAVELENGTH, FLUX, IVAR."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    hdus: list = [fits.PrimaryHDU()]
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                fits.Column("TARGETID", "K", array=np.arange(nspec) + 39627000000000000),
                fits.Column("TARGET_RA", "D", array=rng.uniform(0, 360, nspec)),
                fits.Column("TARGET_DEC", "D", array=rng.uniform(-10, 80, nspec)),
            ],
            name="FIBERMAP",
        )
    )
    arms = {"B": (3600, 5800, 2751), "R": (5760, 7620, 2326), "Z": (7520, 9824, 2881)}
    for arm, (lo, hi, n) in arms.items():
        wave = np.linspace(lo, hi, n)
        line = np.exp(-(((wave - (lo + hi) / 2) / 30) ** 2))
        flux = rng.normal(2.0, 0.5, (nspec, n)) + line
        hdus.append(fits.ImageHDU(wave, name=f"{arm}_WAVELENGTH"))
        hdus.append(fits.ImageHDU(flux.astype("f4"), name=f"{arm}_FLUX"))
        hdus.append(fits.ImageHDU(np.ones((nspec, n), dtype="f4"), name=f"{arm}_IVAR"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path)


def make_table(path: Path, rows: int = 100, seed: int = 2) -> None:
    """A FITS binary table, as DESI catalogues are."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Table({"TARGETID": np.arange(rows), "FLUX_G": rng.uniform(0, 10, rows)}).write(
        path, overwrite=True
    )


def fuse_usable() -> str | None:
    """None when this machine can FUSE-mount, else why not (the reason to skip)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (a container without --device /dev/fuse)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc}"
    if not shutil.which("fusermount3") and not shutil.which("fusermount"):
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


needs_fuse = pytest.mark.skipif(fuse_usable() is not None, reason=str(fuse_usable()))
