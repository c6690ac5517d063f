"""``desimirror mount`` and ``desimirror unmount``: the mirror read-only at a directory."""

from __future__ import annotations

from pathlib import Path

import click

from desimirror.access.config import load_config, unsigned_default
from desimirror.access.mount import mount_bucket, mount_local, unmount
from desimirror.cli.common import SIZE
from desimirror.errors import UsageError
from desimirror.storage.s3client import check_endpoint_url, parse_bucket_url
from desimirror.units import format_size

#: Where the access commands read an endpoint from when --endpoint-url is not given.
ENDPOINT_ENV = "$DESIMIRROR_ENDPOINT_URL or $AWS_ENDPOINT_URL"


def s3_options(func):
    """--endpoint-url, --no-sign-request/--sign-request, --cache, --cache-size."""
    func = click.option(
        "--cache-size",
        type=SIZE,
        help="Bound of the local cache, e.g. 20G (default $DESIMIRROR_CACHE_SIZE or 20G).",
    )(func)
    func = click.option(
        "--cache",
        "cache",
        type=click.Path(file_okay=False),
        help="Cache directory (default $DESIMIRROR_CACHE or ~/.cache/desimirror).",
    )(func)
    func = click.option(
        "--no-sign-request/--sign-request",
        "no_sign_request",
        default=None,
        help="Unsigned requests, no credentials (public buckets); default: unsigned for "
        "s3://desidata on AWS, signed with your AWS credentials otherwise.",
    )(func)
    return click.option(
        "--endpoint-url",
        help="S3 endpoint (default AWS, or $DESIMIRROR_ENDPOINT_URL / $AWS_ENDPOINT_URL).",
    )(func)


@click.command("mount")
@click.argument("source", required=False)
@click.argument("mountpoint", type=click.Path(file_okay=False), required=False)
@click.option(
    "--local",
    "local",
    type=click.Path(file_okay=False),
    help="Mount this local copy (read-only) instead of a bucket: the same paths, no S3.",
)
@s3_options
@click.option(
    "--backend",
    type=click.Choice(["auto", "rclone", "mountpoint-s3"]),
    default="auto",
    show_default=True,
    help="FUSE client: mountpoint-s3 when mount-s3 is installed, else rclone.",
)
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for it."
)
def command(
    source: str | None,
    mountpoint: str | None,
    local: str | None,
    endpoint_url: str | None,
    no_sign_request: bool | None,
    cache: str | None,
    cache_size: int | None,
    backend: str,
    timeout: float,
) -> None:
    """Mount s3://BUCKET[/PREFIX] read-only at MOUNTPOINT with a bounded cache: a read
    downloads only the byte ranges it touches. With --local DIR, give only MOUNTPOINT."""
    cfg = load_config()
    check_endpoint_url(endpoint_url)
    if local is not None:
        if mountpoint is not None or source is None:
            raise UsageError("with --local DIR give only the MOUNTPOINT")
        done = mount_local(
            local, source, state_dir=cfg.state_dir, fuse_device=cfg.fuse_device, timeout=timeout
        )
        click.echo(
            f"mounted {done.record.source} read-only at {done.mountpoint} "
            f"(rclone, pid {done.record.pid}); stop with: desimirror unmount {done.mountpoint}"
        )
        return
    if source is None or mountpoint is None:
        raise UsageError("usage: desimirror mount s3://BUCKET[/PREFIX] MOUNTPOINT")
    endpoint = endpoint_url or check_endpoint_url(cfg.endpoint_url, ENDPOINT_ENV)
    bucket, _ = parse_bucket_url(source)
    if no_sign_request is None:
        no_sign_request = unsigned_default(bucket, endpoint)
    size = cfg.cache_size if cache_size is None else cache_size
    done = mount_bucket(
        source,
        mountpoint,
        endpoint_url=endpoint,
        region=cfg.region,
        no_sign_request=no_sign_request,
        cache_dir=Path(cache).expanduser() if cache else cfg.cache_dir,
        cache_size=size,
        state_dir=cfg.state_dir,
        backend=backend,
        fuse_device=cfg.fuse_device,
        timeout=timeout,
    )
    click.echo(
        f"mounted {done.record.source} read-only at {done.mountpoint} ({done.record.tool}, "
        f"pid {done.record.pid}, cache {done.record.cache_dir} up to {format_size(size)}); "
        f"stop with: desimirror unmount {done.mountpoint}"
    )


@click.command("unmount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option(
    "--lazy", is_flag=True, help="Detach now even if busy; it goes when the last user leaves."
)
def unmount_command(mountpoint: str, lazy: bool) -> None:
    """Unmount a mount made by desimirror mount and stop its client process."""
    cfg = load_config()
    record = unmount(mountpoint, state_dir=cfg.state_dir, lazy=lazy)
    suffix = f" (stopped {record.tool}, pid {record.pid})" if record else ""
    click.echo(f"unmounted {Path(mountpoint).absolute()}{suffix}")
