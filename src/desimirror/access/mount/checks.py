"""What a user can get wrong before a mount, each checked with a one-line message: no
``/dev/fuse`` (or no right to it), a mount point that is not an empty directory or is
already in use."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from desimirror.access.mount.mountinfo import canonical, find_mount
from desimirror.errors import UsageError

NO_FUSE_HINT = (
    "without FUSE, read the data from Python with desimirror.access.data (fsspec, no mount needed)"
)


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
