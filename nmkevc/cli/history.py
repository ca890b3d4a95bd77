"""Reading history: log, show, view, diff, reflog."""

from __future__ import annotations

import click

from . import render
from .base import cli, json_option, open_repo


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
@click.option("--stat", is_flag=True, help="Facts, layers, neurons and stored bytes per commit.")
@click.option("-n", "--max-count", type=int, default=None)
@json_option
@click.pass_context
def log(ctx, rev, oneline, graph, stat, max_count, as_json):
    """Show the history reachable from REV."""
    repo = open_repo(ctx)
    if as_json:
        render.emit_json([e.to_json() for e, _ in repo.log_graph(rev, max_count=max_count, stat=True)])
        return
    if graph:
        rows = repo.log_graph(rev, max_count=max_count, stat=stat)
    else:
        rows = [(e, None) for e in repo.log(rev, max_count=max_count, stat=stat)]
    for e, row in rows:
        pre, body = (row.prefix + " ", row.body + " ") if row else ("", "")
        if oneline:
            click.echo(f"{pre}{click.style(e.id[:10], fg='yellow')}{render.decorate(e.refs)} "
                       f"{e.message.splitlines()[0] if e.message else ''}")
            if stat:
                for line in render.stat_lines(e):
                    click.echo(body + line)
        else:
            for i, line in enumerate(render.commit_header(e)):
                click.echo(((pre if i == 0 else body) + line).rstrip())
            if stat:
                for line in render.stat_lines(e):
                    click.echo(body + line)
            click.echo(body.rstrip())
        for line in row.connectors if row else ():
            click.echo(line)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@json_option
@click.pass_context
def show(ctx, rev, as_json):
    """A commit: message, facts, per-layer neurons, mask ratios, delta norm, stored bytes."""
    ci = open_repo(ctx).show(rev)
    if as_json:
        render.emit_json(ci.to_json())
        return
    for line in render.commit_header(ci):
        click.echo(line)
    click.echo("")
    for line in render.stat_lines(ci):
        click.echo(line)
    if ci.method:
        hp = ci.method.get("hparams", {})
        layers = hp.get("layers")
        click.echo(f"    method {ci.method.get('name')} (nmkevc {ci.method.get('tool_version')})"
                   + (f", layers {layers}" if layers else ""))
    ev = ci.info.get("evaluation")
    if ev:
        for rec in ev.get("requests", []):
            click.echo(
                f"    check: {rec.get('text')!r} -> {rec.get('target_new')!r}: "
                f"P {rec.get('p_before', 0):.3f} -> {rec.get('p_after', 0):.3f}"
                + (f", efficacy {'yes' if rec.get('efficacy') else 'no'}" if 'efficacy' in rec else "")
            )


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="nmkevc-view.html", show_default=True,
              help="The HTML file to write.")
@click.option("--mask-threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Mask-overlap score above which A...B calls a layer a conflict (merge's default).")
@json_option
@click.pass_context
def view(ctx, rev, output, mask_threshold, as_json):
    """Write REV's history (or A..B, or A...B with B's merge into A scored) as one HTML page."""
    report = open_repo(ctx).view(rev, output, mask_threshold=mask_threshold)
    if as_json:
        render.emit_json(report.to_json())
        return
    click.echo(f"wrote {report.path}: {report.commits} commit(s), {render.human_bytes(report.bytes)}")


@cli.command()
@click.argument("rev_a")
@click.argument("rev_b", default="HEAD", required=False)
@json_option
@click.pass_context
def diff(ctx, rev_a, rev_b, as_json):
    """Facts added/removed and per-layer changes from REV_A to REV_B."""
    d = open_repo(ctx).diff(rev_a, rev_b)
    if as_json:
        render.emit_json(d.to_json())
        return
    click.echo(f"diff {d.a[:10]}..{d.b[:10]}")
    for f in d.facts_added:
        click.echo(click.style(f"+ {render.fact_line(f)}  [{f['commit'][:10]}]", fg="green"))
    for f in d.facts_removed:
        click.echo(click.style(f"- {render.fact_line(f)}  [{f['commit'][:10]}]", fg="red"))
    for layer in d.layers:
        click.echo(f"  layer {layer.layer:>3}  neurons touched {layer.neurons_touched:>6}  "
                   f"|dW| {layer.norm_a:.4g} -> {layer.norm_b:.4g}  |change| {layer.norm_diff:.4g}")
    if not (d.facts_added or d.facts_removed or d.layers):
        click.echo("no differences")


@cli.command()
@click.argument("ref", default="HEAD", required=False)
@click.option("-n", "--max-count", type=int, default=20, show_default=True)
@click.pass_context
def reflog(ctx, ref, max_count):
    """Where REF (default HEAD) has pointed, newest first."""
    for e in open_repo(ctx).reflog(ref, max_count):
        click.echo(f"{(e.new or '0' * 10)[:10]} {render.when(int(e.time))} {e.message}")

