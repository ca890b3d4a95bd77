"""The `nmkevc` command line: the group and its verb modules (each parses arguments,
calls one `Repository` verb and renders the result). A new verb group is a new module
here and one import line below."""

from ..threads import choose_wait
from . import base, changes, history, maintenance, model, refs, setup, sharing  # noqa: F401  (registers commands)
from .base import cli, main

__all__ = ["cli", "main", "run"]


def run() -> None:
    """The `nmkevc` command (the console script and `python -m nmkevc`).

    How OpenMP's threads wait is read when torch loads, which no command has done yet: set for
    this process only, a user's own choice winning (`nmkevc.threads`), since `import nmkevc`
    changes no environment variable."""
    choose_wait()
    base.run()
