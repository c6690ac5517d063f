"""Crawl benchmark: ``desimirror crawl`` against GNU find, fd-find and the original find.py.

A benchmark, not a test: it asserts nothing about time, it measures and prints, every
figure measured side by side in one run on the same trees. Three parts:

(a) a warm local tree (``desimirror synth --sparse``, ``--entries`` entries): the crawl,
    manifest written, against ``find -printf '%s %p\\n'`` (one lstat per entry, as the
    crawl needs), fd-find with a size filter (which makes it stat every file too) and
    the original find.py at the same worker count;
(b) the same kind of tree behind ``latencyfs`` (bench/latencyfs/latencyfs.c), a FUSE
    passthrough that sleeps ``--latency-us`` on every metadata call with the kernel's
    caches off: a stand-in for a network filesystem;
(c) a 1M-entry tree: crawl + find.json export with peak RSS, and the planner's time.

Peak RSS is GNU time's ``%M`` for each command: the largest of the process and the
children it waited for (the crawl's writer process included). Run as root for (b) (FUSE
mount); without gcc/pkg-config/fuse3 or without FUSE, (b) is skipped with a note.

    python bench/crawl_bench.py [--entries N] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
LATENCYFS_SOURCE = HERE / "latencyfs" / "latencyfs.c"
DEFAULT_FIND_PY = HERE.parent.parent / "shared" / "peers" / "desi-aws" / "find.py"
#: Entries per unit of ``desimirror synth --sparse --scale`` (measured: 359,716 at 100).
ENTRIES_PER_SCALE = 3597.0
#: The worker count every parallel tool gets; 64 is what the original needed per node.
WORKERS = 64
MOUNT_SECONDS = 10.0
FIND_SIZE_FORMAT = "%s %p\\n"
#: GNU time, for peak RSS (Debian package ``time``); without it, wait4's figure.
GNU_TIME = os.path.exists("/usr/bin/time")


@dataclass
class Run:
    """One timed command."""

    seconds: float
    max_rss_kb: int
    returncode: int
    stdout: str = ""


@dataclass
class Row:
    """One tool's line in a table: the median run of its repeats."""

    tool: str
    command: str
    seconds: float
    max_rss_mb: float
    runs: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class Section:
    title: str
    entries: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference: str = "find"  # the tool the ratios are taken against

    def ratio(self, row: Row) -> float | None:
        ref = next((r for r in self.rows if r.tool == self.reference), None)
        if ref is None or row.seconds <= 0:
            return None
        return row.seconds / ref.seconds


# ---------------------------------------------------------------- running commands


def timed(
    cmd: list[str], *, timeout: float, log: Path, capture: bool = False, cwd: Path | None = None
) -> Run:
    """Run ``cmd``; its wall time and peak RSS. Killed (by PID) past ``timeout``.

    The peak RSS comes from GNU time (``%M``) where installed: ``wait4`` on a child that
    Python forked also counts the pages it shared with this process before ``exec``
    (Linux keeps the old address space's high-water mark), which would charge the bench's
    own memory to every tool. GNU time is small, so its children's figures are theirs.
    """
    rss_file = log.with_suffix(".rss")
    wrapper = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if GNU_TIME else []
    with open(log, "ab") as err:
        err.write(f"\n$ {' '.join(cmd)}\n".encode())
        err.flush()
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        started = time.perf_counter()
        proc = subprocess.Popen([*wrapper, *cmd], stdout=out, stderr=err, cwd=cwd)
        chunks: list[bytes] = []
        deadline = started + timeout
        try:
            while True:
                if capture and proc.stdout is not None:
                    # reports are small: read them as they come, so the pipe never fills
                    fd = proc.stdout.fileno()
                    if select.select([fd], [], [], 0)[0] and (chunk := os.read(fd, 1 << 16)):
                        chunks.append(chunk)
                        continue
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{cmd[0]} ran past {timeout:.0f} s")
                time.sleep(0.002)
        except BaseException:
            proc.kill()
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.stdout is not None:
            chunks.append(proc.stdout.read())
            proc.stdout.close()
    max_rss_kb = usage.ru_maxrss
    if GNU_TIME:
        lines = rss_file.read_text().split()
        max_rss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return Run(seconds, max_rss_kb, proc.returncode, b"".join(chunks).decode())


def desimirror_command() -> list[str]:
    script = Path(sys.executable).parent / "desimirror"
    return [str(script)] if script.exists() else [sys.executable, "-m", "desimirror"]


def unlink_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].strip() if out else "?"


# ---------------------------------------------------------------- trees


