"""`desimirror synth` (placeholder until implemented)."""

import click


@click.command("synth")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("synth: not implemented yet")
