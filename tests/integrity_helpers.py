"""Helpers for the integrity and fault tests: small releases with checksum listings, runs of
the ``desimirror`` command against an endpoint, and reads of the state db."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path

from helpers import run_cli

MiB = 1 << 20
LISTING = "checksums.sha256sum"


def make_release(root: Path, files: dict[str, bytes], *, listing: str = LISTING) -> None:
    """Write ``files`` (relative path -> bytes) under ``root`` and, in every directory that
    holds files, a ``sha256sum`` listing of them, as DESI releases have."""
    by_dir: dict[Path, list[str]] = {}
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        by_dir.setdefault(path.parent, []).append(path.name)
    for directory, names in by_dir.items():
        write_listing(directory, names, listing=listing)


def write_listing(directory: Path, names: list[str], *, listing: str = LISTING) -> None:
    lines = [f"{hashlib.sha256((directory / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (directory / listing).write_text("".join(sorted(lines, key=lambda line: line[66:])))


def random_files(seed: int, count: int, *, dirs: int = 4, low: int = 100, high: int = 60_000):
    """``count`` files of random sizes and bytes spread over ``dirs`` directories."""
    rng = random.Random(seed)
    return {
        f"d{i % dirs}/sub{i % 2}/f{i:04d}.fits": rng.randbytes(rng.randint(low, high))
        for i in range(count)
    }


def corrupt_keeping_stat(path: Path, offset: int = 0) -> None:
    """Flip one byte while keeping size and mtime: silent corruption the crawl cannot see."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def prepare(root: Path, db: Path, *plan_args: str) -> None:
    run_cli("crawl", str(root), "--db", str(db), check=True)
    run_cli("plan", "--db", str(db), "--max-batch-size", "1MB", *plan_args, check=True)


def against(command: str, db: Path, bucket: str, endpoint: str, env: dict, *args: str):
    """Run ``desimirror COMMAND --db DB --bucket s3://BUCKET --endpoint-url URL ARGS``;
    returns (process, its ``--json`` report or None)."""
    target = ["--db", str(db), "--bucket", f"s3://{bucket}", "--endpoint-url", endpoint]
    proc = run_cli(command, *target, "--json", *args, env=env)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = None
    return proc, report


def upload(db: Path, bucket: str, endpoint: str, env: dict, *args: str):
    """``desimirror upload --json``: (process, report or None)."""
    return against("upload", db, bucket, endpoint, env, *args)


def verify(db: Path, bucket: str, endpoint: str, env: dict, *args: str):
    """``desimirror verify --json``: (process, report or None)."""
    return against("verify", db, bucket, endpoint, env, *args)


def rows(db: Path, query: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def uploads(db: Path) -> dict[str, tuple]:
    """path -> (key, proof, adopted, uploaded_at) for every confirmed file."""
    found = rows(db, "SELECT path, key, proof, adopted, uploaded_at FROM uploads")
    return {r[0]: r[1:] for r in found}


def bucket_matches_disk(client, bucket: str, root: Path, db: Path) -> int:
    """Every recorded upload's object holds exactly its file's bytes; returns how many."""
    recorded = rows(db, "SELECT path, key FROM uploads")
    for path, key in recorded:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == (root / path).read_bytes(), path
    return len(recorded)


def count_files(root: Path) -> int:
    """Regular files under ``root`` (symlinks not followed): what a mirror must hold."""
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())
