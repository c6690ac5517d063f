"""The ``desimirror`` command: one module per subcommand, each a thin layer over the library.

Errors the user can cause arrive as :class:`~desimirror.errors.DesimirrorError` and are
printed as one line with the error class's exit status; nothing prints a traceback.
Failures of the state db itself (a full disk) arrive as :mod:`sqlite3` errors and are
printed the same way. SIGTERM (a batch system ending a job, ``kill``) takes the path
Ctrl-C takes: ``finally`` blocks run, what was confirmed is committed, and the line says so.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sqlite3
import sys
import threading

import click

from desimirror.errors import DesimirrorError, StateError, redact, sqlite_failure
from desimirror.progress import interrupted_message

#: Each command: the module of ``desimirror.cli`` that defines it, and its attribute there.
COMMANDS = {
    "synth": ("synth", "command"),
    "crawl": ("crawl", "command"),
    "plan": ("plan", "command"),
    "estimate": ("estimate", "command"),
    "upload": ("upload", "command"),
    "verify": ("verify", "command"),
    "status": ("status", "command"),
    "serve": ("serve", "command"),
    "report": ("report", "command"),
    "manifest": ("manifest", "command"),
    "download": ("download", "command"),
    "demo": ("demo", "command"),
    "mount": ("mount", "command"),
    "unmount": ("mount", "unmount_command"),
    "env": ("env", "command"),
    "jupyter": ("jupyter", "command"),
}


class LazyCommands(click.Group):
    """A group that imports a command's module only when that command runs: ``status``
    then loads what ``status`` needs, not every stage's dependencies (half a second of
    start-up, paid by every command, every script and every test that runs one)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:  # one added with add_command, or none
            return super().get_command(ctx, cmd_name)
        module, attribute = COMMANDS[cmd_name]
        return getattr(importlib.import_module(f"desimirror.cli.{module}"), attribute)


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="desimirror", prog_name="desimirror")
def cli() -> None:
    """Mirror a data release to S3, provably, and keep track of where it stands.

    The pipeline: synth (a test release) → crawl → plan → upload → verify; status at any time.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C's KeyboardInterrupt would be."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    # Once: a second SIGTERM during the clean-up must not cut the final commit short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _raise_dropped_sigterm_again(unraisable: sys.UnraisableHookArgs) -> None:
    """Python drops an exception raised in some callbacks, such as the at-fork hooks that
    run when a subprocess starts: a SIGTERM that landed there is delivered once more."""
    if isinstance(unraisable.exc_value, Terminated):
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, _on_sigterm)
        # from another thread, a moment later: raised here, it would be dropped again
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        return
    _UNRAISABLE_HOOK(unraisable)


_UNRAISABLE_HOOK = sys.unraisablehook


def _default_sigterm_in_child() -> None:
    """Forked children (the crawl's writer, process-pool workers) die on SIGTERM as usual:
    they are stopped by their parent, which has its own clean-up."""
    with contextlib.suppress(ValueError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_sigterm_in_child)


def _interrupted(exc: BaseException) -> None:
    """Say what an interrupt left behind, and exit 130 (SIGINT) or 143 (SIGTERM)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, KeyboardInterrupt):
        cause = cause.__cause__ or cause.__context__
    terminated = isinstance(cause, Terminated)
    click.echo(interrupted_message("SIGTERM" if terminated else "SIGINT"), err=True)
    sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the group, turning our errors into one line and an exit code."""
    with contextlib.suppress(ValueError):  # not the main thread (embedded): leave it be
        signal.signal(signal.SIGTERM, _on_sigterm)
        sys.unraisablehook = _raise_dropped_sigterm_again
    try:
        cli.main(args=argv, prog_name="desimirror", standalone_mode=False)
    except DesimirrorError as exc:
        click.echo(f"desimirror: error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except click.UsageError as exc:  # click's own three-line form, as one line
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        click.echo(f"desimirror: error: {redact(exc.format_message())}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"desimirror: error: {redact(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except sqlite3.Error as exc:  # the state db itself failed: a full disk, an I/O error
        failure = sqlite_failure(exc) or StateError(f"the state db failed: {exc}")
        click.echo(f"desimirror: error: {redact(str(failure))}", err=True)
        sys.exit(failure.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)
