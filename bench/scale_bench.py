"""Every stage of desimirror on one manifest of 1M and 10M entries: wall time, peak memory.

    python bench/scale_bench.py                       # 1M and 10M (~15 min on 2 cores)
    python bench/scale_bench.py --sizes 1000000       # 1M only (~2 min)
    python bench/scale_bench.py --json > scale.json

No tree on disk and no server: the release is a synthetic seed-format ``find.json``
(:mod:`gen_findjson`), imported without ``--root``. Each stage runs in a process of its
own, whose peak RSS is read from ``os.wait4``'s rusage (that child's; Linux carries a
parent's peak over to its children, so this process stays small, and the generator runs in
a child too):

| stage | what runs |
|---|---|
| import | ``desimirror crawl --from-json FIND.json --db DB`` |
| plan | ``desimirror plan --db DB`` (1 TB / 10 GB batches, the seed's defaults) |
| status | ``desimirror status --db DB --json`` (before anything was uploaded) |
| upload --dry-run | ``desimirror upload --db DB --bucket s3://bench --dry-run --json`` |
| record half | entries given an mtime; every other file recorded as uploaded (commits of 1,000) |
| status (half done) | ``desimirror status`` again |
| verify (listing) | ``pipeline.verify.compare`` against a generated listing of every key |
| publish (writer) | ``pipeline.publish.write_manifest`` into a gzip file (``manifest publish``) |

The dry run contacts nothing; verify and publish run the library functions that
``desimirror verify`` and ``manifest publish`` run, without a server.

Then the state db's size on disk (db + WAL). Nothing is asserted: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DM = [sys.executable, "-m", "desimirror"]

# An import without --root has no mtimes, and a file is done only when confirmed with its
# crawl's mtime: the bench gives every entry one, as a crawl of the tree would, and counts
# the mirror again (the state layer's recount), before recording uploads.
RECORD_HALF = """
import sys, time
from desimirror.state import tallies
from desimirror.state.manifest import Manifest, UploadRecord
with Manifest.open(sys.argv[1], writer="bench") as m:
    with m.atomic() as conn:
        conn.execute("UPDATE entries SET mtime_ns = 1 WHERE mtime_ns IS NULL")
        tallies.recount(conn, "")
    chunk = []
    def flush():
        with m.atomic():
            m.record_mirrored(chunk)
        chunk.clear()
    for i, e in enumerate(m.iter_uploadables("")):
        if i % 2 == 0:
            chunk.append(UploadRecord(e.path, "k/" + e.path, e.size, e.mtime_ns or 0, "etag",
                                      proof="size"))
            if len(chunk) >= 1000:
                flush()
    flush()
"""

VERIFY = """
import sys
from desimirror.pipeline.verify import compare
from desimirror.state.manifest import Manifest
from desimirror.storage.keys import KeyMap
with Manifest.open(sys.argv[1], writer="bench") as m:
    keymap = KeyMap.build(m.root_name)
    with Manifest.open(sys.argv[1]) as reader:
        def list_objects(prefix):
            for e in reader.iter_uploadables(""):
                key = keymap.key(e.path)
                if key.startswith(prefix):
                    yield key, e.size, None
        report = compare(m, keymap, "bench", list_objects)
    print(report.matched, report.missing, report.differ, report.unexpected)
"""

PUBLISH = """
import gzip, sys
from desimirror.pipeline.publish import PublishReport, write_manifest
from desimirror.state.manifest import Manifest
from desimirror.storage.keys import KeyMap
with Manifest.open(sys.argv[1]) as m:
    keymap = KeyMap.build(m.root_name)
    report = PublishReport("bench", "m.tsv.gz", "m.json")
    with gzip.open(sys.argv[2], "wt", encoding="utf-8", newline="\\n", compresslevel=6) as out:
        write_manifest(m, keymap, out, report)
    print(report.entries)
"""


def run_stage(argv: list[str], log: Path) -> dict:
    """Run one stage in a child process; its wall time, peak RSS and exit status."""
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            child.returncode = 0  # reaped by wait4: Popen must not wait again
    seconds = time.monotonic() - started
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "exit": os.waitstatus_to_exitcode(status),
    }


def db_size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def bench_size(entries: int, work: Path, log: Path) -> dict:
    """All stages at one size."""
    find_json = work / f"find-{entries}.json"
    db = work / f"scale-{entries}.db"
    for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    # in a child: Linux keeps a parent's peak RSS as the floor of its children's, so this
    # process must stay small (the generator's directory sizes are ~100 MB at 10M)
    generator = [sys.executable, str(HERE / "gen_findjson.py"), "--entries", str(entries)]
    generated = subprocess.run(
        [*generator, "--root-name", "dr1", "--out", str(find_json)],
        check=True,
        capture_output=True,
        text=True,
    )
    written = int(generated.stderr.rsplit(": ", 1)[1].split()[0].replace(",", ""))
    result: dict = {
        "entries": written,
        "find_json_mb": round(find_json.stat().st_size / 1e6, 1),
        "generate_seconds": round(time.monotonic() - started, 1),
        "stages": {},
    }
    stages = [
        ("import", [*DM, "crawl", "--from-json", str(find_json), "--db", str(db), "--json"]),
        ("plan", [*DM, "plan", "--db", str(db), "--json"]),
        ("status", [*DM, "status", "--db", str(db), "--json"]),
        (
            "upload --dry-run",
            [*DM, "upload", "--db", str(db), "--bucket", "s3://bench", "--dry-run", "--json"],
        ),
        ("record half", [sys.executable, "-c", RECORD_HALF, str(db)]),
        ("status (half done)", [*DM, "status", "--db", str(db), "--json"]),
        ("verify (listing)", [sys.executable, "-c", VERIFY, str(db)]),
        ("publish (writer)", [sys.executable, "-c", PUBLISH, str(db), str(work / "m.tsv.gz")]),
    ]
    for name, argv in stages:
        result["stages"][name] = run_stage(argv, log)
        print(f"  {entries:>10,} {name:<20} {result['stages'][name]}", file=sys.stderr)
    result["db_mb"] = round(db_size(db) / 1e6, 1)
    find_json.unlink()
    return result


def table(results: list[dict]) -> str:
    names = list(results[0]["stages"])
    head = (
        "| stage: wall (CPU), peak RSS | "
        + " | ".join(f"{r['entries']:,} entries" for r in results)
        + " |"
    )
    rows = [head, "|---|" + "---:|" * len(results)]
    for name in names:
        cells = []
        for r in results:
            s = r["stages"][name]
            flag = "" if s["exit"] in (0, 5) else f" (exit {s['exit']})"
            cells.append(
                f"{s['seconds']:.1f} s ({s['cpu_seconds']:.1f} s CPU), "
                f"{s['peak_rss_mb']:.0f} MB{flag}"
            )
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(
        "| state db on disk | " + " | ".join(f"{r['db_mb']:,.0f} MB" for r in results) + " |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000", help="entries, comma-separated")
    parser.add_argument("--workdir", help="where the find.json and dbs go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="desimirror-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        log = work / "stages.log"
        results = []
        for entries in sizes:
            results.append(bench_size(entries, work, log))
            for leftover in work.glob("scale-*.db*"):
                leftover.unlink()
        if any(s["exit"] not in (0, 5) for r in results for s in r["stages"].values()):
            print(log.read_text()[-4000:], file=sys.stderr)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        print(table(results))
        version = sys.version.split()[0]
        print(f"\n({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, python {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
