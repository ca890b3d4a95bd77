"""Names a package offers but imports only when first used (so that importing the package,
and the CLI that reads it, loads no torch)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module `__getattr__` and `__dir__` of `package` for {name: module it comes from,
    relative to the package}: `__getattr__, __dir__ = lazy_exports(__name__, {...})`. A name is
    imported on first use and kept in the package, so later lookups skip `__getattr__`."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
