"""The native backend: boto3 and s3transfer in a thread pool, no external binary.

It needs nothing but the Python environment, and it is where per-object options live that
s5cmd cannot send (S3 additional checksums are planned: see :meth:`NativeBackend.extra_args`).

Small files go up with one ``PutObject`` each, which returns the ETag. Files larger than
``multipart_threshold`` go through one shared s3transfer ``TransferManager`` (so all large
files together keep at most ``multipart_concurrency`` parts in flight), then a
``HeadObject`` confirms the size and fetches the ETag. Threshold and part size equal
s5cmd's part size, so both backends produce the same ETag for the same file.

Each request gets only a few attempts (see :mod:`desimirror.s3client`); a file that still
fails is reported with ``retryable`` set from the error class, and the uploader retries it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed
from typing import Any

from desimirror.s3client import describe_error, make_client, one_line, strip_etag
from desimirror.transfer.base import S3Target, TransferItem, TransferResult

MiB = 1 << 20
_MAX_KEY_BYTES = 1024


class _Refused(Exception):
    """A file that must not be sent as it is; never worth another attempt."""


class NativeBackend:
    """Uploads batches with boto3 from a thread pool; see the module docstring."""

    name = "native"
    #: Files larger than this are sent in parts (equal to s5cmd's part size, so that a file
    #: gets the same ETag from both backends).
    multipart_threshold = 50 * MiB
    multipart_chunksize = 50 * MiB
    #: Parts in flight across all large files of the backend at once.
    multipart_concurrency = 8
    #: Client settings; read when the client is built, at the first batch.
    max_attempts = 3
    connect_timeout = 10.0
    read_timeout = 120.0

    def __init__(self, target: S3Target, workers: int) -> None:
        self.target = target
        self.workers = max(1, int(workers))
        self._lock = threading.Lock()
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._manager: Any = None

    def _start(self) -> tuple[ThreadPoolExecutor, Any, Any]:
        """The pool, client and transfer manager, built on first use (cheap constructor)."""
        with self._lock:
            if self._pool is None:
                from boto3.s3.transfer import TransferConfig, TransferManager

                self._client = make_client(
                    self.target,
                    max_pool_connections=self.workers + self.multipart_concurrency + 2,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_attempts=self.max_attempts,
                )
                config = TransferConfig(
                    multipart_threshold=self.multipart_threshold,
                    multipart_chunksize=self.multipart_chunksize,
                    max_concurrency=self.multipart_concurrency,
                    use_threads=True,
                )
                self._manager = TransferManager(self._client, config)
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="desimirror-put")
            return self._pool, self._client, self._manager

    def put_batch(self, items: Sequence[TransferItem]) -> Iterator[TransferResult]:
        """Upload ``items`` concurrently; yield one result per item as each finishes."""
        items = list(items)
        if not items:
            return
        pool, client, manager = self._start()
        futures: dict[Future, TransferItem] = {
            pool.submit(self._put, item, client, manager): item for item in items
        }
        try:
            for future in as_completed(futures):
                yield self._outcome(future, futures[future])
        finally:
            for future in futures:  # a generator closed early: drop what has not started
                future.cancel()

    def _outcome(self, future: Future, item: TransferItem) -> TransferResult:
        try:
            return future.result()
        except CancelledError:
            return self._failure(item, "cancelled: the backend was closed", retryable=True)
        except Exception as exc:  # _put catches everything; this is the last line of defence
            text, retryable = describe_error(exc)
            return self._failure(item, text, retryable=retryable)

    def _failure(self, item: TransferItem, text: str, *, retryable: bool) -> TransferResult:
        message = one_line(f"PUT {self.target.url(item.key)}: {text}")
        return TransferResult(item, ok=False, error=message, retryable=retryable)

    def _put(self, item: TransferItem, client: Any, manager: Any) -> TransferResult:
        try:
            _check_key(item.key)
            if item.size > self.multipart_threshold:  # as s5cmd: one full part is one PUT
                etag = self._put_large(item, client, manager)
            else:
                etag = self._put_small(item, client)
        except _Refused as exc:
            return self._failure(item, str(exc), retryable=False)
        except Exception as exc:
            text, retryable = describe_error(exc)
            return self._failure(item, text, retryable=retryable)
        return TransferResult(item, ok=True, etag=etag)

    def extra_args(self, item: TransferItem) -> dict[str, Any]:  # noqa: ARG002 - planned use
        """Per-object request parameters; the place where ``ChecksumSHA256`` will go."""
        return {}

    def _put_small(self, item: TransferItem, client: Any) -> str:
        with open(item.source, "rb") as body:
            _check_size(os.fstat(body.fileno()).st_size, item)
            response = client.put_object(
                Bucket=self.target.bucket, Key=item.key, Body=body, **self.extra_args(item)
            )
        return strip_etag(response.get("ETag"))

    def _put_large(self, item: TransferItem, client: Any, manager: Any) -> str:
        _check_size(os.stat(item.source).st_size, item)
        future = manager.upload(
            item.source, self.target.bucket, item.key, extra_args=self.extra_args(item)
        )
        future.result()
        head = client.head_object(Bucket=self.target.bucket, Key=item.key)
        length = int(head.get("ContentLength", -1))
        if length != item.size:
            raise _Refused(f"the object has {length} bytes, expected {item.size}: file changed")
        return strip_etag(head.get("ETag"))

    def close(self) -> None:
        """Drop queued uploads, cancel multipart uploads in flight, release connections."""
        with self._lock:
            pool, manager, client = self._pool, self._manager, self._client
            self._pool = self._manager = self._client = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if manager is not None:
            manager.shutdown(cancel=True, cancel_msg="the backend was closed")
        if pool is not None:
            pool.shutdown(wait=True)
        if client is not None:
            client.close()


def _check_key(key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Refused("the key is not valid UTF-8") from None
    if not key or key.endswith("/"):
        # many S3 stores (SeaweedFS among them) keep such keys as empty directory markers
        raise _Refused("a key ending in '/' names a directory, not a file")
    if size > _MAX_KEY_BYTES:
        raise _Refused(f"the key is {size} bytes long; S3 allows {_MAX_KEY_BYTES}")


def _check_size(actual: int, item: TransferItem) -> None:
    if actual != item.size:
        raise _Refused(f"the file has {actual} bytes, expected {item.size}: file changed")
