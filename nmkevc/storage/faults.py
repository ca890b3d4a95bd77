"""Crash injection at write boundaries, for the crash-safety tests.

Setting `NMKEVC_CRASH_AT=<boundary>` (or `<boundary>:<detail>`, e.g. `rename:ref`, `write:object-commit`) makes
the process die with `os._exit(CRASH_EXIT)` the first time it reaches that boundary:
no cleanup handlers, no flushing, exactly like a SIGKILL at that instant. Unset (the
normal case) each boundary costs one environment lookup.
"""

from __future__ import annotations

import os

CRASH_ENV = "NMKEVC_CRASH_AT"
CRASH_EXIT = 97

#: Every boundary a test may name; `detail` narrows `rename`/`write` to an object kind or ref.
BOUNDARIES = (
    "write",        # a temp file is fully written and fsynced, not yet renamed into place
    "rename",       # the rename is done, the directory not yet fsynced
    "reflog",       # a ref has moved, its reflog line not yet appended
    "lock",         # the repository lock was just acquired
    "delete",       # a ref or object file was just unlinked (detail: branch, tag, ref, object)
    "export",       # an export's temp directory is complete, not yet renamed to the target
    "init",         # a new repository's temp directory is complete, not yet renamed into place
)


def crash_point(boundary: str, detail: str = "") -> None:
    """Die here if the environment asks for it (see module docstring)."""
    want = os.environ.get(CRASH_ENV)
    if want and (want == boundary or (detail and want == f"{boundary}:{detail}")):
        os._exit(CRASH_EXIT)
