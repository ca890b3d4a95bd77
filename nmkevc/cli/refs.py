"""Branches, tags and moving HEAD: branch, switch, checkout, tag."""

from __future__ import annotations

import click

from . import render
from .base import cli, json_option, open_repo


@cli.command()
@click.argument("name", required=False)
@click.argument("start", default="HEAD", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete the branch (must be merged).")
@click.option("-D", "force_delete", is_flag=True, help="Delete the branch even if unmerged.")
@click.option("-f", "--force", is_flag=True, help="Reset NAME to START if it exists.")
@click.option("-r", "--remotes", "remotes", is_flag=True, help="List the remote-tracking branches.")
@click.option("-a", "--all", "all_", is_flag=True, help="List local and remote-tracking branches.")
@json_option
@click.pass_context
def branch(ctx, name, start, delete, force_delete, force, remotes, all_, as_json):
    """List branches, create NAME at START, or delete NAME."""
    repo = open_repo(ctx)
    if name is None:
        head = repo.head()
        branches = {} if remotes else repo.branches()
        tracking = repo.remote_branches() if remotes or all_ else {}
        if as_json:
            render.emit_json({"current": head.branch, "branches": branches,
                              **({"remote_branches": tracking} if remotes or all_ else {})})
            return
        for b, oid in branches.items():
            mark = "*" if b == head.branch else " "
            click.echo(f"{mark} {b:<24} {oid[:10]} {repo.commit(oid).summary}")
        for b, oid in tracking.items():
            click.echo(f"  {'remotes/' + b:<24} {oid[:10]} {repo.commit(oid).summary}")
        return
    if delete or force_delete:
        was = repo.delete_branch(name, force=force_delete)
        click.echo(f"Deleted branch {name}" + (f" (was {was[:10]})" if was else ""))
        return
    oid = repo.branch(name, start, force=force)
    click.echo(f"Created branch {name} at {oid[:10]}")


@cli.command()
@click.argument("target")
@click.option("-c", "--create", is_flag=True, help="Create the branch first.")
@click.option("--detach", is_flag=True, help="Detach HEAD at a commit.")
@click.option("--orphan", is_flag=True, help="Start a new branch with its own root commit.")
@click.option("--base", "base_id", default=None, help="With --orphan: a recorded base id (see 'nmkevc base list').")
@click.pass_context
def switch(ctx, target, create, detach, orphan, base_id):
    """Move HEAD to branch TARGET (or detach it at a commit)."""
    repo = open_repo(ctx)
    if orphan:
        oid = repo.switch_orphan(target, base_id)
        click.echo(f"Switched to a new orphan branch '{target}' ({oid[:10]})")
        return
    oid = repo.switch(target, create=create, detach=detach)
    head = repo.head()
    if head.branch:
        click.echo(f"Switched to branch '{head.branch}' ({oid[:10]})")
    else:
        click.echo(f"HEAD is now detached at {oid[:10]}")


@cli.command()
@click.argument("target")
@click.option("-b", "new_branch", default=None, help="Create and switch to a new branch at TARGET.")
@click.pass_context
def checkout(ctx, target, new_branch):
    """Switch to a branch, or detach HEAD at any revision (git's checkout)."""
    move = open_repo(ctx).checkout(target, new_branch)
    if move.created:
        click.echo(f"Switched to a new branch '{move.branch}' ({move.commit[:10]})")
    elif move.branch:
        click.echo(f"Switched to branch '{move.branch}' ({move.commit[:10]})")
    else:
        click.echo(f"HEAD is now detached at {move.commit[:10]}")


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD", required=False)
@click.option("-d", "--delete", is_flag=True)
@click.option("-f", "--force", is_flag=True)
@click.pass_context
def tag(ctx, name, rev, delete, force):
    """List tags, tag REV as NAME, or delete NAME."""
    repo = open_repo(ctx)
    if name is None:
        for t, oid in repo.tags().items():
            click.echo(f"{t:<24} {oid[:10]}")
        return
    if delete:
        was = repo.delete_tag(name)
        click.echo(f"Deleted tag {name}" + (f" (was {was[:10]})" if was else ""))
        return
    oid = repo.tag(name, rev, force=force)
    click.echo(f"Tagged {oid[:10]} as {name}")

