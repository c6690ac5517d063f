"""A synthetic data release laid out like DESI's, for the demo, the tests and benchmarks.

The real releases are hundreds of TB; what a mirror has to get right does not depend on
the bytes being spectra but on the *shape* of the tree, so this module reproduces the shape:

``spectro/data/NIGHT/EXPID/``
    Raw exposures (``desi-EXPID.fits.fz`` of a few MB, ``guide-``, ``request-EXPID.json``,
    ``fiberassign-``, ``coordinates-``, ``manifest_EXPID.json`` on calibration sequences), each
    directory with its ``checksum-EXPID.sha256sum``; one aborted exposure is an empty directory.
``spectro/redux/fuji/``
    The processed "specprod": ``exposures-fuji.fits`` and ``tiles-fuji.fits`` at its top,
    ``calibnight/NIGHT/`` (120 per-camera files a night), ``exposures/NIGHT/EXPID/frame-*``,
    ``tiles/cumulative/TILEID/NIGHT/{coadd,redrock}-*``,
    ``healpix/SURVEY/PROGRAM/PIXGROUP/PIX/*`` and ``zcatalog/zpix-*.fits`` (large files).
``target/``
    Target catalogues, and ``target/fiberassign/tiles/trunk/GGG/``: 1000 tiles per group, two
    files each, so from scale 1 up there are directories with a few thousand small files.
``survey/``, ``vac/``
    A few operations files and value-added catalogues, and ``vac/edr/odd names/``: the awkward
    cases real trees have, present at every scale: names with spaces, quotes, ``#``, ``%``,
    ``+``, ``=``, brackets, glob and shell characters, accents (NFC and NFD), Greek, Cyrillic,
    CJK and an emoji, a leading dash, a hidden file, names differing only in case, a 200-byte
    name; empty directories and a directory holding only an empty directory; zero- and one-byte
    files (and, from scale 0.5, files of exactly 8 MiB and 8 MiB + 1, multipart boundaries);
    and in ``links/`` a relative symlink to a file and one to a directory inside the tree, an
    absolute one leaving it (``/etc/hostname``), a relative one escaping above the root and a
    broken one. No name holds a newline or invalid UTF-8: S3 keys cannot.

Sizes are heavy-tailed as in the real thing: thousands of files of a few hundred bytes to tens
of kB, a few of several MB. ``.fits`` files are whole 2880-byte FITS blocks. At scale 1 the tree
has about 3,500 files and 150 MB (at 0.05, 350 files and 10 MB); the counts of nights,
exposures, tiles and pixels, and the size of the catalogues that summarise them, grow linearly
with the scale (``--sparse --scale 300`` is a million entries).

Every directory holding files carries a ``*.sha256sum`` in ``sha256sum`` format listing its
regular files (not symlinks, not itself), named like DESI's (``redux_fuji_calibnight_NIGHT``),
because the mirror uses them as the reference for what the bytes must be.

The tree is a pure function of (scale, seed): names, sizes, bytes and mtimes (set explicitly)
are identical from run to run, so tests can compare two syntheses byte for byte.
File contents are pseudo-random bytes, so a checksum tells files apart; ``sparse=True``
writes the same names, sizes and mtimes as holes instead (for trees of millions of entries)
and lists the SHA-256 of those zeros. Generation is per directory, so memory stays small.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import posixpath
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from desimirror.errors import DesimirrorError, UsageError
from desimirror.progress import NullProgress, Progress
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
FITS_BLOCK = 2880
CHUNK = 1 << 20

CAMERAS = tuple(f"{arm}{petal}" for arm in "brz" for petal in range(10))
SURVEY_PROGRAMS = (
    ("main", "dark", 5),
    ("main", "bright", 3),
    ("sv1", "dark", 1),
    ("sv3", "bright", 1),
    ("special", "other", 1),
)


# ---------------------------------------------------------------- what the tree holds


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One regular file: its name in its directory, size in bytes, mtime in seconds."""

    name: str
    size: int
    mtime: int


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


def _fits(size: int) -> int:
    return math.ceil(size / FITS_BLOCK) * FITS_BLOCK


def _file(name: str, size: int, mtime: int) -> FileSpec:
    """FITS files are whole 2880-byte blocks, as real ones are."""
    return FileSpec(name, _fits(size) if name.endswith(".fits") else size, mtime)


def _checksum_name(path: str) -> str:
    """DESI's naming: ``spectro/redux/fuji/calibnight/N`` → ``redux_fuji_calibnight_N``."""
    parts = path.split("/")
    if parts[0] == "spectro":
        parts = parts[1:]
    return "_".join(parts) + ".sha256sum"


