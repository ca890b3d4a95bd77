"""nmkevc — version control for knowledge edits to language models."""

from .version import __version__


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
