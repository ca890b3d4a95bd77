"""nmkevc — version control for knowledge edits to language models.

The Python API: `Repository` (every verb the CLI has), `EditRequest` (a fact to teach), the
hyperparameter records (`EditHparams(method=...)` makes the record of any method; each
method's own: `NmkeHparams`, `AlphaEditHparams`, `MemitHparams`) and the error types, every
one an `NmkevcError`. All but the errors are imported when first used, so `import nmkevc`
loads neither torch nor transformers; importing it changes no environment variable either
(`nmkevc.threads.choose_wait()`, called before torch loads, sets how OpenMP's threads wait, as
the `nmkevc` command does: the README says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BaseMismatchError,
    CorruptObjectError,
    EditRequestError,
    MergeConflictError,
    MergeError,
    NmkevcError,
    NotARepositoryError,
    ObjectNotFoundError,
    RefError,
    RepositoryLockedError,
    RevisionError,
    StaleModelError,
    UnsupportedModelError,
    UsageError,
)
from .lazy import lazy_exports
from .version import __version__

if TYPE_CHECKING:
    from .editing.hparams import EditHparams
    from .editing.methods.alphaedit import AlphaEditHparams
    from .editing.methods.memit import MemitHparams
    from .editing.methods.nmke import NmkeHparams
    from .facts import EditRequest
    from .porcelain.repository import Repository

#: the per-method records through the editing package's own table (editing/__init__.py)
__getattr__, __dir__ = lazy_exports(__name__, {
    "Repository": ".porcelain.repository", "EditRequest": ".facts", "EditHparams": ".editing.hparams",
    "NmkeHparams": ".editing", "AlphaEditHparams": ".editing", "MemitHparams": ".editing"})

__all__ = [
    "Repository", "EditRequest", "EditHparams", "NmkeHparams", "AlphaEditHparams", "MemitHparams", "__version__",
    "NmkevcError", "NotARepositoryError", "RepositoryLockedError", "ObjectNotFoundError", "CorruptObjectError",
    "RevisionError", "RefError", "BaseMismatchError", "MergeError", "MergeConflictError", "EditRequestError",
    "UnsupportedModelError", "StaleModelError", "UsageError",
]

