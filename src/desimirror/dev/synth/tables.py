"""The synthetic release's CSV tables: exposure tables, as the pipeline keeps one a night,
and the release's summaries of its tiles and science exposures.

``exposure_tables/YYYYMM/exposure_table_NIGHT.csv`` lists a night's exposures, one row each,
with the columns of desispec's exposure tables (a subset); ``tiles-SPECPROD.csv`` and
``exposures-SPECPROD.csv`` list the tiles and science exposures as their FITS twins do;
``hpixexp-SURVEY-PROGRAM-PIX.csv`` the exposures that cover a healpix pixel.
Text, so a table's size is the length of what :func:`render` returns: small, and the same
with ``--sparse``.
"""

from __future__ import annotations

from functools import lru_cache

from desimirror.dev.synth.fits import Product

KINDS = ("exposure_table", "tiles_csv", "exposures_csv", "hpixexp_csv")
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


@lru_cache(maxsize=1024)
def render(p: Product) -> bytes:
    """The CSV text: a header line, then one line per member: ``(night, expid, kind,
    tileid)`` of an exposure table, ``(tileid, night)`` of the tiles, ``(night, expid,
    tileid)`` of the science exposures."""
    if p.kind == "hpixexp_csv":
        lines = [",".join(HPIXEXP_COLUMNS)] + [",".join(map(str, m)) for m in p.members]
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
