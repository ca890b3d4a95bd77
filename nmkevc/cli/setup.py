"""Creating a repository and asking where it stands: init, status."""

from __future__ import annotations

import click

from . import render
from .base import RepoPath, cli, json_option, open_repo, progress_bar


@cli.command()
@click.argument("directory", type=RepoPath(), default=".", required=False)
@click.option("--base", type=RepoPath(hub_ok=True), default=None,
              help="Local HF model directory or hub id (default: embedded SmolLM2-135M-Instruct).")
@click.option("--branch", "-b", default="main", show_default=True, help="Name of the first branch.")
@json_option
@click.pass_context
def init(ctx, directory, base, branch, as_json):
    """Create a repository recording BASE (verified by per-tensor sha256).

    `nmkevc --device ... --dtype ... init` makes those the repository's defaults."""
    from ..porcelain.repository import Repository

    with progress_bar("hashing base") as cb:
        repo = Repository.init(directory, base=base, progress=cb, branch=branch, device=ctx.obj.get("device"),
                               dtype=ctx.obj.get("dtype"))
    st = repo.status()
    if as_json:
        render.emit_json(st.to_json())
        return
    click.echo(f"Initialized nmkevc repository in {repo.dir}")
    click.echo(f"base {st.base[:12]} ({st.architecture}, {st.base_source}) on branch {st.branch}")


@cli.command()
@json_option
@click.pass_context
def status(ctx, as_json):
    """Branch, HEAD, base and what is in effect."""
    st = open_repo(ctx).status()
    if as_json:
        render.emit_json(st.to_json())
        return
    where = f"On branch {st.branch}" if st.branch else f"HEAD detached at {st.head[:10]}"
    click.echo(where)
    click.echo(f"HEAD   {st.head[:10]} {st.summary}")
    click.echo(f"base   {st.base[:12]} {st.architecture} ({st.base_source})")
    click.echo(f"edits in effect {st.edits_in_effect}, facts {st.facts_in_effect}, reverted {st.reverted}, "
               f"commits {st.commits}")
    click.echo(f"objects {st.objects}, {render.human_bytes(st.stored_bytes)} stored")
    if st.drift:
        since = "" if st.drift_commit == st.head else f" (as of {st.drift_commit[:10]})"
        click.echo(f"drift  {render.health(st.drift)}{since}")

