"""The crt backend (the default): each file read once, proven by the store, sent by the AWS
Common Runtime's native threads.

It is :class:`~desimirror.storage.transfer.native.NativeBackend` (the same proofs, the same
multipart protocol, the same handling of stores that validate nothing) with the bytes sent
by ``awscrt`` instead of botocore, because per file botocore costs more client CPU than
s5cmd does and on a transfer node the client's CPU is what scales. Per file:

* A file up to the part size is read once into memory, beneath the root
  (:func:`~desimirror.integrity.sourcetree.open_item`) and re-checked against the crawl after
  its last byte. It is sent from that buffer with ``x-amz-checksum-sha256``: the published
  SHA-256 where the release has one (nothing is hashed here, the store refuses other
  bytes), else the SHA-256 of the buffer. A store that refuses it (BadDigest) gets the
  buffer hashed to tell a corrupt file (never retried) from damage on the way.
* Once the store has returned a checksum (it validates them), a file with a published
  SHA-256 does not pass through Python at all: the runtime reads it from the descriptor
  opened beneath the root (``/proc/self/fd/N``, the same open file, never the path again),
  and the descriptor is checked against the crawl again after the send.
* SigV4 over plain HTTP signs the payload's SHA-256, which botocore computes by hashing
  the body again. Here the payload's SHA-256 is the checksum already known, so it is
  given to the signer (``x-amz-content-sha256``) and the body is never hashed for signing;
  over HTTPS too, the request stays fully signed.
* A larger file goes in parts as in the native backend (each byte read once, several
  parts at a time, into reused buffers; the whole file's SHA-256 from that read), but each
  part is sent with its CRC32C (``x-amz-checksum-crc32c``, computed natively by the
  runtime's library at several GB/s), which the store checks, instead of a second SHA-256
  of its bytes; the payload is signed as ``UNSIGNED-PAYLOAD``, so nothing hashes the part
  for the signature either (the checksum header is signed). The object's composite
  checksum is then a CRC32C one, recomputed from the recorded part CRCs by ``verify
  --checksum``. Only the UploadPart requests go through the runtime, which copies each
  part from its buffer into its own in one call (:class:`_ViewStream`; ``io.BytesIO``
  would copy it once more); the create/complete/abort/HEAD calls of each file stay
  boto3's (one each per large file).
* While the store is not known to validate checksums (it has not yet returned one, or for
  parts, the probe before the first large file did not show it refusing a wrong one),
  the buffer's SHA-256 and MD5 are computed too, so a store that ignores checksums (Ceph
  radosgw 16) still ends with every object proven, by its ETag (``proof="etag"``).

SeaweedFS accepts checksums in the HEADER location, which is where they go here; the
runtime's TRAILER location (aws-chunked) is refused by it with 403 InvalidAccessKeyId.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from desimirror.integrity.checksums import corrupt_text, hash_stream, hex_of_b64
from desimirror.integrity.sourcetree import open_item, recheck_fd
from desimirror.storage.s3client import DEFAULT_REGION, aws_session, endpoint_url, strip_etag
from desimirror.storage.transfer.base import (
    DEFAULT_PART_SIZE,
    S3Target,
    TransferItem,
    TransferResult,
)
from desimirror.storage.transfer.native import (
    DIGEST_CODES,
    CorruptFile,
    NativeBackend,
    check_size,
)

_XML_FIELD = "<{0}>([^<]*)</{0}>"
#: Replies the runtime retries itself and, once it gives up, reports without their status
#: or body: their S3 error, so that they are described and classified (a SlowDown is
#: throttling) as boto3's are.
_RETRIED_REPLIES = {
    "AWS_ERROR_S3_INTERNAL_ERROR": (500, "InternalError"),
    "AWS_ERROR_S3_SLOW_DOWN": (503, "SlowDown"),
}
#: The runtime reads a file by path; this one names an open descriptor (Linux).
_PROC_FD = os.path.isdir("/proc/self/fd")


class CrtBackend(NativeBackend):
    """boto3's proofs and multipart protocol, awscrt's sending; see the module docstring."""

    name = "crt"
    part_checksum = "CRC32C"
    #: Parts in flight across all large files. Four, not the native backend's eight: with
    #: eight, the same three large files (403 MB, through FUSE, 6 runs each, interleaved
    #: with bare s5cmd) took 3.7 to 4.5 s on 0.9 to 1.9 s of system time, and the server
    #: spent more too; with four, 3.3 to 3.5 s on 0.45 s (s5cmd: 3.3 to 3.6 s). Each part
    #: in flight is a 50 MiB buffer here and another in the runtime; more of them is more
    #: memory to fault in and more for the server to hold, not more throughput.
    multipart_concurrency = 4
    #: Bytes of small files held in memory at once across all transfers (one file always
    #: fits): 64 transfers of files near the part size would otherwise hold gigabytes.
    buffer_budget = 1 << 30

    def __init__(
        self, target: S3Target, workers: int, *, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        super().__init__(target, workers, part_size=part_size)
        self._sender: _CrtSender | None = None
        self._sender_lock = threading.Lock()
        self._buffers = _Budget(self.buffer_budget)

    def _crt(self) -> _CrtSender:
        with self._sender_lock:
            if self._sender is None:
                connections = self.workers + self.multipart_concurrency
                self._sender = _CrtSender(self.target, connections, self.read_timeout)
            return self._sender

    # -- single-part ----------------------------------------------------------------------

    def _put_small(self, item: TransferItem, client: Any) -> TransferResult:  # noqa: ARG002
        if item.sha256 and self._store_checks["single"] and _PROC_FD:
            return self._put_published(item)
        with self._buffers.hold(item.size):
            return self._put_buffered(item)

    def _put_buffered(self, item: TransferItem) -> TransferResult:
        data = self._read_once(item)
        checks = self._store_checks["single"]
        # hash here only what the store will not prove: no published digest, or a store
        # not (yet) seen validating one
        local = hashlib.sha256(data).hexdigest() if not item.sha256 or not checks else None
        if item.sha256 and local is not None and local != item.sha256:
            raise CorruptFile(corrupt_text(local, item.sha256))  # never sent
        digest = item.sha256 or local
        assert digest is not None
        md5 = hashlib.md5(data).hexdigest() if self._wants_md5("single") else None
        try:
            headers = self._crt().put(item.key, "", data, sha256_header(digest), digest)
        except Exception as exc:
            self._raise_if_refused_as_corrupt(exc, item, data)
            raise
        stored = hex_of_b64(headers.get("x-amz-checksum-sha256", ""))
        etag = strip_etag(headers.get("etag"))
        proof = self._single_part_proof(
            stored, digest, etag, lambda: md5 or hashlib.md5(data).hexdigest()
        )
        return TransferResult(item, ok=True, etag=etag, sha256=digest, proof=proof)

    def _put_published(self, item: TransferItem) -> TransferResult:
        """A file with a published SHA-256 to a store that validates it: the runtime reads
        the opened file itself (through ``/proc/self/fd``, the same open file, never the
        path again) and sends it with that digest; no byte passes through Python."""
        assert item.sha256 is not None
        fd = open_item(item.root, item.rel, item.source, item.signature)
        try:
            check_size(os.fstat(fd).st_size, item)
            try:
                headers = self._crt().put(
                    item.key,
                    "",
                    None,
                    sha256_header(item.sha256),
                    item.sha256,
                    send_path=f"/proc/self/fd/{fd}",
                    size=item.size,
                )
            except Exception as exc:
                code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
                if code in DIGEST_CODES:  # corrupt, or damaged on the way: read it to tell
                    os.lseek(fd, 0, os.SEEK_SET)
                    stream = os.fdopen(os.dup(fd), "rb")
                    with stream:
                        actual = hash_stream(stream, self.multipart_chunksize, md5=False).sha256
                    if actual != item.sha256:
                        raise CorruptFile(corrupt_text(actual, item.sha256)) from None
                raise
            recheck_fd(fd, item.signature)  # modified while the runtime read it: not proven
        finally:
            os.close(fd)
        stored = hex_of_b64(headers.get("x-amz-checksum-sha256", ""))
        if stored != item.sha256:
            raise RuntimeError(f"the store reports SHA-256 {stored}, the file has {item.sha256}")
        etag = strip_etag(headers.get("etag"))
        return TransferResult(item, ok=True, etag=etag, sha256=item.sha256, proof="sha256")

    def _read_once(self, item: TransferItem) -> bytes:
        """The whole file, read once beneath the root, the same file after its last byte."""
        fd = open_item(item.root, item.rel, item.source, item.signature)
        try:
            check_size(os.fstat(fd).st_size, item)
            buffer = bytearray(item.size)
            view, got = memoryview(buffer), 0
            while got < item.size:
                n = os.readv(fd, [view[got:]])
                if n == 0:
                    break
                got += n
            check_size(got, item)
            recheck_fd(fd, item.signature)
            return bytes(buffer) if got else b""
        finally:
            os.close(fd)

    def _raise_if_refused_as_corrupt(self, exc: Exception, item: TransferItem, data: bytes) -> None:
        """After a digest refusal of a published digest: the file is corrupt if the bytes
        read are not the release's; else they were damaged on the way (retried)."""
        code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
        if item.sha256 and code in DIGEST_CODES:
            actual = hashlib.sha256(data).hexdigest()
            if actual != item.sha256:
                raise CorruptFile(corrupt_text(actual, item.sha256)) from None

    # -- multipart: only the parts' bytes change engine -----------------------------------

    def _upload_part(
        self,
        client: Any,  # noqa: ARG002 (boto3's; the parts go through the runtime)
        item: TransferItem,
        upload_id: str,
        number: int,
        data: memoryview,
        digest: bytes,
    ) -> dict[str, Any]:
        query = urllib.parse.urlencode({"partNumber": number, "uploadId": upload_id})
        name = f"x-amz-checksum-{self.part_checksum.lower()}"
        checksum = (name, base64.b64encode(digest).decode("ascii"))
        headers = self._crt().put(item.key, query, data, checksum, None)
        return {
            "ETag": headers.get("etag", ""),
            f"Checksum{self.part_checksum}": headers.get(name),
        }

    def close(self) -> None:
        super().close()
        with self._sender_lock:
            self._sender = None  # the runtime's client shuts down when released


