"""Porcelain: the verbs users call, from Python or through the CLI."""

from .repository import Repository

__all__ = ["Repository"]
