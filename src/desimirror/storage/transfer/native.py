"""The native backend: boto3 in a thread pool, no external binary, SHA-256 on every object.

Every object goes up with a SHA-256 that the store checks against the bytes it received,
and every file is read once:

* A file whose SHA-256 the release published is sent with ``ChecksumSHA256`` set to that
  digest, so the store refuses (BadDigest) bytes that differ from what DESI published. The
  bytes are hashed as the client reads them
  (:class:`~desimirror.integrity.checksums.HashingReader`), which tells a refusal apart:
  bytes that differ from the published digest mean the file is corrupt at the source
  (reported with ``reason="corrupt"``, never retried); bytes that match mean damage in
  transit (retried).
* A file without one is sent with ``ChecksumAlgorithm="SHA256"``: botocore computes the
  digest from the bytes it sends (a trailer on HTTPS, so one pass; a header on plain HTTP)
  and the store checks it. The reader's digest must equal the one the store returns; it
  becomes the file's checksum in the manifest.
* A file larger than ``multipart_threshold`` is sent in parts by this module rather than
  s3transfer, because the whole-file SHA-256 must come out of the same single read: each
  part is read at its offset into one of ``multipart_concurrency`` reused buffers, several
  parts of a file at once, and hashed into the whole in order (:class:`_PartReads`), then
  sent with its own checksum (``part_checksum``: SHA-256 here, CRC32C in the crt
  backend), which the store checks; the upload is completed only if the
  whole-file SHA-256 matches the published one; otherwise it is aborted, so a corrupt file
  never becomes an object. The result carries the part size and the parts' checksums,
  from which the object's COMPOSITE checksum (``base64(H(part checksums))-N``) is
  recomputed.
* A store may accept a checksum without checking it and return none (Ceph radosgw 16
  does). Until the store has been seen returning checksums, the same read also computes
  MD5s, and an object the store returned no checksum for is proven by its ETag instead
  (``proof="etag"``: the MD5 of the bytes, or ``md5(part md5s)-N``); an ETag that is an
  MD5 of other bytes fails the file. :meth:`NativeBackend.validation_note` tells the
  uploader how many files the store did not check, so the run says so. For parts, the
  store is asked once, at the first large file (:meth:`NativeBackend._probe_parts`: a
  tiny part with a wrong checksum must be refused and one with the right checksum
  accepted and echoed, in an upload that is then aborted), so that no large file computes
  MD5s against a store known to check its parts. The first parts are read while it asks
  and sent once it has answered.

Concurrency adapts: each file transfer holds a slot of :attr:`NativeBackend.concurrency`,
and every throttling answer botocore sees (also those it retries itself) lowers the limit.
Each request gets only a few attempts (see :mod:`desimirror.storage.s3client`); a file that still
fails is reported with ``retryable`` set from the error class, and the uploader retries it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, as_completed, wait
from typing import Any

from desimirror.integrity.checksums import (
    CHUNK,
    HashingReader,
    b64_of_hex,
    composite_checksum,
    corrupt_text,
    crc32c,
    hash_stream,
    hex_of_b64,
    multipart_etag,
    same_composite,
)
from desimirror.integrity.sourcetree import SourceRefused, open_item, recheck_fd
from desimirror.retrying import retry_call
from desimirror.storage.s3client import (
    describe_error,
    endpoint_url,
    error_code,
    is_throttle,
    make_client,
    one_line,
    strip_etag,
)
from desimirror.storage.throttle import Concurrency
from desimirror.storage.transfer.base import (
    DEFAULT_PART_SIZE,
    S3Target,
    TransferItem,
    TransferResult,
)

_MAX_KEY_BYTES = 1024
DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"})
#: An ETag that is an MD5 (single part) or a multipart MD5 (``...-N``): comparable.
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}(-[0-9]+)?$")


class _Refused(Exception):
    """A file that must not be sent as it is; never worth another attempt."""


class CorruptFile(_Refused):
    """The file's bytes differ from its published SHA-256."""


class ChangedFile(_Refused):
    """The file is not the size it had at the crawl."""


class _Cancelled(Exception):
    """Stopped because the backend closes or another part of the same file failed."""


