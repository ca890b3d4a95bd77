"""Click commands. Each parses arguments, calls one Repository verb, renders the result."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click

from .. import __version__
from ..errors import MergeConflictError, NmkevcError
from . import render


def _method_names() -> list[str]:
    from ..editing.methods import method_names

    return list(method_names())


def _open(ctx: click.Context):
    from ..porcelain.repository import Repository

    return Repository.open(ctx.obj["path"])


class StageBars:
    """Progress bars on stderr (when it is a terminal), one per named stage."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self._tqdm(total=total, desc=stage, leave=False, file=sys.stderr,
                                               disable=None, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextmanager
def progress_bar(label: str):
    """A callback(done, total) for one stage, its bar closed on exit."""
    bars = StageBars()
    try:
        yield lambda done, total: bars(label, done, total)
    finally:
        bars.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "path", default=".", metavar="PATH", help="Run as if started in PATH.")
@click.version_option(__version__, prog_name="nmkevc")
@click.pass_context
def cli(ctx: click.Context, path: str) -> None:
    """Version control for knowledge edits to language models."""
    ctx.ensure_object(dict)
    ctx.obj["path"] = path


# -- repository -----------------------------------------------------------------------------
@cli.command()
@click.argument("directory", default=".", required=False)
@click.option("--base", default=None,
              help="Local HF model directory or hub id (default: embedded SmolLM2-135M-Instruct).")
