"""``python -m desimirror``: the same as the ``desimirror`` command."""

from desimirror.cli import main

main()
