"""The `nmkevc` command line: the group and its verb modules (each parses arguments,
calls one `Repository` verb and renders the result). A new verb group is a new module
here and one import line below."""

from . import changes, history, maintenance, model, refs, setup, sharing  # noqa: F401  (registers commands)
from .base import cli, main, run

__all__ = ["cli", "main", "run"]
