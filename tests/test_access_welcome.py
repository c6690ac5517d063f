"""The welcome notebook, top to bottom in a real kernel (nbclient), on synth's release.

The bucket holds ``desimirror synth``'s valid DESI-shaped FITS in the mirror layout, as
``make demo`` leaves it; the kernel gets the environment ``desimirror jupyter`` gives its
kernels in each of its three set-ups: the bucket FUSE-mounted (a real rclone mount), no
mount at all (``--no-mount``: ``desimirror.data`` reads the bucket), and a local copy
(``--local``). Every cell must run, and the notebook must draw the spectrum it picked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from access_helpers import ReleaseBucket, needs_fuse
from desimirror.access.env import data_model_env, detect_layout
from desimirror.access.jupyter import welcome_notebook
from desimirror.access.mount import mount_bucket, stop

pytest_plugins = ["access_fixtures"]
pytestmark = [pytest.mark.s3]


def _run_welcome(env: dict[str, str], workdir: Path) -> list:
    """Execute every cell in a fresh python3 kernel with exactly ``env``; the cells' outputs."""
    import nbclient
    import nbformat

    notebook = nbformat.reads(welcome_notebook().decode(), as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": workdir}}
    )
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel is started with this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [cell.get("outputs", []) for cell in notebook.cells if cell.cell_type == "code"]


def _kernel_env(access_env: dict[str, str], model: dict[str, str], **settings: str) -> dict:
    env = {**access_env, **model, **settings}
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, which the notebook's plot uses
    env["DESIMIRROR_RELEASE"] = "edr"
    return env


def _check(outputs: list) -> None:
    text = "".join(o.get("text", "") for cell in outputs for o in cell)
    assert "good" in text, text
    assert "TARGETID" in text, text
    assert "B_RESOLUTION" in text, text  # hdul.info() of the coadd
    assert "SCORES" in text, text
    assert "OBSTYPE SCIENCE" in text, text  # the raw frame's SPEC header was read
    tables = [o["data"]["text/plain"] for cell in outputs for o in cell if "data" in o]
    assert any("EXPTIME" in t and "science" in t for t in tables), tables  # the CSV
    pngs = [o for cell in outputs for o in cell if "image/png" in o.get("data", {})]
    assert pngs, "no spectrum was drawn"


def _s3_settings(synth: ReleaseBucket, tmp_path: Path) -> dict[str, str]:
    return {
        "DESIMIRROR_BUCKET": f"s3://{synth.bucket}",
        "DESIMIRROR_ENDPOINT_URL": synth.s3.endpoint_url,
        "DESIMIRROR_NO_SIGN_REQUEST": "1",
        "DESIMIRROR_REGION": "us-east-1",
        "DESIMIRROR_CACHE": str(tmp_path / "cache"),
    }


@needs_fuse
def test_welcome_runs_through_a_mount(
    synth_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path
) -> None:
    mounted = mount_bucket(
        f"s3://{synth_bucket.bucket}",
        tmp_path / "desidata",
        endpoint_url=synth_bucket.s3.endpoint_url,
        region="us-east-1",
        no_sign_request=True,
        cache_dir=tmp_path / "rclone-cache",
        cache_size=10**9,
        state_dir=tmp_path / "state",
    )
    try:
        model = data_model_env("edr", tmp_path / "desidata")
        env = _kernel_env(access_env, model, **_s3_settings(synth_bucket, tmp_path))
        _check(_run_welcome(env, tmp_path))
        _read_as_astronomers_do(tmp_path / "desidata" / "edr", synth_bucket.local / "edr")
    finally:
        stop(mounted, state_dir=tmp_path / "state")


def _read_as_astronomers_do(mounted: Path, local: Path) -> None:
    """pandas, fitsio and astropy read the mounted files as they read the local ones."""
    import fitsio
    import numpy as np
    import pandas as pd
    from astropy.table import Table

    redux = "spectro/redux/fuji"
    tiles = f"{redux}/tiles-fuji.csv"
    assert pd.read_csv(mounted / tiles).equals(pd.read_csv(local / tiles))
    hpixexp = next(local.glob(f"{redux}/healpix/*/*/*/*/hpixexp-*.csv")).relative_to(local)
    assert pd.read_csv(mounted / hpixexp).equals(pd.read_csv(local / hpixexp))
    zcat = f"{redux}/zcatalog/zpix-sv3-dark.fits"
    through_mount = fitsio.read(str(mounted / zcat), ext="ZCATALOG")
    assert np.array_equal(through_mount, fitsio.read(str(local / zcat), ext="ZCATALOG"))
    table = Table.read(mounted / zcat, hdu="ZCATALOG")
    assert len(table) == len(through_mount) > 0
    assert "Z" in table.colnames


def test_welcome_runs_without_fuse_through_desimirror_data(
    synth_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path
) -> None:
    model = data_model_env("edr", tmp_path / "not-mounted")  # as `jupyter --no-mount` sets it
    env = _kernel_env(access_env, model, **_s3_settings(synth_bucket, tmp_path))
    outputs = _run_welcome(env, tmp_path)
    _check(outputs)
    assert "reading through desimirror.data" in "".join(
        o.get("text", "") for cell in outputs for o in cell
    )


def test_welcome_runs_on_a_local_copy(
    synth_bucket: ReleaseBucket, access_env: dict[str, str], tmp_path: Path
) -> None:
    local = synth_bucket.local
    model = data_model_env("edr", local, detect_layout(local, "edr"))
    env = _kernel_env(access_env, model, DESIMIRROR_LOCAL=str(local))
    _check(_run_welcome(env, tmp_path))
