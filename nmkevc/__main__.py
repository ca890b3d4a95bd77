"""`python -m nmkevc` runs the CLI."""

from .cli.app import run

run()