def synth(dm: list[str], directory: Path, entries: int, log: Path) -> int:
    """A sparse synthetic release of about ``entries`` entries; returns the real count
    (files, directories and symlinks, the root included)."""
    scale = max(entries / ENTRIES_PER_SCALE, 0.05)
    cmd = [*dm, "synth", str(directory), "--scale", f"{scale:.3f}", "--sparse", "--json"]
    run = timed(cmd, timeout=1800, log=log, capture=True)
    if run.returncode != 0:
        raise SystemExit(f"synth failed (see {log})")
    return count_entries(directory)


def count_entries(directory: Path) -> int:
    count = 1
    stack = [str(directory)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


# ---------------------------------------------------------------- the latency mount


def build_latencyfs(workdir: Path, log: Path) -> tuple[Path | None, str]:
    """Compile latencyfs; (binary, "") or (None, why not)."""
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        return None, "gcc or pkg-config missing (Debian: gcc pkg-config libfuse3-dev fuse3)"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True
    )
    if flags.returncode != 0:
        return None, "libfuse3 development files missing (Debian: libfuse3-dev)"
    binary = workdir / "latencyfs"
    cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(LATENCYFS_SOURCE), *flags.stdout.split()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        with open(log, "a") as out:
            out.write(proc.stderr)
        return None, f"latencyfs did not compile (see {log})"
    return binary, ""


