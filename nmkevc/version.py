"""The tool's version: the one place it is written (read by the package and by commits)."""

__version__ = "0.1.0"
