"""``python -m compress.cli`` runs the same command line as the ``compress`` console script."""

from compress.cli import main

main()
