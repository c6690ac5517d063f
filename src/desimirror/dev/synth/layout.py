"""The synthetic release's tree: every directory, file name, size, mtime and symlink.

A pure function of (scale, seed), computed lazily directory by directory, so that
:func:`layout` can describe a million entries without holding them. FITS files carry the
:class:`~desimirror.dev.synth.fits.Product` they hold, whose size the FITS module knows.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import random
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from desimirror.dev.synth import fits, tables
from desimirror.dev.synth.fits import Product
from desimirror.units import MiB

SPECPROD = "fuji"
REDUX = f"spectro/redux/{SPECPROD}"
FIRST_NIGHT = dt.date(2020, 12, 14)
FIRST_EXPID = 67890
FIRST_TILEID = 1000
EXPOSURES_PER_NIGHT = 5
TILES_PER_GROUP = 1000
HEALPIX_PIXELS = 12 * 64 * 64  # nside 64, as DESI's healpix directories use
EDR_RELEASE = int(dt.datetime(2023, 6, 13, tzinfo=dt.timezone.utc).timestamp())
DAY = 86400
CHUNK = 1 << 20
FITS_SUFFIXES = (".fits", ".fits.gz", ".fits.fz")

CAMERAS = tuple(f"{arm}{petal}" for arm in "brz" for petal in range(10))
SURVEY_PROGRAMS = (
    ("sv3", "dark", 2),  # EDR's main dark-time sample; the welcome notebook starts there
    ("main", "dark", 5),
    ("main", "bright", 3),
    ("sv1", "dark", 1),
    ("sv3", "bright", 1),
    ("special", "other", 1),
)


# ---------------------------------------------------------------- what the tree holds


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One regular file: its name in its directory, size in bytes, mtime in seconds, and
    for a FITS file what it holds."""

    name: str
    size: int
    mtime: int
    product: Product | None = None


