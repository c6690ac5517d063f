"""The one small interface every transfer backend implements, and the types it speaks.

A backend receives a batch of :class:`TransferItem` and yields exactly one
:class:`TransferResult` per item, in any order, as transfers finish. ``ok=True`` is a
promise that the object now exists under ``key`` with ``size`` bytes; everything else
(a timeout, a refused request, a line the backend could not parse) is ``ok=False`` with a
message that names the key. The backend never retries on its own behalf beyond what its
client does per request: the uploader owns retries per file, with backoff.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from desimirror.integrity.sourcetree import Signature
from desimirror.storage.throttle import Concurrency
from desimirror.units import MiB

#: Files larger than this go in parts of this size, by either backend, so that a file gets
#: the same (multipart) ETag whichever sent it.
DEFAULT_PART_SIZE = 50 * MiB


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
    """One file to send. ``root``, ``rel`` and ``signature`` (from the crawl) let a backend
    that reads the file itself open it beneath the root and check it is the crawled file
    (:func:`desimirror.integrity.sourcetree.open_item`); ``source`` is for programs that
    read by path."""

    source: str  # absolute local path to read
    key: str  # object key, without the bucket
    size: int  # expected size in bytes
    sha256: str | None = None  # hex SHA-256 the bytes must have (published), if known
    root: str | None = None  # the crawled root ...
    rel: str | None = None  # ... and the path below it that is read
    signature: Signature | None = None  # the file as the crawl saw it


@dataclass(frozen=True)
class TransferResult:
    """The outcome for one item.

    On success, backends that send checksums also say what the object holds: ``sha256``
    (hex, whole file), and for a multipart object ``part_size`` and the parts' base64
    SHA-256s, and ``proof`` (see :class:`desimirror.state.manifest.UploadRecord`). On failure,
    ``reason`` is ``"corrupt"`` when the file's bytes do not match ``item.sha256`` (never
    worth a retry), and ``throttled`` marks a refusal by a store asking to slow down.
    """

    item: TransferItem
    ok: bool
    etag: str | None = None
    error: str | None = None
    retryable: bool = field(default=True)
    sha256: str | None = None
    part_size: int | None = None
    parts: tuple[str, ...] = ()
    proof: str | None = None
    reason: str | None = None
    throttled: bool = False
    worker: str | None = None  # where it was sent from, when not from this process


class TransferBackend(Protocol):
    """Sends batches of files to one :class:`S3Target`.

    ``sends_checksums`` says whether the backend sends SHA-256 with every object and reports
    it (native); if not (s5cmd), the uploader hashes files itself and compares ETags.
    ``concurrency`` is the backend's adaptive limit on transfers in flight (the uploader
    reports it). A backend is built as ``Backend(target, workers, part_size=...)``: every
    option reaches it through its constructor (see :func:`desimirror.storage.transfer.get`).
    """

    name: str
    sends_checksums: bool
    concurrency: Concurrency

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        """Upload ``items``; yield one result per item as each finishes. ``items`` may be
        a generator that produces them slowly (the uploader hashes files on the way)."""
        ...

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """A hint: these items come in a later batch (a backend that reads ahead starts on
        them; the others ignore it)."""
        ...

    def validation_note(self) -> dict[str, object] | None:
        """None if the store checked a checksum for every file sent so far; else what
        proved the ones it did not (see :func:`desimirror.storage.health.validation_text`)."""
        ...

    def close(self) -> None:
        """Release clients, pools and child processes."""
        ...
