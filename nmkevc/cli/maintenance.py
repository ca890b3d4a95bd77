"""Integrity and housekeeping: fsck, gc, base."""

from __future__ import annotations

import click

from . import render
from .base import RepoPath, cli, json_option, open_repo


@cli.command()
@click.option("--repair", is_flag=True,
              help="Rebuild what can be rebuilt: damaged statistics / context templates, refs from their reflog, HEAD.")
@click.option("--full", is_flag=True, help="Also rehash every tensor of every base (the fast path trusts file stats).")
@json_option
@click.pass_context
def fsck(ctx, repair, full, as_json):
    """Check every object's hash, every ref's target, every delta's shapes against the base."""
    rep = open_repo(ctx).fsck(repair=repair, full=full)
    if as_json:
        render.emit_json(rep.to_json())
    else:
        for r in rep.repaired:
            click.echo(f"repaired: {r}")
        for b in rep.bases_verified:
            click.echo(f"base {b[:12]}: every tensor rehashed, matches")
        for p in rep.problems:
            click.echo(f"error: {p}")
        for d in rep.dangling:
            click.echo(f"dangling {d[:12]}")
        click.echo(f"checked {rep.objects} objects: " + ("ok" if rep.ok else f"{len(rep.problems)} problem(s)"))
    if not rep.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@json_option
@click.pass_context
def gc(ctx, as_json):
    """Delete objects nothing refers to, and temp files of interrupted writes."""
    rep = open_repo(ctx).gc()
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"removed {rep.removed} unreachable object(s), {render.human_bytes(rep.freed_bytes)}; "
               f"{rep.temp_files} temp file(s), {rep.temp_dirs} leftover director(ies) of killed commands")


@cli.group()
def base():
    """Recorded base models."""


@base.command("list")
@json_option
@click.pass_context
def base_list(ctx, as_json):
    """The recorded bases: id, architecture, size, location."""
    bases = open_repo(ctx).bases()
    if as_json:
        render.emit_json([b.to_json() for b in bases])
        return
    for b in bases:
        click.echo(f"{b.id[:12]}  {b.architecture:<9} {b.num_parameters / 1e6:8.1f}M params  {b.location}")


@base.command("add")
@click.argument("location", type=RepoPath(hub_ok=True))
@click.pass_context
def base_add(ctx, location):
    """Record another base (for `switch --orphan NAME --base ID`)."""
    bid = open_repo(ctx).add_base(location)
    click.echo(f"recorded base {bid[:12]}")


@base.command("relocate")
@click.argument("base_id")
@click.argument("location", type=RepoPath(hub_ok=True))
@click.pass_context
def base_relocate(ctx, base_id, location):
    """Point a recorded base at a new location (its content must match)."""
    open_repo(ctx).relocate_base(base_id, location)
    click.echo("base relocated and verified")
