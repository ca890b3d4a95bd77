"""Porcelain: the verbs users call, from Python or through the CLI.

Resolved lazily so that the CLI can read small torch-free modules of this package
(merge strategies, dataset names) without loading the model stack."""


def __getattr__(name: str):
    if name == "Repository":
        from .repository import Repository

        return Repository
    raise AttributeError(name)


__all__ = ["Repository"]
