"""``python -m bridge`` runs the ``perkbridge`` CLI."""

from bridge.cli import run

if __name__ == "__main__":
    # Guarded: a spawned worker process re-imports the main module and must not run the CLI.
    run()
