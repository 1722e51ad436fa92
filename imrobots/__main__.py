"""``python -m imrobots`` runs the command line."""

from imrobots.cli import main

main()
