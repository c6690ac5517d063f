"""``make bench``'s download benchmark: desimirror download beside s5cmd sync and aws s3 sync.

A benchmark, not a test: it measures and prints, it asserts nothing about time. One
embedded SeaweedFS (public reads, as DESI's bucket) holds a mirrored release (a synthetic
small-files tree and a few large files, uploaded with desimirror and their manifest
published); every tool then downloads the same prefix into a fresh directory, unsigned, at
the same concurrency, in an order that rotates each round. desimirror proves every file
it writes (its report's ``proofs``); the others prove nothing. Afterwards each copy is
counted and compared, file by file, with the source tree.

    python bench/download_bench.py                 # ~2 min on 2 cores
    python bench/download_bench.py --quick         # a smoke run
    python bench/download_bench.py --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from desimirror.binaries import find_binary
from desimirror.dev.s3server import SeaweedServer
from upload_bench import (
    BIN,
    Result,
    Tree,
    add_ratios,
    add_round_ratios,
    format_table,
    log,
    make_large_tree,
    median_run,
    process_cpu_seconds,
    run_timed,
)

WORKERS = 64
TOOLS = ("s5cmd sync", "aws s3 sync", "desimirror download")
TARGET_RATIO = 0.9
BUCKET = "bench-download"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/download_bench.py", description=__doc__)
    parser.add_argument("--scale", type=float, default=None, help="synth --scale (default 1)")
    parser.add_argument("--large-mb", default=None, help="large files in MiB (default 128,256,384)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="for every tool (64)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per tool (default 2)")
    parser.add_argument("--quick", action="store_true", help="--scale 0.05 --large-mb 8 --repeat 1")
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    args.scale = args.scale if args.scale is not None else (0.05 if args.quick else 1.0)
    args.large_mb = (
        args.large_mb if args.large_mb is not None else ("8" if args.quick else "128,256,384")
    )
    args.repeat = args.repeat or (1 if args.quick else 2)
    return args


class DownloadBench:
    def __init__(self, server: SeaweedServer, work: Path, workers: int) -> None:
        self.server, self.work, self.workers = server, work, workers
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        aws_config = work / "aws-config"  # aws-cli reads its concurrency from a file only
        aws_config.write_text(
            f"[default]\nregion = us-east-1\ns3 =\n  max_concurrent_requests = {workers}\n"
        )
        self.env = {
            **os.environ,
            **server.env(),
            "AWS_CONFIG_FILE": str(aws_config),
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        self.counter = 0

    def mirror(self, root: Path) -> None:
        """Upload ``root`` with desimirror and publish its manifest (not timed)."""
        db = self.work / f"{root.name}.db"
        dm = str(BIN / "desimirror")
        target = ["--db", str(db), "--bucket", f"s3://{BUCKET}"]
        target += ["--endpoint-url", self.server.endpoint_url]
        for argv in (
            [dm, "crawl", str(root), "--db", str(db)],
            [dm, "plan", "--db", str(db)],
            [dm, "upload", *target, "--backend", "s5cmd"],
            [dm, "manifest", "publish", *target],
        ):
            run = run_timed(argv, self.env, self.logs, f"mirror-{root.name}-{argv[1]}")
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:3])} failed: {run.stderr[-600:]}")

    def argv(self, tool: str, release: str, dest: Path) -> list[str]:
        url, workers = self.server.endpoint_url, str(self.workers)
        if tool == "s5cmd sync":
            return [
                find_binary("s5cmd"),
                "--endpoint-url",
                url,
                "--no-sign-request",
                "--numworkers",
                workers,
                "sync",
                f"s3://{BUCKET}/{release}/*",
                f"{dest}/{release}/",
            ]
        if tool == "aws s3 sync":
            return [
                str(BIN / "aws"),
                "--endpoint-url",
                url,
                "--cli-read-timeout",
                "10",
                "s3",
                "sync",
                "--no-sign-request",
                "--only-show-errors",
                f"s3://{BUCKET}/{release}",
                f"{dest}/{release}",
            ]
        return [
            str(BIN / "desimirror"),
            "download",
            f"s3://{BUCKET}/{release}",
            str(dest),
            "--endpoint-url",
            url,
            "--no-sign-request",
            "--workers",
            workers,
            "--json",
        ]

    def run(self, workload: str, tool: str, root: Path) -> Result:
        self.counter += 1
        dest = self.work / f"copy-{self.counter:02d}"
        argv = self.argv(tool, root.name, dest)
        cpu0 = process_cpu_seconds(self.server.process.pid)  # type: ignore[union-attr]
        run = run_timed(argv, self.env, self.logs, f"{workload}-{tool}-{self.counter}")
        server_cpu = process_cpu_seconds(self.server.process.pid) - cpu0  # type: ignore[union-attr]
        result = self._result(workload, tool, root, dest, run, server_cpu)
        if tool == "desimirror download":
            again = run_timed(argv, self.env, self.logs, f"{workload}-noop-{self.counter}")
            result.extra["noop_seconds"] = round(again.seconds, 3)
            result.extra["noop_report"] = _json(again.stdout)
        shutil.rmtree(dest, ignore_errors=True)
        return result

    def _result(
        self, workload: str, tool: str, root: Path, dest: Path, run, server_cpu: float
    ) -> Result:
        source = _source_files(root)
        copy = _files(dest / root.name)
        copy = {k: v for k, v in copy.items() if not k.startswith(".desimirror/")}
        wrong = [k for k in source if k not in copy or copy[k] != source[k]]
        notes = [f"{len(wrong)} files missing or different, e.g. {wrong[0]}"] if wrong else []
        extra: dict[str, Any] = {}
        if tool == "desimirror download":
            report = _json(run.stdout) or {}
            extra["proofs"] = report.get("proofs", {})
            # the release's links to its files come back as links, their targets proven
            extra["links"] = sum((dest / root.name / k).is_symlink() for k in source)
            proven = sum(extra["proofs"].values()) + extra["links"]
            if proven < len(source):
                notes.append(f"only {proven:,} of {len(source):,} files proven")
        return Result(
            workload=workload,
            tool=tool,
            files=len(copy),
            bytes=sum(s for s, _ in copy.values()),
            seconds=run.seconds,
            cpu_seconds=run.cpu_seconds,
            server_cpu_seconds=server_cpu,
            expected_files=len(source),
            ok=run.returncode == 0 and not wrong,
            command=" ".join(run.argv),
            notes=notes,
            extra=extra,
        )


def _source_files(root: Path) -> dict[str, tuple[int, str]]:
    """What a copy must hold: the regular files and the in-tree links to files (uploaded
    as copies; the sync tools get copies, desimirror download the link again from the
    published manifest), by relative path."""
    tree = Tree.scan(root)
    out = {}
    for key in (*tree.regular, *tree.file_links):
        data = (root / key.split("/", 1)[1]).read_bytes()
        out[key.split("/", 1)[1]] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _files(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (size, SHA-256) of every regular file (links as their targets)."""
    out: dict[str, tuple[int, str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            out[str(path.relative_to(root))] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _json(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="desimirror-dlbench-"))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
        "workers": args.workers,
        "repeat": args.repeat,
        "workloads": {},
    }
    try:
        with SeaweedServer(work / "seaweed", anonymous_read=True) as server:
            bench = DownloadBench(server, work, args.workers)
            _wait_writable(bench)
            workloads: list[tuple[str, Path]] = []
            if args.scale > 0:
                small = work / "src-small" / "edr"
                small.parent.mkdir()
                argv = [str(BIN / "desimirror"), "synth", str(small), "--scale", str(args.scale)]
                run_timed(argv, bench.env, bench.logs, "synth")
                workloads.append(("small files", small))
            sizes = [int(s) for s in args.large_mb.split(",") if s.strip()]
            if sizes:
                large = work / "src-large" / "dr1"
                make_large_tree(large, sizes, seed=1)
                workloads.append(("large files", large))
            for name, root in workloads:
                bench.mirror(root)
                log(f"{name}: mirrored {root}")
                runs: dict[str, list[Result]] = {t: [] for t in TOOLS}
                for round_number in range(args.repeat):
                    order = TOOLS[round_number % 3 :] + TOOLS[: round_number % 3]
                    for tool in order:
                        runs[tool].append(bench.run(name, tool, root))
                        log(f"{name}: {tool} {runs[tool][-1].seconds:.2f}s")
                results = [median_run(runs[t]) for t in TOOLS]
                add_ratios(results, "s5cmd sync")
                add_round_ratios(results, runs, "s5cmd sync")
                report["workloads"][name] = {"results": results}
        report["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _wait_writable(bench: DownloadBench, timeout: float = 60.0) -> None:
    """The gateway answers before the volume server stores anything: wait (bounded)."""
    import boto3

    creds = bench.server.env()
    s3 = boto3.client(
        "s3",
        endpoint_url=bench.server.endpoint_url,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=BUCKET)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s3.put_object(Bucket=BUCKET, Key="probe", Body=b"probe")
            s3.delete_object(Bucket=BUCKET, Key="probe")
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the S3 server stores nothing after {timeout}s") from exc
            time.sleep(0.5)


def print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out = {**report, "workloads": {}}
        for name, w in report["workloads"].items():
            out["workloads"][name] = [r.as_dict() for r in w["results"]]
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    print(
        f"\ndesimirror download benchmark, {report['date']}, {report['cpus']} CPUs (load "
        f"average {report['loadavg_at_start']} at start, {report.get('loadavg_at_end')} at "
        f"end); every tool unsigned at {report['workers']} concurrent transfers into a fresh "
        f"directory; median of {report['repeat']} run(s)"
    )
    for name, w in report["workloads"].items():
        results: list[Result] = w["results"]
        print()
        print(format_table(name, results).replace("× s5cmd", "× sync "))
        for r in results:
            for note in r.notes:
                print(f"  (!) {r.tool}: {note}")
            if "all_seconds" in r.extra:
                print(f"  {r.tool}: every run {'/'.join(map(str, r.extra['all_seconds']))} s")
            if "round_ratios" in r.extra:
                ratios = "/".join(f"{x:.2f}" for x in r.extra["round_ratios"])
                print(f"  {r.tool}: × sync in each round {ratios}")
        dm = next(r for r in results if r.tool == "desimirror download")
        proofs = ", ".join(f"{k} {v:,}" for k, v in sorted(dm.extra.get("proofs", {}).items()))
        links = dm.extra.get("links", 0)
        print(
            f"  desimirror download: proven {proofs or 'nothing'}"
            + (f"; {links:,} links to files recreated as links" if links else "")
        )
        if "noop_seconds" in dm.extra:
            noop = dm.extra.get("noop_report") or {}
            print(
                f"  desimirror download again (resume, no-op): {dm.extra['noop_seconds']:.2f}s, "
                f"{noop.get('files_fetched', '?')} files fetched"
            )
        if dm.ratio_mb_s is not None:
            verdict = "met" if dm.ratio_mb_s >= TARGET_RATIO and dm.ok else "NOT met"
            print(
                f"  target desimirror download >= {TARGET_RATIO:.2f}x s5cmd sync with every "
                f"file proven: {verdict} ({dm.ratio_mb_s:.2f}x)"
            )
    print(
        "\n× sync: MB/s relative to s5cmd sync (with rounds: the median of each round's "
        "ratio); cpu s: the client's user+sys."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (BIN / "aws").is_file():
        log("aws-cli is not installed (pip install 'desimirror[bench]'): its row will fail")
    print_report(run_bench(args), args.json)


if __name__ == "__main__":
    main()
