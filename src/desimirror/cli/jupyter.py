"""``desimirror jupyter``: JupyterLab over the mirrored release; the container's entry point."""

from __future__ import annotations

import os
from pathlib import Path

import click

from desimirror.access.config import load_config, unsigned_default
from desimirror.access.jupyter import JupyterOptions, find_jupyter, run
from desimirror.cli.mount import ENDPOINT_ENV, s3_options
from desimirror.errors import UsageError
from desimirror.storage.s3client import check_endpoint_url, parse_bucket_url


@click.command("jupyter", context_settings={"ignore_unknown_options": True})
@click.option(
    "--release",
    help="Data release, any case (default $DESIMIRROR_RELEASE, $DESI_RELEASE or edr).",
)
@click.option(
    "--local",
    type=click.Path(file_okay=False),
    help="Use this local copy of the data (no mount).",
)
@click.option(
    "--bucket",
    help="Mount this bucket, s3://NAME[/PREFIX] (default $DESIMIRROR_BUCKET or s3://desidata).",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False),
    help="Where the data is mounted, or already is if not empty (default $DESIMIRROR_DATA "
    "or ~/desidata).",
)
@s3_options
@click.option(
    "--ip",
    default=lambda: os.environ.get("DESIMIRROR_JUPYTER_IP", "127.0.0.1"),
    show_default="127.0.0.1, or $DESIMIRROR_JUPYTER_IP",
    help="Address JupyterLab listens on (a container needs 0.0.0.0 for -p to reach it).",
)
@click.option("--port", type=int, default=8888, show_default=True, help="JupyterLab's port.")
@click.option(
    "--public-ip",
    envvar="PUBLIC_IP",
    help="Print the URL with this address (an EC2 instance's public IP); also $PUBLIC_IP.",
)
@click.option(
    "--token",
    envvar="JUPYTER_TOKEN",
    help="The access token (default: a random one; also $JUPYTER_TOKEN).",
)
@click.option(
    "--no-token",
    is_flag=True,
    help="No token at all; only allowed when listening on 127.0.0.1.",
)
@click.option(
    "--notebook-dir",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="JupyterLab's root directory; the welcome notebook is put there if absent.",
)
@click.option(
    "--nersc-links",
    is_flag=True,
    envvar="DESIMIRROR_NERSC_LINKS",
    help="Make /global/cfs/cdirs/desi/... lead to the data (needs write access there).",
)
@click.option(
    "--nersc-root",
    type=click.Path(file_okay=False),
    help="Where the NERSC paths are built (default /global/cfs/cdirs/desi).",
)
@click.option(
    "--no-mount",
    is_flag=True,
    help="Mount nothing (no FUSE here, e.g. a JupyterHub pod): notebooks read the bucket "
    "with desimirror.access.data instead.",
)
@click.argument("jupyter_args", nargs=-1, type=click.UNPROCESSED)
def command(
    release: str | None,
    local: str | None,
    bucket: str | None,
    data_dir: str | None,
    endpoint_url: str | None,
    no_sign_request: bool | None,
    cache: str | None,
    cache_size: int | None,
    ip: str,
    port: int,
    public_ip: str | None,
    token: str | None,
    no_token: bool,
    notebook_dir: str,
    nersc_links: bool,
    nersc_root: str | None,
    no_mount: bool,
    jupyter_args: tuple[str, ...],
) -> None:
    """Set the DESI environment for the release, mount the data (or use the local copy)
    and run JupyterLab with a token; unmount when it exits. Arguments after -- go to
    JupyterLab."""
    if not find_jupyter():
        raise UsageError("JupyterLab is not installed; pip install jupyterlab")
    cfg = load_config()
    if local and bucket:
        raise UsageError("give either --local DIR or --bucket s3://..., not both")
    chosen_bucket = bucket or cfg.bucket
    endpoint = check_endpoint_url(endpoint_url) or check_endpoint_url(
        cfg.endpoint_url, ENDPOINT_ENV
    )
    if no_sign_request is None:
        no_sign_request = (
            unsigned_default(parse_bucket_url(chosen_bucket)[0], endpoint)
            if bucket or endpoint_url
            else cfg.no_sign_request
        )
    local_dir = Path(local) if local else (cfg.local if not bucket else None)
    opts = JupyterOptions(
        release=release or cfg.release,
        data_dir=Path(data_dir) if data_dir else cfg.data_dir,
        local=local_dir,
        bucket=chosen_bucket,
        endpoint_url=endpoint,
        region=cfg.region,
        no_sign_request=no_sign_request,
        cache_dir=Path(cache).expanduser() if cache else cfg.cache_dir,
        cache_size=cfg.cache_size if cache_size is None else cache_size,
        state_dir=cfg.state_dir,
        fuse_device=cfg.fuse_device,
        ip=ip,
        port=port,
        public_ip=public_ip or None,
        token=token or None,
        no_token=no_token,
        notebook_dir=Path(notebook_dir),
        nersc_links=nersc_links,
        nersc_root=Path(nersc_root) if nersc_root else cfg.nersc_root,
        no_mount=no_mount,
        jupyter_args=[a for a in jupyter_args if a != "--"],
    )
    raise SystemExit(run(opts))
