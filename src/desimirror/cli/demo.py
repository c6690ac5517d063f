"""`desimirror demo` (placeholder until implemented)."""

import click


@click.command("demo")
def command() -> None:
    """Not implemented yet."""
    raise click.ClickException("demo: not implemented yet")
