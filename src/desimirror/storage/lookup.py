"""What the bucket already holds under given keys: size, ETag and, on request, SHA-256.

The uploader asks before sending (to adopt objects that are already right) and, for the
s5cmd backend, after sending (to compare ETags). Keys are looked up by listing whole
subtrees: the directory shared by the wanted keys is listed recursively (1,000 objects a
request), within a budget of pages proportional to the number of wanted keys. Where the
budget runs out (the subtree holds many other objects), the keys are split by the next
directory level and each part is listed the same way, in parallel; files directly under a
split directory are found with one delimited LIST of it, or a HEAD each when they are few.
So a batch of a fresh mirror costs one LIST, and the ETags of 1,000 files just sent cost
one LIST instead of a request per file (a HEAD costs the client about as much CPU as a
twentieth of a LIST page). Absence is concluded only from a listing that ran to its end,
never from key order, which stores do not agree on (SeaweedFS lists a directory's
entries before the names that sort between it and its ``/``).

Checksums are only returned by HEAD (with checksum mode), so ``checksums=True`` HEADs
every key. A lookup that keeps failing does not stop the upload: the keys it could not
settle are returned as unknown, and the caller treats them as absent (it sends the file
again, which is always correct, only slower).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from desimirror.retrying import retry_call
from desimirror.storage.s3client import error_code, strip_etag

#: Fewer wanted keys than this in one place are HEADed one by one instead of listed.
LIST_MIN_KEYS = 16


@dataclass(frozen=True)
class ObjectInfo:
    """One object as the store describes it."""

    key: str
    size: int
    etag: str
    checksum_sha256: str | None = None  # base64; a composite ends in "-N"
    checksum_known: bool = False  # True when asked for (HEAD with ChecksumMode)


@dataclass
class Found:
    """The result of a lookup: objects found, and keys whose state is unknown."""

    objects: dict[str, ObjectInfo]
    unknown: set[str]


class ObjectLookup:
    """Looks up keys in one bucket with a small thread pool; see the module docstring."""

    attempts = 4
    backoff = 0.5
    #: Objects a LIST page holds (ListObjectsV2's largest); pages are budgeted by it.
    page_keys = 1000

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        workers: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.workers = max(1, workers)
        self.sleep = sleep
        self.requests = 0  # sent, attempts included
        self._count_lock = threading.Lock()

    def find(self, keys: Iterable[str], *, checksums: bool = False) -> Found:
        """Every key of ``keys`` that exists. HEADs ask for checksums (free on a HEAD);
        ``checksums`` HEADs every key, so that each object's SHA-256 is known."""
        wanted = sorted(set(keys))
        found = Found({}, set())
        if not wanted:
            return found
        with ThreadPoolExecutor(self.workers, thread_name_prefix="desimirror-lookup") as pool:
            if checksums or len(wanted) < LIST_MIN_KEYS:
                for key, info in zip(wanted, pool.map(self.head, wanted), strict=True):
                    _add(found, key, info)
                return found
            root = _shared_directory(wanted[0], wanted[-1])
            running: set[Future] = {pool.submit(self._list_tree, root, wanted)}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    part, subtrees = future.result()
                    found.objects.update(part.objects)
                    found.unknown |= part.unknown
                    running |= {pool.submit(self._list_tree, p, ks) for p, ks in subtrees}
        return found

    def head(self, key: str, checksums: bool = True) -> ObjectInfo | object | None:
        """The object under ``key``, None if there is none, or ``_UNKNOWN`` after failures."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if checksums:
            kwargs["ChecksumMode"] = "ENABLED"
        response = self._call(self.client.head_object, kwargs, missing_ok=True)
        if response is None or response is _UNKNOWN:
            return response
        return ObjectInfo(
            key,
            int(response.get("ContentLength", -1)),
            strip_etag(response.get("ETag")),
            response.get("ChecksumSHA256"),
            checksum_known=checksums,
        )

    def _list_tree(self, prefix: str, keys: list[str]) -> tuple[Found, list[tuple[str, list]]]:
        """Settle ``keys`` (all under ``prefix``) by listing the subtree, or return the
        parts to list one level down when the subtree is too crowded for its budget."""
        if len(keys) < LIST_MIN_KEYS:
            found = Found({}, set())
            for key in keys:
                _add(found, key, self.head(key, checksums=False))
            return found, []
        wanted = set(keys)
        budget = 1 + 2 * -(-len(keys) // self.page_keys)
        listed = self._list(prefix, delimited=False, max_pages=budget, wanted=wanted)
        if listed is None:
            return Found({}, wanted), []
        objects, complete = listed
        if complete:
            return Found(objects, set()), []
        found = Found(objects, set())
        direct: list[str] = []
        below: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            if key not in objects:
                head, sep, _ = key[len(prefix) :].partition("/")
                if sep:
                    below[prefix + head + "/"].append(key)
                else:
                    direct.append(key)
        if len(direct) >= LIST_MIN_KEYS:
            here = self._list(prefix, delimited=True, wanted=set(direct))
            if here is None:
                found.unknown.update(direct)
            else:
                found.objects.update(here[0])
        else:
            for key in direct:
                _add(found, key, self.head(key, checksums=False))
        return found, list(below.items())

    def _list(
        self, prefix: str, *, delimited: bool, wanted: set[str], max_pages: int | None = None
    ) -> tuple[dict[str, ObjectInfo], bool] | None:
        """The wanted objects under ``prefix`` (only those directly under it if
        ``delimited``) and whether the listing ran to its end; None after failures."""
        objects: dict[str, ObjectInfo] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        kwargs["MaxKeys"] = self.page_keys
        if delimited:
            kwargs["Delimiter"] = "/"
        pages = 0
        while max_pages is None or pages < max_pages:
            page = self._call(self.client.list_objects_v2, kwargs)
            if page is _UNKNOWN or page is None:
                return None
            pages += 1
            for obj in page.get("Contents", ()):
                if obj["Key"] in wanted:
                    objects[obj["Key"]] = ObjectInfo(
                        obj["Key"], int(obj["Size"]), strip_etag(obj.get("ETag"))
                    )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return objects, True
            kwargs["ContinuationToken"] = token
        return objects, False

    def _call(self, method: Callable[..., Any], kwargs: dict[str, Any], *, missing_ok=False):
        """One request with a few attempts; None for a missing key, _UNKNOWN if it never worked."""

        def attempt() -> Any:
            with self._count_lock:
                self.requests += 1
            return method(**kwargs)

        try:
            return retry_call(
                attempt,
                attempts=self.attempts,
                base=self.backoff,
                retry_on=_worth_another_attempt,
                sleep=self.sleep,
            )
        except Exception as exc:
            if missing_ok and _is_missing(exc):
                return None
            return _UNKNOWN  # refused, or never answered: the caller treats it as unknown


_UNKNOWN = object()


def _is_missing(exc: BaseException) -> bool:
    code, status = error_code(exc)
    return status == 404 or code in ("404", "NoSuchKey", "NotFound")


def _worth_another_attempt(exc: BaseException) -> bool:
    """Not a missing key, and not refused (a 4xx other than a timeout or throttling)."""
    _, status = error_code(exc)
    refused = status is not None and 400 <= status < 500 and status not in (408, 429)
    return not _is_missing(exc) and not refused


def _shared_directory(first: str, last: str) -> str:
    """The longest ``a/b/`` prefix of two sorted keys, so of every key between them."""
    same = 0
    for a, b in zip(first, last, strict=False):
        if a != b:
            break
        same += 1
    return first[: first.rfind("/", 0, same) + 1]


def _add(found: Found, key: str, info: ObjectInfo | object | None) -> None:
    """File one HEAD's answer under objects (present), unknown (failed) or nowhere (absent)."""
    if info is _UNKNOWN:
        found.unknown.add(key)
    elif isinstance(info, ObjectInfo):
        found.objects[key] = info
