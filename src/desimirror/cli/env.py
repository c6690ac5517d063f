"""``desimirror env``: the DESI data model variables for a release, as ``export`` lines."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.access.config import load_config
from desimirror.access.env import (
    data_model_env,
    data_warnings,
    detect_layout,
    export_lines,
    make_links,
    normalize_release,
    plan_nersc_links,
)


@click.command("env")
@click.option(
    "--release",
    help="Data release, any case: edr, dr1, dr2 (default $DESIMIRROR_RELEASE, $DESI_RELEASE "
    "or edr).",
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False),
    help="Top of the mirror: the mount point or the local copy (default $DESIMIRROR_DATA "
    "or ~/desidata).",
)
@click.option(
    "--layout",
    type=click.Choice(["auto", "mirror", "nersc"]),
    default="auto",
    show_default=True,
    help="mirror: raw_spectro_data/ and target/ next to the releases (the bucket); nersc: "
    "inside each release, as at NERSC; auto: look.",
)
@click.option(
    "--nersc-links",
    is_flag=True,
    help="Also make /global/cfs/cdirs/desi/public/<release>/... (and the other NERSC paths) "
    "lead to the same data, for code that hard-codes them. Needs write access there.",
)
@click.option(
    "--nersc-root",
    type=click.Path(file_okay=False),
    help="Where the NERSC paths are built (default $DESIMIRROR_NERSC_ROOT or "
    "/global/cfs/cdirs/desi).",
)
def command(
    release: str | None, data: str | None, layout: str, nersc_links: bool, nersc_root: str | None
) -> None:
    """Print export lines for DESI_ROOT, DESI_SPECTRO_DATA, DESI_SPECTRO_REDUX,
    DESI_SPECTRO_CALIB, DESI_TARGET, ... for the release; use with
    eval "$(desimirror env --release edr)"."""
    cfg = load_config()
    root = Path(data).expanduser() if data else cfg.data_dir
    root = Path(root).absolute()
    name = normalize_release(release or cfg.release, root)
    for warning in data_warnings(root, name):  # stderr: eval "$(...)" reads stdout only
        click.echo(f"desimirror: warning: {warning}", err=True)
    chosen = detect_layout(root, name) if layout == "auto" else layout
    env = data_model_env(name, root, chosen)  # type: ignore[arg-type]
    if nersc_links:
        base = Path(nersc_root).expanduser().absolute() if nersc_root else cfg.nersc_root
        made = make_links(plan_nersc_links(root, name, base))
        click.echo(f"# {len(made)} NERSC path links made under {base}", err=True)
    for line in export_lines(env):
        click.echo(line)
