"""Byte sizes as people write them (``10GB``, ``1TiB``, ``500000``) and as we print them."""

from __future__ import annotations

import re

from desimirror.errors import UsageError

#: Binary units, for part sizes and buffers (sizes given by users go through parse_size).
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "P": 1000**5,
    "PB": 1000**5,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "PIB": 1024**5,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse a byte count; decimal units are SI (``1TB`` = 10**12, as the seed used)."""
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"invalid size {text!r}: must not be negative")
        return text
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise UsageError(
            f"invalid size {text!r}: use a number with an optional unit, e.g. 10GB, 1TiB, 5000000"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """Human-readable SI bytes, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
