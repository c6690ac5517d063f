"""The mount clients' command lines and environments: ``rclone mount`` with its S3 remote
given through ``RCLONE_CONFIG_DESIMIRROR_*`` variables (no config file, no secret on a
command line), and AWS ``mount-s3``."""

from __future__ import annotations

from pathlib import Path

RCLONE_REMOTE = "desimirror"


def rclone_s3_env(
    *, endpoint_url: str | None, region: str, no_sign_request: bool
) -> dict[str, str]:
    """The ``RCLONE_CONFIG_DESIMIRROR_*`` variables that define the S3 remote.

    Signed mode sets ``env_auth`` so rclone takes the credentials from the standard AWS
    variables or profile it inherits; unsigned mode sets none, which rclone treats as
    anonymous access.
    """
    prefix = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
    env = {
        "TYPE": "s3",
        "PROVIDER": "Other" if endpoint_url else "AWS",
        "REGION": region,
        "ENV_AUTH": "false" if no_sign_request else "true",
        "NO_CHECK_BUCKET": "true",
    }
    if endpoint_url:
        env["ENDPOINT"] = endpoint_url
        env["FORCE_PATH_STYLE"] = "true"
    return {prefix + key: value for key, value in env.items()}


def rclone_mount_argv(
    source: str,
    mountpoint: Path,
    *,
    cache_dir: Path | None,
    cache_size: int,
    log_file: Path,
    rclone: str,
    label: str | None = None,
) -> list[str]:
    """``rclone mount`` for a remote (``cache_dir`` set) or a local directory (``None``).

    - ``--vfs-read-chunk-size 512k``: the first ranged GET of a file is 512 KiB, so opening
      a FITS file and reading its header costs about that (at 1M, 1.05 MB with HTTP);
      sequential reads double the chunk each time (no limit), so a whole-file read still
      streams at full speed.
    - ``--buffer-size 2M``: how far the cache downloader reads ahead of the reader. At
      rclone's default (16M) a header read pulls 16 MB from the server (measured through a
      counting proxy); at 2M it pulls 1 MB and a full read is as fast.
    - ``--vfs-cache-poll-interval 2s``: rclone enforces the size bound by a periodic sweep
      that evicts closed files, least recently used first, after a grace of a few seconds
      (files still open cannot be evicted). Between sweeps the cache can hold more than
      the bound: what was read in those seconds. At rclone's default (a minute) that
      overshoot lasts too long; every two seconds it is brief (measured in the tests).
    - ``--use-server-modtime``: a listing gives every attribute, with no HEAD per file.
    """
    argv = [rclone, "mount", source, str(mountpoint), "--read-only", "--config", ""]
    if cache_dir is not None:
        argv += [
            "--vfs-cache-mode",
            "full",
            "--cache-dir",
            str(cache_dir),
            "--vfs-cache-max-size",
            f"{cache_size}B",
            "--vfs-cache-poll-interval",
            "2s",
            "--vfs-read-chunk-size",
            "512k",
            "--buffer-size",
            "2M",
            "--use-server-modtime",
        ]
    else:
        argv += ["--vfs-cache-mode", "off", "--copy-links"]
    # The device name is what mountinfo and `mount` show as the source.
    argv += ["--devname", f"desimirror:{label or source}", "--log-file", str(log_file), "-v"]
    return argv


def mountpoint_s3_argv(
    bucket: str,
    prefix: str,
    mountpoint: Path,
    *,
    endpoint_url: str | None,
    region: str,
    no_sign_request: bool,
    cache_dir: Path,
    cache_size: int,
    mount_s3: str,
) -> list[str]:
    """``mount-s3`` (AWS mountpoint-s3), in the foreground so that we own the process."""
    argv = [
        mount_s3,
        bucket,
        str(mountpoint),
        "--read-only",
        "--foreground",
        "--region",
        region,
        "--cache",
        str(cache_dir),
        "--max-cache-size",
        str(max(1, cache_size // 2**20)),
    ]
    if prefix:
        argv += ["--prefix", prefix.strip("/") + "/"]
    if endpoint_url:
        argv += ["--endpoint-url", endpoint_url, "--force-path-style"]
    if no_sign_request:
        argv.append("--no-sign-request")
    return argv
