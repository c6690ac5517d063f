"""How counts and names appear in what we print: one way, in every command.

A count goes with the right form of its noun ("1 file", "2 files"), and a path or key
goes on one line even when its name holds a newline or another control character
(quoted as Python would, ``'a\\nb'``), so one-line errors and status lines stay one line.
"""

from __future__ import annotations

_IRREGULAR = {"batch": "batches", "entry": "entries", "directory": "directories"}


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``1,234 batches``: the count with thousands separators."""
    if count == 1:
        return f"1 {noun}"
    if many is None:
        last = noun.rsplit(" ", 1)[-1]
        many = noun[: len(noun) - len(last)] + _IRREGULAR.get(last, last + "s")
    return f"{count:,} {many}"


def shown(name: str) -> str:
    """A path or key as printed on one line: as it is when printable, else quoted."""
    if not name:
        return "."
    return name if name.isprintable() else repr(name)
