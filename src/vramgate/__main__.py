"""`python -m vramgate` runs the command-line interface."""

from vramgate.cli import app

app()