def crt_client(target: S3Target, connections: int, timeout: float) -> _CrtSender:
    """A runtime client for ``target`` (credentials from the standard chain, or none with
    ``no_sign_request``), ``connections`` at most at once."""
    return _CrtSender(target, connections, timeout)


def sha256_header(sha256_hex: str) -> tuple[str, str]:
    """The ``x-amz-checksum-sha256`` header of a body whose SHA-256 is ``sha256_hex``."""
    return "x-amz-checksum-sha256", base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


class _ViewStream:
    """A read-only stream over a memoryview, for the runtime to read a part from the
    buffer it is in (``io.BytesIO`` would copy it first); seekable, for its retries."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._at = view, 0

    def readinto(self, into: memoryview) -> int:
        n = min(len(into), len(self._view) - self._at)
        into[:n] = self._view[self._at : self._at + n]
        self._at += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._at + size)
        data, self._at = bytes(self._view[self._at : end]), end
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, min(len(self._view), base + offset))
        return self._at


class _Budget:
    """A number of bytes shared by threads; a request larger than the whole budget waits
    until nothing else is held, so it never waits forever."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.held = capacity, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + size <= self.capacity)
            self.held += size
        try:
            yield
        finally:
            with self._changed:
                self.held -= size
                self._changed.notify_all()


