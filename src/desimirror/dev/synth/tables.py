"""The synthetic release's CSV tables: exposure tables, as the pipeline keeps one a night.

``exposure_tables/YYYYMM/exposure_table_NIGHT.csv`` lists a night's exposures, one row each,
with the columns of desispec's exposure tables (a subset). Text, so its size is the length
of what :func:`render` returns: small, and the same with ``--sparse``.
"""

from __future__ import annotations

from functools import lru_cache

from desimirror.dev.synth.fits import Product

KINDS = ("exposure_table",)
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


@lru_cache(maxsize=1024)
def render(p: Product) -> bytes:
    """The CSV text: a header line, then one line per ``(night, expid, kind, tileid)``."""
    lines = [",".join(COLUMNS)]
    for index, (night, expid, kind, tileid) in enumerate(p.members):
        lines.append(",".join(_row(night, expid, kind, tileid, index)))
    return ("\n".join(lines) + "\n").encode()


def size(p: Product) -> int:
    return len(render(p))
