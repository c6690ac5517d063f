"""How long the web view takes to show a large mirror: the time from a request to the
first view's data (the totals, the throughput and the root level of the tree), and to a
directory one level down, on a generated manifest of N files (default 1M; ``--entries``).

The manifest is written through the state layer's own bulk methods, as a crawl writes it:
TOP directories of SUB directories of files, half of them done, 1% failed. Times are
printed, not asserted (a benchmark, not a test).

    python bench/view_bench.py [--entries 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from desimirror.state.manifest import FAILED, Manifest, UploadRecord
from desimirror.view import data
from desimirror.view.server import ViewServer, open_view

TOP = 10
SUB = 100
BATCH = 50_000


def _rows(files: int):
    per_dir = max(1, files // (TOP * SUB))
    yield ("", None, "", "dir", 0, 1, None, None, None, None, None)
    for t in range(TOP):
        top = f"d{t:02d}"
        yield (top, "", top, "dir", 0, 1, None, None, None, None, None)
        for s in range(SUB):
            sub = f"{top}/s{s:03d}"
            yield (sub, top, sub.rsplit("/", 1)[1], "dir", 0, 1, None, None, None, None, None)
            for f in range(per_dir):
                name = f"f{f:05d}.fits"
                size = 1000 + (t * 7919 + s * 104729 + f * 31) % 5_000_000
                yield (f"{sub}/{name}", sub, name, "file", size, 1, None, None, None, None, None)


def generate(db: Path, files: int) -> None:
    """A manifest of ``files`` files; every other one done, every hundredth failed."""
    with Manifest.open(db, create=True, writer="bench") as manifest:
        crawl = manifest.begin_crawl("/bench/release")
        batch: list[tuple] = []
        with manifest.bulk_load(drop_parent_index=True):
            for row in _rows(files):
                batch.append(row)
                if len(batch) >= BATCH:
                    with manifest.atomic():
                        manifest.put_crawl_rows(crawl, batch)
                    batch = []
            with manifest.atomic():
                manifest.put_crawl_rows(crawl, batch)
        manifest.close_crawl(crawl, earlier_entries=False)
        manifest.set_meta(
            "target", json.dumps({"bucket": "b", "prefix": "edr", "remap": ["edr/d00=zero"]})
        )
        run = manifest.begin_upload_run()
        done: list[UploadRecord] = []
        n = 0
        for row in _rows(files):
            if row[3] != "file":
                continue
            n += 1
            if n % 2:
                done.append(UploadRecord(row[0], "edr/" + row[0], row[4], 1, None, proof="sha256"))
            elif n % 100 == 0:
                with manifest.atomic():
                    manifest.record_failure(row[0], FAILED, "HTTP 500")
            if len(done) >= BATCH:
                with manifest.atomic():
                    manifest.record_mirrored(done)
                    manifest.tick_upload_run(run, len(done), sum(r.size for r in done))
                done = []
        with manifest.atomic():
            manifest.record_mirrored(done)
            manifest.tick_upload_run(run, len(done), sum(r.size for r in done))


def _timed(what: str, call) -> object:
    t0 = time.perf_counter()
    value = call()
    print(f"  {what:<46} {time.perf_counter() - t0:7.2f} s")
    return value


def measure(db: Path) -> None:
    """In-process (each query), then over HTTP as the page asks on its first load: the
    directory's sizes (what it draws first), and in parallel the totals, the states
    below each child and the failures."""
    manifest = _timed("open the db read-only", lambda: open_view(db))
    try:
        layout = data.keymap(manifest)
        _timed(
            "root level, sizes only (drawn first)",
            lambda: data.tree(manifest, "", layout, quick=True),
        )
        _timed("totals and throughput (status --json + chart)", lambda: data.summary(manifest))
        _timed("root level with the states below", lambda: data.tree(manifest, "", layout))
        _timed("one directory down (1/10 of the tree)", lambda: data.tree(manifest, "d03", layout))
        _timed("two down (1/1000 of the tree)", lambda: data.tree(manifest, "d03/s042", layout))
    finally:
        manifest.close()
    server = ViewServer(db, "127.0.0.1", 0, None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = server.url

        def get(path: str) -> None:
            with urllib.request.urlopen(base + path, timeout=900) as reply:
                reply.read()

        def first_load() -> None:
            asked = [threading.Thread(target=get, args=(p,)) for p in
                     ("api/summary", "api/tree?path=", "api/failures")]  # fmt: skip
            for ask in asked:
                ask.start()
            for ask in asked:
                ask.join()

        _timed("HTTP: the first view (root sizes)", lambda: get("api/tree?quick=1&path="))
        _timed("HTTP: totals, root states, failures (parallel)", first_load)
        _timed("HTTP: the same again, db unchanged (cached)", first_load)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="files in the manifest")
    parser.add_argument("--keep", type=Path, help="write the db into this directory and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = args.keep or Path(scratch)
        db = where / f"view-bench-{args.entries}.db"
        if not db.exists():
            t0 = time.perf_counter()
            generate(db, args.entries)
            print(f"generated {args.entries:,} files in {time.perf_counter() - t0:.1f} s ({db})")
        print(f"web view of {args.entries:,} files ({db.stat().st_size / 1e6:,.0f} MB db):")
        measure(db)


if __name__ == "__main__":
    main()