@dataclass(frozen=True, slots=True)
class DirSpec:
    """One directory and its regular files; ``checksum`` names its sha256sum file, if any."""

    path: str
    files: tuple[FileSpec, ...]
    mtime: int
    checksum: str | None


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One symlink, created after everything it may point at."""

    path: str
    target: str
    mtime: int


@dataclass(frozen=True)
class SynthSummary:
    """What a synthesis wrote (or, from :func:`estimate`, would write).

    ``files`` counts regular files including the ``*.sha256sum`` files, ``bytes`` their
    apparent sizes, ``dirs`` every directory below the root; ``empty_dirs`` are among them.
    """

    root: str
    scale: float
    seed: int
    sparse: bool
    files: int
    dirs: int
    bytes: int
    symlinks: int
    empty_dirs: int
    checksum_files: int
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Night:
    date: str
    start: int  # 00:00 UTC of the date; observing happens in the hours after the next midnight
    exposures: tuple[tuple[int, str], ...]  # (expid, "science" | "arc" | "flat")
    aborted: int | None


@dataclass(frozen=True)
class _Shape:
    """The counts a scale implies, and the nights: the only state shared between parts."""

    scale: float
    nights: tuple[_Night, ...]
    tiles: int
    pixels: int
    fiberassign: int
    targets: int
    release: int


def _count(base: float, scale: float) -> int:
    return max(1, round(base * scale))


def _shape(scale: float, seed: int) -> _Shape:
    rng = random.Random(f"{seed}:shape")
    n_exposures = _count(4 * EXPOSURES_PER_NIGHT, scale)
    nights: list[_Night] = []
    day, expid, left = FIRST_NIGHT, FIRST_EXPID, n_exposures
    while left > 0:
        n = min(EXPOSURES_PER_NIGHT, left)
        left -= n
        kinds = ["arc", "flat"] + ["science"] * (n - 2) if n >= 3 else ["science"] * n
        exposures = []
        for kind in kinds:
            exposures.append((expid, kind))
            expid += rng.randint(1, 4)
        aborted = None
        if not nights:
            aborted, expid = expid, expid + 1
        start = int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp())
        nights.append(_Night(day.strftime("%Y%m%d"), start, tuple(exposures), aborted))
        day += dt.timedelta(days=1 + (rng.randint(1, 3) if rng.random() < 0.15 else 0))
    release = max(EDR_RELEASE, nights[-1].start + 90 * DAY)
    return _Shape(
        scale=scale,
        nights=tuple(nights),
        tiles=_count(15, scale),
        pixels=min(_count(30, scale), HEALPIX_PIXELS * len(SURVEY_PROGRAMS)),
        fiberassign=_count(TILES_PER_GROUP, scale),
        targets=_count(12, scale),
        release=release,
    )


def _rng(seed: int, path: str) -> random.Random:
    """A generator per directory, so any part of the tree can be made on its own."""
    return random.Random(f"{seed}:{path}")


def _size(rng: random.Random, low: float, high: float) -> int:
    """Log-uniform between low and high: many small, few large, as in real products."""
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


def _grid(n: float) -> int:
    """``n`` rounded to a geometric grid (steps of 20%): few distinct FITS shapes, so that
    sizes and sparse templates are computed once per shape, not once per file."""
    n = max(1.0, n)
    return max(1, round(1.2 ** round(math.log(n, 1.2))))


def _rows(size: int, row_bytes: int, least: int = 1) -> int:
    """The row count of a table of about ``size`` bytes."""
    return max(least, _grid(size / row_bytes))


def _image(name: str, size: int) -> Product:
    """A FITS file no newcomer reads first: a primary header over an image of ~size bytes."""
    return Product("image", _grid(max(1, size - fits.FITS_BLOCK)), gzip=name.endswith(".gz"))


def _file(name: str, content: int | Product, mtime: int, group: str) -> FileSpec:
    """A file; a FITS one holds a product (an image unless one is given) and has its size."""
    product = content if isinstance(content, Product) else None
    if product is None and name.endswith(FITS_SUFFIXES) and content:
        product = _image(name, content)
    if product is None:
        assert isinstance(content, int)
        return FileSpec(name, content, mtime)
    if not product.group:
        product = Product(product.kind, product.n, product.keys, f"{group}/{name}",
                          product.members, product.gzip)  # fmt: skip
    measure = tables.size if product.kind in tables.KINDS else fits.size
    return FileSpec(name, measure(product), mtime, product)


def _checksum_name(path: str) -> str:
    """DESI's naming: ``spectro/redux/fuji/calibnight/N`` → ``redux_fuji_calibnight_N``."""
    parts = path.split("/")
    if parts[0] == "spectro":
        parts = parts[1:]
    return "_".join(parts) + ".sha256sum"


def _directory(
    path: str,
    files: Iterable[tuple[str, int | Product]],
    rng: random.Random,
    start: int,
    spread: int,
    checksum: str | None = "",
) -> DirSpec:
    """A directory of products written between ``start`` and ``start + spread`` seconds.

    Its checksum file is named after the directory unless ``checksum`` names it, or is None.
    """
    specs = tuple(_file(name, c, start + rng.randrange(spread), path) for name, c in files)
    mtime = max((f.mtime for f in specs), default=start) + 60
    if checksum == "" and specs:
        checksum = _checksum_name(path)
    return DirSpec(path, specs, mtime, checksum or None)


# ---------------------------------------------------------------- the parts of a release


