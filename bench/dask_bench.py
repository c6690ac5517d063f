"""The upload on one node against the same upload on a Dask cluster (``--scheduler``).

Why this shape: the figure that matters on a cluster is the aggregate of several transfer
nodes, and the coordinator's own CPU per file, which must stay far below a worker's for
the coordinator never to be the limit. Here every run uploads the same synthetic tree
from a copy of the same planned db into a fresh bucket of one embedded SeaweedFS:

* ``here``: ``desimirror upload`` as on one node (the crt backend in this process);
* ``dask xN``: the same command with ``--scheduler`` of a ``distributed.LocalCluster``
  of N worker processes (one thread each), each worker running the crt backend.

On this machine every process shares two cores with the SeaweedFS server, so the server
(its CPU is printed) is what limits the aggregate: two workers cannot send faster than
one server stores. What the table shows that carries over to real nodes is the CPU per
file: the coordinator's (this process, which checks, records and hands chunks out)
against the workers' (which read and send).

    .venv/bin/python bench/dask_bench.py [--scale 0.5] [--repeat 2] [--workers 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from desimirror.dev.s3server import SeaweedServer
from upload_bench import BIN, Bench, BenchOptions, log, process_cpu_seconds, run_timed

DESIMIRROR = str(BIN / "desimirror")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.5, help="synth --scale of the tree")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting (median)")
    parser.add_argument("--workers", type=int, default=32, help="transfers in flight per node")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dask-bench-"))
    try:
        report = run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


def run(base: Path, args: argparse.Namespace) -> dict:
    tree = base / "edr"
    subprocess.run(
        [DESIMIRROR, "synth", str(tree), "--scale", str(args.scale), "--seed", "1"], check=True
    )
    planned = base / "planned.db"
    subprocess.run([DESIMIRROR, "crawl", str(tree), "--db", str(planned)], check=True)
    subprocess.run(
        [DESIMIRROR, "plan", "--db", str(planned), "--max-batch-size", "1TB"], check=True
    )
    options = BenchOptions(args.scale, 1, args.workers, [], [], None, False, args.repeat)
    rows = []
    with SeaweedServer(base / "seaweed") as server:
        bench = Bench(server, base, options)
        bench.wait_writable()
        settings: list[tuple[str, int]] = [("here", 0), ("dask x1", 1), ("dask x2", 2)]
        for label, n_workers in settings:
            runs = [
                one_run(bench, server, planned, label, n_workers, args.workers, i)
                for i in range(args.repeat)
            ]
            rows.append(summarize(label, runs))
    return {"scale": args.scale, "workers_per_node": args.workers, "rows": rows, "load": load()}


def one_run(
    bench: Bench,
    server: SeaweedServer,
    planned: Path,
    label: str,
    n_workers: int,
    transfers: int,
    number: int,
) -> dict:
    db = planned.with_name(f"run-{label.replace(' ', '')}-{number}.db")
    shutil.copy(planned, db)
    bucket = bench.new_bucket(label)
    argv = [DESIMIRROR, "upload", "--db", str(db), "--bucket", f"s3://{bucket}"]
    argv += ["--endpoint-url", server.endpoint_url, "--workers", str(transfers), "--json"]
    cluster = start_cluster(n_workers, server.env()) if n_workers else None
    try:
        if cluster is not None:
            argv += ["--scheduler", cluster.scheduler_address]
        server_cpu = process_cpu_seconds(server.process.pid)
        timed = run_timed(argv, bench.env, bench.logs, f"{label}-{number}")
        server_cpu = process_cpu_seconds(server.process.pid) - server_cpu
    finally:
        if cluster is not None:
            cluster.close()
    report = json.loads(timed.stdout)
    log(f"{label} #{number}: {report['files_sent']} files in {timed.seconds:.1f}s")
    return {
        "seconds": timed.seconds,
        "upload_seconds": report["seconds"],
        "files": report["files_sent"],
        "bytes": report["bytes_sent"],
        "coordinator_cpu": report["cpu_seconds"],
        "worker_cpu": report["worker_cpu_seconds"],
        "server_cpu": server_cpu,
        "workers": report["workers"],
    }


def start_cluster(n_workers: int, env: dict[str, str]):
    """A LocalCluster of worker processes with the server's credentials (their AWS chain)."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        protocol="tcp",
        env=dict(env),
    )


def summarize(label: str, runs: list[dict]) -> dict:
    """The median run's figures; CPU per file in microseconds."""
    seconds = statistics.median(r["upload_seconds"] for r in runs)
    files, nbytes = runs[0]["files"], runs[0]["bytes"]
    per_file = lambda key: 1e6 * statistics.median(r[key] for r in runs) / max(files, 1)  # noqa: E731
    return {
        "setting": label,
        "files": files,
        "bytes": nbytes,
        "seconds": round(seconds, 2),
        "mb_per_second": round(nbytes / seconds / 1e6, 1),
        "files_per_second": round(files / seconds, 1),
        "coordinator_cpu_us_per_file": round(per_file("coordinator_cpu")),
        "worker_cpu_us_per_file": round(per_file("worker_cpu")),
        "server_cpu_us_per_file": round(per_file("server_cpu")),
        "runs": runs,
    }


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def print_table(report: dict) -> None:
    print(f"\nscale {report['scale']}, --workers {report['workers_per_node']} per node")
    print("load average at the end:", report["load"])
    head = (
        f"{'setting':<10} {'files':>6} {'MB':>7} {'s':>6} {'MB/s':>7} {'files/s':>8} "
        f"{'coord µs/file':>14} {'worker µs/file':>15} {'server µs/file':>15}"
    )
    print(head)
    for r in report["rows"]:
        print(
            f"{r['setting']:<10} {r['files']:>6} {r['bytes'] / 1e6:>7.1f} {r['seconds']:>6.2f} "
            f"{r['mb_per_second']:>7.1f} {r['files_per_second']:>8.1f} "
            f"{r['coordinator_cpu_us_per_file']:>14} {r['worker_cpu_us_per_file']:>15} "
            f"{r['server_cpu_us_per_file']:>15}"
        )
    print(
        "coordinator: this process (checks, records, hands out chunks; on one node it also "
        "sends); worker: the Dask workers' processes while sending; server: SeaweedFS"
    )


if __name__ == "__main__":
    sys.exit(main())
