"""The contract of a checksum-sending backend, for one that reads files by path and sends no
checksums (s5cmd).

s5cmd opens each file itself and cannot send a checksum, so nothing it reports proves the
object's content. Wrapped in :class:`ProvenTransfer` it keeps the contract the native
backend keeps, and the uploader has one path for both:

* each file is hashed here first (:mod:`desimirror.integrity.prehash`: opened beneath the
  root, checked against the crawl), one chunk ahead of the chunk being sent, so the read
  overlaps the previous transfer;
* a file whose bytes differ from the published SHA-256 is refused as ``corrupt`` and never
  handed on; its path is checked again just before its line goes to s5cmd;
* once a chunk is sent, its objects' ETags are read back (in the background, while the next
  chunk is sent) and compared with the MD5s of the bytes hashed here: only then is a file's
  result ``ok``, with proof ``etag`` and its SHA-256 and part digests. An object holding
  other bytes (its path was swapped between the last check and s5cmd's read) is deleted.

Chunks of about ``chunk_files`` files and ``chunk_bytes`` bytes bound what is hashed ahead;
a full chunk goes on to the end of its last directory (up to twice the limits), so that
s5cmd can send a directory on one wildcard line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from desimirror.errors import redact
from desimirror.integrity.checksums import FileDigests, corrupt_text
from desimirror.integrity.prehash import FileChanged, Prehasher
from desimirror.integrity.sourcetree import SourceRefused, SourceTree, unreadable
from desimirror.state.manifest import Entry
from desimirror.storage.lookup import ObjectLookup
from desimirror.storage.transfer.base import TransferBackend, TransferItem, TransferResult
from desimirror.text import shown

DEFAULT_CHUNK_FILES = 2000
DEFAULT_CHUNK_BYTES = 8 << 30


class ProvenTransfer:
    """``inner`` (a backend with ``sends_checksums`` False) with proven per-file results."""

    sends_checksums = True

    def __init__(
        self,
        inner: TransferBackend,
        *,
        lookup: ObjectLookup,
        hasher: Prehasher,
        tree: SourceTree,
        part_size: int,
        chunk_files: int = DEFAULT_CHUNK_FILES,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self.inner, self.lookup, self.hasher, self.tree = inner, lookup, hasher, tree
        self.name = inner.name
        self.concurrency = inner.concurrency
        self.part_size = part_size
        self.chunk_files, self.chunk_bytes = chunk_files, chunk_bytes
        self.on_phase = on_phase or (lambda _phase: None)

    def prepare(self, items: Iterable[TransferItem]) -> None:
        """Start hashing files that come next (the next batch), while this one is sent."""
        for item in items:
            self.hasher.submit(item.source, _entry_of(item), self.part_size)

    def put_batch(self, items: Iterable[TransferItem]) -> Iterator[TransferResult]:
        chunks = chunk_items(list(items), self.chunk_files, self.chunk_bytes)
        if chunks:
            self.prepare(chunks[0])
        comparing: Future | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="desimirror-etags") as reader:
            for number, chunk in enumerate(chunks):
                if number + 1 < len(chunks):
                    self.prepare(chunks[number + 1])
                refused: list[TransferResult] = []
                digests: dict[str, FileDigests] = {}
                sent: list[TransferResult] = []
                for result in self.inner.put_batch(self._hashed(chunk, digests, refused)):
                    if result.ok:
                        sent.append(result)
                    else:
                        yield result
                    if comparing is not None and comparing.done():
                        yield from comparing.result()
                        comparing = None
                yield from refused
                if comparing is not None:
                    yield from comparing.result()
                comparing = reader.submit(self._compare_etags, sent, digests) if sent else None
            if comparing is not None:
                yield from comparing.result()

    def _hashed(
        self,
        chunk: list[TransferItem],
        digests: dict[str, FileDigests],
        refused: list[TransferResult],
    ) -> Iterator[TransferItem]:
        """The chunk's files whose bytes are as expected, each once its hash is ready; the
        digests go into ``digests``, the files not to send into ``refused``."""
        for item in chunk:
            entry = _entry_of(item)
            try:
                self.on_phase("hashing")
                digest = self.hasher.digests(item.source, entry, self.part_size)
            except (FileChanged, SourceRefused, OSError) as exc:
                refused.append(_refused(item, exc))
                continue
            if item.sha256 and digest.sha256 != item.sha256:
                refused.append(_failed(item, corrupt_text(digest.sha256, item.sha256), "corrupt"))
                continue
            # s5cmd opens the file by its path: the path must still lead to the hashed file
            # (the hash may be a chunk old); the ETag compared afterwards catches the rest
            try:
                still_the_hashed_file(self.tree, entry)
            except SourceRefused as exc:
                refused.append(_refused(item, exc))
                continue
            digests[item.key] = digest
            self.on_phase("sending")
            yield item

    def _compare_etags(
        self, sent: list[TransferResult], digests: dict[str, FileDigests]
    ) -> list[TransferResult]:
        """Each sent file's result once its object's ETag was read back and compared."""
        found = self.lookup.find(r.item.key for r in sent)
        outcomes: list[TransferResult] = []
        for result in sent:
            item, digest = result.item, digests[result.item.key]
            info = found.objects.get(item.key)
            if info is None:
                why = (
                    "could not read the object's ETag back"
                    if item.key in found.unknown
                    else "the object is not in the bucket after the upload"
                )
                outcomes.append(_failed(item, why))
            elif info.etag != digest.etag or info.size != digest.size:
                self._withdraw(item.key)
                why = f"the object's ETag {info.etag} is not the file's {digest.etag}"
                outcomes.append(_failed(item, why))
            else:
                multipart = len(digest.parts_sha256) > 1
                outcomes.append(
                    TransferResult(
                        item,
                        ok=True,
                        etag=info.etag,
                        sha256=digest.sha256,
                        part_size=digest.part_size if multipart else None,
                        parts=digest.parts_sha256 if multipart else (),
                        proof="etag",
                    )
                )
        return outcomes

    def _withdraw(self, key: str) -> None:
        """Delete an object just sent that holds other bytes than the file read here.

        If a path was swapped in the moment between the check and s5cmd's read, what it
        sent may be another file's bytes, which must not stay in a (public) bucket. The
        object was just overwritten by this run, so nothing is lost.
        """
        with contextlib.suppress(Exception):  # the failure is recorded either way
            self.lookup.client.delete_object(Bucket=self.lookup.bucket, Key=key)

    def validation_note(self) -> dict[str, object] | None:
        """None: every object is proven here, by its ETag, whatever the store checks."""
        return None

    def close(self) -> None:
        self.inner.close()


def with_proof(backend: TransferBackend, **proving: object) -> TransferBackend:
    """``backend`` itself if it sends checksums, else wrapped in :class:`ProvenTransfer`
    (``proving`` are its keyword arguments)."""
    if backend.sends_checksums:
        return backend
    return ProvenTransfer(backend, **proving)  # type: ignore[arg-type]


def still_the_hashed_file(tree: SourceTree, entry: Entry) -> None:
    """Raise :class:`SourceRefused` unless the path still leads to the crawled file."""
    tree.check_entry(entry)


def chunk_items(items: list[TransferItem], max_files: int, max_bytes: int) -> list[list]:
    """Cut a batch into runs of about ``max_files`` files and ``max_bytes`` bytes; a full
    run goes on to the end of its last directory (up to twice the limits)."""
    chunks: list[list[TransferItem]] = []
    current: list[TransferItem] = []
    size = 0
    for item in items:
        grown = size + item.size
        if current and (len(current) >= max_files or grown > max_bytes):
            same_dir = _directory(item) == _directory(current[-1])
            if not same_dir or len(current) >= 2 * max_files or grown > 2 * max_bytes:
                chunks.append(current)
                current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        chunks.append(current)
    return chunks


def _directory(item: TransferItem) -> str:
    return (item.rel or item.source).rpartition("/")[0]


def _entry_of(item: TransferItem) -> Entry:
    """The crawled file an item reads, as the hasher and the source tree take it."""
    sig = item.signature
    return Entry(
        item.rel or item.source,
        "file",
        item.size,
        sig.mtime_ns if sig else None,
        sha256=item.sha256,
        ctime_ns=sig.ctime_ns if sig else None,
        ino=sig.ino if sig else None,
        dev=sig.dev if sig else None,
    )


def _refused(item: TransferItem, exc: BaseException) -> TransferResult:
    reason, text = unreadable(exc)
    return _failed(item, text, reason)


def _failed(item: TransferItem, text: str, reason: str | None = None) -> TransferResult:
    return TransferResult(
        item,
        ok=False,
        error=redact(f"PUT {shown(item.key)}: {text}"),
        retryable=reason is None,
        reason=reason,
    )
