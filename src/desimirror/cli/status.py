"""`desimirror status` (placeholder until implemented)."""

import click


@click.command("status")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("status: not implemented yet")
