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

Every ``.fits``, ``.fits.gz`` and ``.fits.fz`` file is valid FITS (:mod:`.fits`): the products
a newcomer reads first are shaped like the DESI data model (coadds with FIBERMAP, SCORES and
B/R/Z WAVELENGTH, FLUX, IVAR, MASK, RESOLUTION; redrock REDSHIFTS; the zcatalog; exposure and
tile tables; target catalogues; fiberassign tables; compressed raw frames), with spectra of
plausible objects (:mod:`.sky`) whose redshifts redrock and the zcatalog report; the other
FITS files are a primary header over an image. Sizes are heavy-tailed as in the real thing:
thousands of files of a few hundred bytes to tens of kB, a few of several MB. At scale 1 the tree
has about 3,500 files and 150 MB (at 0.05, 350 files and 10 MB); the counts of nights,
exposures, tiles and pixels, and the size of the catalogues that summarise them, grow linearly
with the scale (``--sparse --scale 300`` is a million entries).

Every directory holding files carries a ``*.sha256sum`` in ``sha256sum`` format listing its
regular files (not symlinks, not itself), named like DESI's (``redux_fuji_calibnight_NIGHT``),
because the mirror uses them as the reference for what the bytes must be.

The tree is a pure function of (scale, seed): names, sizes, bytes and mtimes (set explicitly)
are identical from run to run, so tests can compare two syntheses byte for byte.
Other files are pseudo-random bytes, so a checksum tells files apart; ``sparse=True``
writes the same names, sizes and mtimes as holes instead (for trees of millions of entries):
FITS files keep their headers over zero data (still valid FITS), everything else is zeros,
and the checksum files list those contents. Generation is per directory, so memory stays small.

The package: :mod:`.layout` (the tree: names, sizes, mtimes), :mod:`.fits` and :mod:`.sky`
(what the FITS files hold), :mod:`.writer` (putting it on disk and counting it); this module
is the public API.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from desimirror.dev.synth.fits import write_large_fits
from desimirror.dev.synth.layout import (
    ODD_NAMES,
    DirSpec,
    FileSpec,
    LinkSpec,
    SynthSummary,
    layout,
    release_time,
)
from desimirror.dev.synth.writer import Tally, TreeWriter
from desimirror.errors import DesimirrorError, UsageError
from desimirror.progress import NullProgress, Progress

__all__ = [
    "ODD_NAMES",
    "DirSpec",
    "FileSpec",
    "LinkSpec",
    "SynthSummary",
    "estimate",
    "layout",
    "synthesize",
    "write_large_fits",
]


def estimate(scale: float, seed: int = 0, *, sparse: bool = False) -> SynthSummary:
    """What :func:`synthesize` would write, without writing: for progress totals and sizing."""
    _check_scale(scale)
    _check_astropy()
    tally = Tally()
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
    writer = TreeWriter(root, seed, sparse)
    root.mkdir(parents=True, exist_ok=True)
    progress.start("synth", totals.files, totals.bytes)
    try:
        for entry in layout(scale, seed):
            files, nbytes = writer.write(entry)
            progress.advance(files, nbytes)
        writer.set_dir_mtimes(release_time(scale, seed))
    except OSError as exc:
        raise DesimirrorError(
            f"synth failed in {root}: {exc}; remove the partial tree before trying again"
        ) from exc
    finally:
        progress.close()
    return writer.tally.summary(root, scale, seed, sparse, time.monotonic() - started)


def _check_astropy() -> None:
    """The FITS files are made with astropy, an extra of desimirror, not a dependency."""
    import importlib.util

    if importlib.util.find_spec("astropy") is None:
        raise UsageError(
            "synth writes FITS files with astropy, which is not installed: "
            "pip install 'desimirror[test]' (or astropy)"
        )


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
