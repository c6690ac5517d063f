"""`desimirror crawl` (placeholder until implemented)."""

import click


@click.command("crawl")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("crawl: not implemented yet")
