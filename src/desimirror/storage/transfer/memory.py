"""The reference backend: objects kept in a dict, every rule of the contract, no network.

It states the contract (:mod:`desimirror.storage.transfer.base`) in code as plainly as it
can be stated, and the contract suite (``tests/test_transfer_contract.py``) runs it first,
beside the real backends: one result per item, in the order transfers finish; a file that
cannot be read, changed since the crawl, or leads out of the tree fails alone with its
reason; bytes that differ from the published SHA-256 are refused as corrupt and never
stored (as a store that checks ``ChecksumSHA256`` refuses them); a generator closed early
stops the batch, and what was reported sent is stored whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from desimirror.integrity.checksums import corrupt_text
from desimirror.integrity.sourcetree import SourceRefused, open_item, recheck_fd
from desimirror.storage.throttle import Concurrency
from desimirror.storage.transfer.base import (
    DEFAULT_PART_SIZE,
    S3Target,
    TransferItem,
    TransferResult,
)


class MemoryBackend:
    """Stores each object's bytes in :attr:`objects`, keyed by object key."""

    name = "memory"
    sends_checksums = True

    def __init__(
        self, target: S3Target, workers: int = 1, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        self.target = target
        self.part_size = part_size
        self.concurrency = Concurrency(max(1, int(workers)))
        self.objects: dict[str, bytes] = {}

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        for item in items:
            yield self._put(item)

    def _put(self, item: TransferItem) -> TransferResult:
        try:
            data = self._read(item)
        except SourceRefused as exc:
            return self._failed(item, str(exc), reason=exc.reason)
        except OSError as exc:
            return self._failed(item, f"cannot read: {exc.strerror or exc}", reason="changed")
        if len(data) != item.size:
            text = f"read {len(data)} bytes, expected {item.size}: file changed"
            return self._failed(item, text, reason="changed")
        sha256 = hashlib.sha256(data).hexdigest()
        if item.sha256 and sha256 != item.sha256:
            return self._failed(item, corrupt_text(sha256, item.sha256), reason="corrupt")
        self.objects[item.key] = data
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return TransferResult(item, ok=True, etag=etag, sha256=sha256, proof="sha256")

    def _read(self, item: TransferItem) -> bytes:
        fd = open_item(item.root, item.rel, item.source, item.signature)
        with os.fdopen(fd, "rb") as stream:
            data = stream.read()
            recheck_fd(stream.fileno(), item.signature)
        return data

    def _failed(self, item: TransferItem, text: str, *, reason: str) -> TransferResult:
        error = f"PUT {self.target.url(item.key)}: {text}"
        return TransferResult(item, ok=False, error=error, retryable=False, reason=reason)

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """Nothing to do ahead: files are read when they are sent."""

    def validation_note(self) -> dict[str, object] | None:
        """None: this store checks every SHA-256 it is sent."""
        return None

    def close(self) -> None:
        """Nothing to release: no client, pool or child process."""
