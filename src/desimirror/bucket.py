"""What the bucket already holds under given keys: size, ETag and, on request, SHA-256.

The uploader asks before sending (to adopt objects that are already right) and, for the
s5cmd backend, after sending (to compare ETags). Keys are looked up the cheapest way:
where many wanted keys share a "directory", one LIST of that directory (up to 1000 objects
a request); elsewhere one HEAD per key (on AWS a HEAD costs a twelfth of a LIST).

A lookup that keeps failing does not stop the upload: the keys it could not settle are
returned as unknown, and the caller treats them as absent (it sends the file again, which
is always correct, only slower).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from desimirror.s3client import error_code, strip_etag

#: A directory with at least this many wanted keys is listed instead of HEADed key by key.
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
        self.requests = 0

    def find(self, keys: Iterable[str], *, checksums: bool = False) -> Found:
        """Every key of ``keys`` that exists. HEADs ask for checksums (free on a HEAD);
        ``checksums`` HEADs every key, so that each object's SHA-256 is known."""
        groups: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            groups[key.rsplit("/", 1)[0] + "/" if "/" in key else ""].append(key)
        found = Found({}, set())
        listed = [] if checksums else [p for p, ks in groups.items() if len(ks) >= LIST_MIN_KEYS]
        heads = [k for p, ks in groups.items() if p not in listed for k in ks]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="desimirror-lookup") as pool:
            for prefix, objects in zip(listed, pool.map(self._list_dir, listed), strict=True):
                wanted = set(groups[prefix])
                if objects is None:
                    found.unknown |= wanted
                else:
                    found.objects.update({k: o for k, o in objects.items() if k in wanted})
            for key, info in zip(heads, pool.map(self.head, heads), strict=True):
                if info is _UNKNOWN:
                    found.unknown.add(key)
                elif info is not None:
                    found.objects[key] = info
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

    def _list_dir(self, prefix: str) -> dict[str, ObjectInfo] | None:
        """The objects directly under ``prefix`` (one "directory"), or None after failures."""
        objects: dict[str, ObjectInfo] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(self.client.list_objects_v2, kwargs)
            if page is _UNKNOWN or page is None:
                return None
            for obj in page.get("Contents", ()):
                objects[obj["Key"]] = ObjectInfo(
                    obj["Key"], int(obj["Size"]), strip_etag(obj.get("ETag"))
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return objects

    def _call(self, method: Callable[..., Any], kwargs: dict[str, Any], *, missing_ok=False):
        """One request with a few attempts; None for a missing key, _UNKNOWN if it never worked."""
        for attempt in range(1, self.attempts + 1):
            self.requests += 1
            try:
                return method(**kwargs)
            except Exception as exc:
                code, status = error_code(exc)
                if missing_ok and (status == 404 or code in ("404", "NoSuchKey", "NotFound")):
                    return None
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    return _UNKNOWN  # refused: another attempt will not help
                if attempt < self.attempts:
                    self.sleep(self.backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
        return _UNKNOWN


_UNKNOWN = object()
