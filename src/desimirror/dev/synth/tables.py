"""The synthetic release's CSV tables: exposure tables, as the pipeline keeps one a night,
and the release's summaries of its tiles and science exposures.

``exposure_tables/YYYYMM/exposure_table_NIGHT.csv`` lists a night's exposures, one row each,
with the columns of desispec's exposure tables (a subset); ``tiles-SPECPROD.csv`` and
``exposures-SPECPROD.csv`` list the tiles and science exposures as their FITS twins do;
``hpixexp-SURVEY-PROGRAM-PIX.csv`` the exposures that cover a healpix pixel;
``calibnight/NIGHT/badcolumns-CAMERA-NIGHT.csv`` a camera's bad columns (often none);
the survey operations' ``exposures.ecsv``, ``tiles-main.ecsv`` and ``tiles-specstatus.ecsv``
are ECSV (astropy's self-describing CSV). Text, so a table's size is the length of what
:func:`render` returns: small, and the same with ``--sparse``.
"""

from __future__ import annotations

from functools import lru_cache

from desimirror.dev.synth.fits import Product

KINDS = (
    "exposure_table", "tiles_csv", "exposures_csv", "hpixexp_csv", "badcolumns_csv",
    "exposures_ecsv", "tiles_ecsv", "specstatus_ecsv",
)  # fmt: skip
COLUMNS = (
    "EXPID", "OBSTYPE", "TILERA", "TILEDEC", "EXPTIME", "SURVEY", "FAPRGRM", "GOALTIME",
    "AIRMASS", "TILEID", "NIGHT", "PURPOSE", "MJD-OBS", "PROGRAM", "CAMWORD", "BADCAMWORD",
    "LASTSTEP",
)  # fmt: skip


def _row(night: int, expid: int, kind: str, tileid: int, index: int) -> list[str]:
    science = kind == "science"
    return [
        str(expid),
        kind,
        f"{(tileid * 7.3) % 360:.4f}" if science else "",
        f"{(tileid * 3.1) % 90 - 10:.4f}" if science else "",
        "900.0" if science else ("120.0" if kind == "flat" else "5.0"),
        "sv1" if science else "unknown",
        "dark" if science else "",
        "1000.0" if science else "",
        f"{1.0 + (expid % 50) / 100:.3f}",
        str(tileid if science else -99),
        str(night),
        "main survey" if science else "calibration",
        f"{59197.0 + index / 24:.6f}",
        "dark" if science else "calib",
        "a0123456789",
        "",
        "all" if science else "skysub",
    ]


TILE_COLUMNS = (
    "TILEID", "SURVEY", "PROGRAM", "FAPRGRM", "FAFLAVOR", "NEXP", "EXPTIME", "TILERA",
    "TILEDEC", "EFFTIME_SPEC", "GOALTIME", "OBSSTATUS", "LASTNIGHT",
)  # fmt: skip
HPIXEXP_COLUMNS = ("NIGHT", "EXPID", "TILEID", "PETAL_LOC", "HEALPIX")
EXPOSURE_COLUMNS = (
    "NIGHT", "EXPID", "TILEID", "TILERA", "TILEDEC", "MJD", "SURVEY", "PROGRAM", "FAPRGRM",
    "EXPTIME", "EFFTIME_SPEC", "GOALTIME", "AIRMASS",
)  # fmt: skip


def _tile_row(tileid: int, night: int) -> list[str]:
    return [
        str(tileid), "sv3", "dark", "dark", "sv3dark", "1", "900.0",
        f"{(tileid * 7.3) % 360:.4f}", f"{(tileid * 3.1) % 90 - 10:.4f}",
        f"{800 + tileid % 400:.1f}", "1000.0", "obsend", str(night),
    ]  # fmt: skip


def _exposure_row(night: int, expid: int, tileid: int) -> list[str]:
    return [
        str(night), str(expid), str(tileid), f"{(tileid * 7.3) % 360:.4f}",
        f"{(tileid * 3.1) % 90 - 10:.4f}", f"{59197.0 + (expid % 1000) / 24:.6f}", "sv3",
        "dark", "dark", "900.0", f"{800 + expid % 400:.1f}", "1000.0",
        f"{1.0 + (expid % 50) / 100:.3f}",
    ]  # fmt: skip


BADCOLUMN_COLUMNS = ("CAMERA", "COLUMN", "ELEC_PER_SEC", "SIGMA")

