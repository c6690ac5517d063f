"""The synthetic release: the tree every other test and the demo stand on.

What matters is that it is reproducible (same seed, same bytes and mtimes), that its
checksum files are right, and that it holds the awkward cases a mirror must survive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from desimirror.dev.synth import ODD_NAMES, DirSpec, estimate, layout, synthesize
from desimirror.errors import UsageError
from helpers import assert_clean_error, run_cli

SMALL = 0.05
FITS = (".fits", ".fits.gz", ".fits.fz")
TABLES = (".csv", ".ecsv")
CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")


def listing(root: Path) -> dict[str, tuple]:
    """Every entry below root: kind, size, mtime_ns and content hash or link target."""
    entries: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif path.is_dir():
                entries[rel] = ("dir", st.st_mtime_ns)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[rel] = ("file", st.st_size, st.st_mtime_ns, digest)
    entries["."] = ("dir", root.stat().st_mtime_ns)
    return entries


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "edr"
    synthesize(root, SMALL, seed=3)
    return root


def test_same_seed_same_tree_other_seed_another(small: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    synthesize(again, SMALL, seed=3)
    assert listing(again) == listing(small)

    other = tmp_path / "other"
    synthesize(other, SMALL, seed=4)
    theirs, ours = listing(other), listing(small)
    assert theirs != ours
    shared = set(theirs) & set(ours)
    assert any(theirs[p][0] == "file" and theirs[p][3] != ours[p][3] for p in shared)


def test_layout_is_desi_like(small: Path) -> None:
    redux = small / "spectro/redux/fuji"
    for pattern in (
        "spectro/data/2020????/000?????/desi-000?????.fits.fz",
        "spectro/data/2020????/000?????/guide-000?????.fits.fz",
        "spectro/data/2020????/000?????/request-000?????.json",
        "spectro/data/2020????/000?????/checksum-000?????.sha256sum",
        "spectro/redux/fuji/exposures/2020????/000?????/frame-b0-000?????.fits",
        "spectro/redux/fuji/tiles/cumulative/*/2020????/coadd-0-*-thru2020????.fits",
        "spectro/redux/fuji/healpix/*/*/*/*/coadd-*-*-*.fits",
        "spectro/redux/fuji/calibnight/2020????/psfnight-b0-2020????.fits",
        "spectro/redux/fuji/exposure_tables/2020??/exposure_table_2020????.csv",
        "spectro/redux/fuji/calibnight/2020????/redux_fuji_calibnight_2020????.sha256sum",
        "target/fiberassign/tiles/trunk/001/fiberassign-001???.fits.gz",
        "target/catalogs/dr9/*/targets/main/resolve/*/targets-*-hp-*.fits",
        "survey/ops/surveyops/trunk/ops/tiles-main.ecsv",
        "vac/edr/lss/*/LSScats/clustering/*.fits",
    ):
        assert list(small.glob(pattern)), pattern
    assert (redux / "zcatalog/zpix-main-dark.fits").is_file()
    assert (redux / "tiles-fuji.fits").is_file()
    for fits in small.rglob("*.fits"):
        if not fits.is_symlink():
            assert fits.stat().st_size % 2880 == 0, fits


def test_every_checksum_file_lists_its_directory_correctly(small: Path) -> None:
    sums = list(small.rglob("*.sha256sum"))
    assert len(sums) > 10
    for sumfile in sums:
        listed = {}
        for line in sumfile.read_text(encoding="utf-8").splitlines():
            match = CHECKSUM_LINE.match(line)
            assert match, (sumfile, line)
            listed[match.group(2)] = match.group(1)
        folder = sumfile.parent
        files = {
            p.name for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p != sumfile
        }
        assert set(listed) == files, sumfile
        for name, digest in listed.items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_every_directory_with_files_has_a_checksum_file(small: Path) -> None:
    for dirpath, _, filenames in os.walk(small):
        regular = [n for n in filenames if not Path(dirpath, n).is_symlink()]
        if regular:
            assert any(n.endswith(".sha256sum") for n in regular), dirpath


def test_summary_counts_what_is_on_disk(tmp_path: Path) -> None:
    root = tmp_path / "rel"
    summary = synthesize(root, SMALL, seed=5)
    entries = listing(root)
    files = [e for e in entries.values() if e[0] == "file"]
    assert summary.files == len(files)
    assert summary.bytes == sum(e[1] for e in files)
    assert summary.dirs == sum(e[0] == "dir" for e in entries.values()) - 1  # not the root
    assert summary.symlinks == sum(e[0] == "link" for e in entries.values()) == 5
    planned = estimate(SMALL, seed=5)
    assert (planned.files, planned.bytes, planned.dirs) == (
        summary.files,
        summary.bytes,
        summary.dirs,
    )


def test_sizes_scale_as_documented() -> None:
    small, one = estimate(0.05), estimate(1.0)
    assert 100 <= small.files <= 400
    assert small.bytes < 20e6
    assert 2000 <= one.files <= 4000
    assert 100e6 <= one.bytes <= 300e6
    assert estimate(4.0).files > 3 * one.files


def test_scale_one_has_a_directory_of_thousands() -> None:
    widest = max(len(e.files) for e in layout(1.0) if isinstance(e, DirSpec))
    assert widest >= 2000


@pytest.fixture(scope="module")
def sparse_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("synth-sparse") / "edr"
    return root, synthesize(root, SMALL, seed=3, sparse=True)


def test_sparse_has_the_same_names_sizes_and_mtimes_but_no_data(
    small: Path, sparse_small: tuple[Path, object]
) -> None:
    root, summary = sparse_small
    dense = listing(small)
    sparse = listing(root)
    assert set(sparse) == set(dense)
    allocated = 0
    for rel, entry in sparse.items():
        if entry[0] != "file":
            assert entry == dense[rel]
            continue
        assert entry[1:3] == dense[rel][1:3], rel  # size and mtime
        blocks = (root / rel).stat().st_blocks * 512
        tables = rel.endswith(TABLES)  # text, the same sparse or not
        if not rel.endswith((".sha256sum", *FITS)) and not tables:
            assert entry[3] == hashlib.sha256(bytes(entry[1])).hexdigest(), rel
            assert blocks == 0 or entry[1] == 1, rel  # holes (a 1-byte file takes a block)
        allocated += blocks
    assert summary.bytes > 5_000_000
    # FITS headers (a block each HDU), logical columns ('F'), compressed raw frames, and
    # the small CSV tables, which are text
    assert allocated < summary.bytes / 2
    test_every_checksum_file_lists_its_directory_correctly(root)


def test_awkward_names_and_links_are_present(small: Path) -> None:
    odd = small / "vac/edr/odd names"
    names = {p.name for p in odd.iterdir()}
    assert set(ODD_NAMES) <= names
    for fragment in (" ", "'", '"', "#", "%", "+", "=", "[", "é", "ü", "Ω"):
        assert any(fragment in n for n in names), fragment
    assert (odd / "sub dir [v1] #2 (copy)" / "data 'final'.fits").is_file()
    assert (odd / "sizes/zero-bytes.fits").stat().st_size == 0
    assert not any((odd / "empty dir").iterdir())
    assert [p.name for p in (odd / "only an empty dir inside").iterdir()] == ["empty"]

    for path in small.rglob("*"):
        rel = path.relative_to(small).as_posix()
        assert "\n" not in rel
        rel.encode("utf-8")  # no surrogates: every name is valid UTF-8

    links = odd / "links"
    inside_file = (links / "zpix-main-dark.fits").resolve()
    assert inside_file.is_file()
    assert inside_file.is_relative_to(small.resolve())
    inside_dir = (links / "zcatalog").resolve()
    assert inside_dir.is_dir()
    assert inside_dir.is_relative_to(small.resolve())
    assert not os.readlink(links / "zcatalog").startswith("/")
    assert os.readlink(links / "hostname") == "/etc/hostname"
    escaping = (links / "escapes the release.fits").resolve()
    assert not escaping.is_relative_to(small.resolve())
    assert (links / "broken.fits").is_symlink()
    assert not (links / "broken.fits").exists()


def test_refuses_bad_scale_and_occupied_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="scale"):
        synthesize(tmp_path / "new", 0)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("user data")
    with pytest.raises(UsageError, match="not empty"):
        synthesize(occupied, SMALL)
    assert [p.name for p in occupied.iterdir()] == ["precious.txt"]


def test_cli_refuses_occupied_directory_with_one_line(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("user data")
    proc = run_cli("synth", str(occupied), "--scale", "0.05")
    assert_clean_error(proc, "not empty")
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert (occupied / "precious.txt").read_text() == "user data"

    assert_clean_error(run_cli("synth", str(tmp_path / "x"), "--scale", "-1"), "scale")


def test_cli_writes_an_empty_directory_and_reports_json(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    proc = run_cli("synth", str(root), "--scale", "0.02", "--seed", "9", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] > 100
    assert report["bytes"] > 0
    assert report["symlinks"] == 5
    assert report["seed"] == 9
    assert report["sparse"] is False
    assert (root / "spectro/redux/fuji/zcatalog").is_dir()

    text = run_cli("synth", str(tmp_path / "plain"), "--scale", "0.02", "--sparse", check=True)
    assert re.search(r"[\d,]+ sparse files, [\d,]+ dirs, .* 5 symlinks", text.stdout)


#: The products a newcomer reads first: file pattern -> {HDU name: columns it must have}.
PRODUCTS = {
    "spectro/redux/fuji/healpix/*/*/*/*/coadd-*.fits": {
        "FIBERMAP": ("TARGETID", "TARGET_RA", "TARGET_DEC", "DESI_TARGET", "FLUX_R"),
        "EXP_FIBERMAP": ("TARGETID", "NIGHT", "EXPID", "TILEID"),
        **{f"{arm}_{kind}": () for arm in "BRZ" for kind in ("WAVELENGTH", "FLUX", "IVAR")},
        **{f"{arm}_{kind}": () for arm in "BRZ" for kind in ("MASK", "RESOLUTION")},
        "SCORES": ("TARGETID", "MEDIAN_COADD_SNR_B", "TSNR2_LRG"),
    },
    "spectro/redux/fuji/healpix/*/*/*/*/spectra-*.fits.gz": {
        "FIBERMAP": ("TARGETID", "TARGET_RA", "TARGET_DEC"),
        "SCORES": ("TARGETID",),
        **{f"{arm}_{kind}": () for arm in "BRZ" for kind in ("WAVELENGTH", "FLUX", "IVAR")},
        **{f"{arm}_{kind}": () for arm in "BRZ" for kind in ("MASK", "RESOLUTION")},
    },
    "spectro/redux/fuji/calibnight/*/biasnight-*.fits.gz": {"BIAS": ()},
    "spectro/redux/fuji/tiles/cumulative/*/*/coadd-*.fits": {
        "FIBERMAP": ("TARGETID",),
        "B_FLUX": (),
        "Z_RESOLUTION": (),
        "SCORES": ("TARGETID",),
    },
    "spectro/redux/fuji/*/*/*/*/*/redrock-*.fits": {
        "REDSHIFTS": ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "DELTACHI2", "COEFF"),
        "FIBERMAP": ("TARGETID", "TARGET_RA"),
        "TSNR2": ("TARGETID",),
    },
    "spectro/redux/fuji/zcatalog/zpix-*.fits": {
        "ZCATALOG": ("TARGETID", "HEALPIX", "Z", "ZWARN", "SPECTYPE", "ZCAT_PRIMARY"),
    },
    "spectro/redux/fuji/exposures-fuji.fits": {
        "EXPOSURES": ("NIGHT", "EXPID", "TILEID", "EXPTIME", "EFFTIME_SPEC"),
        "FRAMES": ("NIGHT", "EXPID", "CAMERA"),
    },
    "spectro/redux/fuji/tiles-fuji.fits": {
        "TILE_COMPLETENESS": ("TILEID", "SURVEY", "PROGRAM", "LASTNIGHT"),
    },
    "target/catalogs/dr9/*/targets/main/resolve/*/targets-*.fits": {
        "TARGETS": ("TARGETID", "RA", "DEC", "DESI_TARGET", "FLUX_G"),
    },
    "target/fiberassign/tiles/trunk/*/fiberassign-*.fits.gz": {
        "FIBERASSIGN": ("TARGETID", "PETAL_LOC", "FIBER", "TARGET_RA"),
    },
    "spectro/data/*/*/fiberassign-*.fits.gz": {"FIBERASSIGN": ("TARGETID", "LOCATION")},
    "spectro/data/*/*/desi-*.fits.fz": {"SPEC": (), "B0": ()},
}


def _fits_files(root: Path) -> list[Path]:
    """Every FITS file synth wrote; the zero-byte one is the empty-file case, on purpose."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.name.endswith(FITS) and p.is_file() and not p.is_symlink() and p.stat().st_size
    )


