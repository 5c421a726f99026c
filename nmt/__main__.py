"""`python -m nmt` runs the command line, like the `nmt` script."""

from nmt.cli import app

app(prog_name="nmt")
