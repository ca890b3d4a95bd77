"""The command line: a thin Click layer over `nmkevc.Repository`."""

from .app import main

__all__ = ["main"]
