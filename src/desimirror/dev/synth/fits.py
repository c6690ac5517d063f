"""What the synthetic release's FITS files hold: DESI-shaped HDUs, written with astropy.

Each FITS file of the layout is a :class:`Product`: a kind (``coadd``, ``spectra``,
``redrock``, ``zcatalog``, ``exposures``, ``tiles``, ``targets``, ``fiberassign``, ``raw``,
``guide``, ``bias``, or
``image`` for the files a newcomer does not read first), the one number its size follows
(spectra, rows, cameras or data bytes) and its header keywords. HDU names, column names and
keywords are those of the DESI data model (desidatamodel), with a subset of the columns.

The size of a file must be known before it is written (``estimate``, progress totals, the
space check, and the rule that a sparse tree has the sizes of the dense one), so:

* a product's size depends only on (kind, count, keyword names), and is measured once, on a
  blank template (zero data, neutral keyword values) that has the same cards;
* ``.fits.gz`` files are gzip streams of *stored* deflate blocks (valid gzip that every
  reader opens; no compression, so their size follows from the FITS size);
* ``.fits.fz`` raw frames are tile-compressed (RICE_1) images whose pixels depend only on
  the camera count, so their compressed size does too; their headers say which exposure.

``--sparse`` writes the template: headers and the few non-zero blocks, holes elsewhere;
still valid FITS whose checksums hold.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from desimirror.dev.synth import sky

FITS_BLOCK = 2880
CHUNK = 1 << 20
GZIP_BLOCK = 65535
CAMERAS = tuple(f"{arm}{petal}" for petal in range(10) for arm in "BRZ")
GUIDERS = ("GUIDE0", "GUIDE2", "GUIDE3", "GUIDE5", "GUIDE7", "GUIDE8")
RAW_SHAPE = (64, 128)  # per camera; DESI: 4k x 4k
BIAS_WIDTH = 64  # columns of a nightly bias image; DESI: 4256
#: The group of the fiberassign files under target/: one table shared by all, so that a
#: thousand of them cost one table's making (their headers still name their tile).
SHARED_FIBERASSIGN = "target/fiberassign"
#: The time CHECKSUM comments give, instead of now: the same seed, the same bytes.
CHECKSUM_TIME = "2023-06-13T00:00:00"


@dataclass(frozen=True, slots=True)
class Product:
    """What one FITS file holds. ``group`` ties products describing the same targets
    (a coadd and its redrock); ``members`` lists what a summary table summarises."""

    kind: str
    n: int
    keys: tuple[tuple[str, Any], ...] = ()
    group: str = ""
    members: tuple = ()
    gzip: bool = False


def pad(size: int) -> int:
    return math.ceil(size / FITS_BLOCK) * FITS_BLOCK


# ---------------------------------------------------------------- gzip, stored


def gzip_size(size: int) -> int:
    """The length of :func:`gzip_stored` of ``size`` bytes."""
    return 10 + size + 5 * max(1, math.ceil(size / GZIP_BLOCK)) + 8


def gzip_stored(data: bytes) -> bytes:
    """``data`` as a gzip stream of stored deflate blocks: its size is known in advance."""
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    view = memoryview(data)
    starts = range(0, max(len(data), 1), GZIP_BLOCK)
    for start in starts:
        chunk = view[start : start + GZIP_BLOCK]
        final = start + GZIP_BLOCK >= len(data)
        out.append(struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF))
        out.append(bytes(chunk))
    out.append(struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
    return b"".join(out)


# ---------------------------------------------------------------- HDU builders


class _Col(NamedTuple):
    """A column: name, FITS format (``K``, ``10D``, ``6A``...), values, unit."""

    name: str
    fmt: str
    array: Any
    unit: str | None = None


_NUMPY = {"K": ">i8", "J": ">i4", "I": ">i2", "D": ">f8", "E": ">f4", "L": "?", "B": "u1"}


def _column(name: str, fmt: str, values: Any, unit: str | None = None) -> _Col:
    return _Col(name, fmt, values, unit)


def _dtype(col: _Col) -> tuple:
    count, code = (int(col.fmt[:-1]) if col.fmt[:-1] else 1), col.fmt[-1]
    if code == "A":
        return (col.name, f"S{count}")
    return (col.name, _NUMPY[code], (count,)) if count > 1 else (col.name, _NUMPY[code])


def _table(name: str, columns: list[_Col], keys: dict[str, Any] | None = None):
    """A binary table from a structured array: astropy's Column objects cost ~1 ms each,
    and thousands of tables of dozens of columns would take minutes."""
    from astropy.io import fits

    n = len(columns[0].array)
    data = np.empty(n, dtype=[_dtype(c) for c in columns])
    for col in columns:
        values = np.asarray(col.array)
        data[col.name] = values.astype(f"S{col.fmt[:-1] or 1}") if col.fmt[-1] == "A" else values
    hdu = fits.BinTableHDU(data=data, name=name)
    _copy_units(columns, hdu)
    for key, value in (keys or {}).items():
        hdu.header[key] = value
    return hdu


def _copy_units(columns: list, hdu) -> None:
    """TUNITn from ``columns`` (ours, or another table's): a structured array has none."""
    for col, target in zip(columns, hdu.columns, strict=True):
        if col.unit:
            target.unit = col.unit


def _fibermap(t: sky.Targets, rng: np.random.Generator, name: str = "FIBERMAP"):
    n = len(t)
    flux = t.flux_grz
    return _table(
        name,
        [
            _column("TARGETID", "K", t.targetid),
            _column("COADD_FIBERSTATUS", "J", np.zeros(n, "i4")),
            _column("TARGET_RA", "D", t.ra, "deg"),
            _column("TARGET_DEC", "D", t.dec, "deg"),
            _column("PMRA", "E", np.zeros(n, "f4"), "mas yr^-1"),
            _column("PMDEC", "E", np.zeros(n, "f4"), "mas yr^-1"),
            _column("REF_EPOCH", "E", np.full(n, 2015.5, "f4"), "yr"),
            _column("OBJTYPE", "3A", np.full(n, "TGT")),
            _column("SUBPRIORITY", "D", rng.uniform(0, 1, n)),
            _column("OBSCONDITIONS", "J", np.ones(n, "i4")),
            _column("RELEASE", "I", np.full(n, 9010, "i2")),
            _column("BRICKID", "J", rng.integers(300_000, 400_000, n).astype("i4")),
            _column("BRICK_OBJID", "J", rng.integers(0, 5000, n).astype("i4")),
            _column("MORPHTYPE", "4A", np.where(t.spectype == "GALAXY", "EXP", "PSF")),
            _column("FLUX_G", "E", flux[:, 0], "nanomaggy"),
            _column("FLUX_R", "E", flux[:, 1], "nanomaggy"),
            _column("FLUX_Z", "E", flux[:, 2], "nanomaggy"),
            _column("FLUX_IVAR_G", "E", (10 / flux[:, 0]).astype("f4"), "nanomaggy^-2"),
            _column("FLUX_IVAR_R", "E", (10 / flux[:, 1]).astype("f4"), "nanomaggy^-2"),
            _column("FLUX_IVAR_Z", "E", (10 / flux[:, 2]).astype("f4"), "nanomaggy^-2"),
            _column("EBV", "E", rng.uniform(0.01, 0.1, n).astype("f4"), "mag"),
            _column("PHOTSYS", "1A", np.full(n, "S")),
            _column("DESI_TARGET", "K", t.desi_target),
            _column("BGS_TARGET", "K", np.zeros(n, "i8")),
            _column("MWS_TARGET", "K", (t.spectype == "STAR").astype("i8")),
            _column("SCND_TARGET", "K", np.zeros(n, "i8")),
            _column("COADD_NUMEXP", "I", np.ones(n, "i2")),
            _column("COADD_EXPTIME", "E", np.full(n, 900.0, "f4"), "s"),
        ],
    )


def _exp_fibermap(t: sky.Targets, keys: dict[str, Any]):
    n = len(t)
    return _table(
        "EXP_FIBERMAP",
        [
            _column("TARGETID", "K", t.targetid),
            _column("NIGHT", "J", np.full(n, int(keys.get("NIGHT", 0) or 0), "i4")),
            _column("EXPID", "J", np.full(n, int(keys.get("EXPID", 0) or 0), "i4")),
            _column("TILEID", "J", np.full(n, int(keys.get("TILEID", 0) or 0), "i4")),
            _column("EXPTIME", "D", np.full(n, 900.0), "s"),
            _column("PETAL_LOC", "I", np.full(n, int(keys.get("PETAL", 0) or 0), "i2")),
            _column("FIBER", "J", np.arange(n, dtype="i4")),
            _column("FIBERSTATUS", "J", np.zeros(n, "i4")),
        ],
    )


def _tsnr2(t: sky.Targets, rng: np.random.Generator) -> list:
    n = len(t)
    return [
        _column(f"TSNR2_{k}", "E", rng.uniform(10, 200, n).astype("f4"))
        for k in ("ELG", "LRG", "QSO", "BGS", "LYA")
    ]


def _redshift_columns(t: sky.Targets, rng: np.random.Generator) -> list:
    n = len(t)
    return [
        _column("CHI2", "D", rng.uniform(7000, 9000, n)),
        _column("COEFF", "10D", rng.normal(0, 100, (n, 10))),
        _column("Z", "D", t.z),
        _column("ZERR", "D", t.zerr),
        _column("ZWARN", "K", np.zeros(n, "i8")),
        _column("NPIXELS", "K", np.full(n, 7900, "i8")),
        _column("SPECTYPE", "6A", t.spectype),
        _column("SUBTYPE", "20A", np.full(n, "")),
        _column("NCOEFF", "K", np.where(t.spectype == "QSO", 4, 10).astype("i8")),
        _column("DELTACHI2", "D", rng.uniform(25, 5000, n)),
    ]


def _primary(keys: dict[str, Any]):
    from astropy.io import fits

    hdu = fits.PrimaryHDU()
    for key, value in keys.items():
        hdu.header[key] = value
    return hdu


def _coadd(p: Product, keys: dict[str, Any], seed: int) -> list:
    from astropy.io import fits

    t = sky.targets(seed, p.group, p.n)
    rng = np.random.default_rng([seed, 1, sky._group_number(p.group)])
    hdus = [_primary(keys), _fibermap(t, rng), _exp_fibermap(t, keys)]
    scores = [_column("TARGETID", "K", t.targetid)]
    for arm in "BRZ":
        arrays = sky.observe(t, arm, rng)
        hdus.append(fits.ImageHDU(arrays["WAVELENGTH"], name=f"{arm}_WAVELENGTH"))
        hdus[-1].header["BUNIT"] = "Angstrom"
        hdus.append(fits.ImageHDU(arrays["FLUX"], name=f"{arm}_FLUX"))
        hdus[-1].header["BUNIT"] = "10**-17 erg/(s cm2 Angstrom)"
        hdus.append(fits.ImageHDU(arrays["IVAR"], name=f"{arm}_IVAR"))
        hdus[-1].header["BUNIT"] = "10**+34 (s2 cm4 Angstrom2) / erg2"
        hdus.append(fits.ImageHDU(arrays["MASK"], name=f"{arm}_MASK"))
        hdus.append(fits.ImageHDU(arrays["RESOLUTION"], name=f"{arm}_RESOLUTION"))
        flux = arrays["FLUX"]
        median = np.median(flux, axis=1).astype("f4")
        snr = (median * np.sqrt(np.median(arrays["IVAR"], axis=1))).astype("f4")
        scores += [
            _column(f"INTEG_COADD_FLUX_{arm}", "E", (flux.sum(axis=1) * sky.WAVE_STEP)),
            _column(f"MEDIAN_COADD_FLUX_{arm}", "E", median),
            _column(f"MEDIAN_COADD_SNR_{arm}", "E", snr),
        ]
    hdus.append(_table("SCORES", scores + _tsnr2(t, rng)))
    return hdus


def _spectra(p: Product, keys: dict[str, Any], seed: int) -> list:
    """The spectra a coadd was made from (one exposure each here), in the data model's
    order: FIBERMAP and SCORES, then each arm's HDUs; the same targets as the coadd."""
    coadd = _coadd(p, keys, seed)
    by_name = {hdu.name: hdu for hdu in coadd[1:]}
    arms = [hdu for hdu in coadd[1:] if hdu.name[:2] in ("B_", "R_", "Z_")]
    return [coadd[0], by_name["FIBERMAP"], by_name["SCORES"], *arms]


def _bias(p: Product, keys: dict[str, Any], seed: int) -> list:
    """A nightly bias: one float32 image (EXTNAME BIAS) of ``p.n`` rows, in ADU."""
    from astropy.io import fits

    rng = np.random.default_rng([seed, 3, sky._group_number(p.group)])
    image = rng.normal(0.0, 0.5, (p.n, BIAS_WIDTH)).astype(">f4")
    hdu = fits.PrimaryHDU(image)
    hdu.header["EXTNAME"] = "BIAS"
    for key, value in (("TELESCOP", "KPNO 4.0-m telescope"), ("INSTRUME", "DESI"), *keys.items()):
        hdu.header[key] = value
    hdu.header["BUNIT"] = "adu"
    return [hdu]


def _redrock(p: Product, keys: dict[str, Any], seed: int) -> list:
    t = sky.targets(seed, p.group, p.n)
    rng = np.random.default_rng([seed, 2, sky._group_number(p.group)])
    redshifts = _table(
        "REDSHIFTS", [_column("TARGETID", "K", t.targetid), *_redshift_columns(t, rng)]
    )
    return [
        _primary(keys),
        redshifts,
        _fibermap(t, rng),
        _exp_fibermap(t, keys),
        _table("TSNR2", [_column("TARGETID", "K", t.targetid), *_tsnr2(t, rng)]),
    ]


def _zcatalog_targets(p: Product, seed: int) -> tuple[sky.Targets, np.ndarray]:
    """The members' targets first (``(group, count)`` pairs), then others up to ``n``."""
    parts, pixels = [], []
    for group, count in p.members:
        parts.append(sky.targets(seed, group, count))
        pixels.append(np.full(count, int(group.rsplit("/", 1)[-1]), "i4"))
    rest = p.n - sum(len(t) for t in parts)
    if rest > 0:
        parts.append(sky.targets(seed, f"{p.group}/others", rest))
        pixels.append(np.random.default_rng([seed, rest]).integers(0, 49152, rest).astype("i4"))
    fields = {
        f: np.concatenate([getattr(t, f) for t in parts])[: p.n]
        for f in sky.Targets.__dataclass_fields__
    }
    return sky.Targets(**fields), np.concatenate(pixels)[: p.n]


def _zcatalog(p: Product, keys: dict[str, Any], seed: int) -> list:
    t, pixels = _zcatalog_targets(p, seed)
    rng = np.random.default_rng([seed, 3, sky._group_number(p.group)])
    n = len(t)
    survey, program = str(keys.get("SURVEY", "")), str(keys.get("PROGRAM", ""))
    columns = [
        _column("TARGETID", "K", t.targetid),
        _column("SURVEY", "7A", np.full(n, survey)),
        _column("PROGRAM", "6A", np.full(n, program)),
        _column("HEALPIX", "J", pixels),
        _column("SPGRPVAL", "J", pixels),
        *_redshift_columns(t, rng),
        _column("COADD_FIBERSTATUS", "J", np.zeros(n, "i4")),
        _column("TARGET_RA", "D", t.ra, "deg"),
        _column("TARGET_DEC", "D", t.dec, "deg"),
        _column("FLUX_G", "E", t.flux_grz[:, 0], "nanomaggy"),
        _column("FLUX_R", "E", t.flux_grz[:, 1], "nanomaggy"),
        _column("FLUX_Z", "E", t.flux_grz[:, 2], "nanomaggy"),
        _column("DESI_TARGET", "K", t.desi_target),
        _column("BGS_TARGET", "K", np.zeros(n, "i8")),
        _column("MWS_TARGET", "K", (t.spectype == "STAR").astype("i8")),
        *_tsnr2(t, rng),
        _column("ZCAT_NSPEC", "I", np.ones(n, "i2")),
        _column("ZCAT_PRIMARY", "L", np.ones(n, bool)),
    ]
    return [_primary(keys), _table("ZCATALOG", columns)]


def _exposures(p: Product, keys: dict[str, Any], seed: int) -> list:
    """exposures-SPECPROD: EXPOSURES (one row per exposure), FRAMES (one per camera)."""
    rows = list(p.members) or [(0, 0, 0)] * p.n
    night, expid, tileid = (np.array(c, "i4") for c in zip(*rows, strict=True))
    n, rng = len(rows), np.random.default_rng([seed, 4])
    mjd = 59197.0 + (expid - expid.min()) / 100.0
    exposures = [
        _column("NIGHT", "J", night),
        _column("EXPID", "J", expid),
        _column("TILEID", "J", tileid),
        _column("TILERA", "D", rng.uniform(0, 360, n), "deg"),
        _column("TILEDEC", "D", rng.uniform(-10, 80, n), "deg"),
        _column("MJD", "D", mjd),
        _column("SURVEY", "7A", np.full(n, "sv1")),
        _column("PROGRAM", "6A", np.full(n, "dark")),
        _column("FAPRGRM", "12A", np.full(n, "dark")),
        _column("EXPTIME", "D", rng.uniform(600, 1200, n), "s"),
        _column("EFFTIME_SPEC", "D", rng.uniform(500, 1500, n), "s"),
        _column("GOALTIME", "D", np.full(n, 1000.0), "s"),
        _column("GOALTYPE", "6A", np.full(n, "dark")),
        _column("AIRMASS", "E", rng.uniform(1.0, 1.8, n).astype("f4")),
        _column("EBV", "E", rng.uniform(0.01, 0.1, n).astype("f4"), "mag"),
        _column("SEEING_ETC", "D", rng.uniform(0.8, 1.6, n), "arcsec"),
        _column("TSNR2_ELG", "D", rng.uniform(50, 150, n)),
        _column("TSNR2_LRG", "D", rng.uniform(50, 150, n)),
    ]
    cams = np.array([c.lower() for c in CAMERAS])
    frames = [
        _column("NIGHT", "J", np.repeat(night, len(cams))),
        _column("EXPID", "J", np.repeat(expid, len(cams))),
        _column("TILEID", "J", np.repeat(tileid, len(cams))),
        _column("CAMERA", "2A", np.tile(cams, n)),
        _column("MJD", "D", np.repeat(mjd, len(cams))),
        _column("EXPTIME", "D", np.repeat(exposures[9].array, len(cams)), "s"),
    ]
    return [_primary(keys), _table("EXPOSURES", exposures), _table("FRAMES", frames)]


def _tiles(p: Product, keys: dict[str, Any], seed: int) -> list:
    rows = list(p.members) or [(0, 0)] * p.n
    tileid, lastnight = (np.array(c, "i4") for c in zip(*rows, strict=True))
    n, rng = len(rows), np.random.default_rng([seed, 5])
    columns = [
        _column("TILEID", "J", tileid),
        _column("SURVEY", "20A", np.full(n, "sv1")),
        _column("PROGRAM", "6A", np.full(n, "dark")),
        _column("FAPRGRM", "20A", np.full(n, "dark")),
        _column("NEXP", "K", rng.integers(1, 6, n)),
        _column("EXPTIME", "D", rng.uniform(900, 4000, n), "s"),
        _column("TILERA", "D", rng.uniform(0, 360, n), "deg"),
        _column("TILEDEC", "D", rng.uniform(-10, 80, n), "deg"),
        _column("EFFTIME_SPEC", "D", rng.uniform(800, 3000, n), "s"),
        _column("GOALTIME", "D", np.full(n, 1000.0), "s"),
        _column("OBSSTATUS", "20A", np.full(n, "obsend")),
        _column("LASTNIGHT", "J", lastnight),
    ]
    return [_primary(keys), _table("TILE_COMPLETENESS", columns)]


def _targets(p: Product, keys: dict[str, Any], seed: int) -> list:
    t = sky.targets(seed, p.group, p.n)
    rng = np.random.default_rng([seed, 6, sky._group_number(p.group)])
    n = p.n
    columns = [
        _column("RELEASE", "I", np.full(n, 9010, "i2")),
        _column("BRICKID", "J", rng.integers(300_000, 400_000, n).astype("i4")),
        _column("BRICKNAME", "8A", np.full(n, "1234p567")),
        _column("BRICK_OBJID", "J", rng.integers(0, 5000, n).astype("i4")),
        _column("MORPHTYPE", "4A", np.where(t.spectype == "GALAXY", "EXP", "PSF")),
        _column("RA", "D", t.ra, "deg"),
        _column("DEC", "D", t.dec, "deg"),
        _column("EBV", "E", rng.uniform(0.01, 0.1, n).astype("f4"), "mag"),
        _column("FLUX_G", "E", t.flux_grz[:, 0], "nanomaggy"),
        _column("FLUX_R", "E", t.flux_grz[:, 1], "nanomaggy"),
        _column("FLUX_Z", "E", t.flux_grz[:, 2], "nanomaggy"),
        _column("MASKBITS", "I", np.zeros(n, "i2")),
        _column("PHOTSYS", "1A", np.full(n, "S")),
        _column("TARGETID", "K", t.targetid),
        _column("DESI_TARGET", "K", t.desi_target),
        _column("BGS_TARGET", "K", np.zeros(n, "i8")),
        _column("MWS_TARGET", "K", (t.spectype == "STAR").astype("i8")),
        _column("SUBPRIORITY", "D", rng.uniform(0, 1, n)),
        _column("OBSCONDITIONS", "J", np.ones(n, "i4")),
        _column("PRIORITY_INIT", "K", np.full(n, 3000, "i8")),
        _column("NUMOBS_INIT", "K", np.ones(n, "i8")),
        _column("HPXPIXEL", "K", np.full(n, int(keys.get("HPXPIXEL", 0) or 0), "i8")),
    ]
    return [_primary(keys), _table("TARGETS", columns)]


def _fiberassign(p: Product, keys: dict[str, Any], seed: int) -> list:
    t = sky.targets(seed, p.group, p.n)
    rng = np.random.default_rng([seed, 7, sky._group_number(p.group)])
    n = p.n
    petal = (np.arange(n) * 10 // max(n, 1)).astype("i2")
    device = rng.integers(0, 523, n).astype("i4")
    columns = [
        _column("TARGETID", "K", t.targetid),
        _column("PETAL_LOC", "I", petal),
        _column("DEVICE_LOC", "J", device),
        _column("LOCATION", "K", petal.astype("i8") * 1000 + device),
        _column("FIBER", "J", petal.astype("i4") * 500 + np.arange(n, dtype="i4") % 500),
        _column("FIBERSTATUS", "J", np.zeros(n, "i4")),
        _column("TARGET_RA", "D", t.ra, "deg"),
        _column("TARGET_DEC", "D", t.dec, "deg"),
        _column("LAMBDA_REF", "E", np.full(n, 5400.0, "f4"), "Angstrom"),
        _column("OBJTYPE", "3A", np.full(n, "TGT")),
        _column("FIBERASSIGN_X", "E", rng.uniform(-400, 400, n).astype("f4"), "mm"),
        _column("FIBERASSIGN_Y", "E", rng.uniform(-400, 400, n).astype("f4"), "mm"),
        _column("PRIORITY", "J", np.full(n, 3000, "i4")),
        _column("SUBPRIORITY", "D", rng.uniform(0, 1, n)),
        _column("DESI_TARGET", "K", t.desi_target),
    ]
    return [_primary(keys), _table("FIBERASSIGN", columns)]


@lru_cache(maxsize=64)
def _camera_pixels(shape: tuple[int, int], index: int) -> np.ndarray:
    """A bias level with read noise, the same for every file (so its compressed size is)."""
    rng = np.random.default_rng([index, *shape])
    return (2000 + rng.normal(0, 3, shape)).astype("u2")


def _raw(p: Product, keys: dict[str, Any], seed: int) -> list:  # noqa: ARG001 - same pixels
    """desi-EXPID.fits.fz: an empty primary HDU, SPEC (the global keywords over a dummy
    payload), then one RICE-compressed image per camera; guide-EXPID.fits.fz likewise."""
    from astropy.io import fits

    names = (GUIDERS if p.kind == "guide" else CAMERAS)[: p.n]
    spec = fits.CompImageHDU(np.arange(10, dtype="u2"), name="SPEC", compression_type="RICE_1")
    for key, value in keys.items():
        spec.header[key] = value
    return [fits.PrimaryHDU(), spec, *(_camera(name, i) for i, name in enumerate(names))]


def _camera(name: str, index: int):
    from astropy.io import fits

    hdu = fits.CompImageHDU(_camera_pixels(RAW_SHAPE, index), name=name, compression_type="RICE_1")
    hdu.header["CAMERA"] = name.lower()
    return hdu


BUILDERS = {
    "coadd": _coadd,
    "spectra": _spectra,
    "bias": _bias,
    "redrock": _redrock,
    "zcatalog": _zcatalog,
    "exposures": _exposures,
    "tiles": _tiles,
    "targets": _targets,
    "fiberassign": _fiberassign,
    "raw": _raw,
    "guide": _raw,
}


# ---------------------------------------------------------------- bytes, sizes, templates


def _neutral(value: Any) -> Any:
    """A value of the same type whose card has the same length: for the blank template."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0
    if isinstance(value, float):
        return 0.0
    return ""


def _blank(hdus: list) -> list:
    """The same HDUs with zero data, so that a sparse file is holes after its headers."""
    from astropy.io import fits

    out = []
    for hdu in hdus:
        if isinstance(hdu, fits.CompImageHDU):  # raw pixels: the same in every file anyway
            pass
        elif isinstance(hdu, fits.BinTableHDU):
            # Logical columns hold 'F' for False, not zeros: in the blank they are bytes,
            # so that a sparse zcatalog of 100 MB is holes, not 100 MB of 'F'.
            dtype = np.asarray(hdu.data).dtype
            logical = {c.name for c in hdu.columns if str(c.format).endswith("L")}
            fields = [(n, "u1" if n in logical else dtype[n]) for n in dtype.names]
            zeros = np.zeros(len(hdu.data), dtype=fields)
            blank = fits.BinTableHDU(data=zeros, header=hdu.header.copy())
            _copy_units(list(hdu.columns), blank)
            hdu = blank
        elif isinstance(hdu, fits.ImageHDU | fits.PrimaryHDU) and hdu.data is not None:
            hdu = type(hdu)(np.zeros_like(hdu.data), header=hdu.header)
        out.append(hdu)
    return out


def _serialize(hdus: list, gzip: bool) -> bytes:
    """The HDUs as a FITS file, with CHECKSUM and DATASUM dated :data:`CHECKSUM_TIME`, not
    now (the same seed, the same bytes).

    astropy dates them with ``_ValidHDU._get_timestamp``, which is pointed at the fixed
    time for the write (one pass: checksums over the bytes as written). Should a release
    of astropy not have it, each HDU is written, read back and summed with ``when=``
    (``add_checksum`` before writing would sum a table before astropy rewrites its
    column keywords), which costs twice the time.
    """
    from astropy.io import fits
    from astropy.io.fits.hdu import base

    buffer = io.BytesIO()
    if hasattr(base._ValidHDU, "_get_timestamp"):
        original = base._ValidHDU._get_timestamp
        base._ValidHDU._get_timestamp = lambda _self: CHECKSUM_TIME
        try:
            fits.HDUList(hdus).writeto(buffer, checksum=True)
        finally:
            base._ValidHDU._get_timestamp = original
    else:  # pragma: no cover - another astropy
        first = io.BytesIO()
        fits.HDUList(hdus).writeto(first)
        first.seek(0)
        with fits.open(first) as hdul:
            for hdu in hdul:
                hdu.add_checksum(when=CHECKSUM_TIME)
            hdul.writeto(buffer)
    data = buffer.getvalue()
    return gzip_stored(data) if gzip else data


def _image_header(nbytes: int) -> bytes:
    """The primary header of an ``image`` product: one block, BITPIX 8 over nbytes."""
    from astropy.io import fits

    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 8
    header["NAXIS"] = 1
    header["NAXIS1"] = nbytes
    header["EXTEND"] = True
    header["ORIGIN"] = "desimirror synth"
    return header.tostring().encode("ascii")


@dataclass(frozen=True)
class Template:
    """A product's blank file: its size, its non-zero blocks, and its SHA-256."""

    size: int
    blocks: tuple[tuple[int, bytes], ...]
    sha256: str


def _template_of(data: bytes) -> Template:
    runs: list[tuple[int, bytes]] = []  # consecutive non-zero blocks, one write each
    zero = bytes(FITS_BLOCK)
    start = None
    for offset in range(0, len(data) + FITS_BLOCK, FITS_BLOCK):
        block = data[offset : offset + FITS_BLOCK]
        if block and block != zero[: len(block)]:
            start = offset if start is None else start
        elif start is not None:
            runs.append((start, data[start:offset]))
            start = None
    return Template(len(data), tuple(runs), hashlib.sha256(data).hexdigest())


def _image_fits_size(nbytes: int) -> int:
    return FITS_BLOCK + pad(nbytes)


@lru_cache(maxsize=4096)
def _cached_template(kind: str, n: int, keys: tuple, gzip: bool) -> Template:
    if kind == "image":
        raw = _image_header(n) + bytes(_image_fits_size(n) - FITS_BLOCK)
        return _template_of(gzip_stored(raw) if gzip else raw)
    product = Product(kind, n, keys, group="template", gzip=gzip)
    hdus = BUILDERS[kind](product, dict(keys), 0)
    return _template_of(_serialize(_blank(hdus), gzip))


def template(p: Product) -> Template:
    """The blank form of ``p``: what ``--sparse`` writes (memoised per kind, count, keys)."""
    keys = tuple((k, _neutral(v)) for k, v in p.keys)
    return _cached_template(p.kind, p.n, keys, p.gzip)  # members: n rows of zeros all the same


def size(p: Product) -> int:
    """The file's size in bytes, which :func:`render` writes exactly.

    Measured without making the file: every HDU's header has the same cards whatever the
    count, and its data grows linearly with it, so two blank templates (counts 1 and 2)
    give every size; raw frames are a head and cameras of known sizes.
    """
    if p.kind == "image":
        fits_size = _image_fits_size(p.n)
    elif p.kind in ("raw", "guide"):
        keys = tuple((k, _neutral(v)) for k, v in p.keys)
        fits_size = _raw_head_size(p.kind, keys) + sum(
            len(_extension_bytes(p.kind, 0, "", 0, i)) for i in range(p.n)
        )
    else:
        keys = tuple((k, _neutral(v)) for k, v in p.keys)
        fits_size = sum(
            header + pad(base + per_item * p.n) for header, base, per_item in _linear(p.kind, keys)
        )
    return gzip_size(fits_size) if p.gzip else fits_size


@lru_cache(maxsize=256)
def _raw_head_size(kind: str, keys: tuple) -> int:
    return len(_serialize(_raw(Product(kind, 0, keys), dict(keys), 0), gzip=False))


@lru_cache(maxsize=256)
def _linear(kind: str, keys: tuple) -> tuple[tuple[int, int, int], ...]:
    """Per HDU: (header bytes, data bytes at count 0, data bytes per count)."""
    one, two = (_spans(kind, n, keys) for n in (1, 2))
    return tuple((h1, 2 * d1 - d2, d2 - d1) for (h1, d1), (_, d2) in zip(one, two, strict=True))


def _spans(kind: str, n: int, keys: tuple) -> list[tuple[int, int]]:
    """(header bytes, unpadded data bytes) of each HDU of a blank product of count ``n``."""
    from astropy.io import fits

    data = _serialize(
        _blank(BUILDERS[kind](Product(kind, n, keys, "template"), dict(keys), 0)), False
    )
    spans = []
    with fits.open(io.BytesIO(data)) as hdul:
        for index, hdu in enumerate(hdul):
            info = hdul.fileinfo(index)
            header = hdu.header
            naxes = [header.get(f"NAXIS{i}", 0) for i in range(1, header.get("NAXIS", 0) + 1)]
            nbytes = abs(header["BITPIX"]) // 8 * math.prod(naxes) if naxes else 0
            nbytes += header.get("PCOUNT", 0) if naxes else 0
            spans.append((info["datLoc"] - info["hdrLoc"], nbytes))
    return spans


@lru_cache(maxsize=256)
def _extension_bytes(kind: str, n: int, group: str, seed: int, index: int = 0) -> bytes:
    """The extensions of a product whose extensions do not depend on its keywords, once:
    the fiberassign tables of a shared group, the cameras of raw frames (astropy spends
    tens of ms an HDU; thousands of files would take minutes)."""
    empty = Product(kind, n, (), group)
    if kind in ("raw", "guide"):
        names = GUIDERS if kind == "guide" else CAMERAS
        hdus = [_camera(names[index], index)]
    else:
        hdus = BUILDERS[kind](empty, {}, seed)[1:]
    from astropy.io import fits

    return _serialize([fits.PrimaryHDU(), *hdus], gzip=False)[FITS_BLOCK:]


def _fast(p: Product, seed: int) -> bytes | None:
    """The bytes of the products made of a per-file head and cached extensions."""
    if p.kind in ("raw", "guide"):
        head = _serialize(_raw(Product(p.kind, 0, p.keys), dict(p.keys), seed), gzip=False)
        cams = b"".join(_extension_bytes(p.kind, 0, "", 0, i) for i in range(p.n))
        return head + cams
    if p.kind == "fiberassign" and p.group == SHARED_FIBERASSIGN:
        head = _serialize([_primary(dict(p.keys))], gzip=False)
        data = head + _extension_bytes(p.kind, p.n, p.group, seed)
        return gzip_stored(data) if p.gzip else data
    return None


def render(p: Product, seed: int) -> Iterator[bytes]:
    """The file's bytes, in chunks (``image`` products can be large)."""
    if p.kind != "image":
        fast = _fast(p, seed)
        yield (
            fast
            if fast is not None
            else _serialize(BUILDERS[p.kind](p, dict(p.keys), seed), p.gzip)
        )
        return
    rng = random.Random(f"{seed}:image:{p.group}")
    body = [_image_header(p.n)]
    left = p.n
    while left:
        body.append(rng.randbytes(min(left, CHUNK)))
        left -= len(body[-1])
    body.append(bytes(pad(p.n) - p.n))
    if p.gzip:
        yield gzip_stored(b"".join(body))
    else:
        yield from body


def write_large_fits(path: Path, size: int) -> int:
    """A valid FITS file of about ``size`` bytes: a primary header (astropy) over a float32
    image of zeros, written sparse. Returns the header's length in bytes."""
    from astropy.io import fits

    width = 4096
    rows = max(1, size // (4 * width))
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = width
    header["NAXIS2"] = rows
    header["EXTEND"] = True
    header["ORIGIN"] = "desimirror synth"
    text = header.tostring().encode("ascii")
    data = rows * width * 4
    with open(path, "wb") as f:
        f.write(text)
        f.truncate(len(text) + data + (-data % 2880))
    return len(text)
