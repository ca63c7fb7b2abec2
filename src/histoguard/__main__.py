"""``python -m histoguard``: the same as the ``histoguard`` command."""

from histoguard.cli import main

main()
