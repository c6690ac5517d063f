"""Checksums: the published ``*.sha256sum`` files, hashing while reading, S3's composites.

Everything here is pure computation on bytes, so the rest of the mirror can state in one
vocabulary what the bytes of a file must be:

* ``sha256`` is always the lowercase hex SHA-256 of a whole file, as DESI publishes it in
  its ``*.sha256sum`` files; S3 speaks base64 (``ChecksumSHA256``), converted at the edge.
* A multipart object has no whole-object SHA-256 in S3. It has a *composite* checksum,
  ``base64(H(part checksum 1 || part checksum 2 || ...))-N``, with H the algorithm of its
  parts (SHA-256, or CRC32C: four bytes a part, which the crt backend sends because the
  runtime computes it natively at several GB/s), and an ETag built the same way from MD5s
  (``hex(md5(part md5 1 || ...))-N``); both are recomputed from the part size and the
  part checksums, which the uploader records for that reason. The recorded checksums say
  their own algorithm by their length (:func:`part_algorithm`).
* A single-part object's ETag is the MD5 of its bytes (on AWS without SSE-KMS and on
  SeaweedFS), which is the only content proof an object written without checksums has.

:class:`HashingReader` computes SHA-256 while a client reads a file to send it, so a file
is read once for both; :func:`hash_stream` is the explicit pass for when the sender reads
the file itself (s5cmd) or nothing is sent at all (adopting an existing object).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CHUNK = 1 << 20
_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")
_BSD = re.compile(rb"^SHA256 ?\((?P<name>.*)\) ?= ?(?P<digest>[0-9a-fA-F]{64})$")
#: The suffix of the files a DESI release publishes its checksums in.
SUFFIX = ".sha256sum"


# ---------------------------------------------------------------- encodings


def corrupt_text(actual: str, published: str | None) -> str:
    """The one message for bytes that are not what the release published."""
    return (
        f"the file's SHA-256 is {actual}, the release published {published}: "
        "corrupt or changed at the source, not uploaded"
    )


def b64_of_hex(hex_digest: str) -> str:
    """``ChecksumSHA256`` (base64) for a hex digest."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def hex_of_b64(b64_digest: str) -> str | None:
    """The hex digest of a base64 ``ChecksumSHA256``, or None for anything else (a composite)."""
    try:
        raw = base64.b64decode(b64_digest, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def is_hex_sha256(text: str | None) -> bool:
    """True for 64 hex digits: a SHA-256 as a listing or a manifest writes it."""
    return bool(text) and _HEX64.match(text.encode("ascii", "replace")) is not None


# ---------------------------------------------------------------- published sha256sum files


@dataclass
class ChecksumListing:
    """What one ``*.sha256sum`` file claims: manifest path -> hex digest, and what it could not."""

    claims: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse_sha256sum(data: bytes, directory: str) -> ChecksumListing:
    """Parse ``sha256sum`` output (GNU text or binary mode, escaped names, or BSD tags).

    Names are relative to ``directory`` (the listing's own directory, a manifest path) and
    become manifest paths. A name that is absolute or climbs out with ``..`` is an error,
    never a claim: a checksum file must not make the mirror look outside the tree.
    Repeated names with different digests are errors too; the first claim stands.
    """
    listing = ChecksumListing()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line.strip() or line.lstrip().startswith(b"#"):
            continue
        parsed = _parse_line(line)
        if parsed is None:
            listing.errors.append(f"line {number}: not a sha256sum line")
            continue
        digest, name = parsed
        path = _resolve(directory, os.fsdecode(name))
        if path is None:
            listing.errors.append(f"line {number}: {os.fsdecode(name)!r} is outside the tree")
            continue
        known = listing.claims.get(path)
        if known is not None and known != digest:
            listing.errors.append(f"line {number}: {path!r} is listed twice with two digests")
            continue
        listing.claims[path] = digest
    return listing


def _parse_line(line: bytes) -> tuple[str, bytes] | None:
    bsd = _BSD.match(line)
    if bsd:
        return bsd.group("digest").decode().lower(), bsd.group("name")
    escaped = line.startswith(b"\\")
    body = line[1:] if escaped else line
    if len(body) < 66 or not _HEX64.match(body[:64]) or body[64:65] != b" ":
        return None
    if body[65:66] not in (b" ", b"*"):
        return None
    name = body[66:]
    if escaped:
        name = _unescape(name)
        if name is None:
            return None
    if not name:
        return None
    return body[:64].decode().lower(), name


def _unescape(name: bytes) -> bytes | None:
    """GNU coreutils escaping (a leading backslash on the line): ``\\\\``, ``\\n``, ``\\r``."""
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = name[i + 1 : i + 2]
        mapped = {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}.get(nxt)
        if mapped is None:
            return None
        out += mapped
        i += 2
    return bytes(out)


def _resolve(directory: str, name: str) -> str | None:
    if name.startswith("/") or "\0" in name:
        return None
    joined = posixpath.normpath(posixpath.join(directory, name)) if directory else name
    joined = posixpath.normpath(joined)
    if joined in (".", "..") or joined.startswith("../") or joined.startswith("/"):
        return None
    return joined


# ---------------------------------------------------------------- multipart arithmetic


def part_count(size: int, part_size: int) -> int:
    """Parts an uploader that switches to multipart above one part uses for ``size`` bytes."""
    if size <= part_size:
        return 1
    return -(-size // part_size)


def composite_sha256(part_digests_b64: Sequence[str]) -> str:
    """S3's COMPOSITE ``ChecksumSHA256`` of a multipart object: ``base64(sha256(parts))-N``."""
    joined = b"".join(base64.b64decode(p) for p in part_digests_b64)
    return f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(part_digests_b64)}"


def crc32c(data: bytes | bytearray | memoryview) -> bytes:
    """The CRC32C of ``data`` as S3 sends it (four bytes, big-endian), computed natively by
    the AWS Common Runtime (hardware CRC instructions: several GB/s, against about 1 GB/s
    for SHA-256)."""
    from awscrt.checksums import crc32c as native_crc32c

    return native_crc32c(data).to_bytes(4, "big")


def composite_crc32c(part_checksums_b64: Sequence[str]) -> str:
    """S3's COMPOSITE ``ChecksumCRC32C`` of a multipart object: ``base64(crc32c(parts))-N``."""
    joined = b"".join(base64.b64decode(p) for p in part_checksums_b64)
    return f"{base64.b64encode(crc32c(joined)).decode()}-{len(part_checksums_b64)}"


#: The part checksums S3 composes, by the length of one decoded checksum.
_PART_ALGORITHMS = {32: "SHA256", 4: "CRC32C"}


def part_algorithm(part_checksums_b64: Sequence[str]) -> str | None:
    """``"SHA256"`` or ``"CRC32C"``: what recorded part checksums are (by their length),
    so that the object's ``Checksum<algorithm>`` is the one compared; None if neither."""
    try:
        lengths = {len(base64.b64decode(p, validate=True)) for p in part_checksums_b64}
    except (binascii.Error, ValueError):
        return None
    return _PART_ALGORITHMS.get(lengths.pop()) if len(lengths) == 1 else None


def composite_checksum(part_checksums_b64: Sequence[str]) -> str | None:
    """The composite checksum of a multipart object from its recorded part checksums, in
    their algorithm (:func:`part_algorithm`); None if they are neither kind."""
    algorithm = part_algorithm(part_checksums_b64)
    if algorithm == "SHA256":
        return composite_sha256(part_checksums_b64)
    if algorithm == "CRC32C":
        return composite_crc32c(part_checksums_b64)
    return None


def split_composite(text: str | None) -> tuple[bytes, int | None] | None:
    """A composite checksum as values: (the digest's bytes, the part count or None).

    Stores disagree on the form: AWS and SeaweedFS append ``-N``, moto (and some others)
    return the bare base64 digest. None for anything that is not base64 of a SHA-256 or a
    CRC32C.
    """
    if not text:
        return None
    digest, sep, count = text.strip().rpartition("-")
    if not sep:
        digest, count = text.strip(), ""
    elif not count.isdigit():
        return None
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) not in _PART_ALGORITHMS:
        return None
    return raw, int(count) if count else None