class _CrtSender:
    """PUTs of in-memory bodies through one ``awscrt`` S3 client, signed with SigV4 and the
    body's known SHA-256, and whole GETs of small objects (the download's); failures raised
    as botocore errors, classified as boto3's are."""

    def __init__(self, target: S3Target, connections: int, timeout: float) -> None:
        from awscrt import auth, s3
        from awscrt import io as crt_io

        self._auth, self._s3 = auth, s3
        self.timeout = timeout
        url = endpoint_url(target)
        self.region = target.region or _session_region() or DEFAULT_REGION
        if url:  # path-style, as the boto3 client of a custom endpoint
            parts = urllib.parse.urlsplit(url)
            self.host, self._base = parts.netloc, parts.path.rstrip("/") + f"/{target.bucket}/"
            tls = parts.scheme == "https"
        else:
            self.host, self._base = f"{target.bucket}.s3.{self.region}.amazonaws.com", "/"
            tls = True
        loops = crt_io.EventLoopGroup(0)  # one per core
        bootstrap = crt_io.ClientBootstrap(loops, crt_io.DefaultHostResolver(loops))
        self._credentials = None if target.no_sign_request else _credentials_provider(auth)
        self.client = s3.S3Client(
            bootstrap=bootstrap,
            region=self.region,
            tls_mode=s3.S3RequestTlsMode.ENABLED if tls else s3.S3RequestTlsMode.DISABLED,
            signing_config=self._signing(None),
            max_active_connections_override=max(1, connections),
            retry_config=s3.S3RetryConfig(max_retries=2),
            connect_timeout_ms=10_000,
        )

    def _signing(self, payload_sha256: str | None) -> Any:
        auth = self._auth
        if self._credentials is None:
            return None
        return auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=self._credentials,
            region=self.region,
            service="s3",
            signed_body_value=payload_sha256,
            signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
            use_double_uri_encode=False,  # S3 signs the key as sent, encoded once
            should_normalize_uri_path=False,
        )

    def put(
        self,
        key: str,
        query: str,
        body: bytes | memoryview | None,
        checksum: tuple[str, str],
        payload_sha256: str | None,
        *,
        send_path: str | None = None,
        size: int = 0,
    ) -> dict[str, str]:
        """PUT ``body`` (or the file at ``send_path``, ``size`` bytes) at ``key`` with the
        ``checksum`` header (name, value) the store checks; the payload signed as its
        SHA-256 ``payload_sha256`` where it is known, else as ``UNSIGNED-PAYLOAD`` (the
        checksum header is signed either way). The response headers, lowercased. Raises a
        botocore ``ClientError`` for an error reply."""
        from awscrt import http

        path = self._base + urllib.parse.quote(key, safe="/~")
        if query:
            path += "?" + query
        headers = http.HttpHeaders(
            [
                ("Host", self.host),
                ("Content-Length", str(size if body is None else len(body))),
                checksum,
            ]
        )
        stream = None if body is None else _ViewStream(memoryview(body))
        request = http.HttpRequest("PUT", path, headers, stream)
        reply: dict[str, Any] = {}
        on_headers, on_done = _reply_into(reply)
        operation = "UploadPart" if query else "PutObject"
        pending = self.client.make_request(
            type=self._s3.S3RequestType.DEFAULT,
            operation_name=operation,
            request=request,
            send_filepath=send_path,
            signing_config=self._signing(
                payload_sha256 or self._auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD
            ),
            on_headers=on_headers,
            on_done=on_done,
        )
        return self._finish(operation, pending, reply, size or len(body or b""))

    def get(
        self, key: str, headers: list[tuple[str, str]], size: int
    ) -> tuple[dict[str, str], memoryview]:
        """GET the object at ``key``, expected to hold ``size`` bytes, whole into memory:
        (its response headers, lowercased; its bytes, into one buffer of ``size``, so a
        body longer than that is cut there and one shorter comes back short, for the
        caller's size check). For small objects: the runtime costs about a third of the
        client CPU per request that botocore does (0.45 against 1.3 to 2.0 ms measured
        here), which is most of a small file's cost. Raises a botocore ``ClientError``
        for an error reply."""
        from awscrt import http

        path = self._base + urllib.parse.quote(key, safe="/~")
        request = http.HttpRequest("GET", path, http.HttpHeaders([("Host", self.host), *headers]))
        reply: dict[str, Any] = {}
        on_headers, on_done = _reply_into(reply)
        buffer = bytearray(size)
        got = [0]

        def on_body(*, chunk: bytes, offset: int, **_: Any) -> None:
            end = min(offset + len(chunk), size)
            if end > offset:
                buffer[offset:end] = chunk[: end - offset]
            got[0] = max(got[0], offset + len(chunk))

        pending = self.client.make_request(
            type=self._s3.S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=request,
            signing_config=self._signing(self._auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD),
            on_headers=on_headers,
            on_body=on_body,
            on_done=on_done,
        )
        found = self._finish("GetObject", pending, reply, size)
        return found, memoryview(buffer)[: got[0]] if got[0] <= size else memoryview(buffer)

    def _finish(self, operation: str, pending: Any, reply: dict[str, Any], size: int) -> dict:
        """Wait (bounded) for a request; its response headers, or its error raised."""
        try:
            pending.finished_future.result(self.timeout + size / 1e6)
        except Exception:  # a timeout (an error reply is in ``reply``)
            pending.cancel()
            with contextlib.suppress(Exception):
                pending.finished_future.result(self.timeout)
        if reply.get("status") in (200, 206) and reply.get("error") is None:
            return reply.get("headers", {})
        raise _error(operation, reply)


