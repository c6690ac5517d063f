"""Records of running mounts (PID, mount point, log) in ``$DESIMIRROR_STATE/mounts/``, so
that ``desimirror unmount`` from any shell finds the client it must stop."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from desimirror.access.mount.mountinfo import canonical


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


def record_path(state_dir: Path, mountpoint: str) -> Path:
    digest = hashlib.sha256(mountpoint.encode()).hexdigest()[:16]
    return state_dir / "mounts" / f"{digest}.json"


def load_record(state_dir: Path, mountpoint: str | Path) -> MountRecord | None:
    """The record of the mount at ``mountpoint``, if this tool made one."""
    path = record_path(state_dir, canonical(mountpoint))
    try:
        return MountRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_record(state_dir: Path, record: MountRecord) -> None:
    path = record_path(state_dir, record.mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)


def drop_record(state_dir: Path, mountpoint: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(state_dir, mountpoint).unlink()