@contextlib.contextmanager
def latency_mount(
    binary: Path,
    source: Path,
    mountpoint: Path,
    latency_us: int,
    log: Path,
    *,
    direct_io: bool = False,
) -> Iterator[Path]:
    """``source`` behind latencyfs at ``mountpoint``; unmounted and stopped by PID after.
    ``direct_io``: no page cache, every byte read counted (the upload benchmark)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(binary),
        str(mountpoint),
        f"--source={source}",
        f"--latency-us={latency_us}",
        *(["--direct-io"] if direct_io else []),
        "-f",
        "-o",
        "ro,max_threads=1024,fsname=latencyfs,subtype=latencyfs",
    ]
    err = open(log, "ab")  # noqa: SIM115 - closed in the finally
    proc = subprocess.Popen(cmd, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + MOUNT_SECONDS
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"latencyfs did not mount (see {log})")
            time.sleep(0.05)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            unmount = ["fusermount3", "-u", str(mountpoint)]
            if subprocess.run(unmount, stderr=err, timeout=30).returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mountpoint)], stderr=err, timeout=30)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        err.close()


def fuse_available() -> str:
    """'' if a FUSE mount can be made here, else why not."""
    if shutil.which("fusermount3") is None:
        return "fusermount3 missing (Debian: fuse3)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing"
    if os.geteuid() != 0:
        return "not root (mounting needs root here)"
    return ""


# ---------------------------------------------------------------- the parts


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.log = workdir / "bench.log"
        self.dm = desimirror_command()
        self.fd = shutil.which("fdfind") or shutil.which("fd")
        self.find_py = Path(args.find_py)

    def say(self, message: str) -> None:
        if not self.args.json:
            print(message, file=sys.stderr, flush=True)

    def measure(
        self,
        section: Section,
        tools: list[tuple[str, list[str], int, float, Path | None]],
        *,
        entries_check: bool = True,
    ) -> None:
        """Run each (name, command, repeats, timeout, db to remove first), interleaved;
        record the median run of each."""
        times: dict[str, list[Run]] = {name: [] for name, *_ in tools}
        for round_ in range(max(t[2] for t in tools)):
            for name, cmd, repeats, timeout, fresh_db in tools:
                if round_ >= repeats:
                    continue
                if fresh_db is not None:
                    unlink_db(fresh_db)
                self.say(f"  {name} (run {round_ + 1}/{repeats})")
                run = timed(cmd, timeout=timeout, log=self.log, capture=cmd[0] in self.dm)
                if run.returncode != 0:
                    raise SystemExit(f"{name} failed with {run.returncode} (see {self.log})")
                if entries_check and "--json-report" in cmd:
                    report = json.loads(run.stdout)
                    if report["entries"] != section.entries or report["errors"]:
                        section.notes.append(
                            f"{name}: {report['entries']:,} entries, {report['errors']} errors"
                        )
                times[name].append(run)
        for name, cmd, *_ in tools:
            runs = sorted(times[name], key=lambda r: r.seconds)
            median = runs[(len(runs) - 1) // 2]
            section.rows.append(
                Row(
                    name,
                    " ".join(cmd),
                    round(median.seconds, 3),
                    round(median.max_rss_kb / 1024, 1),
                    [round(r.seconds, 3) for r in times[name]],
                )
            )

    def local(self) -> Section:
        tree = self.workdir / "local" / "release"
        tree.parent.mkdir()
        self.say(f"(a) synthesising a sparse tree of ~{self.args.entries:,} entries")
        entries = synth(self.dm, tree, self.args.entries, self.log)
        section = Section(f"(a) warm local tree, {entries:,} entries", entries)
        db = self.workdir / "local" / "m.db"
        recrawl_db = self.workdir / "local" / "again.db"
        json_out = self.workdir / "local" / "find.json"
        orig_out = self.workdir / "local" / "orig.json"
        repeats = self.args.repeat
        crawl = [*self.dm, "crawl", str(tree), "--workers", str(WORKERS), "--json-report"]
        timed(["find", str(tree), "-printf", FIND_SIZE_FORMAT], timeout=600, log=self.log)  # warm
        timed([*crawl, "--db", str(recrawl_db)], timeout=600, log=self.log)  # for the re-crawl
        tools: list[tuple[str, list[str], int, float, Path | None]] = [
            ("find", ["find", str(tree), "-printf", FIND_SIZE_FORMAT], repeats, 600, None),
        ]
        if self.fd:
            fd = [self.fd, "-u", "-S", "-1000t", ".", str(tree)]
            tools.append(("fd-find (stat per file)", fd, repeats, 600, None))
        tools += [
            ("desimirror crawl (new db)", [*crawl, "--db", str(db)], repeats, 600, db),
            ("desimirror crawl (re-crawl)", [*crawl, "--db", str(recrawl_db)], repeats, 600, None),
            (
                "desimirror crawl --find-json (new db)",
                [*crawl, "--db", str(db), "--find-json", str(json_out)],
                1,
                600,
                db,
            ),
        ]
        if self.find_py.exists() and not self.args.quick:
            orig = [sys.executable, str(self.find_py), str(tree)]
            orig += ["--max-workers", str(WORKERS), "-o", str(orig_out)]
            tools.append((f"original find.py --max-workers {WORKERS}", orig, 1, 1800, None))
        elif not self.find_py.exists():
            section.notes.append(f"original find.py not found at {self.find_py}")
        self.say(f"(a) timing on {entries:,} entries")
        self.measure(section, tools)
        return section

    def latency(self) -> Section | None:
        why = fuse_available()
        binary = None
        if not why:
            binary, why = build_latencyfs(self.workdir, self.log)
        if binary is None:
            self.say(f"(b) skipped: {why}")
            return Section(f"(b) latency mount: skipped ({why})", 0)
        source = self.workdir / "latency" / "release"
        source.parent.mkdir()
        self.say(f"(b) synthesising a sparse tree of ~{self.args.latency_entries:,} entries")
        entries = synth(self.dm, source, self.args.latency_entries, self.log)
        us = self.args.latency_us
        section = Section(
            f"(b) {us / 1000:g} ms per metadata call (latencyfs), {entries:,} entries", entries
        )
        db = self.workdir / "latency" / "m.db"
        orig_out = self.workdir / "latency" / "orig.json"
        with latency_mount(binary, source, self.workdir / "latency" / "mnt", us, self.log) as mnt:
            crawl = [*self.dm, "crawl", str(mnt), "--workers", str(WORKERS), "--json-report"]
            tools: list[tuple[str, list[str], int, float, Path | None]] = [
                (
                    f"desimirror crawl --workers {WORKERS}",
                    [*crawl, "--db", str(db)],
                    self.args.repeat,
                    600,
                    db,
                )
            ]
            if self.find_py.exists():
                orig = [sys.executable, str(self.find_py), str(mnt)]
                orig += ["--max-workers", str(WORKERS), "-o", str(orig_out)]
                tools.append((f"original find.py --max-workers {WORKERS}", orig, 1, 1800, None))
            if self.fd:
                fd = [self.fd, "-u", "-j", str(WORKERS), "-S", "-1000t", ".", str(mnt)]
                tools.append((f"fd-find -j {WORKERS} (stat per file)", fd, 1, 1800, None))
            if not self.args.quick:
                find = ["find", str(mnt), "-printf", FIND_SIZE_FORMAT]
                tools.append(("find", find, 1, 3600, None))
            else:
                section.reference = f"original find.py --max-workers {WORKERS}"
            # the first pass over a fresh mount makes the kernel's inodes (about 1.5 s per
            # 3k entries here): one unmeasured pass, so that every tool meets the same state
            timed([*crawl, "--db", str(db)], timeout=600, log=self.log)
            section.notes.append("after one unmeasured warm-up crawl of the fresh mount")
            self.say(f"(b) timing on the mount (find takes about {entries * 2.6e-3:.0f} s)")
            self.measure(section, tools)
        return section

    def big(self) -> Section | None:
        if not self.args.big_entries:
            return None
        tree = self.workdir / "big" / "release"
        tree.parent.mkdir()
        self.say(f"(c) synthesising a sparse tree of ~{self.args.big_entries:,} entries")
        started = time.perf_counter()
        entries = synth(self.dm, tree, self.args.big_entries, self.log)
        section = Section(f"(c) {entries:,} entries: memory, export, planner", entries)
        section.notes.append(f"synthesised in {time.perf_counter() - started:.0f} s")
        db = self.workdir / "big" / "m.db"
        json_out = self.workdir / "big" / "find.json"
        crawl = [*self.dm, "crawl", str(tree), "--db", str(db), "--workers", str(WORKERS)]
        tools: list[tuple[str, list[str], int, float, Path | None]] = [
            ("find", ["find", str(tree), "-printf", FIND_SIZE_FORMAT], 1, 600, None),
            (
                "desimirror crawl --find-json (new db)",
                [*crawl, "--find-json", str(json_out)],
                1,
                1800,
                db,
            ),
            ("desimirror plan", [*self.dm, "plan", "--db", str(db)], 1, 600, None),
            (
                "desimirror plan --max-batch-size 1GB",
                [*self.dm, "plan", "--db", str(db), "--max-batch-size", "1GB"],
                1,
                600,
                None,
            ),
        ]
        self.measure(section, tools, entries_check=False)
        size = json_out.stat().st_size if json_out.exists() else 0
        with open(json_out, "rb") as f:
            f.seek(max(size - 2, 0))
            complete = f.read() == b"]\n"
        section.notes.append(
            f"find.json: {size / 1e6:.0f} MB, {'complete' if complete else 'TRUNCATED'}"
        )
        return section


# ---------------------------------------------------------------- output


def table(section: Section) -> list[str]:
    lines = [section.title]
    if not section.rows:
        return lines
    ref = section.reference
    width = max(len(r.tool) for r in section.rows)
    lines.append(f"  {'tool':<{width}}  {'seconds':>8}  {'x ' + ref[:10]:>12}  {'peak RSS':>9}")
    for row in section.rows:
        ratio = section.ratio(row)
        shown = "" if ratio is None else (f"{ratio:.2f}" if ratio >= 1 else f"1/{1 / ratio:.1f}")
        lines.append(
            f"  {row.tool:<{width}}  {row.seconds:>8.2f}  {shown:>12}  {row.max_rss_mb:>6.0f} MB"
        )
    lines += [f"  note: {n}" for n in section.notes]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/crawl_bench.py",
        description="Time desimirror crawl against GNU find, fd-find and the original "
        "find.py on a warm local tree, a FUSE mount with latency, and a 1M-entry tree.",
    )
    parser.add_argument("--entries", type=int, default=220_000, help="local tree size")
    parser.add_argument(
        "--latency-entries", type=int, default=25_000, help="tree size behind latencyfs"
    )
    parser.add_argument("--latency-us", type=int, default=1000, help="latency per call")
    parser.add_argument(
        "--big-entries", type=int, default=1_000_000, help="the big tree (0 skips it)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the fast tools (median)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 30k and 3k entries, no big tree, no find on the mount, one run",
    )
    parser.add_argument("--find-py", default=str(DEFAULT_FIND_PY), help="the original find.py")
    parser.add_argument("--workdir", type=Path, default=None, help="where trees go")
    parser.add_argument("--keep", action="store_true", help="keep the trees and logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries, args.latency_entries, args.big_entries = 30_000, 3_000, 0
        args.repeat = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="desimirror-crawl-bench-", dir=args.workdir))
    bench = Bench(args, workdir)
    started = time.perf_counter()
    sections: list[Section] = []
    try:
        sections.append(bench.local())
        latency = bench.latency()
        if latency is not None:
            sections.append(latency)
        big = bench.big()
        if big is not None:
            sections.append(big)
    finally:
        if args.keep:
            bench.say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "find": version(["find", "--version"]),
        "fd": version([bench.fd, "--version"]) if bench.fd else None,
        "seconds": round(time.perf_counter() - started),
    }
    if args.json:
        out = {
            "machine": machine,
            "sections": [
                {**asdict(s), "ratios": {r.tool: s.ratio(r) for r in s.rows}} for s in sections
            ],
        }
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"crawl benchmark: {machine['cpus']} CPUs, Python {machine['python']}, "
        f"{machine['find']}, {machine['fd']}; {machine['seconds']} s in all"
    )
    for section in sections:
        print()
        print("\n".join(table(section)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
