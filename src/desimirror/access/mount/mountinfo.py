"""What is mounted where, read from ``/proc/self/mountinfo``: never by a ``stat`` of the
mount point, which hangs or fails on a FUSE mount whose server died."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
