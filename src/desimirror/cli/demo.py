"""``desimirror demo``: the whole pipeline on a synthetic release and an embedded S3 server.

It runs the real commands, as a user would type them, against SeaweedFS started on
127.0.0.1 for the occasion, prints each command and a summary, and stops the server by
PID whatever happens.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

from desimirror.dev.s3server import SeaweedServer
from desimirror.errors import DesimirrorError
from desimirror.storage.transfer import BACKENDS, DEFAULT_BACKEND
from desimirror.units import format_size

BUCKET = "desidata"


def _run(args: list[str], env: dict[str, str]) -> dict:
    """Run one desimirror command with --json, show it, return its report."""
    shown = " ".join(shlex.quote(a) for a in ["desimirror", *args])
    click.echo(click.style(f"$ {shown}", bold=True), err=True)
    proc = subprocess.run(
        [sys.executable, "-m", "desimirror", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise DesimirrorError(f"demo step failed: {shown}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


@click.command("demo")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Working directory for the release, the state db and the server's data.",
)
@click.option("--scale", type=float, default=0.5, show_default=True, help="Release size.")
@click.option(
    "--backend",
    type=click.Choice(sorted(BACKENDS)),
    default=DEFAULT_BACKEND,
    show_default=True,
    help="The transfer backend the demo's upload uses (see 'desimirror upload --help').",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the S3 server running afterwards (until Ctrl-C), for 'desimirror jupyter' "
    "on the demo's bucket; the command to run is printed.",
)
def command(workdir: Path, scale: float, backend: str, serve: bool) -> None:
    """Synthesise a DESI-like release, start an embedded S3 server, then crawl, plan,
    upload and verify it, and print a summary and how to look at the result in
    JupyterLab. Everything started is stopped (with --serve, at Ctrl-C)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    release, db = run_dir / "edr", run_dir / "mirror.db"
    started = time.monotonic()
    # Readable without keys, as DESI's bucket is: `desimirror jupyter --no-sign-request`.
    with SeaweedServer(run_dir / "s3", anonymous_read=True) as server:
        env = {**os.environ, **server.env()}
        import boto3

        boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
        synth = _run(["synth", str(release), "--scale", str(scale), "--seed", "1"], env)
        crawl = _run(["crawl", str(release), "--db", str(db)], env)
        plan = _run(
            ["plan", "--db", str(db), "--max-batch-size", "20MB", "--min-batch-size", "2MB"], env
        )
        common = [
            "--db",
            str(db),
            "--bucket",
            f"s3://{BUCKET}",
            "--endpoint-url",
            server.endpoint_url,
        ]
        remap = ["--remap", "edr/spectro/data=raw_spectro_data", "--remap", "edr/target=target"]
        sent = _run(["upload", *common, *remap, "--backend", backend], env)
        again = _run(["upload", *common, *remap, "--backend", backend], env)
        checked = _run(["verify", *common, "--checksum"], env)
        _report(release, synth, crawl, plan, sent, again, checked, backend, started, run_dir)
        on_disk = f"desimirror jupyter --release edr --local {shlex.quote(str(run_dir))}"
        if serve:
            _serve(on_disk, _look_command(server.endpoint_url, run_dir))
            return
    click.echo(
        f"look      on disk: {on_disk}\n          in the bucket: desimirror demo --serve (keeps "
        "the server up and prints the 'desimirror jupyter --bucket ... --endpoint-url ...' line)"
    )


def _look_command(endpoint_url: str, run_dir: Path) -> str:
    """The command that opens JupyterLab on the demo's bucket, streamed through a mount."""
    data = shlex.quote(str(run_dir.absolute() / "desidata"))
    return (
        f"desimirror jupyter --release edr --bucket s3://{BUCKET} --endpoint-url {endpoint_url}"
        f" --no-sign-request --data {data}"
    )


def _serve(on_disk: str, in_bucket: str) -> None:
    """Keep the server up until Ctrl-C or SIGTERM, with the commands to use it on screen."""
    import signal

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    click.echo(
        f"look      on disk: {on_disk}\n          in the bucket: {in_bucket}"
        "\n          (the S3 server runs until Ctrl-C)"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("demo: server stopped", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(
    release: Path,
    synth: dict,
    crawl: dict,
    plan: dict,
    sent: dict,
    again: dict,
    checked: dict,
    backend: str,
    started: float,
    run_dir: Path,
) -> None:
    click.echo(
        "\n".join(
            [
                "",
                f"release   {release}: {synth.get('files', '?')} files, "
                f"{format_size(synth.get('bytes', 0))}",
                f"crawl     {crawl.get('entries', '?')} entries, {crawl.get('errors', 0)} errors",
                f"plan      {plan.get('batches', '?')} batches",
                f"upload    {sent['files_sent']} files, {format_size(sent['bytes_sent'])} in "
                f"{sent['seconds']:.1f}s ({format_size(sent['bytes_per_second'])}/s, {backend})",
                f"resume    second run sent {again['files_sent']} files in {again['seconds']:.1f}s",
                f"verify    {checked['matched']} of {checked['expected_files']} objects match, "
                f"content proven for {checked['content_ok']}; complete: {checked['complete']}",
                f"total     {time.monotonic() - started:.1f}s; data in {run_dir}",
            ]
        )
    )
