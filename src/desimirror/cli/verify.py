"""`desimirror verify` (placeholder until implemented)."""

import click


@click.command("verify")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("verify: not implemented yet")
