"""`python -m unveil.cli`: the same entry point as the `unveil` command."""

from unveil.cli import main

main()
