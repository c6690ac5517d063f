"""Write a synthetic seed-format ``find.json`` of a DESI-like release of about N entries.

    python bench/gen_findjson.py --entries 10000000 --out /tmp/dr1-10M.json

No tree on disk: only the file the original ``find.py`` would have written for one, so that
``desimirror crawl --from-json`` (without ``--root``), ``plan``, ``status`` and the rest can
be measured at DR1's scale on a laptop. The shape follows a DESI release:

* ``spectro/data/NIGHT/EXPID/``: the raw exposures (desi, guide, fibermap, request, ...);
* ``spectro/redux/iron/exposures/NIGHT/EXPID/``: frames, cframes, sky and flux calibration
  per camera (30 cameras), with a ``*.sha256sum`` per directory;
* ``spectro/redux/iron/tiles/cumulative/TILE/NIGHT/``: coadds, redrock, spectra per petal;
* ``spectro/redux/iron/healpix/SURVEY/PROGRAM/GROUP/PIXEL/``: the healpix products;
* ``calibnight/NIGHT/``: the nightly calibrations.

Sizes are drawn per product around DESI's typical sizes (about 17 MB a file on average, so
10M entries is about 170 TB), from a generator seeded by each directory's path: the same
arguments give the same bytes. The file is written in the seed's exact format: children
sorted by (type, name), a directory's size the sum of its subtree, no whitespace. Two
passes (sizes, then the text); memory is one dict of directory sizes (~30 bytes an entry
of a directory, ~3% of the entries).
"""

from __future__ import annotations

import argparse
import random
import sys
import zlib
from typing import TextIO

MB = 1 << 20
CAMERAS = [f"{arm}{n}" for arm in "brz" for n in range(10)]
PETALS = list(range(10))
SURVEYS = [
    ("main", "dark"),
    ("main", "bright"),
    ("main", "backup"),
    ("sv1", "dark"),
    ("sv3", "bright"),
]

#: entries per night of the per-night sections (raw, exposures, tiles, calibnight), and
#: per healpix pixel: used to size each section for the requested total.
EXPOSURES_PER_NIGHT = 20
TILES_PER_NIGHT = 8
NIGHT_SHARE, PIXEL_SHARE = 0.7, 0.3

Files = list[tuple[str, int]]
Listing = tuple[list[str], Files]