def _reply_into(reply: dict[str, Any]) -> tuple[Callable[..., None], Callable[..., None]]:
    """The runtime's ``on_headers`` and ``on_done`` callbacks of one request, which put
    its response headers (lowercased), status, error and error body into ``reply``."""

    def on_headers(*, headers: list, **_: Any) -> None:
        reply["headers"] = {name.lower(): value for name, value in headers}

    def on_done(
        error: Any = None, error_body: bytes | None = None, status_code: Any = None, **_: Any
    ) -> None:
        reply.update(error=error, body=error_body, status=status_code)

    return on_headers, on_done


def _error(operation: str, reply: dict[str, Any]) -> Exception:
    """A botocore error for a failed request, so that it is described, classified
    (retryable, throttling, digest refusal) exactly as boto3's errors are."""
    from botocore import exceptions as bx

    status, body = reply.get("status"), reply.get("body") or b""
    error = reply.get("error")
    if not status and getattr(error, "name", None) in _RETRIED_REPLIES:
        status, code = _RETRIED_REPLIES[error.name]
        body = f"<Code>{code}</Code><Message>{error.message}</Message>".encode()
    if not status:
        return bx.HTTPClientError(error=error or "no reply (timed out)")
    text = body.decode("utf-8", "replace")
    fields = {
        name: (m.group(1) if (m := re.search(_XML_FIELD.format(name), text)) else "")
        for name in ("Code", "Message")
    }
    response = {
        "Error": {"Code": fields["Code"] or str(status), "Message": fields["Message"]},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bx.ClientError(response, operation)


def _session_region() -> str | None:
    return aws_session().region_name


def _credentials_provider(auth: Any) -> Any:
    """The standard AWS chain as boto3 resolves it (environment, profile, role), handed
    to the runtime per signature, so that both engines use the same credentials and
    refreshed role credentials reach the runtime too."""
    from botocore.credentials import RefreshableCredentials
    from botocore.exceptions import NoCredentialsError

    credentials = aws_session().get_credentials()
    if credentials is None:
        raise NoCredentialsError()
    if not isinstance(credentials, RefreshableCredentials):  # keys: no Python per signature
        frozen = credentials.get_frozen_credentials()
        return auth.AwsCredentialsProvider.new_static(
            frozen.access_key, frozen.secret_key, frozen.token
        )

    def current() -> Any:
        frozen = credentials.get_frozen_credentials()
        return auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)

    return auth.AwsCredentialsProvider.new_delegate(current)
