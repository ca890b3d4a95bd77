"""Error types. Every user-facing failure is an NmkevcError with a one-line message.

The CLI turns these into `error: <message>` and a non-zero exit code, so nothing a
user can cause by bad input ever shows a traceback.
"""

from __future__ import annotations


class NmkevcError(Exception):
    """Base of every error the CLI reports as a one-line message."""

    exit_code = 1


class NotARepositoryError(NmkevcError):
    exit_code = 128


class RepositoryLockedError(NmkevcError):
    exit_code = 75


class ObjectNotFoundError(NmkevcError):
    pass


class CorruptObjectError(NmkevcError):
    pass


class RevisionError(NmkevcError):
    pass


class RefError(NmkevcError):
    pass


class BaseMismatchError(NmkevcError):
    pass


class MergeError(NmkevcError):
    pass


class MergeConflictError(MergeError):
    """A merge stopped on conflicts; `report` holds the machine-readable details."""

    def __init__(self, message: str, report: dict, lines: list[str] | None = None):
        super().__init__(message)
        self.report = report
        self.lines = list(lines or [])  # one human-readable line per conflict


class EditRequestError(NmkevcError):
    pass


class UnsupportedModelError(NmkevcError):
    pass


class StaleModelError(NmkevcError):
    """A model handle was used after the repository moved its shared model elsewhere."""


class UsageError(NmkevcError):
    exit_code = 2
