"""`desimirror plan` (placeholder until implemented)."""

import click


@click.command("plan")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("plan: not implemented yet")
