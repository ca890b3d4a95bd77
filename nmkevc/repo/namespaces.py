"""The repository's ref namespaces: which prefix holds what, and how its names are checked.

Branches and tags are history; refs/remotes/ holds the branches last seen on each remote;
refs/stats/, refs/context/ and refs/projectors/ name the
rebuildable caches of a base (see `caches`). Every ref under refs/ is a gc root, whatever its namespace.
"""

from __future__ import annotations

from ..storage.refs import HEADS, TAGS, RefStore, check_ref_name, is_valid_ref_name

STATS = "refs/stats/"
CONTEXT = "refs/context/"
#: Null-space projectors derived from a Σ_l and a rule: local only, never sent to a remote.
PROJECTORS = "refs/projectors/"
#: Remote-tracking branches, refs/remotes/<remote>/<branch>: moved only by fetch and push.
REMOTES = "refs/remotes/"
#: The prefix under which every ref (and so every gc root) lives.
ALL_REFS = "refs/"


class RefNamespace:
    """Refs under one prefix (branches, tags), read and written by their short names."""

    def __init__(self, refs: RefStore, prefix: str, what: str):
        self._refs = refs
        self.prefix = prefix
        self.what = what

    def ref(self, name: str) -> str:
        """The full ref name (e.g. refs/heads/main)."""
        return self.prefix + name

    def check_name(self, name: str) -> str:
        """The name, or a one-line refusal saying which of git's rules it breaks."""
        return check_ref_name(name, self.what)

    def is_valid(self, name: str) -> bool:
        return is_valid_ref_name(name) and name != "HEAD"

    def exists(self, name: str) -> bool:
        """A ref file of this name is there (readable or not)."""
        return self._refs.exists(self.prefix + self.check_name(name))

    def read(self, name: str) -> str | None:
        """The id the ref holds, None if absent; RefError if the name is invalid or the file corrupt."""
        return self._refs.read(self.prefix + self.check_name(name))

    def set(self, name: str, oid: str, message: str) -> None:
        self._refs.set(self.prefix + self.check_name(name), oid, message)

    def delete(self, name: str, message: str) -> str | None:
        """Remove the ref (and its reflog); returns the id it held (None if corrupt)."""
        return self._refs.delete(self.prefix + self.check_name(name), message)

    def list(self) -> dict[str, str]:
        """{short name: object id}."""
        return self._refs.list(self.prefix)


def branch_namespace(refs: RefStore) -> RefNamespace:
    return RefNamespace(refs, HEADS, "branch")


def tag_namespace(refs: RefStore) -> RefNamespace:
    return RefNamespace(refs, TAGS, "tag")


def remote_namespace(refs: RefStore) -> RefNamespace:
    """Remote-tracking branches, by short name "<remote>/<branch>"."""
    return RefNamespace(refs, REMOTES, "remote-tracking branch")