def _open_everywhere(path: Path, tmp_path: Path) -> list[str]:
    """Open with astropy (checksums verified, every HDU's data read) and with fitsio."""
    import warnings

    import fitsio
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checksum mismatch is only a warning in astropy
        with fits.open(path, checksum=True) as hdul:
            for hdu in hdul:
                _ = hdu.data
            names = [hdu.name for hdu in hdul]
    # cfitsio parses "[...]" in a file name as a filter: open odd names through a plain link
    plain = tmp_path / ("plain" + "".join(path.suffixes[-2:]))
    plain.unlink(missing_ok=True)
    plain.symlink_to(path)
    with fitsio.FITS(str(plain)) as f:
        assert [hdu.get_extname() or "PRIMARY" for hdu in f] == names, path
        for hdu in f[1:]:
            hdu.read()
    return names


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_every_fits_file_is_valid_and_shaped_like_the_data_model(
    kind: str, small: Path, sparse_small: tuple[Path, object], tmp_path: Path
) -> None:
    from astropy.io import fits

    root = small if kind == "dense" else sparse_small[0]
    files = _fits_files(root)
    assert len(files) > 150
    for path in files:
        _open_everywhere(path, tmp_path)
    for pattern, hdus in PRODUCTS.items():
        matches = sorted(root.glob(pattern))
        assert matches, pattern
        for path in matches:
            with fits.open(path) as hdul:
                for name, columns in hdus.items():
                    assert name in hdul, (path, name)
                    if columns:
                        assert set(columns) <= set(hdul[name].columns.names), (path, name)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_every_table_and_fits_file_opens_with_astropy(
    kind: str, small: Path, sparse_small: tuple[Path, object]
) -> None:
    """No file with a FITS or table suffix is random bytes: every CSV and ECSV reads as a
    table with the data model's columns; the one FITS file left out is the empty one."""
    from astropy.table import Table

    root = small if kind == "dense" else sparse_small[0]
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    empty = [p.name for p in files if p.name.endswith(FITS) and not p.stat().st_size]
    assert empty == ["zero-bytes.fits"]  # the empty-file case, on purpose
    tables = sorted(p for p in files if p.name.endswith(TABLES))
    assert {p.suffix for p in tables} == set(TABLES)
    for path in tables:
        table = Table.read(path, format="ascii.ecsv" if path.suffix == ".ecsv" else "ascii.csv")
        assert table.colnames, path
    bad = Table.read(next(root.rglob("badcolumns-*.csv")), format="ascii.csv")
    assert bad.colnames == ["CAMERA", "COLUMN", "ELEC_PER_SEC", "SIGMA"]
    ops = root / "survey/ops/surveyops/trunk/ops"
    status = Table.read(ops / "tiles-specstatus.ecsv", format="ascii.ecsv")
    assert {"TILEID", "OBSSTATUS", "EFFTIME_SPEC", "LASTNIGHT"} <= set(status.colnames)
    assert len(status) > 0
    assert status["TILEID"].dtype.kind == "i"
    exposures = Table.read(ops / "exposures.ecsv", format="ascii.ecsv")
    assert {"EXPID", "NIGHT", "TILEID", "EFFTIME_SPEC"} <= set(exposures.colnames)
    assert len(exposures) > 0


