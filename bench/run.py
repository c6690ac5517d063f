"""Entry point of ``make bench``: the upload benchmark (see bench/README.md).

A benchmark, not a test: it asserts nothing about time, it measures and prints. Kept as a
plain script (``python bench/run.py``) so that it runs from a fresh checkout without
installing the bench directory; its own directory is on ``sys.path`` that way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import upload_bench

DEFAULT_SCALE = 1.0
DEFAULT_LARGE_MB = "64,128,192"
QUICK_SCALE = 0.02
QUICK_LARGE_MB = "8,16"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=(
            "Time desimirror upload (s5cmd and native backends) against bare s5cmd, rclone "
            "and aws-cli on one synthetic tree and one embedded SeaweedFS, and print a table."
        ),
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"desimirror synth --scale for the small-files tree (default {DEFAULT_SCALE}; "
        "0 skips that workload)",
    )
    parser.add_argument("--seed", type=int, default=1, help="synth --seed (default 1)")
    parser.add_argument(
        "--large-mb",
        default=None,
        help=f"comma-separated sizes in MiB of the large-files workload (default "
        f"{DEFAULT_LARGE_MB}; empty skips it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=upload_bench.WORKERS,
        help="concurrent transfers for every tool (default 64, desimirror's default)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(upload_bench.ALL_TOOLS),
        help=f"comma-separated subset of {','.join(upload_bench.ALL_TOOLS)}; the resumed "
        "no-op run follows desimirror-s5cmd",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per tool, in rotating order; the median run and the median of the "
        "per-round ratios are reported (default 3, --quick 1)",
    )
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="read the trees from the local disk instead of through latencyfs --direct-io "
        "(no page cache, bytes read counted)",
    )
    parser.add_argument(
        "--no-mix", action="store_true", help="skip the DESI-like mix (small and large files)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: --scale {QUICK_SCALE}, large files of {QUICK_LARGE_MB} MiB, --repeat 1",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary directory goes"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep trees, dbs, logs and server data afterwards"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else DEFAULT_SCALE
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.large_mb is None:
        args.large_mb = QUICK_LARGE_MB if args.quick else DEFAULT_LARGE_MB
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(upload_bench.ALL_TOOLS))
    if unknown:
        parser.error(f"unknown tools: {', '.join(unknown)}")
    args.tools = tools
    if args.repeat < 1 or args.workers < 1 or args.scale < 0:
        parser.error("--repeat and --workers must be >= 1, --scale >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sizes = [int(s) for s in args.large_mb.split(",") if s.strip()]
    except ValueError:
        print(
            f"bench/run.py: --large-mb: not a list of integers: {args.large_mb!r}", file=sys.stderr
        )
        return 2
    options = upload_bench.BenchOptions(
        scale=args.scale,
        seed=args.seed,
        workers=args.workers,
        large_sizes_mb=sizes,
        tools=args.tools,
        workdir=args.workdir,
        keep=args.keep,
        repeat=args.repeat,
        fuse=not args.no_fuse,
        mix=not args.no_mix,
    )
    report = upload_bench.run_bench(options)
    upload_bench.print_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
