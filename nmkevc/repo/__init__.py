"""Repo layer: one repository on disk — objects, refs, lock, history, materialisation."""

from .repository import Repo

__all__ = ["Repo"]
