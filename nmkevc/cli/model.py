"""Running the model: edit, ask, blame, eval, export, dataset."""

from __future__ import annotations

import click

from ..porcelain.datasets import dataset_names
from . import render
from .base import RepoPath, StageBars, cli, json_option, method_names, open_repo, progress_bar


@cli.command()
@click.argument("rev")
@click.argument("directory", type=RepoPath())
@click.option("--format", "fmt", default="hf", show_default=True,
              help="hf: the whole model; peft: a LoRA adapter of the change from the base "
                   "(any registered export format, docs/design.md).")
@click.option("--rank", type=int, default=None,
              help="With --format peft: truncate the adapter to this rank (the error is reported).")
@json_option
@click.pass_context
def export(ctx, rev, directory, fmt, rank, as_json):
    """Write the model at REV as a Hugging Face directory, or (--format peft) as a LoRA adapter."""
    repo = open_repo(ctx)
    with progress_bar("export") as cb:
        rep = repo.export(rev, directory, progress=cb, format=fmt, rank=rank)
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(rep.describe())


@cli.command()
@click.option("--subject", "-s", default=None, help="The subject, as it appears in the prompt.")
@click.option("--prompt", "-p", default=None, help="Prompt with {} for the subject (or containing it).")
@click.option("--target", "-t", default=None, help="The new answer.")
@click.option("--target-true", default=None, help="The current answer (for efficacy checks).")
@click.option("--paraphrase", "paraphrases", multiple=True, help="A paraphrase prompt to check (repeatable).")
@click.option("--file", "-f", "path", type=RepoPath(), default=None, help="JSON/JSONL file of edit requests.")
@click.option("--batch-size", "-b", type=int, default=None, help="With --file: requests per commit (default: all).")
@click.option("-m", "--message", default=None)
@click.option("--method", type=click.Choice(method_names()), default="nmke", show_default=True)
@click.option("--layers", default=None, help="Edited layers, e.g. 3-7 or 3,4,5 (default: by architecture/depth).")
@click.option("--corpus", type=RepoPath(), default=None,
              help="Text file for covariance statistics (default: shipped corpus).")
@click.option("--stats-tokens", type=int, default=None, help="Tokens of corpus for the statistics.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="An edit hyperparameter (repeatable; see docs/method.md), e.g. --set masked_update=compensated.")
@click.option("--preset", default=None, metavar="NAME",
              help="A named set of hyperparameters applied before --set: 'published' (the method as its "
                   "paper runs it, no lifelong mechanisms).")
@json_option
@click.pass_context
def edit(ctx, subject, prompt, target, target_true, paraphrases, path, batch_size, message, method, layers,
         corpus, stats_tokens, settings, preset, as_json):
    """Teach the model new facts with NMKE and commit the delta."""
    from ..errors import UsageError
    from ..porcelain import EditRequest, parse_setting
    from ..porcelain.datasets import read_requests

    if path is not None:
        if subject or prompt or target:
            raise UsageError("give either --file or --subject/--prompt/--target, not both")
        requests = read_requests(path)
    else:
        missing = [n for n, v in (("--subject", subject), ("--prompt", prompt), ("--target", target)) if v is None]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or give --file)")
        requests = [EditRequest(subject=subject, prompt=prompt, target_new=target, target_true=target_true,
                                paraphrases=tuple(paraphrases))]
    repo = open_repo(ctx)
    overrides = dict(parse_setting(x) for x in settings)
    if preset is not None:
        overrides["preset"] = preset
    if layers is not None:  # --layers "" is a mistake, not the default
        overrides["layers"] = _parse_layers(layers)
    bars = StageBars(enabled=not as_json)
    try:
        outcomes = repo.edit_batches(
            requests, batch_size, method=method, message=message, corpus=corpus,
            stats_tokens=stats_tokens, progress=bars, **overrides,
        )
    finally:
        bars.close()
    if as_json:
        render.emit_json([o.to_json() for o in outcomes])
        return
    for o in outcomes:
        click.echo(f"[{o.commit[:10]}] {len(o.requests)} fact(s) edited with {method} in {o.seconds:.1f}s, "
                   f"delta {render.human_bytes(o.stored_bytes)}")
        for layer in o.layers:
            click.echo(f"    layer {layer['layer']:>3}: {layer['neurons']}/{layer['d_ff']} neurons"
                       + (f" (rho_r {layer['rho_r']:.3f}, rho_b {layer['rho_b']:.3f})" if "rho_r" in layer else "")
                       + render.written(layer))
        for c in o.checks:
            click.echo(f"    {c['text']!r} -> {c['target_new']!r}: P {c['p_before']:.3f} -> {c['p_after']:.3f}"
                       f" ({'holds' if c['efficacy'] else 'does not hold'})")
        if o.health:
            click.echo(f"    health: {render.health(o.health)}")
        for w in o.warnings:
            click.echo(f"warning: {w}", err=True)


