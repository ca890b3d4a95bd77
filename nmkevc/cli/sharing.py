"""Sharing: clone, remote, fetch, pull, push, bundle."""

from __future__ import annotations

import click

from . import render
from .base import cli, json_option, open_repo, progress_bar, strategy_names


def _update_line(u) -> str:
    """git's shape: ` * [new branch]      main -> origin/main`, `   1a2b..3c4d  main -> main`."""
    if u.ref.startswith("refs/remotes/"):
        dst = u.ref[len("refs/remotes/"):]
        src = dst.split("/", 1)[-1]
    else:
        src = dst = u.ref.split("/", 2)[-1]
    kind = "tag" if u.ref.startswith("refs/tags/") else "branch"
    if u.status == "new":
        return f" * [new {kind}]{' ' * (9 - len(kind))} {src} -> {dst}"
    if u.status == "up-to-date":
        return f" = [up to date]      {src} -> {dst}"
    if u.status == "deleted":
        return f" - [deleted]         {dst}"
    if u.status == "rejected":
        return f" ! [rejected]        {src} -> {dst} ({u.reason})"
    sep, mark = ("..", " ") if u.status == "fast-forward" else ("...", "+")
    return f" {mark} {u.old[:10]}{sep}{u.new[:10]}  {src} -> {dst}" + (" (forced update)" if mark == "+" else "")


@cli.command()
@click.argument("url")
@click.argument("directory", required=False)
@click.option("--origin", "-o", default="origin", show_default=True, help="Name for the remote.")
@click.option("--with-stats", is_flag=True, help="Also copy the per-base statistics (a rebuildable cache).")
@json_option
@click.pass_context
def clone(ctx, url, directory, origin, with_stats, as_json):
    """Copy the repository at URL (path, s3://, gs://, hf://..., or a bundle) into DIRECTORY."""
    from ..porcelain.repository import Repository

    with progress_bar("receiving objects") as cb:
        rep = Repository.clone(url, directory, origin=origin, with_stats=with_stats, progress=cb,
                               parent=ctx.obj["path"])
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"Cloned {url} into {rep.path}: {rep.transfer.objects} object(s), "
               f"{render.human_bytes(rep.transfer.bytes)}; on branch {rep.branch} at {rep.head[:10]}")


@cli.group(invoke_without_command=True)
@click.option("--verbose", "-v", is_flag=True, help="Show URLs.")
@click.pass_context
def remote(ctx, verbose):
    """List, add and remove remotes (names and URLs; credentials stay with the storage backend)."""
    if ctx.invoked_subcommand is None:
        for name, url in open_repo(ctx).remotes().items():
            click.echo(f"{name}\t{url}" if verbose else name)


@remote.command("list")
@json_option
@click.pass_context
def remote_list(ctx, as_json):
    """Remotes and their URLs."""
    remotes = open_repo(ctx).remotes()
    if as_json:
        render.emit_json(remotes)
        return
    for name, url in remotes.items():
        click.echo(f"{name}\t{url}")


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.pass_context
def remote_add(ctx, name, url):
    """Add remote NAME at URL."""
    open_repo(ctx).add_remote(name, url)


@remote.command("remove")
@click.argument("name")
@click.pass_context
def remote_remove(ctx, name):
    """Forget remote NAME and its remote-tracking branches."""
    open_repo(ctx).remove_remote(name)


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.option("--with-stats", is_flag=True, help="Also fetch the per-base statistics.")
@click.option("--prune", "-p", is_flag=True, help="Drop remote-tracking branches deleted on the remote.")
@json_option
@click.pass_context
def fetch(ctx, remote_name, with_stats, prune, as_json):
    """Bring REMOTE's branches to REMOTE/BRANCH and its tags here (default: origin)."""
    repo = open_repo(ctx)
    with progress_bar("receiving objects") as cb:
        rep = repo.fetch(remote_name, with_stats=with_stats, prune=prune, progress=cb)
    if as_json:
        render.emit_json(rep.to_json())
        return
    changed = [u for u in rep.updates if u.status != "up-to-date"]
    if changed:
        click.echo(f"From {rep.url}")
        for u in changed:
            click.echo(_update_line(u))
    if rep.objects:
        click.echo(f"{rep.objects} object(s), {render.human_bytes(rep.bytes)} received")


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("branch", required=False)
@click.option("--with-stats", is_flag=True, help="Also fetch the per-base statistics.")
@click.option("--strategy", type=click.Choice(strategy_names()), default=None,
              help="How the merge resolves conflicts (as for merge).")
@click.option("--no-functional", is_flag=True, help="Skip the functional conflict check (as for merge).")
@json_option
@click.pass_context
def pull(ctx, remote_name, branch, with_stats, strategy, no_functional, as_json):
    """Fetch REMOTE and merge REMOTE/BRANCH (default: the current branch's name) into HEAD."""
    repo = open_repo(ctx)
    with progress_bar("receiving objects") as cb:
        rep = repo.pull(remote_name, branch, with_stats=with_stats, strategy=strategy,
                        functional=not no_functional, progress=cb)
    if as_json:
        render.emit_json(rep.to_json())
        return
    for u in rep.fetch.updates:
        if u.status != "up-to-date":
            click.echo(_update_line(u))
    m = rep.merge
    if m.result == "up-to-date":
        click.echo("Already up to date.")
    elif m.result == "fast-forward":
        click.echo(f"Fast-forward {m.ours[:10]}..{m.commit[:10]}")
    else:
        click.echo(f"Merge made by the {m.strategy or 'union'} strategy: {m.commit[:10]}")


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("refs", nargs=-1)
@click.option("--force", "-f", is_flag=True, help="Replace remote branches even if that loses commits there.")
@click.option("--with-stats", is_flag=True, help="Also push the per-base statistics.")
@json_option
@click.pass_context
def push(ctx, remote_name, refs, force, with_stats, as_json):
    """Send branches / tags (default: the current branch) to REMOTE (default: origin)."""
    repo = open_repo(ctx)
    with progress_bar("sending objects") as cb:
        rep = repo.push(remote_name, list(refs), force=force, with_stats=with_stats, progress=cb)
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"To {rep.url}")
    for u in rep.updates:
        click.echo(_update_line(u))
    if rep.objects:
        click.echo(f"{rep.objects} object(s), {render.human_bytes(rep.bytes)} sent")


@cli.group()
def bundle():
    """One file holding revisions and their history, to mail or attach to a paper."""


@bundle.command("create")
@click.argument("file")
@click.argument("revs", nargs=-1, required=True)
@json_option
@click.pass_context
def bundle_create(ctx, file, revs, as_json):
    """Write FILE holding the branches / tags REVS with their whole history."""
    repo = open_repo(ctx)
    with progress_bar("bundling objects") as cb:
        rep = repo.bundle_create(file, list(revs), progress=cb)
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"Wrote {rep.path}: {len(rep.refs)} ref(s), {rep.objects} object(s), "
               f"{render.human_bytes(rep.bytes)}")


@bundle.command("verify")
@click.argument("file")
@json_option
def bundle_verify(file, as_json):
    """Check every object of FILE against its id and that the refs' history is complete."""
    from ..porcelain.repository import Repository

    rep = Repository.bundle_verify(file)
    if as_json:
        render.emit_json(rep.to_json())
    else:
        for ref, oid in sorted(rep.refs.items()):
            click.echo(f"{oid[:10]} {ref}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
        click.echo(f"{file} is {'okay' if rep.ok else 'damaged'}: {rep.objects} object(s)")
    if not rep.ok:
        raise click.exceptions.Exit(1)
