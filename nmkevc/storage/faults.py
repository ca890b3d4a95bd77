"""Crash injection at write boundaries, for the crash-safety tests.

Setting `NMKEVC_CRASH_AT=<boundary>` (or `<boundary>:<detail>`, e.g. `rename:ref`, `write:object-commit`) makes
the process die with `os._exit(CRASH_EXIT)` the first time it reaches that boundary:
no cleanup handlers, no flushing, exactly like a SIGKILL at that instant. Unset (the
normal case) each boundary costs one environment lookup.

The boundaries (`detail` narrows `rename`/`write` to an object kind or ref):
write (a temp file fully written and fsynced, not yet renamed), rename (renamed, the directory
not yet fsynced), reflog (a ref moved, its reflog line not yet appended), lock (the lock just
acquired), delete (a ref or object file just unlinked; detail branch, tag, ref, object), export
(an export's temp directory complete, not yet renamed), init (a new repository's temp directory
complete, not yet renamed), bundle (a bundle's temp file complete, not yet linked to its name).
"""

from __future__ import annotations

import os

CRASH_ENV = "NMKEVC_CRASH_AT"
CRASH_EXIT = 97

def crash_point(boundary: str, detail: str = "") -> None:
    """Die here if the environment asks for it (see module docstring)."""
    want = os.environ.get(CRASH_ENV)
    if want and (want == boundary or (detail and want == f"{boundary}:{detail}")):
        os._exit(CRASH_EXIT)