def same_composite(stored: str | None, expected: str | None) -> bool:
    """Whether a store's composite checksum is ``expected``: equal digests and, where both
    carry one, equal part counts (``X`` and ``X-2`` are the same checksum; ``X-3`` is not)."""
    a, b = split_composite(stored), split_composite(expected)
    if a is None or b is None or a[0] != b[0]:
        return False
    return a[1] is None or b[1] is None or a[1] == b[1]


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object: ``hex(md5(part md5s))-N``."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


#: Part sizes other tools use, tried when an existing multipart ETag must be recomputed
#: (s5cmd and this mirror: 50 MiB; aws-cli and boto3: 8 MiB; rclone: 5 MiB; others).
COMMON_PART_SIZES = tuple(n << 20 for n in (50, 8, 5, 16, 64, 100, 128, 10, 15, 25, 32))


def guess_part_sizes(size: int, etag: str, preferred: Iterable[int] = ()) -> list[int]:
    """Part sizes consistent with a multipart ETag ``...-N`` on an object of ``size`` bytes."""
    _, sep, count = etag.rpartition("-")
    if not sep or not count.isdigit():
        return []
    n = int(count)
    seen: list[int] = []
    for candidate in (*preferred, *COMMON_PART_SIZES):
        if candidate not in seen and n > 1 and part_count(size, candidate) == n:
            seen.append(candidate)
    return seen