#: The survey operations tables (``survey/ops/surveyops/trunk/ops``), ECSV as DESI keeps
#: them: (name, ECSV datatype) of each column (a subset), and a row from a member.
ECSV_COLUMNS = {
    "exposures_ecsv": (
        ("EXPID", "int64"), ("NIGHT", "int64"), ("TILEID", "int64"), ("TILERA", "float64"),
        ("TILEDEC", "float64"), ("MJD", "float64"), ("SURVEY", "string"),
        ("PROGRAM", "string"), ("FAPRGRM", "string"), ("EXPTIME", "float64"),
        ("EFFTIME_ETC", "float64"), ("EFFTIME_SPEC", "float64"), ("GOALTIME", "float64"),
        ("QUALITY", "string"), ("COMMENTS", "string"),
    ),
    "tiles_ecsv": (
        ("TILEID", "int64"), ("PASS", "int64"), ("RA", "float64"), ("DEC", "float64"),
        ("PROGRAM", "string"), ("IN_DESI", "bool"), ("EBV_MED", "float64"),
        ("DESIGNHA", "float64"), ("STATUS", "string"),
    ),
    "specstatus_ecsv": (
        ("TILEID", "int64"), ("SURVEY", "string"), ("FAPRGRM", "string"),
        ("FAFLAVOR", "string"), ("NEXP", "int64"), ("EXPTIME", "float64"),
        ("TILERA", "float64"), ("TILEDEC", "float64"), ("EFFTIME_SPEC", "float64"),
        ("GOALTIME", "float64"), ("OBSSTATUS", "string"), ("ZDONE", "string"),
        ("LASTNIGHT", "int64"),
    ),
}  # fmt: skip


def _ecsv_row(kind: str, member: tuple) -> list[str]:
    if kind == "exposures_ecsv":
        night, expid, tileid = member
        exposure = _exposure_row(night, expid, tileid)
        return [
            str(expid), str(night), str(tileid), exposure[3], exposure[4], exposure[5],
            "sv3", "dark", "dark", "900.0", f"{790 + expid % 400:.1f}", exposure[10],
            "1000.0", "good", '""',
        ]  # fmt: skip
    tileid, night = member
    tile = _tile_row(tileid, night)
    if kind == "tiles_ecsv":
        return [
            str(tileid), str(tileid % 7), tile[7], tile[8], "DARK", "True",
            f"{0.01 + tileid % 90 / 1000:.3f}", f"{tileid % 60 - 30:.1f}", "done",
        ]  # fmt: skip
    return [tile[0], tile[1], *tile[3:12], "true", tile[12]]  # ZDONE before LASTNIGHT


def _ecsv(kind: str, members: tuple) -> list[str]:
    """An ECSV table (astropy's ``ascii.ecsv``): its YAML header, then space-separated
    rows; no value holds a space or a quote, so none needs quoting."""
    columns = ECSV_COLUMNS[kind]
    lines = ["# %ECSV 1.0", "# ---", "# datatype:"]
    lines += [f"# - {{name: {name}, datatype: {datatype}}}" for name, datatype in columns]
    lines += ["# schema: astropy-2.0", " ".join(name for name, _ in columns)]
    return lines + [" ".join(_ecsv_row(kind, m)) for m in members]


@lru_cache(maxsize=1024)
def render(p: Product) -> bytes:
    """The CSV text: a header line, then one line per member: ``(night, expid, kind,
    tileid)`` of an exposure table, ``(tileid, night)`` of the tiles, ``(night, expid,
    tileid)`` of the science exposures."""
    if p.kind in ECSV_COLUMNS:
        lines = _ecsv(p.kind, p.members)
    elif p.kind == "hpixexp_csv":
        lines = [",".join(HPIXEXP_COLUMNS)] + [",".join(map(str, m)) for m in p.members]
    elif p.kind == "badcolumns_csv":
        lines = [",".join(BADCOLUMN_COLUMNS)] + [",".join(map(str, m)) for m in p.members]
    elif p.kind == "tiles_csv":
        lines = [",".join(TILE_COLUMNS)] + [",".join(_tile_row(*m)) for m in p.members]
    elif p.kind == "exposures_csv":
        lines = [",".join(EXPOSURE_COLUMNS)] + [",".join(_exposure_row(*m)) for m in p.members]
    else:
        lines = [",".join(COLUMNS)]
        for index, (night, expid, kind, tileid) in enumerate(p.members):
            lines.append(",".join(_row(night, expid, kind, tileid, index)))
    return ("\n".join(lines) + "\n").encode()


def size(p: Product) -> int:
    return len(render(p))