class NativeBackend:
    """Uploads batches with boto3 from a thread pool; see the module docstring."""

    name = "native"
    sends_checksums = True
    #: Files larger than this are sent in parts (equal to s5cmd's part size, so that a file
    #: gets the same ETag from both backends).
    #: Parts in flight (and in memory) across all large files of the backend at once.
    multipart_concurrency = 8
    #: The checksum each part is sent with and the store checks (S3's name); the whole
    #: file's SHA-256 comes from the same read either way.
    part_checksum = "SHA256"
    #: Attempts per part; a part is in memory, so retrying it is cheap and safe.
    part_attempts = 4
    #: Seconds a part waits for the one before it to be read and hashed.
    part_read_timeout = 600.0
    part_backoff = 0.5
    #: Client settings; read when the client is built, at the first batch.
    max_attempts = 3
    connect_timeout = 10.0
    read_timeout = 120.0

    def __init__(
        self, target: S3Target, workers: int, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        self.target = target
        self.workers = max(1, int(workers))
        self.multipart_threshold = self.multipart_chunksize = part_size
        self.concurrency = Concurrency(self.workers)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._parts: ThreadPoolExecutor | None = None
        self._part_buffers: _Buffers | None = None
        self._probe_lock = threading.Lock()
        self._probe: Future | None = None  # the part-checksum probe, once started
        #: Whether the store returns the checksums it was sent, per kind of upload ("single",
        #: "multipart"): None until seen. While not known to, MD5s are computed on the read,
        #: so that the ETag can prove the content instead.
        self._store_checks: dict[str, bool | None] = {"single": None, "multipart": None}
        self._unvalidated: Counter[str] = Counter()  # proof of files the store did not check

    def _start(self) -> tuple[ThreadPoolExecutor, Any]:
        """The pools and the client, built on first use (cheap constructor)."""
        with self._lock:
            if self._pool is None:
                self._client = make_client(
                    self.target,
                    max_pool_connections=self.workers + self.multipart_concurrency + 2,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_attempts=self.max_attempts,
                )
                self._client.meta.events.register_first("needs-retry.s3", self._observe)
                self._part_buffers = _Buffers(self.multipart_concurrency, self.multipart_chunksize)
                self._parts = ThreadPoolExecutor(
                    self.multipart_concurrency, thread_name_prefix="desimirror-part"
                )
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="desimirror-put")
            return self._pool, self._client

    def _observe(self, response: Any = None, **_: Any) -> None:
        """botocore hook run after every attempt: tell the limiter about throttling."""
        if response is None:
            return None
        http, parsed = response
        code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
        if is_throttle(code, getattr(http, "status_code", None)):
            self.concurrency.throttled()
        return None  # never decide about the retry: botocore's own handler does

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        """Upload ``items`` concurrently; yield one result per item as each finishes."""
        items = list(items)
        if not items:
            return
        pool, client = self._start()
        futures: dict[Future, TransferItem] = {
            pool.submit(self._put, item, client): item for item in items
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

    def _failure(
        self,
        item: TransferItem,
        text: str,
        *,
        retryable: bool,
        reason: str | None = None,
        throttled: bool = False,
    ) -> TransferResult:
        message = one_line(f"PUT {self.target.url(item.key)}: {text}")
        return TransferResult(
            item, ok=False, error=message, retryable=retryable, reason=reason, throttled=throttled
        )

    def _put(self, item: TransferItem, client: Any) -> TransferResult:
        if self._closing.is_set():
            return self._failure(item, "cancelled: the backend was closed", retryable=True)
        with self.concurrency.slot():
            result = self._put_now(item, client)
        self.concurrency.completed(result.ok)
        return result

    def _put_now(self, item: TransferItem, client: Any) -> TransferResult:
        try:
            check_key(item.key)
            if item.size > self.multipart_threshold:  # as s5cmd: one full part is one PUT
                return self._put_large(item, client)
            return self._put_small(item, client)
        except CorruptFile as exc:
            return self._failure(item, str(exc), retryable=False, reason="corrupt")
        except ChangedFile as exc:
            return self._failure(item, str(exc), retryable=False, reason="changed")
        except SourceRefused as exc:
            return self._failure(item, str(exc), retryable=False, reason=exc.reason)
        except _Refused as exc:
            return self._failure(item, str(exc), retryable=False)
        except _Cancelled as exc:
            return self._failure(item, f"cancelled: {exc}", retryable=True)
        except Exception as exc:
            text, retryable = describe_error(exc)
            code, status = error_code(exc)
            throttled = is_throttle(code, status)
            return self._failure(item, text, retryable=retryable, throttled=throttled)

    def extra_args(self, item: TransferItem) -> dict[str, Any]:
        """The checksum parameters of a PutObject: the published digest, else SHA-256."""
        if item.sha256:
            return {"ChecksumSHA256": b64_of_hex(item.sha256)}
        return {"ChecksumAlgorithm": "SHA256"}

    # -- single-part ----------------------------------------------------------------------

    def _put_small(self, item: TransferItem, client: Any) -> TransferResult:
        with open_source(item) as stream:
            check_size(os.fstat(stream.fileno()).st_size, item)
            reader = HashingReader(stream, item.size, md5=self._wants_md5("single"))
            try:
                response = client.put_object(
                    Bucket=self.target.bucket, Key=item.key, Body=reader, **self.extra_args(item)
                )
            except Exception as exc:
                code, _ = error_code(exc)
                if item.sha256 and code in DIGEST_CODES:
                    self._raise_if_corrupt(item, reader.hexdigest())
                raise
            sent = reader.hexdigest()
            recheck_fd(stream.fileno(), item.signature)
            sent_md5 = reader.md5_hexdigest()  # None unless asked for (and before closing)
        stored = hex_of_b64(response.get("ChecksumSHA256") or "")
        if item.sha256 and sent is not None and sent != item.sha256:
            # a store that does not check checksums took bytes that differ from the release
            raise CorruptFile(corrupt_text(sent, item.sha256) + "; the store did not refuse them")
        digest = item.sha256 or sent or stored
        etag = strip_etag(response.get("ETag"))
        proof = self._single_part_proof(
            stored, digest, etag, lambda: sent_md5 or self._reread(item).etag
        )
        return TransferResult(item, ok=True, etag=etag, sha256=digest, proof=proof)

    # -- a store that returns no checksum -------------------------------------------------

    def _wants_md5(self, kind: str) -> bool:
        return self._store_checks[kind] is not True

    def _saw_checksum(self, kind: str) -> None:
        self._store_checks[kind] = True

    def _reread(self, item: TransferItem) -> Any:
        """The file's digests from a second read: only when a store that returned checksums
        stops doing so (the first read computed no MD5 then)."""
        with open_source(item) as stream:
            return hash_stream(stream, max(self.multipart_chunksize, 1))

    def _single_part_proof(
        self, stored: str | None, digest: str | None, etag: str, md5: Callable[[], str]
    ) -> str:
        """How a single-part object is proven: the SHA-256 the store returned, which must
        be the file's, else its ETag against the file's MD5 (``md5()``, asked only then)."""
        if stored is not None and digest is not None and stored != digest:
            raise RuntimeError(f"the store reports SHA-256 {stored}, the file has {digest}")
        if stored is not None:
            self._saw_checksum("single")
            return "sha256"
        return self._etag_proof("single", etag, md5())

    def _etag_proof(self, kind: str, etag: str, expected: str) -> str:
        """The proof of an object whose store returned no checksum (radosgw ignores them):
        its ETag must be the MD5 (or multipart MD5) computed from the same read."""
        if etag == expected:
            proof = "etag"
        elif _MD5_ETAG.match(etag):
            raise RuntimeError(
                f"the store returned no checksum, and its ETag {etag} is not {expected}, "
                "the MD5 of the bytes sent"
            )
        else:
            proof = "none"  # e.g. an encrypted object: its ETag is no MD5
        with self._lock:
            self._store_checks[kind] = self._store_checks[kind] or False
            self._unvalidated[proof] += 1
        return proof

    def validation_note(self) -> dict[str, object] | None:
        """None if the store returned a checksum for every file sent; else what proved the
        files it did not check (see :func:`desimirror.storage.health.validation_text`)."""
        with self._lock:
            counts = dict(self._unvalidated)
        if not counts:
            return None
        return {
            "endpoint": endpoint_url(self.target),
            "files": sum(counts.values()),
            "proven_by": counts,
            "at": time.time(),
        }

    def _raise_if_corrupt(self, item: TransferItem, sent: str | None) -> None:
        """After a digest refusal: is the file itself wrong, or were bytes damaged on the way?

        A file that changed size since the crawl (written to while being sent) is reported
        as changed, not corrupt: a re-crawl settles it.
        """
        with open_source(item) as stream:
            check_size(os.fstat(stream.fileno()).st_size, item)
            actual = sent or hash_stream(stream, self.multipart_chunksize, md5=False).sha256
        if actual != item.sha256:
            raise CorruptFile(corrupt_text(actual, item.sha256))

    # -- multipart ------------------------------------------------------------------------

    def _put_large(self, item: TransferItem, client: Any) -> TransferResult:
        bucket, key, field = self.target.bucket, item.key, f"Checksum{self.part_checksum}"
        probe = self._probe_parts(client, item)
        with open_source(item) as stream:
            check_size(os.fstat(stream.fileno()).st_size, item)
            created = client.create_multipart_upload(
                Bucket=bucket, Key=key, ChecksumAlgorithm=self.part_checksum
            )
            upload_id = created["UploadId"]
            try:
                parts, whole, md5s = self._send_parts(stream, item, client, upload_id, probe)
                # a file rewritten in place while its parts were read (its mtime set back
                # or not) would make a torn object: never completed
                recheck_fd(stream.fileno(), item.signature)
                if item.sha256 and whole != item.sha256:
                    raise CorruptFile(corrupt_text(whole, item.sha256) + "; the upload was aborted")
                done = client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            except BaseException:
                self._abort(client, key, upload_id)
                raise
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        length = int(head.get("ContentLength", -1))
        if length != item.size:
            raise ChangedFile(f"the object has {length} bytes, expected {item.size}: file changed")
        digests = tuple(p[field] for p in parts)
        composite = composite_checksum(digests)
        stored = head.get(field) or done.get(field)
        etag = strip_etag(head.get("ETag") or done.get("ETag"))
        if stored:
            if not same_composite(stored, composite):
                raise RuntimeError(
                    f"the store reports checksum {stored}, the parts give {composite}"
                )
            self._saw_checksum("multipart")
            proof = "composite"
        else:
            with self._lock:  # the probe was wrong: MD5s from the next file's read on
                self._store_checks["multipart"] = False
            expected = multipart_etag(md5s) if md5s else self._reread(item).etag
            proof = self._etag_proof("multipart", etag, expected)
        return TransferResult(
            item,
            ok=True,
            etag=etag,
            sha256=whole,
            part_size=self.multipart_chunksize,
            parts=digests,
            proof=proof,
        )

    def _send_parts(
        self, stream: Any, item: TransferItem, client: Any, upload_id: str, probe: Future
    ) -> tuple[list[dict[str, Any]], str, list[bytes]]:
        """Read the file once, each part into a free buffer by a thread of the parts' pool
        (see :class:`_PartReads`), and send the parts concurrently; (parts, whole SHA-256,
        the parts' MD5s while the store is not known to check part checksums)."""
        parts_pool, buffers = self._parts, self._part_buffers
        assert parts_pool is not None
        assert buffers is not None
        reads = _PartReads(
            stream.fileno(), item.size, self.multipart_chunksize, timeout=self.part_read_timeout
        )
        futures: list[tuple[Future, bytearray]] = []
        try:
            for number in range(1, reads.count + 1):
                if reads.failed.is_set():
                    break
                if self._closing.is_set():
                    raise _Cancelled("the backend was closed")
                buffer = buffers.take()
                try:
                    future = parts_pool.submit(
                        self._send_part, client, item, upload_id, reads, number, buffer, probe
                    )
                except BaseException:  # the pool was shut down: the backend closes
                    buffers.give(buffer)
                    raise
                futures.append((future, buffer))
            wait([f for f, _ in futures])
            errors = [f.exception() for f, _ in futures if f.exception() is not None]
            if errors:  # the root cause, not the parts that stopped because of it
                raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
            parts = [future.result() for future, _ in futures]
        except BaseException:
            reads.fail()
            for future, buffer in futures:
                if future.cancel():  # never started: its buffer is still taken
                    buffers.give(buffer)
            raise
        check_size(os.fstat(stream.fileno()).st_size, item)  # grown while read: not this file
        return parts, reads.whole.hexdigest(), reads.md5_list()

    def _send_part(
        self,
        client: Any,
        item: TransferItem,
        upload_id: str,
        reads: _PartReads,
        number: int,
        buffer: bytearray,
        probe: Future,
    ) -> dict[str, Any]:
        """Read, checksum and send one part (retrying transient failures); gives its
        buffer back at the end. A part is read while the probe may still be asking the
        store whether it checks part checksums, and sent once it has answered: its MD5,
        for the ETag's proof, is computed from the buffer only if the store does not."""
        assert self._part_buffers is not None
        field = f"Checksum{self.part_checksum}"

        def send() -> Any:
            if reads.failed.is_set() or self._closing.is_set():
                raise _Cancelled("another part of the file failed")
            return self._upload_part(client, item, upload_id, number, data, digest)

        try:
            try:
                data = reads.read(number, buffer)
                digest = self._part_digest(data)
                with contextlib.suppress(TimeoutError):  # unanswered: prove by the ETag
                    probe.result(self.part_read_timeout)
                if self._wants_md5("multipart"):
                    reads.keep_md5(number, data)
                b64 = base64.b64encode(digest).decode("ascii")
                response = retry_call(
                    send,
                    attempts=self.part_attempts,
                    base=self.part_backoff,
                    retry_on=lambda exc: not isinstance(exc, _Cancelled) and describe_error(exc)[1],
                )
            except _Cancelled:
                raise
            except BaseException:
                reads.fail()  # stop reading further parts of this file
                raise
            returned = response.get(field)
            if returned and returned != b64:
                raise RuntimeError(f"part {number}: the store reports checksum {returned}")
            return {"PartNumber": number, "ETag": response["ETag"], field: b64}
        finally:
            self._part_buffers.give(buffer)

    def _part_digest(self, data: memoryview) -> bytes:
        """The raw checksum of one part, in ``part_checksum``."""
        if self.part_checksum == "CRC32C":
            return crc32c(data)
        return hashlib.sha256(data).digest()

    def _probe_parts(self, client: Any, item: TransferItem) -> Future:
        """Once per backend, at its first multipart upload: whether the store checks part
        checksums (then no large file computes MD5s for an ETag fallback). Asked with a
        few bytes at the item's own key (what the run may write), in an upload that is
        aborted, so nothing is stored. The answer (a future) comes from a thread of its
        own, while the first parts are read: four requests in a row, which on a new bucket
        of SeaweedFS took 0.23 s here, no longer delay the first part's read."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = Future()
                if self._store_checks["multipart"] is not None:
                    self._probe.set_result(None)
                else:
                    threading.Thread(
                        target=self._ask_store,
                        args=(client, item, self._probe),
                        name="desimirror-probe",
                        daemon=True,  # bounded by the client's timeouts; never joined
                    ).start()
            return self._probe

    def _ask_store(self, client: Any, item: TransferItem, answer: Future) -> None:
        checks = False
        try:
            checks = self._store_checks_parts(client, item)
        except Exception:  # a failing store fails the real upload, with its own error
            pass
        finally:  # answered whatever happens: parts waiting for it never wait in vain
            if checks:
                with self._lock:
                    self._store_checks["multipart"] = True
            answer.set_result(checks)

    def _store_checks_parts(self, client: Any, item: TransferItem) -> bool:
        """A part with a wrong checksum refused, the same part with its right one taken and
        its checksum returned: the store checks part checksums."""
        probe = memoryview(b"desimirror asks: does this store check part checksums?")
        right, wrong = self._part_digest(probe), self._part_digest(probe[1:])
        key, field = item.key, f"Checksum{self.part_checksum}"
        bucket = self.target.bucket
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm=self.part_checksum
        )["UploadId"]
        try:
            try:
                self._upload_part(client, item, upload_id, 1, probe, wrong)
                return False  # took bytes that do not match their checksum
            except Exception as exc:
                if error_code(exc)[0] not in DIGEST_CODES:
                    return False
            answer = self._upload_part(client, item, upload_id, 1, probe, right)
            return answer.get(field) == base64.b64encode(right).decode("ascii")
        finally:
            self._abort(client, key, upload_id)

    def _upload_part(
        self,
        client: Any,
        item: TransferItem,
        upload_id: str,
        number: int,
        data: memoryview,
        digest: bytes,
    ) -> dict[str, Any]:
        """One UploadPart with its checksum (``digest``, raw, in ``part_checksum``); the
        response as boto3 gives it (``ETag``, ``Checksum<algorithm>``). The one call another
        engine replaces."""
        checksum = {f"Checksum{self.part_checksum}": base64.b64encode(digest).decode("ascii")}
        return client.upload_part(
            Bucket=self.target.bucket,
            Key=item.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(data),  # botocore sends bytes; the buffer is reused after the part
            **checksum,
        )

    def _abort(self, client: Any, key: str, upload_id: str) -> None:
        """Best effort: an aborted upload stores nothing (a bucket lifecycle rule is the net)."""
        with contextlib.suppress(Exception):  # the failure being handled matters more
            client.abort_multipart_upload(Bucket=self.target.bucket, Key=key, UploadId=upload_id)

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """Nothing to do ahead: files are read when they are sent."""

    def close(self) -> None:
        """Drop queued uploads, stop multipart uploads in flight, release connections."""
        self._closing.set()
        with self._lock:
            pool, parts, client = self._pool, self._parts, self._client
            self._pool = self._parts = self._client = None
        for executor in (pool, parts):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        for executor in (pool, parts):
            if executor is not None:
                executor.shutdown(wait=True)
        if client is not None:
            client.close()
        self._closing.clear()


def open_source(item: TransferItem) -> Any:
    """The item's file as a buffered stream, opened beneath the root and identity-checked."""
    fd = open_item(item.root, item.rel, item.source, item.signature)
    return os.fdopen(fd, "rb", buffering=CHUNK)


class _PartReads:
    """One large file's parts, read at their offsets by the parts' threads, several at a
    time (a network filesystem serves one sequential stream slowly; s5cmd reads five parts
    of a file at once), each byte once; the whole file's SHA-256 is updated with each part
    in order, from the buffer it was read into, by the thread that read it."""

    def __init__(self, fd: int, size: int, part_size: int, *, timeout: float) -> None:
        self.fd, self.size, self.part_size, self.timeout = fd, size, part_size, timeout
        self.count = max(1, -(-size // part_size))
        self.whole = hashlib.sha256()
        self.failed = threading.Event()
        self._md5s: dict[int, bytes] = {}
        self._turn = 1  # the part whose bytes the whole-file hash takes next
        self._changed = threading.Condition()

    def read(self, number: int, buffer: bytearray) -> memoryview:
        """Part ``number`` (from 1) read into ``buffer``, and hashed into the whole."""
        if self.failed.is_set():
            raise _Cancelled("another part of the file failed")
        offset = (number - 1) * self.part_size
        size = min(self.part_size, self.size - offset)
        view, got = memoryview(buffer)[:size], 0
        while got < size:
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        if got != size:
            raise ChangedFile(f"part {number} has {got} bytes, expected {size}: file changed")
        self._hash_in_turn(number, view)
        return view

    def _hash_in_turn(self, number: int, view: memoryview) -> None:
        # Parts are submitted in order to a FIFO pool, so the one before is running or
        # done: waiting for it never waits for a part that waits for this one.
        with self._changed:
            turn = self._changed.wait_for(
                lambda: self._turn == number or self.failed.is_set(), self.timeout
            )
            if self.failed.is_set():
                raise _Cancelled("another part of the file failed")
            if not turn:
                raise TimeoutError(f"part {number - 1} was not read in {self.timeout:.0f} s")
        self.whole.update(view)  # only the part whose turn it is: no lock needed
        with self._changed:
            self._turn += 1
            self._changed.notify_all()

    def fail(self) -> None:
        self.failed.set()
        with self._changed:
            self._changed.notify_all()

    def keep_md5(self, number: int, view: memoryview) -> None:
        """The MD5 of part ``number``, for the multipart ETag (one dict item per thread)."""
        self._md5s[number] = hashlib.md5(view).digest()

    def md5_list(self) -> list[bytes]:
        """Every part's MD5 in order, or [] unless each part kept one (the store was seen
        checking part checksums for some of them): then the ETag needs a second read."""
        if len(self._md5s) != self.count:
            return []
        return [self._md5s[n] for n in range(1, self.count + 1)]


class _Buffers:
    """Part-sized buffers, at most ``count``, reused: a large file's parts are read into
    memory that is already mapped (a fresh 50 MiB allocation costs page faults on every
    part), and taking one is the wait for a part slot."""

    def __init__(self, count: int, size: int) -> None:
        self.size, self._left = size, count
        self._free: list[bytearray] = []
        self._changed = threading.Condition()

    def take(self) -> bytearray:
        with self._changed:
            self._changed.wait_for(lambda: self._free or self._left > 0)
            if self._free:
                return self._free.pop()
            self._left -= 1
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        with self._changed:
            self._free.append(buffer)
            self._changed.notify()


def check_key(key: str) -> None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _Refused("the key is not valid UTF-8") from None
    if not key or key.endswith("/"):
        # many S3 stores (SeaweedFS among them) keep such keys as empty directory markers
        raise _Refused("a key ending in '/' names a directory, not a file")
    if size > _MAX_KEY_BYTES:
        raise _Refused(
            f"the key is {size} bytes long; S3 allows {_MAX_KEY_BYTES} (KeyTooLongError)"
        )


def check_size(actual: int, item: TransferItem) -> None:
    if actual != item.size:
        raise ChangedFile(f"the file has {actual} bytes, expected {item.size}: file changed")
