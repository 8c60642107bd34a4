"""``python -m bridge`` runs the ``perkbridge`` CLI."""

from bridge.cli import main

main()
