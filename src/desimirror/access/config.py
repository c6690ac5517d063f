"""Every ``DESIMIRROR_*`` setting of the access side, read in one place.

The mount wrapper, the Jupyter launcher and :mod:`desimirror.access.data` all take their defaults
from :func:`load_config`, which reads an environment *passed in* (``os.environ`` unless told
otherwise) so that tests, and callers embedding desimirror, never have to patch globals.
Command-line options override these values; nothing else reads the environment.

- ``DESIMIRROR_BUCKET``: where the mirror is, ``s3://NAME[/PREFIX]``
  (default ``s3://desidata``, DESI's public bucket).
- ``DESIMIRROR_ENDPOINT_URL``: another S3 endpoint (default AWS, or ``$AWS_ENDPOINT_URL``).
- ``DESIMIRROR_REGION``: the bucket's region (default ``us-west-2``).
- ``DESIMIRROR_NO_SIGN_REQUEST``: ``1`` sends unsigned requests with no credentials at
  all, as public buckets need; ``0`` signs with the usual AWS credentials. Unset: unsigned
  for DESI's public bucket on AWS, signed for any other bucket or endpoint.
- ``DESIMIRROR_LOCAL``: a local copy to read instead of the bucket.
- ``DESIMIRROR_DATA``: where ``desimirror jupyter`` mounts the mirror, or finds a copy
  already there (default ``~/desidata``, as in the original image).
- ``DESIMIRROR_RELEASE``: the release, any case (default ``$DESI_RELEASE``, else ``edr``).
- ``DESIMIRROR_CACHE``: the cache directory (default ``$XDG_CACHE_HOME/desimirror``).
- ``DESIMIRROR_CACHE_SIZE``: the bound of the mount's cache (default ``20G``).
- ``DESIMIRROR_STATE``: where running mounts are recorded, PID and log
  (default ``$XDG_STATE_HOME/desimirror``).
- ``DESIMIRROR_NERSC_ROOT``: where ``--nersc-links`` builds the NERSC paths
  (default ``/global/cfs/cdirs/desi``).
- ``DESIMIRROR_FUSE_DEVICE``: the FUSE device checked before mounting (default
  ``/dev/fuse``; tests point it elsewhere to exercise the error path).

``DESI_RELEASE`` is honoured because it is the name the original image (and the Makefile)
used; every other setting has the one ``DESIMIRROR_`` prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from desimirror.errors import UsageError
from desimirror.storage.s3client import DEFAULT_REGION
from desimirror.units import parse_size

DEFAULT_BUCKET = "s3://desidata"
DEFAULT_RELEASE = "edr"
DEFAULT_CACHE_SIZE = "20G"
DEFAULT_NERSC_ROOT = "/global/cfs/cdirs/desi"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class AccessConfig:
    """Resolved access settings; see the module docstring for the variables behind them."""

    bucket: str
    endpoint_url: str | None
    region: str
    no_sign_request: bool
    local: Path | None
    data_dir: Path
    release: str
    cache_dir: Path
    cache_size: int
    state_dir: Path
    nersc_root: Path
    fuse_device: str


def _flag(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"invalid {name}={value!r}: use 1 or 0")


def unsigned_default(bucket: str, endpoint_url: str | None) -> bool:
    """Unsigned for DESI's public bucket on AWS (no credentials needed), else signed."""
    name = bucket.removeprefix("s3://").split("/", 1)[0]
    return endpoint_url is None and name == DEFAULT_BUCKET.removeprefix("s3://")


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def load_config(environ: Mapping[str, str] | None = None) -> AccessConfig:
    """Read the ``DESIMIRROR_*`` variables of ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    home = _home(env)
    cache_base = Path(env.get("XDG_CACHE_HOME") or home / ".cache")
    state_base = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
    local = env.get("DESIMIRROR_LOCAL")
    bucket = env.get("DESIMIRROR_BUCKET") or DEFAULT_BUCKET
    endpoint_url = env.get("DESIMIRROR_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None
    return AccessConfig(
        bucket=bucket,
        endpoint_url=endpoint_url,
        region=env.get("DESIMIRROR_REGION") or DEFAULT_REGION,
        no_sign_request=unsigned_default(bucket, endpoint_url)
        if env.get("DESIMIRROR_NO_SIGN_REQUEST") is None
        else _flag("DESIMIRROR_NO_SIGN_REQUEST", env["DESIMIRROR_NO_SIGN_REQUEST"]),
        local=Path(local).expanduser() if local else None,
        data_dir=Path(env.get("DESIMIRROR_DATA") or home / "desidata").expanduser(),
        release=(env.get("DESIMIRROR_RELEASE") or env.get("DESI_RELEASE") or DEFAULT_RELEASE),
        cache_dir=Path(env.get("DESIMIRROR_CACHE") or cache_base / "desimirror").expanduser(),
        cache_size=parse_size(env.get("DESIMIRROR_CACHE_SIZE") or DEFAULT_CACHE_SIZE),
        state_dir=Path(env.get("DESIMIRROR_STATE") or state_base / "desimirror").expanduser(),
        nersc_root=Path(env.get("DESIMIRROR_NERSC_ROOT") or DEFAULT_NERSC_ROOT),
        fuse_device=env.get("DESIMIRROR_FUSE_DEVICE") or "/dev/fuse",
    )