def _parse_layers(text: str) -> list[int]:
    from ..errors import UsageError

    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return list(range(int(a), int(b) + 1))
        out = [int(x) for x in text.split(",") if x.strip()]
        if not out:
            raise ValueError(text)
        return out
    except ValueError:
        raise UsageError(f"--layers {text!r}: expected a range like 3-7 or a list like 3,4,5") from None


@cli.command()
@click.argument("prompt")
@click.option("--rev", "-r", default="HEAD", show_default=True)
@click.option("--top-k", "-k", type=int, default=5, show_default=True)
@click.option("--max-new-tokens", type=int, default=12, show_default=True, help="Greedy continuation length.")
@json_option
@click.pass_context
def ask(ctx, prompt, rev, top_k, max_new_tokens, as_json):
    """What the model at REV says next after PROMPT (top-k with probabilities)."""
    ans = open_repo(ctx).ask(prompt, rev, top_k, max_new_tokens)
    if as_json:
        render.emit_json(ans.to_json())
        return
    click.echo(f"{ans.commit[:10]}  {prompt!r}")
    for tok, p in ans.top:
        click.echo(f"  {p:7.2%}  {tok!r}")
    if ans.continuation:
        click.echo(f"  greedy: {prompt}{ans.continuation}")


@cli.command()
@click.argument("prompt")
@click.option("--rev", "-r", default="HEAD", show_default=True)
@json_option
@click.pass_context
def blame(ctx, prompt, rev, as_json):
    """Which commits changed the model's top answer to PROMPT."""
    rep = open_repo(ctx).blame(prompt, rev)
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"{prompt!r} -> {rep.answer!r} at {rev}")
    if not rep.lines:
        click.echo("  no commit changed the answer (it is the base model's)")
    for line in rep.lines:
        click.echo(f"  {line.commit[:10]} {line.before!r} ({line.p_before:.2%}) -> {line.after!r} "
                   f"({line.p_after:.2%})  {line.summary}")


@cli.command("eval")
@click.option("--rev", "-r", default="HEAD", show_default=True)
@click.option("--dataset", "-d", type=RepoPath(), default=None,
              help="CounterFact / zsRE / edit-request file (default: the history's facts).")
@click.option("--no-perplexity", is_flag=True, help="Skip the held-out perplexity check.")
@click.option("--records", is_flag=True, help="With --json: include per-record results.")
@json_option
@click.pass_context
def eval_(ctx, rev, dataset, no_perplexity, records, as_json):
    """Efficacy, generalisation, specificity and perplexity of the model at REV."""
    res = open_repo(ctx).evaluate(rev, dataset, perplexity=not no_perplexity, records=records and as_json)
    if as_json:
        render.emit_json(res.to_json())
        return
    what = f"{res.count} fact(s) in effect" if res.kind == "history" else f"{res.count} {res.kind} record(s)"
    click.echo(f"{res.commit[:10]}: {what}")
    for key in ("efficacy", "generalization", "specificity", "score", "locality_vs"):
        v = res.summary.get(key)
        if v is not None:
            click.echo(f"  {key:<15} {v:.3f}" if isinstance(v, float) else f"  {key:<15} {v}")
    if res.perplexity:
        p = res.perplexity
        click.echo(f"  perplexity      {p['model']:.3f} (base {p['base']:.3f}, {p['relative']:+.2%})")