# ---------------------------------------------------------------- hashing files


@dataclass(frozen=True)
class FileDigests:
    """One read of a file: its SHA-256, and its ETag and composite for one part size."""

    size: int
    sha256: str  # hex, whole file
    part_size: int
    etag: str  # single-part: hex MD5; multipart: hex(md5(part md5s))-N
    parts_sha256: tuple[str, ...]  # base64 per part; one entry for a single-part object

    @property
    def composite(self) -> str | None:
        if len(self.parts_sha256) < 2:
            return None
        return composite_sha256(self.parts_sha256)


def hash_stream(stream: io.BufferedIOBase, part_size: int, *, md5: bool = True) -> FileDigests:
    """Read ``stream`` to its end once and compute every digest the mirror compares.

    Each byte goes through the whole-file SHA-256 and its part's MD5 once; a part's own
    SHA-256 is kept apart only from the second part on (the first part's is a copy of the
    whole-file state where it ends), so a single-part file, nearly every file of a
    release, costs one SHA-256 and one MD5. ``md5=False`` skips the MD5s (about half the
    cost) when no ETag needs comparing.
    """
    whole = hashlib.sha256()
    part_sha: list[str] = []
    part_md5: list[bytes] = []
    size = 0
    while True:
        part = hashlib.sha256() if size else None  # the first part is read off ``whole``
        pmd5 = hashlib.md5() if md5 else None
        got = 0
        while got < part_size:
            chunk = stream.read(min(CHUNK, part_size - got))
            if not chunk:
                break
            got += len(chunk)
            whole.update(chunk)
            if part is not None:
                part.update(chunk)
            if pmd5 is not None:
                pmd5.update(chunk)
        if got == 0 and size > 0:
            break  # a file of exactly k parts: no empty part k + 1
        size += got
        part_sha.append(base64.b64encode((part or whole.copy()).digest()).decode())
        if pmd5 is not None:
            part_md5.append(pmd5.digest())
        if got < part_size:
            break
    if not md5:
        etag = ""
    elif len(part_md5) == 1:
        etag = part_md5[0].hex()
    else:
        etag = multipart_etag(part_md5)
    return FileDigests(size, whole.hexdigest(), part_size, etag, tuple(part_sha))


def open_source(path: str) -> io.BufferedReader:
    """Open a file to read for the mirror, never through a symlink in its last component.

    The uploader passes the resolved, checked target for symlinked files, so a file that
    was swapped for a link since the crawl is refused here instead of read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    return os.fdopen(fd, "rb", buffering=CHUNK)


class HashingReader(io.RawIOBase):
    """A file wrapper that computes SHA-256 (and, with ``md5``, MD5) of exactly the bytes a
    client reads to send.

    HTTP clients may read a body more than once: botocore reads it to compute a checksum
    header and again to sign it on plain HTTP, and seeks back to the start before each
    retry. Every seek to the start begins a fresh digest; any other jump makes the digest
    unusable until then. :attr:`complete` says whether the last pass read the whole file
    in order, i.e. whether :meth:`hexdigest` describes the bytes that were sent last.
    """

    def __init__(self, raw: io.BufferedReader, size: int, *, md5: bool = False) -> None:
        super().__init__()
        self._raw = raw
        self._size = size
        self._start = raw.tell()
        self._with_md5 = md5
        self._reset()

    def _reset(self) -> None:
        self._hash = hashlib.sha256()
        self._md5 = hashlib.md5() if self._with_md5 else None
        self._pos = 0
        self._valid = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        if data and self._valid:
            self._hash.update(data)
            if self._md5 is not None:
                self._md5.update(data)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = self._raw.seek(offset, whence) - self._start
        if target == 0:
            self._reset()
        elif target != self._pos:
            self._valid = False
            self._pos = target
        return target

    def tell(self) -> int:
        return self._raw.tell() - self._start

    @property
    def complete(self) -> bool:
        """True when the bytes read since the last rewind are the whole file, in order."""
        return self._valid and self._pos == self._size and not self._raw.peek(1)

    def hexdigest(self) -> str | None:
        return self._hash.hexdigest() if self.complete else None

    def md5_hexdigest(self) -> str | None:
        """The MD5 of the bytes sent last (a single-part ETag), if asked for with ``md5``."""
        return self._md5.hexdigest() if self._md5 is not None and self.complete else None
