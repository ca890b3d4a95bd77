"""Named remotes: a name and a URL in the repository config, nothing else.

Credentials never go here; each fsspec backend finds its own (environment variables,
~/.aws, gcloud, the Hugging Face token, ...)."""

from __future__ import annotations

from ..errors import NmkevcError, RefError
from ..repo.namespaces import REMOTES
from ..repo.repository import Repo
from ..storage.refs import check_ref_name


def check_remote_name(name: str) -> str:
    check_ref_name(name, "remote")
    if "/" in name:
        raise RefError(f"{name!r} is not a valid remote name (no '/')")
    return name


def check_url(url: str) -> str:
    """Refuse URLs that carry a secret (user:password@...): those belong to the backend's config."""
    head = url.split("://", 1)[1].split("/", 1)[0] if "://" in url else ""
    if "@" in head and ":" in head.split("@", 1)[0]:
        raise NmkevcError("refusing a URL with a password in it; give credentials the way the "
                          "storage backend takes them (environment, its config files)")
    if not url.strip():
        raise NmkevcError("empty remote URL")
    return url


def remote_url(repo: Repo, name: str) -> str:
    try:
        return repo.config.remotes[name]
    except KeyError:
        known = ", ".join(sorted(repo.config.remotes)) or "none"
        raise NmkevcError(f"no remote named {name!r} (remotes: {known}); add one with 'nmkevc remote add'") from None


def add_remote(repo: Repo, name: str, url: str) -> None:
    check_remote_name(name)
    check_url(url)
    with repo.writing():
        if name in repo.config.remotes:
            raise NmkevcError(f"remote {name!r} already exists ({repo.config.remotes[name]})")
        repo.config.remotes[name] = url
        repo.config.save(repo.dir / "config.json")


def remove_remote(repo: Repo, name: str) -> None:
    """Forget a remote and its remote-tracking branches (objects stay until gc)."""
    remote_url(repo, name)
    with repo.writing():
        for branch in repo.refs.list(REMOTES + name + "/"):
            repo.refs.delete(REMOTES + name + "/" + branch, f"remote remove {name}")
        del repo.config.remotes[name]
        repo.config.save(repo.dir / "config.json")


def list_remotes(repo: Repo) -> dict[str, str]:
    return dict(sorted(repo.config.remotes.items()))
