"""Changing history: revert, cherry-pick, merge."""

from __future__ import annotations

import click

from ..errors import MergeConflictError
from . import render
from .base import cli, json_option, open_repo, strategy_names


@cli.command()
@click.argument("rev")
@click.option("-m", "--message", default=None)
@click.pass_context
def revert(ctx, rev, message):
    """Cancel REV exactly: it leaves the effective set (bit-identical to never applying it)."""
    oid = open_repo(ctx).revert(rev, message)
    click.echo(f"[{oid[:10]}] reverted {rev}")


@cli.command("cherry-pick")
@click.argument("rev")
@click.option("-m", "--message", default=None)
@click.pass_context
def cherry_pick(ctx, rev, message):
    """Copy REV's delta and facts onto HEAD."""
    oid = open_repo(ctx).cherry_pick(rev, message)
    click.echo(f"[{oid[:10]}] cherry-picked {rev}")


@cli.command()
@click.argument("rev")
@click.option("--strategy", "-s", type=click.Choice(strategy_names()), default=None,
              help="Resolve conflicts: keep ours / keep theirs, sum anyway, or replay their edits on ours.")
@click.option("-m", "--message", default=None)
@click.option("--no-ff", is_flag=True, help="Create a merge commit even when a fast-forward is possible.")
@click.option("--allow-unrelated-histories", "allow_unrelated", is_flag=True)
@click.option("--mask-threshold", type=float, default=None, help="Mask-conflict score above which a layer conflicts.")
@click.option("--no-functional", is_flag=True, help="Skip re-checking every edit on the merged model.")
@json_option
@click.pass_context
def merge(ctx, rev, strategy, message, no_ff, allow_unrelated, mask_threshold, no_functional, as_json):
    """Merge REV into HEAD; stop (exit 1, nothing changed) when edits conflict."""
    repo = open_repo(ctx)
    try:
        rep = repo.merge(rev, strategy=strategy, message=message, no_ff=no_ff,
                         allow_unrelated=allow_unrelated, mask_threshold=mask_threshold,
                         functional=not no_functional)
    except MergeConflictError as e:
        if as_json:
            render.emit_json(e.report)
        else:
            for line in e.lines:
                click.echo(line, err=True)
        raise
    if as_json:
        render.emit_json(rep.to_json())
        return
    if rep.result == "up-to-date":
        click.echo("Already up to date.")
    elif rep.result == "fast-forward":
        click.echo(f"Fast-forward to {rep.commit[:10]}")
    else:
        for line in rep.conflict_lines():
            click.echo(f"resolved ({rep.strategy}): {line}")
        extra = f", dropped {len(rep.cancelled)} commit(s)" if rep.cancelled else ""
        click.echo(f"Merge made: {rep.commit[:10]} ({len(rep.theirs_side)} edit(s) from {rev}{extra})")
        if rep.health:
            click.echo(f"    health of the merged model: {render.health(rep.health)}")

