"""`python -m stagetune` is the `stagetune` command."""

from stagetune.cli import main

main()