class Release:
    """The synthetic tree as a function from a directory's path to its listing."""

    def __init__(self, entries: int, seed: int = 1) -> None:
        per_night = 1 + self._night_entries()
        self.nights = [_night(i) for i in range(max(1, round(entries * NIGHT_SHARE / per_night)))]
        self.pixels = max(1, round(entries * PIXEL_SHARE / 9))
        self.seed = seed

    @staticmethod
    def _night_entries() -> int:
        raw = EXPOSURES_PER_NIGHT * 7
        exposures = EXPOSURES_PER_NIGHT * (1 + 4 * len(CAMERAS) + 2)
        tiles = TILES_PER_NIGHT * (2 + 5 * len(PETALS) + 1)
        return raw + exposures + tiles + 1 + 95 + 5

    def rng(self, path: str) -> random.Random:
        return random.Random(zlib.crc32(path.encode()) ^ (self.seed << 32))

    def listing(self, path: str) -> Listing:
        """(directory names, [(file name, size)]) of the directory at ``path``."""
        parts = path.split("/") if path else []
        depth = len(parts)
        if depth == 0:
            return ["calibnight", "spectro"], []
        if parts[0] == "calibnight":
            return self._calibnight(parts[1:], path)
        if depth == 1:
            return ["data", "redux"], []
        if parts[1] == "data":
            return self._raw(parts[2:], path)
        if depth == 2:
            return ["iron"], []
        if depth == 3:
            return ["exposures", "healpix", "tiles"], [("tiles-iron.fits", 30 * MB)]
        section = parts[3]
        if section == "exposures":
            return self._exposures(parts[4:], path)
        if section == "tiles":
            return self._tiles(parts[4:], path)
        return self._healpix(parts[4:], path)

    def _nights(self) -> list[str]:
        return self.nights

    def _calibnight(self, rest: list[str], path: str) -> Listing:
        if not rest:
            return self._nights(), []
        night, rng = rest[0], self.rng(path)
        files = [(f"badcolumns-{c}-{night}.csv", 33 + rng.randrange(100)) for c in CAMERAS]
        files += [(f"biasnight-{c}-{night}.fits.gz", _size(rng, 29 * MB)) for c in CAMERAS]
        files += [(f"fiberflatnight-{c}-{night}.fits", _size(rng, 60 * MB)) for c in CAMERAS]
        files += [(f"psfnight-{c}-{night}.fits", _size(rng, 9 * MB)) for c in CAMERAS[:5]]
        return [], files

    def _raw(self, rest: list[str], path: str) -> Listing:
        if not rest:
            return self._nights(), []
        if len(rest) == 1:
            return _exposure_ids(rest[0]), []
        expid, rng = rest[1], self.rng(path)
        files = [
            (f"desi-{expid}.fits.fz", _size(rng, 80 * MB)),
            (f"guide-{expid}.fits.fz", _size(rng, 25 * MB)),
            (f"fibermap-{expid}.fits", _size(rng, 4 * MB)),
            (f"coordinates-{expid}.fits", _size(rng, 3 * MB)),
            (f"request-{expid}.json", 1500 + rng.randrange(500)),
            (f"manifest_{expid}.json", 300 + rng.randrange(100)),
        ]
        return [], files

    def _exposures(self, rest: list[str], path: str) -> Listing:
        if not rest:
            return self._nights(), []
        if len(rest) == 1:
            return _exposure_ids(rest[0]), []
        expid, rng = rest[1], self.rng(path)
        files: Files = []
        for product, typical in (("frame", 12), ("cframe", 12), ("sky", 6), ("fluxcalib", 4)):
            files += [(f"{product}-{c}-{expid}.fits.gz", _size(rng, typical * MB)) for c in CAMERAS]
        files += [
            (f"exposure-qa-{expid}.fits", _size(rng, MB)),
            (f"exposures-{expid}.sha256sum", 12_000),
        ]
        return [], files

    def _tiles(self, rest: list[str], path: str) -> Listing:
        if not rest:
            return ["cumulative"], []
        nights = self._nights()
        if len(rest) == 1:
            return [str(1000 + t) for t in range(len(nights) * TILES_PER_NIGHT)], []
        tile = int(rest[1])
        if len(rest) == 2:
            return [nights[(tile - 1000) // TILES_PER_NIGHT]], []
        night, rng = rest[2], self.rng(path)
        files: Files = []
        for product, typical in (("coadd", 50), ("redrock", 8), ("rrdetails", 30), ("spectra", 90)):
            suffix = "h5" if product == "rrdetails" else "fits"
            files += [
                (f"{product}-{p}-{tile}-thru{night}.{suffix}", _size(rng, typical * MB))
                for p in PETALS
            ]
        files += [(f"zmtl-{p}-{tile}-thru{night}.fits", _size(rng, MB)) for p in PETALS]
        files.append((f"tile-qa-{tile}-thru{night}.fits", _size(rng, 2 * MB)))
        return [], files

    def _healpix(self, rest: list[str], path: str) -> Listing:
        if not rest:
            return sorted({s for s, _ in SURVEYS}), []
        if len(rest) == 1:
            return sorted(p for s, p in SURVEYS if s == rest[0]), []
        pixels = self._pixels_of(rest[0], rest[1])
        if len(rest) == 2:
            groups = range(pixels.start // 100, (pixels.stop - 1) // 100 + 1) if pixels else []
            return [str(g) for g in groups if _in_group(pixels, g)], []
        if len(rest) == 3:
            return [str(p) for p in _in_group(pixels, int(rest[2]))], []
        pixel, (survey, program) = rest[3], rest[:2]
        rng, tag = self.rng(path), f"{survey}-{program}-{rest[3]}"
        files = [
            (f"{product}-{tag}.fits", _size(rng, typical * MB))
            for product, typical in (
                ("coadd", 60),
                ("redrock", 10),
                ("spectra", 110),
                ("qso_mgii", 1),
                ("qso_qn", 1),
                ("emline", 2),
                ("tileqa", 1),
            )
        ]
        files.append((f"rrdetails-{tag}.h5", _size(rng, 35 * MB)))
        del pixel
        return [], files

    def _pixels_of(self, survey: str, program: str) -> range:
        index = SURVEYS.index((survey, program))
        share = self.pixels // len(SURVEYS) + (index < self.pixels % len(SURVEYS))
        return range(index * 10_000_000, index * 10_000_000 + share * 7, 7)


def _in_group(pixels: range, group: int) -> range:
    """The pixels p of ``pixels`` (a range of step 7) with p // 100 == group."""
    lo, hi = max(pixels.start, group * 100), min(pixels.stop, group * 100 + 100)
    first = lo + (pixels.start - lo) % 7
    return range(first, hi, 7)


def _night(i: int) -> str:
    year, day = divmod(i, 300)
    return f"{2021 + year}{1 + day // 28:02d}{1 + day % 28:02d}"


def _exposure_ids(night: str) -> list[str]:
    base = (int(night) % 1_000_000) * 100
    return [f"{base + e:08d}" for e in range(EXPOSURES_PER_NIGHT)]


def _size(rng: random.Random, typical: int) -> int:
    return max(1, int(typical * (0.5 + rng.random())))


def directory_sizes(release: Release, root: str) -> dict[str, int]:
    """Pass 1: the recursive size of every directory, by path ('' the root)."""
    sizes: dict[str, int] = {}

    def walk(path: str) -> int:
        dirs, files = release.listing(path)
        total = sum(size for _, size in files)
        for name in dirs:
            total += walk(f"{path}/{name}" if path else name)
        sizes[path] = total
        return total

    walk("")
    del root
    return sizes


def write_find_json(release: Release, root: str, out: TextIO) -> int:
    """Pass 2: the find.json text; returns the number of entries written."""
    sizes = directory_sizes(release, root)
    count = 0
    write = out.write

    def emit(path: str, name: str) -> None:
        nonlocal count
        write(f'["{name}",0,{sizes[path]}')
        dirs, files = release.listing(path)
        for child in sorted(dirs):
            write(",")
            emit(f"{path}/{child}" if path else child, child)
        for fname, size in sorted(files):
            write(f',["{fname}",1,{size}]')
        write("]")
        count += 1 + len(files)

    emit("", root)
    write("\n")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="about this many entries")
    parser.add_argument("--root-name", default="dr1", help="the JSON root's name (the release)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="where to write find.json")
    args = parser.parse_args(argv)
    release = Release(args.entries, args.seed)
    with open(args.out, "w", encoding="ascii") as out:
        count = write_find_json(release, args.root_name, out)
    print(f"{args.out}: {count:,} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
