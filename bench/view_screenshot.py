"""The README's screenshot of ``desimirror serve`` (docs/view.png, 1280x800), from a real run:
a synthetic release, part of it uploaded to the embedded SeaweedFS with the seed's remaps,
one file changed and one corrupted before the upload, then the page in headless Chromium.

    python bench/view_screenshot.py [--out docs/view.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from desimirror.dev.s3server import SeaweedServer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from view_helpers import chromium, page_ready, serving  # noqa: E402

REMAP = ["--remap", "edr/spectro/data=raw_spectro_data", "--remap", "edr/target=target"]


def dm(*args: str, env: dict[str, str] | None = None) -> None:
    """One desimirror command, as a user runs it; a failure of it is not the end (upload
    exits 5 for the files it could not send, which is what the picture shows)."""
    subprocess.run([sys.executable, "-m", "desimirror", *args], env=env, check=False,
                   stdout=subprocess.DEVNULL, timeout=900)  # fmt: skip


def _spoil(release: Path) -> None:
    """One file rewritten after the crawl (changed), one with other bytes of the same size
    than its published SHA-256 says (corrupt)."""
    fits = sorted(release.rglob("*.fits"))
    changed, corrupt = fits[3], fits[40]  # in the first batches, which are sent
    changed.write_bytes(changed.read_bytes() + b"more")
    data = bytearray(corrupt.read_bytes())
    data[0] ^= 0xFF
    corrupt.write_bytes(bytes(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "view.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, SeaweedServer(Path(scratch) / "s3") as s3:
        env = {**os.environ, **s3.env()}
        boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key,
                     region_name="us-east-1").create_bucket(Bucket="desidata")  # fmt: skip
        release, db = Path(scratch) / "edr", Path(scratch) / "edr.db"
        dm("synth", str(release), "--scale", "1", "--seed", "1")
        dm("crawl", str(release), "--db", str(db))
        dm("plan", "--db", str(db), "--max-batch-size", "10MB", "--min-batch-size", "1MB")
        _spoil(release)
        target = ["--bucket", "s3://desidata", "--endpoint-url", s3.endpoint_url, *REMAP]
        for batches in ("4", "3", "3"):  # three runs, a moment apart, part of the release
            dm("upload", "--db", str(db), *target, "--max-batches", batches, env=env)
            time.sleep(1)
        driver = chromium()
        try:
            with serving(db) as url:
                page_ready(driver, url)
                time.sleep(1)  # the charts' first frame
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
