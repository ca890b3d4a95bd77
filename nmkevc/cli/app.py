"""The `nmkevc` command line: the group and its verb modules (each parses arguments,
calls one `Repository` verb and renders the result). A new verb group is a new module
here and one import line below."""

import os

from . import base, changes, history, maintenance, model, refs, setup, sharing  # noqa: F401  (registers commands)
from .base import cli, main

__all__ = ["cli", "main", "run"]


def run() -> None:
    """The `nmkevc` command (the console script and `python -m nmkevc`).

    OpenMP threads that spin while they wait for work make torch several times slower as soon
    as another process shares the cores (measured here: 2 spinning threads on 2 busy cores ran
    Step 1 4x slower than 1 thread; with passive waiting they match it). The OpenMP runtime reads
    the variable when torch loads, which no command has done yet; set for this process only (a
    user's own value wins), since `import nmkevc` changes no environment variable."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    base.run()
