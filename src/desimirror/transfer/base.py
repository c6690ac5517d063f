"""The one small interface every transfer backend implements, and the types it speaks.

A backend receives a batch of :class:`TransferItem` and yields exactly one
:class:`TransferResult` per item, in any order, as transfers finish. ``ok=True`` is a
promise that the object now exists under ``key`` with ``size`` bytes; everything else
(a timeout, a refused request, a line the backend could not parse) is ``ok=False`` with a
message that names the key. The backend never retries on its own behalf beyond what its
client does per request: the uploader owns retries per file, with backoff.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class S3Target:
    """Where objects go. Credentials are not here: they come from the standard AWS chain."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    no_sign_request: bool = False

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class TransferItem:
    source: str  # absolute local path to read
    key: str  # object key, without the bucket
    size: int  # expected size in bytes


@dataclass(frozen=True)
class TransferResult:
    item: TransferItem
    ok: bool
    etag: str | None = None
    error: str | None = None
    retryable: bool = field(default=True)


class TransferBackend(Protocol):
    """Sends batches of files to one :class:`S3Target`."""

    name: str

    def put_batch(self, items: Sequence[TransferItem]) -> Iterator[TransferResult]:
        """Upload ``items``; yield one result per item as each finishes."""
        ...

    def close(self) -> None:
        """Release clients, pools and child processes."""
        ...
