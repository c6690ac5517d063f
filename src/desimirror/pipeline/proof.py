"""Prove an object's content, not only its size: what ``verify --checksum`` runs per object.

The reference is the file's SHA-256: the one its release published, else the one computed
when it was uploaded. Each object is proven the cheapest way that is still a proof:

1. ``etag``: the object was sent by s5cmd (or adopted) after its file was hashed, and the
   listing still shows the ETag (the store's MD5 of the bytes) recorded then, which was
   the MD5 of the same read whose SHA-256 is the reference. Costs nothing: the listing
   is already there.
2. ``sha256``: HeadObject with checksum mode returns the object's ``ChecksumSHA256``,
   which the store computed from the bytes it received; it must equal the reference.
3. ``composite``: a multipart object's checksum is ``base64(H(part checksums))-N``, H
   being SHA-256 or CRC32C (``ChecksumSHA256`` or ``ChecksumCRC32C``, as the parts were
   sent: the recorded part checksums say which by their length); it must equal the
   composite recomputed from the part checksums recorded at upload time, whose
   whole-file SHA-256 (computed in the same read) is the reference.
4. ``reread``: otherwise (an object nobody recorded a checksum for, a store that keeps
   none), or always with ``--reread``, the object is read back and hashed; with no
   reference at all, the local file is hashed too.

Checks 1 to 3 trust what the store recorded when it wrote the object; only a re-read
proves the bytes it would serve today. ``--sample FRACTION`` checks a random fraction of
the objects, for spot checks of huge mirrors (a re-read costs the egress of the object).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from desimirror.integrity.checksums import (
    CHUNK,
    composite_checksum,
    hash_stream,
    hex_of_b64,
    part_algorithm,
    same_composite,
)
from desimirror.integrity.sourcetree import SourceRefused, tree_at
from desimirror.retrying import retry_call
from desimirror.storage.s3client import describe_error, error_code

ATTEMPTS = 4


@dataclass(frozen=True)
class Candidate:
    """One listed object of the right size, with what the manifest knows about its file."""

    key: str
    path: str
    size: int
    listed_etag: str | None
    reference: str | None  # entries.sha256: published, or computed at upload
    etag: str | None = None  # uploads.*: as recorded when the object was confirmed
    sha256: str | None = None
    part_size: int | None = None
    parts: str | None = None
    proof: str | None = None


@dataclass(frozen=True)
class Verdict:
    """ok True/False, or None when the object could not be proven either way."""

    candidate: Candidate
    ok: bool | None
    method: str
    message: str = ""


class ContentChecker:
    """Checks candidates in a thread pool; see the module docstring for the methods."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        root: str | None,
        reread: bool = False,
        workers: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.bucket, self.root = client, bucket, root
        self.reread, self.workers, self.sleep = reread, max(1, workers), sleep
        self.bytes_read = 0

    def run(self, candidates: Iterable[Candidate]) -> Iterator[Verdict]:
        """Verdicts in any order, with a bounded number of checks in flight."""
        window = self.workers * 4
        with ThreadPoolExecutor(self.workers, thread_name_prefix="desimirror-check") as pool:
            futures: list[Future] = []
            for candidate in candidates:
                futures.append(pool.submit(self.check, candidate))
                if len(futures) >= window:
                    yield futures.pop(0).result()
            for future in futures:
                yield future.result()

    def check(self, c: Candidate) -> Verdict:
        try:
            return self._check(c)
        except Exception as exc:
            text, _ = describe_error(exc)
            return Verdict(c, None, "error", text)

    def _check(self, c: Candidate) -> Verdict:
        reference = c.reference or c.sha256
        if c.sha256 and c.reference and c.sha256 != c.reference:
            return Verdict(c, False, "record", "uploaded bytes differ from the reference SHA-256")
        if not self.reread:
            recorded_etag = bool(c.etag) and c.listed_etag == c.etag
            if c.proof == "etag" and recorded_etag and reference and c.sha256 == reference:
                return Verdict(c, True, "etag")
            head = self._retry(
                lambda: self.client.head_object(
                    Bucket=self.bucket, Key=c.key, ChecksumMode="ENABLED"
                )
            )
            stored = head.get("ChecksumSHA256")
            parts = c.parts.split() if c.parts else []
            algorithm = part_algorithm(parts) if len(parts) > 1 else None
            composite = head.get(f"Checksum{algorithm}") if algorithm else None
            if composite and reference:
                if same_composite(composite, composite_checksum(parts)):
                    return Verdict(c, True, "composite")  # with or without its "-N"
                if algorithm != "SHA256" or hex_of_b64(composite) != reference:
                    return Verdict(c, False, "composite", "the object's composite checksum differs")
            full = hex_of_b64(stored) if stored else None
            if full is not None and reference:
                if full == reference:
                    return Verdict(c, True, "sha256")
                return Verdict(c, False, "sha256", f"the object's SHA-256 is {full}")
        return self._reread(c, reference)

    def _reread(self, c: Candidate, reference: str | None) -> Verdict:
        digest = self._retry(lambda: self._hash_object(c.key))
        if reference is None:
            if not self.root:
                return Verdict(c, None, "reread", "no reference checksum and no local file")
            try:
                with os.fdopen(tree_at(self.root).open_beneath(c.path), "rb") as stream:
                    reference = hash_stream(stream, c.size or 1, md5=False).sha256
            except SourceRefused as exc:
                return Verdict(c, None, "reread", f"the local file is not read: {exc}")
            except OSError as exc:
                return Verdict(c, None, "reread", f"cannot read the local file: {exc.strerror}")
        if digest == reference:
            return Verdict(c, True, "reread")
        return Verdict(c, False, "reread", f"the object's bytes hash to {digest}")

    def _hash_object(self, key: str) -> str:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        digest = hashlib.sha256()
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                self.bytes_read += len(chunk)
        finally:
            body.close()
        return digest.hexdigest()

    def _retry(self, call: Callable[[], Any]) -> Any:
        """A few attempts for transient failures (a reset mid-body is not retried by botocore)."""
        return retry_call(call, attempts=ATTEMPTS, base=0.5, retry_on=_transient, sleep=self.sleep)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: retryable by its class, and not a missing object."""
    _, retryable = describe_error(exc)
    code, status = error_code(exc)
    return retryable and status != 404 and code != "NoSuchKey"
