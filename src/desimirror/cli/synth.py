"""``desimirror synth``: write a synthetic DESI-like release to try the mirror on."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.cli.common import finish, json_option
from desimirror.errors import DesimirrorError
from desimirror.progress import for_terminal
from desimirror.units import format_size


class Interrupted(DesimirrorError):
    """Ctrl-C: unlike the mirror's stages, synth cannot resume, so say what to clean up."""

    exit_code = 130


@click.command("synth")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Size of the release: 1 is ~3,500 files and ~150 MB, 0.05 ~350 files and ~10 MB; "
    "counts grow linearly (300 with --sparse is ~1M entries).",
)
@click.option(
    "--sparse",
    is_flag=True,
    help="Create files at their sizes but without data (holes), for trees of millions of "
    "entries: FITS files keep their headers (still valid FITS); checksums list what is "
    "written.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="The same seed gives the same names, sizes, bytes and mtimes.",
)
@json_option
def command(directory: Path, scale: float, sparse: bool, seed: int, json_output: bool) -> None:
    """Write a synthetic release laid out like DESI's into DIRECTORY (new or empty).

    It has raw exposures, a specprod (calibnight, exposures, tiles, healpix, zcatalog),
    target, survey and vac trees, a *.sha256sum file per directory, and the awkward cases
    real trees hold: odd names, empty directories and symlinks of every kind. Every FITS
    file is valid, the main products shaped like the DESI data model (needs astropy).
    """
    from desimirror.dev.synth import synthesize  # numpy and astropy: only for this command

    try:
        summary = synthesize(
            directory, scale, sparse=sparse, seed=seed, progress=for_terminal(json_output)
        )
    except KeyboardInterrupt:
        raise Interrupted(
            f"synth interrupted; remove the partial tree in {directory} before running again"
        ) from None
    kind = "sparse " if sparse else ""
    line = (
        f"synth: {summary.files:,} {kind}files, {summary.dirs:,} dirs, "
        f"{format_size(summary.bytes)} ({summary.bytes:,} bytes), "
        f"{summary.symlinks} symlinks in {directory} ({summary.seconds:.1f}s)"
    )
    finish(summary.as_dict(), json_output, [line])
