"""List everything under a bucket prefix with several requests in flight.

One ListObjectsV2 paginator is strictly sequential: each page's continuation token is in
the answer to the previous one. For ten million objects that is ten thousand round trips
in a row. :func:`list_tree` first walks the top of the prefix with delimited listings
(one "directory" level at a time, yielding the objects it meets on the way; DESI trees
start with chains of single directories, ``edr/spectro/redux/iron/...``) until it has
enough sub-prefixes to keep ``workers`` busy, then lists each sub-prefix whole in a thread
pool. Every key under the prefix lies either directly under a level walked or under
exactly one of those sub-prefixes, so each object comes out once; the order is not kept.

Pages travel through a bounded queue, so memory stays bounded whatever the listing's
size, and a consumer that stops early stops the workers too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from desimirror.storage.s3client import list_objects, list_pages, page_objects

#: Rows handed over at once: about one page.
ROWS = 1000
#: How long a waiting side sleeps before it looks again whether the other side is done.
POLL_SECONDS = 0.2


def list_tree(
    client: Any,
    bucket: str,
    prefix: str = "",
    *,
    workers: int = 8,
    max_depth: int = 12,
) -> Iterator[tuple[str, int, str]]:
    """Stream ``(key, size, etag)`` of every object under ``prefix``; see the module doc."""
    frontier = [prefix]
    for _ in range(max_depth):
        if workers <= 1 or len(frontier) >= 4 * workers:
            break
        deeper: list[str] = []
        for level in frontier:
            for page in list_pages(client, bucket, level, delimited=True):
                yield from page_objects(page)
                deeper.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
        if not deeper:
            return
        frontier = deeper
    if len(frontier) == 1 or workers <= 1:
        for level in frontier:
            yield from list_objects(client, bucket, level)
        return
    yield from _in_parallel(client, bucket, frontier, workers)


def _in_parallel(
    client: Any, bucket: str, prefixes: list[str], workers: int
) -> Iterator[tuple[str, int, str]]:
    pages: queue.Queue[list[tuple[str, int, str]]] = queue.Queue(maxsize=2 * workers)
    stop = threading.Event()

    def hand_over(rows: list[tuple[str, int, str]]) -> bool:
        while not stop.is_set():
            try:
                pages.put(rows, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def list_one(prefix: str) -> None:
        rows: list[tuple[str, int, str]] = []
        for row in list_objects(client, bucket, prefix):
            rows.append(row)
            if len(rows) >= ROWS:
                if not hand_over(rows):
                    return
                rows = []
        if rows:
            hand_over(rows)

    with ThreadPoolExecutor(workers, thread_name_prefix="desimirror-list") as pool:
        futures: list[Future] = [pool.submit(list_one, p) for p in prefixes]
        try:
            while True:
                try:
                    yield from pages.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    failed = next((f for f in futures if f.done() and f.exception()), None)
                    if failed is not None:
                        raise failed.exception() from None  # type: ignore[misc]
                    if all(f.done() for f in futures) and pages.empty():
                        return
        finally:
            stop.set()
