"""nmkevc — version control for knowledge edits to language models."""

import os as _os

from .version import __version__

# OpenMP threads that spin while they wait for work make torch several times slower as soon
# as another process shares the cores (measured here: 2 spinning threads on 2 busy cores ran
# Step 1 4x slower than 1 thread; with passive waiting they match it). Read by the OpenMP
# runtime when torch loads, so it is set before any torch import; a user's own value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    # Lazy: `import nmkevc` stays cheap (the CLI imports torch only when a verb needs it).
    if name == "Repository":
        from .porcelain.repository import Repository

        return Repository
    if name == "EditRequest":
        from .facts import EditRequest

        return EditRequest
    raise AttributeError(name)


__all__ = ["Repository", "EditRequest", "__version__"]
