"""The ``desimirror`` command: one module per subcommand, each a thin layer over the library.

Errors the user can cause arrive as :class:`~desimirror.errors.DesimirrorError` and are
printed as one line with the error class's exit status; nothing prints a traceback.
"""

from __future__ import annotations

import sys

import click

from desimirror import __version__
from desimirror.cli import (
    crawl,
    demo,
    env,
    jupyter,
    manifest,
    mount,
    plan,
    status,
    synth,
    upload,
    verify,
)
from desimirror.errors import DesimirrorError, redact
from desimirror.progress import interrupted_message


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="desimirror")
def cli() -> None:
    """Mirror a data release to S3, provably, and keep track of where it stands.

    The pipeline: synth (a test release) → crawl → plan → upload → verify; status at any time.
    """


for module in (synth, crawl, plan, upload, verify, status, manifest, demo, mount, env, jupyter):
    cli.add_command(module.command)
cli.add_command(mount.unmount_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning our errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="desimirror", standalone_mode=False)
    except DesimirrorError as exc:
        click.echo(f"desimirror: error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:  # click's form of a KeyboardInterrupt
        click.echo(interrupted_message(), err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own three-line form, as one line
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"desimirror: error: {redact(exc.format_message())}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"desimirror: error: {redact(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(interrupted_message(), err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