@cli.group()
def dataset():
    """Build fact datasets."""


@dataset.command("build")
@click.argument("name", type=click.Choice(dataset_names()))
@click.argument("out", type=RepoPath())
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--relation", "relations", multiple=True, help="Only these relations (repeatable).")
@click.option("--max-per-relation", type=int, default=None)
@click.option("--split", type=click.Choice(["dev", "test"]), default=None,
              help="Only the dev part (for choosing hyperparameters) or the test part (for reported figures).")
def dataset_build(name, out, seed, relations, max_per_relation, split):
    """Write a CounterFact-schema set built from real-world data (countryinfo, MIT)."""
    from ..porcelain.datasets import build_dataset

    rep = build_dataset(name, out, seed=seed, relations=list(relations) or None,
                        max_per_relation=max_per_relation, split=split)
    counts = ", ".join(f"{k} {v}" for k, v in rep.counts.items())
    click.echo(f"wrote {rep.records} records to {rep.path} ({counts})")



@cli.command()
@click.option("--dataset", "-d", "source", type=RepoPath(keep=tuple(dataset_names())), default="countryinfo",
              show_default=True,
              help="A built-in fact set (countryinfo) or a CounterFact-schema file.")
@click.option("--edits", "-n", type=int, default=1000, show_default=True, help="Facts taught in total.")
@click.option("--batch-size", "-b", type=int, default=100, show_default=True, help="Facts per commit.")
@click.option("--methods", default=None,
              help="Comma-separated methods (default: every registered one); an arm METHOD:KEY=VALUE[:KEY=VALUE] "
                   "sets hyperparameters of one, e.g. nmke,nmke:masked_update=compensated.")
@click.option("--out", "out_dir", type=RepoPath(), default="lifelong-results", show_default=True,
              help="Directory for results.json, plots, table.md and the checkpoint.")
@click.option("--results", "results_dir", type=RepoPath(), default=None,
              help="Directory for results.json, plots and table.md (default: --out). Methods it already "
                   "holds that this run does not run are kept: one method per session gathers there.")
@click.option("--split", type=click.Choice(["dev", "test"]), default="test", show_default=True,
              help="Part of the built-in fact set (choose hyperparameters on dev, report on test).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--neighbours", type=int, default=5, show_default=True, help="Neighbourhood prompts per fact.")
@click.option("--eval-every", type=int, default=1, show_default=True,
              help="Evaluate all edits so far every K batches (and the first and last).")
@click.option("--measure-every", type=int, default=1, show_default=True,
              help="Measure retention (the first 100 edits), perplexity and fluency every K batches and at "
                   "every full evaluation (for runs of many small batches).")
@click.option("--interleave", is_flag=True,
              help="Run the methods batch by batch, so a run stopped part-way compares them at the same T.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="An edit hyperparameter for every method (repeatable); for one method use an arm in --methods.")
@json_option
@click.pass_context
def lifelong(ctx, source, edits, batch_size, methods, out_dir, results_dir, split, seed, neighbours, eval_every,
             measure_every, interleave, settings, as_json):
    """Sequential editing benchmark: EDITS facts in batches, per method, each on its own branch.

    Checkpoints after every batch in --out; run the same command again to resume."""
    from ..porcelain import markdown_table, parse_setting, split_top

    run = open_repo(ctx).lifelong(
        source, edits, batch_size, split_top(methods) if methods else None, out_dir=out_dir, seed=seed,
        neighbours=neighbours, split=split, eval_every=eval_every, measure_every=measure_every,
        interleave=interleave, results_dir=results_dir,
        log=(lambda line: None) if as_json else (lambda line: click.echo(line, err=True)),
        **dict(parse_setting(x) for x in settings))
    if as_json:
        render.emit_json(run.to_json())
        return
    click.echo(markdown_table(run))
    click.echo(f"results in {results_dir or out_dir}")