def _directory(
    path: str,
    files: Iterable[tuple[str, int]],
    rng: random.Random,
    start: int,
    spread: int,
    checksum: str | None = "",
) -> DirSpec:
    """A directory of products written between ``start`` and ``start + spread`` seconds.

    Its checksum file is named after the directory unless ``checksum`` names it, or is None.
    """
    specs = tuple(_file(name, size, start + rng.randrange(spread)) for name, size in files)
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
            files = _raw_exposure(rng, expid, kind, first_calib)
            first_calib = first_calib and kind == "science"
            yield _directory(path, files, rng, opened, 10 * 3600, f"checksum-{expid:08d}.sha256sum")
        if night.aborted is not None:
            path = f"spectro/data/{night.date}/{night.aborted:08d}"
            yield DirSpec(path, (), opened + 11 * 3600, None)


def _raw_exposure(
    rng: random.Random, expid: int, kind: str, first_calib: bool
) -> list[tuple[str, int]]:
    e = f"{expid:08d}"
    if kind != "science":
        files = [(f"desi-{e}.fits.fz", _size(rng, 0.3 * MiB, 1.2 * MiB))]
        if first_calib:
            files.append((f"manifest_{e}.json", _size(rng, 300, 900)))
        return [*files, (f"request-{e}.json", _size(rng, 300, 800))]
    tileid = FIRST_TILEID + rng.randrange(TILES_PER_GROUP)
    return [
        (f"coordinates-{e}.fits", _size(rng, 40_000, 120_000)),
        (f"desi-{e}.fits.fz", _size(rng, 0.8 * MiB, 5 * MiB)),
        (f"fiberassign-{tileid:06d}.fits.gz", _size(rng, 20_000, 90_000)),
        (f"guide-{e}.fits.fz", _size(rng, 100_000, 800_000)),
        (f"request-{e}.json", _size(rng, 300, 800)),
    ]