def test_spectra_redshifts_and_the_zcatalog_agree(small: Path) -> None:
    """A coadd and its redrock file describe the same targets, which the zcatalog lists, and
    each spectrum's emission lines sit where its redshift puts them."""
    import numpy as np
    from astropy.io import fits

    from desimirror.dev.synth.sky import GALAXY_LINES, QSO_LINES

    checked = 0
    with fits.open(small / "spectro/redux/fuji/zcatalog/zpix-sv3-dark.fits") as zpix:
        listed = set(zpix["ZCATALOG"].data["TARGETID"])
    for coadd in small.glob("spectro/redux/fuji/healpix/sv3/dark/*/*/coadd-*.fits"):
        with fits.open(coadd) as c, fits.open(str(coadd).replace("coadd-", "redrock-")) as r:
            ids = c["FIBERMAP"].data["TARGETID"]
            assert list(r["REDSHIFTS"].data["TARGETID"]) == list(ids)
            assert set(ids) <= listed
            assert c[0].header["HPXPIXEL"] == int(coadd.parent.name)
            z, types = r["REDSHIFTS"].data["Z"], r["REDSHIFTS"].data["SPECTYPE"]
            wave = np.concatenate([c[f"{arm}_WAVELENGTH"].data for arm in "BRZ"])
            flux = np.concatenate([c[f"{arm}_FLUX"].data for arm in "BRZ"], axis=1)
        for i, spectype in enumerate(types):
            lines = {"GALAXY": GALAXY_LINES, "QSO": QSO_LINES}.get(spectype.strip(), ())
            strongest = max(lines, key=lambda line: line[1], default=None)
            if strongest is None or not wave[0] < strongest[0] * (1 + z[i]) < wave[-1]:
                continue
            near = np.abs(wave - strongest[0] * (1 + z[i])) < 4 * (1 + z[i])
            assert flux[i][near].max() > np.median(flux[i]) + 2, (coadd.name, i, z[i])
            checked += 1
    assert checked >= 3
