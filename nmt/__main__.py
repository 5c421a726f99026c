"""`python -m nmt` runs the command line, like the `nmt` script."""

from nmt.cli import main

main()