def _redux_top(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """The specprod's own summary tables, next to its subdirectories."""
    path = REDUX
    rng = _rng(seed, path)
    s = shape.scale
    files = [
        ("exposures-fuji.csv", _size(rng, 20_000 * s + 200, 60_000 * s + 400)),
        ("exposures-fuji.fits", _size(rng, 100_000 * s + 3000, 300_000 * s + 6000)),
        ("tiles-fuji.csv", _size(rng, 5_000 * s + 200, 15_000 * s + 400)),
        ("tiles-fuji.fits", _size(rng, 30_000 * s + 3000, 90_000 * s + 6000)),
    ]
    yield _directory(path, files, rng, shape.release - 30 * DAY, 20 * DAY)


def _calibnight(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """calibnight/NIGHT: 120 per-camera calibrations, fixed sizes per arm as in DESI."""
    flat = {"b": 20_160, "r": 17_280, "z": 23_040}
    psf = {"b": 5_760, "r": 5_760, "z": 11_520}
    for night in shape.nights:
        path = f"{REDUX}/calibnight/{night.date}"
        rng = _rng(seed, path)
        d = night.date
        files = (
            [(f"badcolumns-{c}-{d}.csv", rng.choice((33, 33, 33, 56, 85, 127))) for c in CAMERAS]
            + [(f"biasnight-{c}-{d}.fits.gz", _size(rng, 5_000, 20_000)) for c in CAMERAS]
            + [(f"fiberflatnight-{c}-{d}.fits", flat[c[0]]) for c in CAMERAS]
            + [(f"psfnight-{c}-{d}.fits", psf[c[0]]) for c in CAMERAS]
        )
        yield _directory(path, files, rng, night.start + 30 * DAY, 5 * DAY)


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


def _tiles(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """tiles/cumulative/TILEID/NIGHT: coadds and redshifts per petal, up to a night."""
    rng = _rng(seed, "tiles")
    tileids = sorted(rng.sample(range(shape.fiberassign), min(shape.tiles, shape.fiberassign)))
    for index in tileids:
        tileid = FIRST_TILEID + index
        night = rng.choice(shape.nights)
        path = f"{REDUX}/tiles/cumulative/{tileid}/{night.date}"
        drng = _rng(seed, path)
        tail = f"{tileid}-thru{night.date}"
        files = [(f"coadd-{p}-{tail}.fits", _size(drng, 25_000, 100_000)) for p in range(10)]
        files += [(f"redrock-{p}-{tail}.fits", _size(drng, 8_000, 30_000)) for p in range(10)]
        files += [
            (f"tile-qa-{tail}.fits", _size(drng, 20_000, 60_000)),
            (f"tile-qa-{tail}.png", _size(drng, 50_000, 150_000)),
        ]
        yield _directory(path, files, drng, night.start + 32 * DAY, 5 * DAY)


def _healpix(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """healpix/SURVEY/PROGRAM/PIXGROUP/PIX: coadds and redshifts per sky pixel."""
    rng = _rng(seed, "healpix")
    combos = [(s, p) for s, p, weight in SURVEY_PROGRAMS for _ in range(weight)]
    chosen: set[tuple[str, str, int]] = set()
    while len(chosen) < shape.pixels:
        survey, program = rng.choice(combos)
        chosen.add((survey, program, rng.randrange(HEALPIX_PIXELS)))
    for survey, program, pix in sorted(chosen):
        path = f"{REDUX}/healpix/{survey}/{program}/{pix // 100}/{pix}"
        drng = _rng(seed, path)
        tag = f"{survey}-{program}-{pix}"
        files = [
            (f"coadd-{tag}.fits", _size(drng, 30_000, 300_000)),
            (f"hpixexp-{tag}.csv", _size(drng, 300, 3_000)),
            (f"redrock-{tag}.fits", _size(drng, 10_000, 60_000)),
            (f"spectra-{tag}.fits.gz", _size(drng, 50_000, 600_000)),
        ]
        yield _directory(path, files, drng, shape.release - 60 * DAY, 30 * DAY)


def _zcatalog(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """zcatalog: the few large files that summarise everything, sized with the release."""
    path = f"{REDUX}/zcatalog"
    rng = _rng(seed, path)
    s = shape.scale
    files = [
        (f"zpix-{survey}-{program}.fits", _size(rng, MiB * s / 2 + 9000, 2 * MiB * s + 20_000))
        for survey, program, _ in SURVEY_PROGRAMS
    ]
    files += [
        (f"ztile-main-{p}-cumulative.fits", _size(rng, MiB * s / 2 + 9000, 1.5 * MiB * s + 20_000))
        for p in ("bright", "dark")
    ]
    files += [
        (f"zall-{kind}-{SPECPROD}.fits", _size(rng, 3 * MiB * s + 20_000, 6 * MiB * s + 40_000))
        for kind in ("pix", "tilecumulative")
    ]
    yield _directory(path, sorted(files), rng, shape.release - 20 * DAY, 10 * DAY)


def _target(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """target: catalogues per healpix, and fiberassign groups of a thousand tiles."""
    for program in ("bright", "dark"):
        path = f"target/catalogs/dr9/1.1.1/targets/main/resolve/{program}"
        rng = _rng(seed, path)
        n = (shape.targets + (program == "dark")) // 2
        pixels = sorted(rng.sample(range(768), min(n, 768)))
        files = [(f"targets-{program}-hp-{p}.fits", _size(rng, 60_000, 600_000)) for p in pixels]
        if files:
            yield _directory(path, files, rng, EDR_RELEASE - 700 * DAY, 10 * DAY)
    last = FIRST_TILEID + shape.fiberassign
    for group in range(FIRST_TILEID // TILES_PER_GROUP, math.ceil(last / TILES_PER_GROUP)):
        path = f"target/fiberassign/tiles/trunk/{group:03d}"
        rng = _rng(seed, path)
        first = max(FIRST_TILEID, group * TILES_PER_GROUP)
        files = []
        for tileid in range(first, min(last, (group + 1) * TILES_PER_GROUP)):
            files.append((f"fiberassign-{tileid:06d}.fits.gz", _size(rng, 3_000, 40_000)))
            files.append((f"fiberassign-{tileid:06d}.png", _size(rng, 2_000, 20_000)))
        yield _directory(path, files, rng, EDR_RELEASE - 600 * DAY, 400 * DAY)


def _survey(shape: _Shape, seed: int) -> Iterator[DirSpec]:
    """survey/ops: small operations tables, and an empty archive directory."""
    path = "survey/ops/surveyops/trunk/ops"
    rng = _rng(seed, path)
    s = shape.scale
    files = [
        ("config-main.yaml", _size(rng, 800, 2_000)),
        ("exposures.ecsv", _size(rng, 50_000 * s + 500, 150_000 * s + 1000)),
        ("tiles-main.ecsv", _size(rng, 100_000 * s + 500, 300_000 * s + 1000)),
        ("tiles-specstatus.ecsv", _size(rng, 20_000 * s + 500, 60_000 * s + 1000)),
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


def layout(scale: float, seed: int = 0) -> Iterator[DirSpec | LinkSpec]:
    """Every directory and symlink of the release, lazily, in the order they are written."""
    shape = _shape(scale, seed)
    for part in (
        _raw_data,
        _redux_top,
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


# ---------------------------------------------------------------- counting and writing


def _checksum_line(digest: str, name: str) -> str:
    return f"{digest}  {name}\n"


def _checksum_size(spec: DirSpec) -> int:
    return sum(len(_checksum_line("0" * 64, f.name).encode()) for f in spec.files)


def _parents(path: str) -> Iterator[str]:
    """``a/b/c`` → ``a/b/c``, ``a/b``, ``a``: the directories a path needs."""
    while path:
        yield path
        path = posixpath.dirname(path)


class _Tally:
    """Counts entries as they are planned or written, and the directories they imply."""

    def __init__(self) -> None:
        self.files = self.bytes = self.symlinks = self.empty_dirs = self.checksum_files = 0
        self.dir_mtimes: dict[str, int | None] = {}

    def add_dirs(self, path: str, mtime: int | None) -> list[str]:
        """Record a directory and its parents; returns those new, outermost first."""
        new = []
        for parent in _parents(path):
            if parent in self.dir_mtimes:
                break
            new.append(parent)
            self.dir_mtimes[parent] = None
        if mtime is not None:
            self.dir_mtimes[path] = mtime
        return new[::-1]

    def add(self, entry: DirSpec | LinkSpec) -> tuple[int, int]:
        """Count one planned entry; returns the (files, bytes) it adds."""
        if isinstance(entry, LinkSpec):
            self.add_dirs(posixpath.dirname(entry.path), None)
            self.symlinks += 1
            return 0, 0
        self.add_dirs(entry.path, entry.mtime)
        files, nbytes = len(entry.files), sum(f.size for f in entry.files)
        if not entry.files:
            self.empty_dirs += 1
        if entry.checksum:
            self.checksum_files += 1
            files, nbytes = files + 1, nbytes + _checksum_size(entry)
        self.files += files
        self.bytes += nbytes
        return files, nbytes

    def summary(
        self, root: Path, scale: float, seed: int, sparse: bool, seconds: float = 0.0
    ) -> SynthSummary:
        return SynthSummary(
            root=str(root),
            scale=scale,
            seed=seed,
            sparse=sparse,
            files=self.files,
            dirs=len(self.dir_mtimes),
            bytes=self.bytes,
            symlinks=self.symlinks,
            empty_dirs=self.empty_dirs,
            checksum_files=self.checksum_files,
            seconds=round(seconds, 3),
        )


class _ZeroDigests:
    """SHA-256 of n zero bytes for any n, resuming saved hash states every 64 KiB.

    Sparse trees hold terabytes of zeros; hashing each file from scratch would take longer
    than writing the tree, so each digest costs at most one 64 KiB tail.
    """

    STEP = 1 << 16

    def __init__(self) -> None:
        self._zeros = bytes(self.STEP)
        self._states = [hashlib.sha256()]

    def hexdigest(self, size: int) -> str:
        whole, tail = divmod(size, self.STEP)
        while len(self._states) <= whole:
            state = self._states[-1].copy()
            state.update(self._zeros)
            self._states.append(state)
        digest = self._states[whole].copy()
        digest.update(memoryview(self._zeros)[:tail])
        return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _TreeWriter:
    """Writes planned entries under ``root``: random bytes, or holes when sparse."""

    FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: Path, seed: int, sparse: bool) -> None:
        self.root, self.seed, self.sparse = root, seed, sparse
        self.tally = _Tally()
        self.zeros = _ZeroDigests() if sparse else None

    def write(self, entry: DirSpec | LinkSpec) -> tuple[int, int]:
        if isinstance(entry, LinkSpec):
            self._mkdirs(posixpath.dirname(entry.path), None)
            path = self.root / entry.path
            os.symlink(entry.target, path)
            os.utime(path, ns=(entry.mtime * 10**9,) * 2, follow_symlinks=False)
            return self.tally.add(entry)
        self._mkdirs(entry.path, entry.mtime)
        dir_fd = os.open(self.root / entry.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            rng = random.Random(f"{self.seed}:bytes:{entry.path}")
            lines = [_checksum_line(self._write_file(dir_fd, f, rng), f.name) for f in entry.files]
            if entry.checksum:
                text = "".join(sorted(lines, key=lambda line: line[66:])).encode()
                self._write_bytes(dir_fd, entry.checksum, text, entry.mtime)
        finally:
            os.close(dir_fd)
        return self.tally.add(entry)

    def _mkdirs(self, path: str, mtime: int | None) -> None:
        for new in self.tally.add_dirs(path, mtime):
            os.mkdir(self.root / new)

    def _write_file(self, dir_fd: int, spec: FileSpec, rng: random.Random) -> str:
        fd = os.open(spec.name, self.FLAGS, 0o644, dir_fd=dir_fd)
        try:
            if self.zeros is not None:
                os.ftruncate(fd, spec.size)
                digest = self.zeros.hexdigest(spec.size)
            else:
                digest = self._fill(fd, spec.size, rng)
            os.utime(fd, ns=(spec.mtime * 10**9,) * 2)
        finally:
            os.close(fd)
        return digest

    @staticmethod
    def _fill(fd: int, size: int, rng: random.Random) -> str:
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = rng.randbytes(min(left, CHUNK))
            digest.update(chunk)
            _write_all(fd, chunk)
            left -= len(chunk)
        return digest.hexdigest()

    def _write_bytes(self, dir_fd: int, name: str, data: bytes, mtime: int) -> None:
        fd = os.open(name, self.FLAGS, 0o644, dir_fd=dir_fd)
        try:
            _write_all(fd, data)
            os.utime(fd, ns=(mtime * 10**9,) * 2)
        finally:
            os.close(fd)

    def set_dir_mtimes(self, default: int) -> None:
        """Last, since creating an entry changes its directory's mtime."""
        for path, mtime in self.tally.dir_mtimes.items():
            stamp = (default if mtime is None else mtime) * 10**9
            os.utime(self.root / path, ns=(stamp, stamp))
        os.utime(self.root, ns=(default * 10**9,) * 2)


# ---------------------------------------------------------------- the public functions


def estimate(scale: float, seed: int = 0, *, sparse: bool = False) -> SynthSummary:
    """What :func:`synthesize` would write, without writing: for progress totals and sizing."""
    _check_scale(scale)
    tally = _Tally()
    for entry in layout(scale, seed):
        tally.add(entry)
    return tally.summary(Path(), scale, seed, sparse)


def synthesize(
    root: Path,
    scale: float,
    *,
    sparse: bool = False,
    seed: int = 0,
    progress: Progress | None = None,
) -> SynthSummary:
    """Write a synthetic release into ``root``, which must be new or empty.

    It never writes into a directory holding anything, so it cannot damage user data; if
    interrupted, the partial tree must be removed before running again.
    """
    _check_scale(scale)
    root = Path(root)
    _check_root(root)
    totals = estimate(scale, seed, sparse=sparse)
    if not sparse:
        _check_space(root, totals.bytes)
    progress = progress or NullProgress()
    started = time.monotonic()
    writer = _TreeWriter(root, seed, sparse)
    root.mkdir(parents=True, exist_ok=True)
    progress.start("synth", totals.files, totals.bytes)
    try:
        for entry in layout(scale, seed):
            files, nbytes = writer.write(entry)
            progress.advance(files, nbytes)
        writer.set_dir_mtimes(_shape(scale, seed).release)
    except OSError as exc:
        raise DesimirrorError(
            f"synth failed in {root}: {exc}; remove the partial tree before trying again"
        ) from exc
    finally:
        progress.close()
    return writer.tally.summary(root, scale, seed, sparse, time.monotonic() - started)


def _check_scale(scale: float) -> None:
    if not (scale > 0 and math.isfinite(scale)):
        raise UsageError(f"invalid scale {scale!r}: must be a positive number, e.g. 0.05 or 1")


def _check_root(root: Path) -> None:
    """Refuse anything but a new or empty directory: synth never overwrites user data."""
    if root.is_symlink():
        raise UsageError(f"{root} is a symlink; give synth the real directory to write into")
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory; synth writes a new directory")
    if root.is_dir():
        try:
            with os.scandir(root) as entries:
                occupied = next(entries, None) is not None
        except OSError as exc:
            raise UsageError(f"cannot read {root}: {exc.strerror}") from exc
        if occupied:
            raise UsageError(
                f"{root} is not empty; synth only writes into a new or empty directory"
            )


def _check_space(root: Path, nbytes: int) -> None:
    """Fail before writing rather than fill the disk halfway through."""
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if nbytes * 1.05 + (16 << 20) > free:
        from desimirror.units import format_size

        raise UsageError(
            f"synth needs about {format_size(nbytes)} but {existing} has {format_size(free)} "
            "free; use a smaller --scale, or --sparse"
        )


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