@click.option("--branch", "-b", default="main", show_default=True, help="Name of the first branch.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init(ctx, directory, base, branch, as_json):
    """Create a repository recording BASE (verified by per-tensor sha256)."""
    from ..porcelain.repository import Repository

    target = os.path.join(ctx.obj["path"], directory)
    with progress_bar("hashing base") as cb:
        repo = Repository.init(target, base=base, progress=cb, branch=branch)
    st = repo.status()
    if as_json:
        render.emit_json(st.to_json())
        return
    click.echo(f"Initialized nmkevc repository in {repo.dir}")
    click.echo(f"base {st.base[:12]} ({st.architecture}, {st.base_source}) on branch {st.branch}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json):
    """Branch, HEAD, base and what is in effect."""
    st = _open(ctx).status()
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


# -- history views ------------------------------------------------------------------------------
@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("--graph", is_flag=True, help="Draw the commit graph.")
@click.option("--stat", is_flag=True, help="Facts, layers, neurons and stored bytes per commit.")
@click.option("-n", "--max-count", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def log(ctx, rev, oneline, graph, stat, max_count, as_json):
    """Show the history reachable from REV."""
    entries = _open(ctx).log(rev, max_count=max_count, stat=stat or as_json)
    if as_json:
        render.emit_json([e.to_json() for e in entries])
        return
    prefixes = render.graph_prefixes(entries) if graph else [""] * len(entries)
    for pre, e in zip(prefixes, entries):
        pre = pre + " " if pre else ""
        if oneline:
            click.echo(f"{pre}{click.style(e.id[:10], fg='yellow')}{render.decorate(e.refs)} "
                       f"{e.message.splitlines()[0] if e.message else ''}")
        else:
            pad = " " * len(pre)
            for i, line in enumerate(render.commit_header(e)):
                click.echo((pre if i == 0 else pad) + line)
            if stat:
                for line in render.stat_lines(e):
                    click.echo(pad + line)
            click.echo("")
        if oneline and stat:
            for line in render.stat_lines(e):
                click.echo(line)


@cli.command()
@click.argument("rev", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx, rev, as_json):
    """A commit: message, facts, per-layer neurons, mask ratios, delta norm, stored bytes."""
    ci = _open(ctx).show(rev)
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
@click.argument("rev_a")
@click.argument("rev_b", default="HEAD", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def diff(ctx, rev_a, rev_b, as_json):
    """Facts added/removed and per-layer changes from REV_A to REV_B."""
    d = _open(ctx).diff(rev_a, rev_b)
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
    repo = _open(ctx)
    name = ref if ref == "HEAD" or ref.startswith("refs/") else f"refs/heads/{ref}"
    for e in list(reversed(repo.refs.reflog(name)))[:max_count]:
        click.echo(f"{(e.new or '0' * 10)[:10]} {render.when(int(e.time))} {e.message}")


# -- branches -----------------------------------------------------------------------------------
@cli.command()
@click.argument("name", required=False)
@click.argument("start", default="HEAD", required=False)
@click.option("-d", "--delete", is_flag=True, help="Delete the branch (must be merged).")
@click.option("-D", "force_delete", is_flag=True, help="Delete the branch even if unmerged.")
@click.option("-f", "--force", is_flag=True, help="Reset NAME to START if it exists.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def branch(ctx, name, start, delete, force_delete, force, as_json):
    """List branches, create NAME at START, or delete NAME."""
    repo = _open(ctx)
    if name is None:
        head = repo.head()
        branches = repo.branches()
        if as_json:
            render.emit_json({"current": head.branch, "branches": branches})
            return
        for b, oid in branches.items():
            mark = "*" if b == head.branch else " "
            click.echo(f"{mark} {b:<24} {oid[:10]} {repo.commit(oid).summary}")
        return
    if delete or force_delete:
        repo.delete_branch(name, force=force_delete)
        click.echo(f"Deleted branch {name}")
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
    repo = _open(ctx)
    if orphan:
        if base_id:
            base_id = _resolve_base(repo, base_id)
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
    repo = _open(ctx)
    if new_branch:
        repo.branch(new_branch, target)
        oid = repo.switch(new_branch)
        click.echo(f"Switched to a new branch '{new_branch}' ({oid[:10]})")
        return
    if target in repo.branches():
        oid = repo.switch(target)
        click.echo(f"Switched to branch '{target}' ({oid[:10]})")
    else:
        oid = repo.switch(target, detach=True)
        click.echo(f"HEAD is now detached at {oid[:10]}")


@cli.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD", required=False)
@click.option("-d", "--delete", is_flag=True)
@click.option("-f", "--force", is_flag=True)
@click.pass_context
def tag(ctx, name, rev, delete, force):
    """List tags, tag REV as NAME, or delete NAME."""
    repo = _open(ctx)
    if name is None:
        for t, oid in repo.tags().items():
            click.echo(f"{t:<24} {oid[:10]}")
        return
    if delete:
        repo.delete_tag(name)
        click.echo(f"Deleted tag {name}")
        return
    oid = repo.tag(name, rev, force=force)
    click.echo(f"Tagged {oid[:10]} as {name}")


# -- changes ------------------------------------------------------------------------------------
@cli.command()
@click.argument("rev")
@click.option("-m", "--message", default=None)
@click.pass_context
def revert(ctx, rev, message):
    """Cancel REV exactly: it leaves the effective set (bit-identical to never applying it)."""
    oid = _open(ctx).revert(rev, message)
    click.echo(f"[{oid[:10]}] reverted {rev}")


@cli.command("cherry-pick")
@click.argument("rev")
@click.option("-m", "--message", default=None)
@click.pass_context
def cherry_pick(ctx, rev, message):
    """Copy REV's delta and facts onto HEAD."""
    oid = _open(ctx).cherry_pick(rev, message)
    click.echo(f"[{oid[:10]}] cherry-picked {rev}")


@cli.command()
@click.argument("rev")
@click.option("--strategy", "-s", type=click.Choice(["ours", "theirs", "sum", "replay"]), default=None,
              help="Resolve conflicts: keep ours / keep theirs, sum anyway, or replay their edits on ours.")
@click.option("-m", "--message", default=None)
@click.option("--no-ff", is_flag=True, help="Create a merge commit even when a fast-forward is possible.")
@click.option("--allow-unrelated-histories", "allow_unrelated", is_flag=True)
@click.option("--mask-threshold", type=float, default=None, help="Mask-conflict score above which a layer conflicts.")
@click.option("--no-functional", is_flag=True, help="Skip re-checking every edit on the merged model.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def merge(ctx, rev, strategy, message, no_ff, allow_unrelated, mask_threshold, no_functional, as_json):
    """Merge REV into HEAD; stop (exit 1, nothing changed) when edits conflict."""
    from ..deltas.measure import DEFAULT_MASK_THRESHOLD

    repo = _open(ctx)
    try:
        rep = repo.merge(rev, strategy=strategy, message=message, no_ff=no_ff,
                         allow_unrelated=allow_unrelated,
                         mask_threshold=DEFAULT_MASK_THRESHOLD if mask_threshold is None else mask_threshold,
                         functional=not no_functional)
    except MergeConflictError as e:
        if as_json:
            render.emit_json(e.report)
        else:
            from ..porcelain.merging import MergeReport

            report = MergeReport(**{k: v for k, v in e.report.items() if k != "conflicted"})
            for line in report.conflict_lines():
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


# -- models -------------------------------------------------------------------------------------
@cli.command()
@click.argument("rev")
@click.argument("directory")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def export(ctx, rev, directory, as_json):
    """Write the model at REV as a standard Hugging Face directory."""
    repo = _open(ctx)
    with progress_bar("export") as cb:
        rep = repo.export(rev, directory, progress=cb)
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"Exported {rep.commit[:10]} to {rep.path}: {rep.tensors} tensors "
               f"({rep.edited_tensors} edited), {render.human_bytes(rep.bytes_written)}")


# -- editing ------------------------------------------------------------------------------------
@cli.command()
@click.option("--subject", "-s", default=None, help="The subject, as it appears in the prompt.")
@click.option("--prompt", "-p", default=None, help="Prompt with {} for the subject (or containing it).")
@click.option("--target", "-t", default=None, help="The new answer.")
@click.option("--target-true", default=None, help="The current answer (for efficacy checks).")
@click.option("--paraphrase", "paraphrases", multiple=True, help="A paraphrase prompt to check (repeatable).")
@click.option("--file", "-f", "path", default=None, help="JSON/JSONL file of edit requests.")
@click.option("--batch-size", "-b", type=int, default=None, help="With --file: requests per commit (default: all).")
@click.option("-m", "--message", default=None)
@click.option("--method", type=click.Choice(_method_names()), default="nmke", show_default=True)
@click.option("--layers", default=None, help="Edited layers, e.g. 3-7 or 3,4,5 (default: by architecture/depth).")
@click.option("--corpus", default=None, help="Text file for covariance statistics (default: shipped corpus).")
@click.option("--stats-tokens", type=int, default=None, help="Tokens of corpus for the statistics.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def edit(ctx, subject, prompt, target, target_true, paraphrases, path, batch_size, message, method, layers,
         corpus, stats_tokens, as_json):
    """Teach the model new facts with NMKE and commit the delta."""
    from ..errors import UsageError
    from ..facts import EditRequest
    from ..porcelain.statistics import DEFAULT_STATS_TOKENS

    if path is not None:
        if subject or prompt or target:
            raise UsageError("give either --file or --subject/--prompt/--target, not both")
        from ..datasets import read_edit_file

        requests = read_edit_file(path)
    else:
        missing = [n for n, v in (("--subject", subject), ("--prompt", prompt), ("--target", target)) if v is None]
        if missing:
            raise UsageError(f"missing {', '.join(missing)} (or give --file)")
        requests = [EditRequest(subject=subject, prompt=prompt, target_new=target, target_true=target_true,
                                paraphrases=tuple(paraphrases))]
    repo = _open(ctx)
    overrides = {"layers": _parse_layers(layers)} if layers else {}
    bars = StageBars()
    try:
        outcomes = repo.edit_batches(
            requests, batch_size or len(requests), method=method, message=message, corpus=corpus,
            stats_tokens=stats_tokens or DEFAULT_STATS_TOKENS, progress=bars, **overrides,
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
                       + (f" (rho_r {layer['rho_r']:.3f}, rho_b {layer['rho_b']:.3f})" if "rho_r" in layer else ""))
        for c in o.checks:
            click.echo(f"    {c['text']!r} -> {c['target_new']!r}: P {c['p_before']:.3f} -> {c['p_after']:.3f}"
                       f" ({'holds' if c['efficacy'] else 'does not hold'})")


def _parse_layers(text: str) -> list[int]:
    from ..errors import UsageError

    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return list(range(int(a), int(b) + 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layers {text!r}: expected a range like 3-7 or a list like 3,4,5") from None


@cli.command()
@click.argument("prompt")
@click.option("--rev", "-r", default="HEAD", show_default=True)
@click.option("--top-k", "-k", type=int, default=5, show_default=True)
@click.option("--max-new-tokens", type=int, default=12, show_default=True, help="Greedy continuation length.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ask(ctx, prompt, rev, top_k, max_new_tokens, as_json):
    """What the model at REV says next after PROMPT (top-k with probabilities)."""
    ans = _open(ctx).ask(prompt, rev, top_k, max_new_tokens)
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
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def blame(ctx, prompt, rev, as_json):
    """Which commits changed the model's top answer to PROMPT."""
    rep = _open(ctx).blame(prompt, rev)
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
@click.option("--dataset", "-d", default=None,
              help="CounterFact / zsRE / edit-request file (default: the history's facts).")
@click.option("--no-perplexity", is_flag=True, help="Skip the held-out perplexity check.")
@click.option("--records", is_flag=True, help="With --json: include per-record results.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_(ctx, rev, dataset, no_perplexity, records, as_json):
    """Efficacy, generalisation, specificity and perplexity of the model at REV."""
    res = _open(ctx).evaluate(rev, dataset, perplexity=not no_perplexity, records=records and as_json)
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
@click.argument("name", type=click.Choice(["countryinfo"]))
@click.argument("out")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--relation", "relations", multiple=True, help="Only these relations (repeatable).")
@click.option("--max-per-relation", type=int, default=None)
def dataset_build(name, out, seed, relations, max_per_relation):
    """Write a CounterFact-schema set built from real-world data (countryinfo, MIT)."""
    from ..datasets import build_countryinfo, count_by_relation, write_dataset

    recs = build_countryinfo(seed=seed, relations=list(relations) or None, max_per_relation=max_per_relation)
    path = write_dataset(recs, out)
    counts = ", ".join(f"{k} {v}" for k, v in count_by_relation(recs).items())
    click.echo(f"wrote {len(recs)} records to {path} ({counts})")


# -- maintenance --------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fsck(ctx, as_json):
    """Check every object's hash, every ref's target, every delta's shapes against the base."""
    rep = _open(ctx).fsck()
    if as_json:
        render.emit_json(rep.to_json())
    else:
        for p in rep.problems:
            click.echo(f"error: {p}")
        for d in rep.dangling:
            click.echo(f"dangling {d[:12]}")
        click.echo(f"checked {rep.objects} objects: " + ("ok" if rep.ok else f"{len(rep.problems)} problem(s)"))
    if not rep.ok:
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx, as_json):
    """Delete objects nothing refers to, and temp files of interrupted writes."""
    rep = _open(ctx).gc()
    if as_json:
        render.emit_json(rep.to_json())
        return
    click.echo(f"removed {rep.removed} unreachable object(s), {render.human_bytes(rep.freed_bytes)}; "
               f"{rep.temp_files} temp file(s)")


@cli.group()
def base():
    """Recorded base models."""


@base.command("list")
@click.pass_context
def base_list(ctx):
    repo = _open(ctx)
    for bid, src in repo.config.bases.items():
        m = repo.manifest(bid)
        click.echo(f"{bid[:12]}  {m.architecture:<9} {m.num_parameters / 1e6:8.1f}M params  {src.describe()}")


@base.command("add")
@click.argument("location")
@click.pass_context
def base_add(ctx, location):
    """Record another base (for `switch --orphan NAME --base ID`)."""
    bid = _open(ctx).add_base(location)
    click.echo(f"recorded base {bid[:12]}")


@base.command("relocate")
@click.argument("base_id")
@click.argument("location")
@click.pass_context
def base_relocate(ctx, base_id, location):
    """Point a recorded base at a new location (its content must match)."""
    repo = _open(ctx)
    repo.relocate_base(_resolve_base(repo, base_id), location)
    click.echo("base relocated and verified")


def _resolve_base(repo, prefix: str) -> str:
    matches = [b for b in repo.config.bases if b.startswith(prefix)]
    if len(matches) != 1:
        raise NmkevcError(f"{'ambiguous' if matches else 'unknown'} base id {prefix!r}")
    return matches[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and an exit code, never a traceback (NMKEVC_DEBUG=1 shows it)."""
    debug = bool(os.environ.get("NMKEVC_DEBUG"))
    try:
        rv = cli.main(args=argv, prog_name="nmkevc", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:  # usage errors too: one line, not click's three
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; the repository is unchanged by the unfinished step", err=True)
        return 130
    except NmkevcError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug of ours: still one line, with a way to see more
        if debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        click.echo(f"error: internal error: {type(e).__name__}: {msg} (set NMKEVC_DEBUG=1 for details)", err=True)
        return 1


def run() -> None:  # console-script shim
    sys.exit(main())