def _raw_data(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """spectro/data: what the telescope wrote each night, one directory per exposure."""
    for night in shape.nights:
        opened = night.start + DAY + 2 * 3600
        first_calib = True
        for expid, kind in night.exposures:
            path = f"spectro/data/{night.date}/{expid:08d}"
            rng = _rng(seed, path)
            files = _raw_exposure(rng, seed, (night.date, expid), kind, first_calib)
            first_calib = first_calib and kind == "science"
            yield _directory(path, files, rng, opened, 10 * 3600, f"checksum-{expid:08d}.sha256sum")
        if night.aborted is not None:
            path = f"spectro/data/{night.date}/{night.aborted:08d}"
            yield DirSpec(path, (), opened + 11 * 3600, None)


def _exposure_tile(seed: int, expid: int) -> int:
    """The tile a science exposure observed (the exposures table says so too)."""
    return FIRST_TILEID + _rng(seed, f"tile of {expid}").randrange(TILES_PER_GROUP)


def _raw_keys(night: str, expid: int, kind: str, tileid: int) -> tuple[tuple[str, object], ...]:
    """The global keywords of a raw frame, as in its SPEC HDU (desidatamodel desi-EXPID)."""
    return (
        ("EXPID", expid),
        ("NIGHT", int(night)),
        ("TILEID", tileid),
        ("FLAVOR", kind),
        ("OBSTYPE", kind.upper()),
        ("PROGRAM", "DARK" if kind == "science" else "CALIB"),
        ("EXPTIME", 900.0 if kind == "science" else 5.0),
        ("INSTRUME", "DESI"),
        ("OBSERVAT", "KPNO"),
        ("TELESCOP", "KPNO 4.0-m telescope"),
    )


def _raw_exposure(
    rng: random.Random, seed: int, when: tuple[str, int], kind: str, first_calib: bool
) -> list[tuple[str, int | Product]]:
    night, expid = when
    e = f"{expid:08d}"
    if kind != "science":
        cams = rng.choice((6, 12, 30))
        files: list[tuple[str, int | Product]] = [
            (f"desi-{e}.fits.fz", Product("raw", cams, _raw_keys(night, expid, kind, 0)))
        ]
        if first_calib:
            files.append((f"manifest_{e}.json", _size(rng, 300, 900)))
        return [*files, (f"request-{e}.json", _size(rng, 300, 800))]
    tileid = _exposure_tile(seed, expid)
    keys = _raw_keys(night, expid, kind, tileid)
    assigned = _rows(_size(rng, 20_000, 90_000), 130, least=10)
    return [
        (f"coordinates-{e}.fits", _size(rng, 40_000, 120_000)),
        (f"desi-{e}.fits.fz", Product("raw", rng.choice((15, 24, 30)), keys)),
        (f"fiberassign-{tileid:06d}.fits.gz", _fiberassign_product(tileid, assigned)),
        (f"guide-{e}.fits.fz", Product("guide", rng.randint(2, 6), keys)),
        (f"request-{e}.json", _size(rng, 300, 800)),
    ]


def _fiberassign_product(tileid: int, rows: int, group: str = "") -> Product:
    keys = (("TILEID", tileid), ("SURVEY", "sv1"), ("FAPRGRM", "dark"))
    return Product("fiberassign", rows, keys, group=group or f"tile {tileid}", gzip=True)


def _redux_top(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """The specprod's own summary tables, next to its subdirectories."""
    path = REDUX
    rng = _rng(seed, path)
    science, tiles = _science_exposures(shape, seed), _observed_tiles(shape, seed)
    files = [
        ("exposures-fuji.csv", Product("exposures_csv", len(science), members=science)),
        ("exposures-fuji.fits", Product("exposures", len(science), members=science)),
        ("tiles-fuji.csv", Product("tiles_csv", len(tiles), members=tiles)),
        ("tiles-fuji.fits", Product("tiles", len(tiles), members=tiles)),
    ]
    yield _directory(path, files, rng, shape.release - 30 * DAY, 20 * DAY)


def _science_exposures(shape: _Shape, seed: int) -> tuple[tuple[int, int, int], ...]:
    """(night, expid, tileid) of every science exposure (at least one)."""
    return tuple(
        (int(night.date), expid, _exposure_tile(seed, expid))
        for night in shape.nights
        for expid, kind in night.exposures
        if kind == "science"
    ) or ((int(shape.nights[0].date), shape.nights[0].exposures[0][0], FIRST_TILEID),)


def _observed_tiles(shape: _Shape, seed: int) -> tuple[tuple[int, int], ...]:
    """(tileid, last night) of every tile observed."""
    return tuple((tileid, int(night.date)) for tileid, night in _tile_nights(shape, seed))


def _exposure_tables(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """exposure_tables/YYYYMM/: one CSV a night listing its exposures, as the pipeline's."""
    months: dict[str, list[tuple[str, Product]]] = {}
    for night in shape.nights:
        rows = tuple(
            (int(night.date), expid, kind, _exposure_tile(seed, expid) if kind == "science" else 0)
            for expid, kind in night.exposures
        )
        product = Product("exposure_table", len(rows), members=rows)
        months.setdefault(night.date[:6], []).append((f"exposure_table_{night.date}.csv", product))
    for month, files in months.items():
        path = f"{REDUX}/exposure_tables/{month}"
        rng = _rng(seed, path)
        yield _directory(path, files, rng, shape.nights[0].start + 20 * DAY, 5 * DAY)


def _calibnight(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """calibnight/NIGHT: 120 per-camera calibrations, fixed sizes per arm as in DESI."""
    flat = {"b": 20_160, "r": 17_280, "z": 23_040}
    psf = {"b": 5_760, "r": 5_760, "z": 11_520}
    for night in shape.nights:
        path = f"{REDUX}/calibnight/{night.date}"
        rng = _rng(seed, path)
        d = night.date
        files = (
            [(f"badcolumns-{c}-{d}.csv", _badcolumns(rng, c)) for c in CAMERAS]
            + [(f"biasnight-{c}-{d}.fits.gz", _biasnight(c, d)) for c in CAMERAS]
            + [(f"fiberflatnight-{c}-{d}.fits", flat[c[0]]) for c in CAMERAS]
            + [(f"psfnight-{c}-{d}.fits", psf[c[0]]) for c in CAMERAS]
        )
        yield _directory(path, files, rng, night.start + 30 * DAY, 5 * DAY)


def _badcolumns(rng: random.Random, camera: str) -> Product:
    """A camera's bad columns of a night: most nights none (a header only), some a few."""
    count = rng.choice((0, 0, 0, 1, 2, 3))
    rows = tuple(
        (
            camera,
            rng.randrange(4256),
            round(rng.uniform(0.01, 0.5), 4),
            round(rng.uniform(0.001, 0.01), 4),
        )
        for _ in range(count)
    )
    return Product("badcolumns_csv", count, members=rows)


def _biasnight(camera: str, night: str) -> Product:
    keys = (("CAMERA", camera), ("SPECGRPH", int(camera[1])), ("NIGHT", int(night)))
    return Product("bias", 32, keys, gzip=True)


def _exposures(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """exposures/NIGHT/EXPID: per-camera frames of each science exposure."""
    for night in shape.nights:
        for expid, kind in night.exposures:
            if kind != "science":
                continue
            path = f"{REDUX}/exposures/{night.date}/{expid:08d}"
            rng = _rng(seed, path)
            e = f"{expid:08d}"
            files = [(f"frame-{c}-{e}.fits", _size(rng, 12_000, 50_000)) for c in CAMERAS]
            files.append((f"exposure-qa-{e}.fits", _size(rng, 5_000, 20_000)))
            yield _directory(path, files, rng, night.start + 31 * DAY, 5 * DAY)


def _tile_nights(shape: _Shape, seed: int) -> list[tuple[int, _Night]]:
    """The tiles with cumulative coadds, and the night each goes up to."""
    rng = _rng(seed, "tiles")
    indices = sorted(rng.sample(range(shape.fiberassign), min(shape.tiles, shape.fiberassign)))
    return [(FIRST_TILEID + index, rng.choice(shape.nights)) for index in indices]


def _tiles(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """tiles/cumulative/TILEID/NIGHT: coadds and redshifts per petal, up to a night."""
    for tileid, night in _tile_nights(shape, seed):
        path = f"{REDUX}/tiles/cumulative/{tileid}/{night.date}"
        drng = _rng(seed, path)
        tail = f"{tileid}-thru{night.date}"
        files: list[tuple[str, int | Product]] = []
        for petal in range(10):
            keys = (
                ("SPGRP", "cumulative"),
                ("SPGRPVAL", int(night.date)),
                ("TILEID", tileid),
                ("PETAL", petal),
                ("NIGHT", int(night.date)),
                ("SURVEY", "sv1"),
                ("PROGRAM", "dark"),
            )
            group, nspec = f"{path}/{petal}", drng.randint(1, 3)
            files.append((f"coadd-{petal}-{tail}.fits", Product("coadd", nspec, keys, group)))
            files.append((f"redrock-{petal}-{tail}.fits", Product("redrock", nspec, keys, group)))
        files += [
            (f"tile-qa-{tail}.fits", _size(drng, 20_000, 60_000)),
            (f"tile-qa-{tail}.png", _size(drng, 50_000, 150_000)),
        ]
        yield _directory(path, files, drng, night.start + 32 * DAY, 5 * DAY)


def _healpix(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """healpix/SURVEY/PROGRAM/PIXGROUP/PIX: coadds and redshifts per sky pixel."""
    for survey, program, pix in _healpix_pixels(shape, seed):
        path = _healpix_dir(survey, program, pix)
        drng = _rng(seed, path)
        tag = f"{survey}-{program}-{pix}"
        keys = (
            ("SPGRP", "healpix"),
            ("SPGRPVAL", pix),
            ("HPXPIXEL", pix),
            ("HPXNSIDE", 64),
            ("HPXNEST", True),
            ("SURVEY", survey),
            ("PROGRAM", program),
        )
        nspec = _healpix_nspec(seed, path)
        files = [
            (f"coadd-{tag}.fits", Product("coadd", nspec, keys, path)),
            (f"hpixexp-{tag}.csv", Product("hpixexp_csv", 0, members=_hpixexp(shape, seed, pix))),
            (f"redrock-{tag}.fits", Product("redrock", nspec, keys, path)),
            (f"spectra-{tag}.fits.gz", Product("spectra", nspec, keys, path, gzip=True)),
        ]
        yield _directory(path, files, drng, shape.release - 60 * DAY, 30 * DAY)


def _hpixexp(shape: _Shape, seed: int, pix: int) -> tuple:
    """(night, expid, tileid, petal, pix) of the science exposures that cover a pixel: a
    few, drawn from their own generator so the rest of the tree stays as it was."""
    rng = _rng(seed, f"hpixexp/{pix}")
    science = [
        (int(night.date), expid, _exposure_tile(seed, expid))
        for night in shape.nights
        for expid, kind in night.exposures
        if kind == "science"
    ] or [(int(shape.nights[0].date), shape.nights[0].exposures[0][0], FIRST_TILEID)]
    picks = sorted(rng.sample(science, min(len(science), 1 + rng.randrange(4))))
    return tuple((night, expid, tile, rng.randrange(10), pix) for night, expid, tile in picks)


def _healpix_dir(survey: str, program: str, pix: int) -> str:
    return f"{REDUX}/healpix/{survey}/{program}/{pix // 100}/{pix}"


def _healpix_nspec(seed: int, path: str) -> int:
    """Spectra in a healpix coadd: a few (DESI's hold hundreds), so the demo stays small."""
    return _rng(seed, f"nspec {path}").randint(3, 12)


def _healpix_pixels(shape: _Shape, seed: int) -> list[tuple[str, str, int]]:
    """(survey, program, pixel) of every healpix directory; the first is always SV3 dark."""
    rng = _rng(seed, "healpix")
    combos = [(s, p) for s, p, weight in SURVEY_PROGRAMS for _ in range(weight)]
    chosen: set[tuple[str, str, int]] = {("sv3", "dark", rng.randrange(HEALPIX_PIXELS))}
    while len(chosen) < shape.pixels:
        survey, program = rng.choice(combos)
        chosen.add((survey, program, rng.randrange(HEALPIX_PIXELS)))
    return sorted(chosen)


def _zcatalog(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """zcatalog: the few large files that summarise everything, sized with the release."""
    path = f"{REDUX}/zcatalog"
    rng = _rng(seed, path)
    s = shape.scale
    pixels = _healpix_pixels(shape, seed)
    files: list[tuple[str, int | Product]] = []
    for survey, program, _ in SURVEY_PROGRAMS:
        members = tuple(
            (path, _healpix_nspec(seed, path))
            for path in (_healpix_dir(su, pr, pix) for su, pr, pix in pixels)
            if f"/healpix/{survey}/{program}/" in path
        )
        rows = _zcatalog_rows(_size(rng, MiB * s / 2 + 9000, 2 * MiB * s + 20_000))
        if members:  # exactly the coadds' targets: every row has its coadd, as in DESI's
            rows = sum(count for _, count in members)
        keys = (("SURVEY", survey), ("PROGRAM", program))
        product = Product("zcatalog", rows, keys, f"zpix {survey} {program}", members)
        files.append((f"zpix-{survey}-{program}.fits", product))
    for program in ("bright", "dark"):
        rows = _zcatalog_rows(_size(rng, MiB * s / 2 + 9000, 1.5 * MiB * s + 20_000))
        keys = (("SURVEY", "main"), ("PROGRAM", program))
        files.append((f"ztile-main-{program}-cumulative.fits", Product("zcatalog", rows, keys)))
    for kind in ("pix", "tilecumulative"):
        rows = _zcatalog_rows(_size(rng, 3 * MiB * s + 20_000, 6 * MiB * s + 40_000))
        keys = (("SURVEY", ""), ("PROGRAM", ""))
        files.append((f"zall-{kind}-{SPECPROD}.fits", Product("zcatalog", rows, keys)))
    yield _directory(path, sorted(files), rng, shape.release - 20 * DAY, 10 * DAY)


def _zcatalog_rows(size: int) -> int:
    """Rows of a zcatalog of about ``size`` bytes (about 300 a row), at most 2**18."""
    return min(_rows(size, 300), 2**18)


def _target(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """target: catalogues per healpix, and fiberassign groups of a thousand tiles."""
    for program in ("bright", "dark"):
        path = f"target/catalogs/dr9/1.1.1/targets/main/resolve/{program}"
        rng = _rng(seed, path)
        n = (shape.targets + (program == "dark")) // 2
        pixels = sorted(rng.sample(range(768), min(n, 768)))
        files = [
            (f"targets-{program}-hp-{p}.fits", _targets_product(program, p, rng)) for p in pixels
        ]
        if files:
            yield _directory(path, files, rng, EDR_RELEASE - 700 * DAY, 10 * DAY)
    last = FIRST_TILEID + shape.fiberassign
    for group in range(FIRST_TILEID // TILES_PER_GROUP, math.ceil(last / TILES_PER_GROUP)):
        path = f"target/fiberassign/tiles/trunk/{group:03d}"
        rng = _rng(seed, path)
        first = max(FIRST_TILEID, group * TILES_PER_GROUP)
        files = []
        for tileid in range(first, min(last, (group + 1) * TILES_PER_GROUP)):
            rows = _rows(_size(rng, 3_000, 40_000), 130, least=10)
            product = _fiberassign_product(tileid, rows, fits.SHARED_FIBERASSIGN)
            files.append((f"fiberassign-{tileid:06d}.fits.gz", product))
            files.append((f"fiberassign-{tileid:06d}.png", _size(rng, 2_000, 20_000)))
        yield _directory(path, files, rng, EDR_RELEASE - 600 * DAY, 400 * DAY)


def _targets_product(program: str, pixel: int, rng: random.Random) -> Product:
    rows = _rows(_size(rng, 60_000, 600_000), 150, least=10)
    keys = (("HPXPIXEL", pixel), ("HPXNSIDE", 8), ("OBSCON", program.upper()))
    return Product("targets", rows, keys)


def _survey(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """survey/ops: small operations tables, and an empty archive directory."""
    path = "survey/ops/surveyops/trunk/ops"
    rng = _rng(seed, path)
    science, tiles = _science_exposures(shape, seed), _observed_tiles(shape, seed)
    files = [
        ("config-main.yaml", _size(rng, 800, 2_000)),
        ("exposures.ecsv", Product("exposures_ecsv", len(science), members=science)),
        ("tiles-main.ecsv", Product("tiles_ecsv", len(tiles), members=tiles)),
        ("tiles-specstatus.ecsv", Product("specstatus_ecsv", len(tiles), members=tiles)),
    ]
    yield _directory(path, files, rng, shape.release - 40 * DAY, 20 * DAY)
    yield DirSpec(f"{path}/archive", (), shape.release - 40 * DAY, None)


def _vac(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """vac/edr/lss: value-added catalogues, one per tracer and cap, sized with the release."""
    path = "vac/edr/lss/v2.0/LSScats/clustering"
    rng = _rng(seed, path)
    s = shape.scale
    files = [
        (f"{tracer}_{cap}_clustering.dat.fits", _size(rng, 300_000 * s + 3000, 3 * MiB * s + 9000))
        for tracer in ("ELG", "LRG", "QSO")
        for cap in ("N", "S")
    ]
    yield _directory(path, files, rng, shape.release - 10 * DAY, 5 * DAY)


ODD = "vac/edr/odd names"
ODD_NAMES = (
    "file with spaces.fits",
    "it's quoted.txt",
    'say "cheese".txt',
    "#leading-hash.fits",
    "mid#hash.fits",
    "100% done.txt",
    "a+b=c.fits",
    "[brackets] (parens) {braces}.fits",
    "star*question?.txt",
    "amp&dollar$tilde~bang!.txt",
    "semi;colon,comma@at.txt",
    "-leading-dash.txt",
    ".hidden-file",
    "café-é.fits",  # NFC: é is one code point
    "re\u0301sume\u0301-nfd.txt",  # NFD: e + combining acute, a different key from NFC
    "Grüße-ü.txt",
    "Ωμέγα-λ.fits",
    "файл.txt",
    "日本語.txt",
    "telescope-🔭.fits",
    "CaseOnly.txt",
    "caseonly.txt",
    "long-" + "x" * 190 + ".fits",
)


def _odd_names(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """The awkward cases, at every scale; sizes small so they never dominate."""
    start = shape.release - 5 * DAY
    rng = _rng(seed, ODD)
    yield _directory(ODD, [(n, _size(rng, 20, 5_000)) for n in ODD_NAMES], rng, start, DAY)
    sub = f"{ODD}/sub dir [v1] #2 (copy)"
    rng = _rng(seed, sub)
    yield _directory(sub, [("data 'final'.fits", 5_000)], rng, start, DAY)
    sub = f"{ODD}/ünïcødé dir"
    rng = _rng(seed, sub)
    yield _directory(sub, [("ελληνικά.txt", 700)], rng, start, DAY)
    sizes = [("zero-bytes.fits", 0), ("one-byte.txt", 1)]
    if shape.scale >= 0.5:
        sizes += [("exactly-8MiB.bin", 8 * MiB), ("8MiB-plus-one.bin", 8 * MiB + 1)]
    yield _directory(f"{ODD}/sizes", sizes, _rng(seed, f"{ODD}/sizes"), start, DAY)
    yield DirSpec(f"{ODD}/empty dir", (), start, None)
    yield DirSpec(f"{ODD}/only an empty dir inside/empty", (), start, None)


def _links(shape: _Shape) -> Iterator[LinkSpec]:
    """Symlinks of every kind a crawler must classify; made last, after their targets."""
    here = f"{ODD}/links"
    zcatalog = f"{REDUX}/zcatalog"
    mtime = shape.release - 5 * DAY
    for name, target in (
        ("zpix-main-dark.fits", posixpath.relpath(f"{zcatalog}/zpix-main-dark.fits", here)),
        ("zcatalog", posixpath.relpath(zcatalog, here)),
        ("hostname", "/etc/hostname"),
        ("escapes the release.fits", "../" * (here.count("/") + 2) + "outside-the-release.fits"),
        ("broken.fits", "no-such-file.fits"),
    ):
        yield LinkSpec(f"{here}/{name}", target, mtime)


def release_time(scale: float, seed: int = 0) -> int:
    """When the release was made: the mtime of the root and of directories with no other."""
    return _shape(scale, seed).release


def layout(scale: float, seed: int = 0) -> Iterator[DirSpec | LinkSpec]:
    """Every directory and symlink of the release, lazily, in the order they are written."""
    shape = _shape(scale, seed)
    for part in (
        _raw_data,
        _redux_top,
        _exposure_tables,
        _calibnight,
        _exposures,
        _tiles,
        _healpix,
        _zcatalog,
        _target,
        _survey,
        _vac,
        _odd_names,
    ):
        yield from part(shape, seed)
    yield from _links(shape)
