"""Measure what reading through the access paths costs: bytes from the server, and time.

The byte counts come from :class:`desimirror.dev.relay.CountingProxy`, a TCP relay on
127.0.0.1 between the client and the S3 server that counts what crossed the network.
:func:`run_access_bench` writes one FITS file of the requested size (a real primary header
and a data unit of zeros) to an embedded SeaweedFS, then times and counts, side by side:
the primary header and the whole file through the FUSE mount (cold, then warm), through
:mod:`desimirror.access.data` (cold block cache, warm), and a plain full download with boto3.
``make bench`` runs it (or ``python bench/access_bench.py``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from desimirror.dev.relay import CountingProxy
from desimirror.dev.synth import write_large_fits


@dataclass
class Measure:
    """One row of the table."""

    path: str
    what: str
    seconds: float
    server_bytes: int


@dataclass
class Bench:
    rows: list[Measure] = field(default_factory=list)

    def time(self, proxy: CountingProxy, path: str, what: str, fn: Callable[[], object]) -> None:
        proxy.reset()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        time.sleep(0.2)  # let in-flight read-ahead arrive, so it is counted
        self.rows.append(Measure(path, what, elapsed, proxy.downstream))

    def table(self, size: int) -> str:
        lines = [
            f"access benchmark: one {size / 1e6:.0f} MB FITS file on an embedded SeaweedFS",
            f"{'path':<22} {'operation':<20} {'seconds':>9} {'MB from server':>15}",
        ]
        for r in self.rows:
            lines.append(
                f"{r.path:<22} {r.what:<20} {r.seconds:>9.3f} {r.server_bytes / 1e6:>15.3f}"
            )
        return "\n".join(lines)


def _read_all(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            n += len(chunk)
    return n


def run_access_bench(size: int = 300 * 10**6, workdir: Path | None = None) -> Bench:
    """Run the benchmark in ``workdir`` (a temporary directory by default)."""
    import boto3
    from astropy.io import fits

    from desimirror.access import data
    from desimirror.access.config import load_config
    from desimirror.access.mount import mount_bucket, stop
    from desimirror.dev.s3server import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="desimirror-access-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        big = root / "big.fits"
        write_large_fits(big, size)
        bench = Bench()
        with SeaweedServer(root / "weed") as server:
            env = server.env()
            client = boto3.client(
                "s3",
                endpoint_url=server.endpoint_url,
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                region_name="us-east-1",
            )
            client.create_bucket(Bucket="bench")
            client.upload_file(str(big), "bench", "edr/big.fits")
            with CountingProxy.for_url(server.endpoint_url) as proxy:
                creds = {k: v for k, v in env.items() if k.startswith("AWS_")}
                creds["AWS_ENDPOINT_URL"] = proxy.url
                mounted = mount_bucket(
                    "s3://bench",
                    root / "mnt",
                    endpoint_url=proxy.url,
                    region="us-east-1",
                    no_sign_request=False,
                    cache_dir=root / "cache",
                    cache_size=2 * size,
                    state_dir=root / "state",
                    environ={**os.environ, **creds},
                )
                try:
                    target = root / "mnt" / "edr" / "big.fits"
                    bench.time(proxy, "mount", "header (cold)", lambda: fits.getheader(target))
                    bench.time(proxy, "mount", "full read (cold)", lambda: _read_all(target))
                    bench.time(proxy, "mount", "full read (warm)", lambda: _read_all(target))
                finally:
                    stop(mounted, state_dir=root / "state")
                config = load_config(
                    {
                        **creds,
                        "DESIMIRROR_BUCKET": "s3://bench",
                        "DESIMIRROR_ENDPOINT_URL": proxy.url,
                        "DESIMIRROR_NO_SIGN_REQUEST": "0",
                        "DESIMIRROR_CACHE": str(root / "fsspec"),
                        "HOME": str(root),
                    }
                )
                saved = {k: os.environ.get(k) for k in creds}
                os.environ.update(creds)  # s3fs (botocore) reads credentials from here
                try:

                    def header() -> None:
                        with data.open("big.fits", config=config) as f:
                            fits.getheader(f)

                    def whole() -> None:
                        with data.open("big.fits", config=config) as f:
                            while f.read(8 << 20):
                                pass

                    bench.time(proxy, "desimirror.access.data", "header (cold)", header)
                    bench.time(proxy, "desimirror.access.data", "full read (cold)", whole)
                    bench.time(proxy, "desimirror.access.data", "full read (warm)", whole)
                    bench.time(
                        proxy,
                        "data.local_path",
                        "fetch whole file",
                        lambda: data.local_path("big.fits", config=config),
                    )
                finally:
                    for k, v in saved.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
                direct = boto3.client(
                    "s3",
                    endpoint_url=proxy.url,
                    aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                    region_name="us-east-1",
                )
                out = root / "download.fits"
                bench.time(
                    proxy,
                    "plain download",
                    "full (boto3)",
                    lambda: direct.download_file("bench", "edr/big.fits", str(out)),
                )
        return bench


def main(argv: list[str] | None = None) -> None:
    """``python bench/access_bench.py [--size-mb 300] [--json]``."""
    parser = argparse.ArgumentParser(prog="bench/access_bench.py")
    parser.add_argument("--size-mb", type=float, default=300.0, help="file size (default 300)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    size = int(args.size_mb * 10**6)
    bench = run_access_bench(size)
    if args.json:
        print(json.dumps([r.__dict__ for r in bench.rows], indent=2))
    else:
        print(bench.table(size))


if __name__ == "__main__":
    main()
