"""Every command of the CLI, found by walking the click group (so a new command is covered
without touching this file), answers ``--help`` and describes every option it takes."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest

from desimirror.cli import cli
from helpers import run_cli


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))
    else:
        yield path


COMMANDS = list(_commands(cli))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(command), name)
    return command


def test_the_walk_finds_the_pipeline_and_the_access_commands() -> None:
    names = {path[0] for path in COMMANDS}
    assert {"crawl", "plan", "upload", "verify", "status", "mount", "jupyter"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_for_itself_and_each_option(path: tuple[str, ...]) -> None:
    proc = run_cli(*path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: desimirror {' '.join(path)}" in proc.stdout
    command = _command(path)
    assert (command.help or "").strip(), f"{' '.join(path)} has no description"
    undocumented = [
        p.name
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()
    ]
    assert undocumented == [], f"desimirror {' '.join(path)}: options without help"
