"""`desimirror upload` (placeholder until implemented)."""

import click


@click.command("upload")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("upload: not implemented yet")
