"""What a lifelong run leaves behind: results.json, table.md, PNG plots, and the block of
docs/results.md generated from results.json (figures in the docs come from the committed
JSON, never typed by hand; a run stopped part-way is reported as such).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import NmkevcError
from ..storage.fsutil import atomic_write_text
from .lifelong import BatchPoint, LifelongRun, provenance, retention_edits

#: the plots write_outputs draws: (file stem, point field, y label)
PLOTS = (
    ("efficacy", "efficacy", "efficacy (all edits so far)"),
    ("generalization", "generalization", "generalisation (paraphrases)"),
    ("specificity", "specificity", "specificity (neighbourhood)"),
    ("retention", "retention", "retention (efficacy of the first {n} edits)"),
    ("perplexity_change", "perplexity_change", "perplexity change vs unedited"),
    ("fluency", "fluency", "fluency (n-gram entropy, bits)"),
    ("seconds", "seconds", "seconds per batch"),
)


#: up to this many methods the legend sits inside the axes; more, and it goes beside them
LEGEND_INSIDE = 4

#: The lifelong goals at T = 1000 (issue #21): efficacy, generalisation and retention of the first
#: 100 edits at least these, specificity within SPEC_DROP of the unedited model, perplexity at most
#: +PPL, fluency within FLUENCY_DROP of the unedited model.
GOALS = {"efficacy": 0.90, "generalization": 0.75, "retention": 0.85}
SPEC_DROP, PPL, FLUENCY_DROP = 0.05, 0.10, 0.2


def _goal_marks(p: BatchPoint, base_fluency: float | None = None) -> dict[str, bool | None]:
    """Each goal met or not; None where the point (or the unedited model) lacks the figure."""
    spec_drop = None if p.specificity is None or p.base_specificity is None else p.base_specificity - p.specificity
    marks = {k: None if getattr(p, k) is None else getattr(p, k) >= v for k, v in GOALS.items()}
    return {
        **marks,
        "specificity": None if spec_drop is None else spec_drop <= SPEC_DROP,
        "perplexity": None if p.perplexity_change is None else p.perplexity_change <= PPL,
        "fluency": None if p.fluency is None or base_fluency is None
        else round(base_fluency - p.fluency, 6) <= FLUENCY_DROP,  # rounded: 5.3 − 5.1 is 0.2 here
    }


def _f(x, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def markdown_table(run: LifelongRun) -> str:
    """The per-batch figures as a Markdown table (table.md)."""
    rows = ["| method | edits | efficacy | generalisation | specificity | unedited specificity | "
            f"retention (first {retention_edits(run)}) | perplexity change | fluency | mask fraction | edit s | "
            "eval s | stored MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in run.points:
        rows.append(
            f"| {p.method} | {p.edits} | {_f(p.efficacy)} | {_f(p.generalization)} | {_f(p.specificity)} | "
            f"{_f(p.base_specificity)} | {_f(p.retention)} | {_f(p.perplexity_change, '+.2%')} | "
            f"{_f(p.fluency, '.2f')} | {_f(p.mean_mask_fraction)} | {p.seconds:.0f} | {_f(p.eval_seconds, '.0f')} | "
            f"{p.stored_bytes / 2**20:.2f} |"
        )
    return "\n".join(rows)


def read_results(out_dir: Path) -> LifelongRun | None:
    """The run published in `out_dir`/results.json, or None if there is none."""
    path = Path(out_dir) / "results.json"
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise NmkevcError(f"{path} is not valid JSON; restore it from version control or delete it") from None
    return LifelongRun.from_json(data)


def write_outputs(run: LifelongRun, out_dir: Path) -> list[Path]:
    """results.json, table.md and one PNG per entry of PLOTS (metric vs edits, a line per
    method; the unedited model's value as a dashed reference where there is one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "table.md"]
    atomic_write_text(paths[0], json.dumps(run.to_json(), indent=1) + "\n")
    atomic_write_text(paths[1], markdown_table(run) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    many = len(run.methods) > LEGEND_INSIDE
    for stem, metric, ylabel in PLOTS:
        fig, ax = plt.subplots(figsize=(5, 3.4))
        for i, method in enumerate(run.methods):
            color, style = _line_style(i, len(run.methods), plt)
            pts = [p for p in run.points_of(method) if getattr(p, metric) is not None]
            ax.plot([p.edits for p in pts], [getattr(p, metric) for p in pts], marker="o", color=color, ls=style,
                    label=method if metric != "seconds" else f"{method} edit")
            if metric == "specificity":
                ref = [p for p in pts if p.base_specificity is not None]
                if i == 0 and ref:  # the same prompts for every method: one reference line
                    ax.plot([p.edits for p in ref], [p.base_specificity for p in ref], ls="--", color="gray",
                            label="unedited")
            if metric == "seconds":
                ev = [p for p in run.points_of(method) if p.eval_seconds is not None]
                ax.plot([p.edits for p in ev], [p.eval_seconds for p in ev], ls=":", marker=".", color=color,
                        label=f"{method} eval")
        if metric == "fluency" and run.info.get("base_fluency") is not None:
            ax.axhline(run.info["base_fluency"], ls="--", color="gray", label="unedited")
        if metric == "perplexity_change":
            ax.axhline(PPL, ls=":", color="gray", label=f"goal +{PPL:.0%}")
        ax.set_xlabel("edits")
        ax.set_ylabel(ylabel.format(n=retention_edits(run)))
        ax.grid(alpha=0.3)
        if many:  # beside the axes, which it would otherwise cover; the saved figure grows to hold it
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize="small")
        p = out_dir / f"{stem}.png"
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def _line_style(i: int, n: int, plt) -> tuple:
    """Colour and line style of method i of n: matplotlib's ten colours while they suffice, else
    twenty colours and then a new dash pattern, so no two of a long comparison look alike."""
    if n <= 10:
        return f"C{i}", "-"
    return plt.get_cmap("tab20")(i % 20), ("-", "--", "-.", ":")[i // 20 % 4]


def compared_points(run: LifelongRun) -> tuple[dict[str, BatchPoint], bool]:
    """The point to report per method, and whether all are at one number of edits: the
    largest T every method reached with a full evaluation, else each one's latest."""
    evaluated = {m: [p for p in run.points_of(m) if p.efficacy is not None] for m in run.methods}
    common = set.intersection(*({p.edits for p in pts} for pts in evaluated.values())) if evaluated else set()
    if common:
        t = max(common)
        return {m: next(p for p in pts if p.edits == t) for m, pts in evaluated.items()}, True
    return {m: pts[-1] for m, pts in evaluated.items() if pts}, False


def results_markdown(run: LifelongRun | None, link_dir: str, what: str = "lifelong run") -> str:
    """The docs block for a run's results.json (`link_dir`: the results folder relative to the doc)."""
    if run is None:
        return (f"No {what} has been recorded yet: `python benchmarks/lifelong.py` writes its figures to "
                f"[{link_dir}/]({link_dir}/) (results.json, table.md, plots) and this block from them.")
    progress = run.progress()
    finished = all(e >= run.edits for e in progress.values())
    state = ", ".join(f"{m} {e}/{run.edits}" for m, e in progress.items())
    lines = [f"**{'Finished' if finished else 'Partial run, not finished'}: {state} edits** "
             f"(batches of {run.batch_size}; dataset {run.info.get('dataset', '?')}, split "
             f"{run.info.get('split', '?')}, seed {run.info.get('seed', '?')}, "
             f"{run.info.get('neighbours', '?')} neighbourhood prompts per fact)."]
    points, same_t = compared_points(run)
    if not points:
        lines.append("\nNo batch has been fully evaluated yet.")
        return "\n".join(lines)
    ts = sorted({p.edits for p in points.values()})
    where = f"at T = {ts[0]} edits, every method's latest fully evaluated point in common" if same_t else \
        "at each method's latest fully evaluated point (the methods are at different T)"
    base_ppl, base_flu = run.info.get("base_perplexity"), run.info.get("base_fluency")
    lines += ["", f"Figures {where}; ✓/✗: the lifelong goals at T = 1000 (efficacy ≥ {GOALS['efficacy']:.2f}, "
              f"generalisation ≥ {GOALS['generalization']:.2f}, specificity within {SPEC_DROP} of the unedited "
              f"model, retention of the first {retention_edits(run)} edits ≥ {GOALS['retention']:.2f}, "
              f"perplexity +≤ {PPL:.0%}, fluency "
              f"within {FLUENCY_DROP} of the unedited model).", "",
              "| method | edits | efficacy | generalisation | specificity | unedited | Δ specificity | "
              f"retention (first {retention_edits(run)}) | perplexity change | fluency |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| *goal* | | *≥ {GOALS['efficacy']:.2f}* | *≥ {GOALS['generalization']:.2f}* | | | *≥ −{SPEC_DROP}* | "
              f"*≥ {GOALS['retention']:.2f}* | *≤ +{PPL:.0%}* | *≥ unedited − {FLUENCY_DROP}* |"]
    header = lines[-3:]
    lines += [_goal_row(m, p, base_flu) for m, p in points.items()]
    latest = {m: pts[-1] for m in run.methods
              if (pts := [p for p in run.points_of(m) if p.efficacy is not None]) and m in points
              and pts[-1].edits > points[m].edits}
    if same_t and (best := _best_line(points, retention_edits(run))):
        lines += ["", f"At this T, {best}."]
    if untouched := _untouched_line(points):
        lines += ["", untouched]
    if latest:
        lines += ["", "Further, each method's latest fully evaluated point (compare rows only at the same T):",
                  "", *header, *[_goal_row(m, p, base_flu) for m, p in latest.items()]]
        t_max = max(p.edits for p in latest.values())
        if best := _best_line({m: p for m, p in latest.items() if p.edits == t_max}, retention_edits(run)):
            lines += ["", f"At T = {t_max}, {best}."]
    lines += ["", f"Unedited model: perplexity {_f(base_ppl, '.2f')} on the held-out text, fluency "
              f"{_f(base_flu, '.2f')}{_fluency_note(run)}. Unedited specificity is measured on the same "
              "neighbourhood prompts as the edited models' (those of the first T facts)."]
    plots = " · ".join(f"[{stem.replace('_', ' ')}]({link_dir}/{stem}.png)" for stem, _, _ in PLOTS)
    lines += ["", f"Plots (per batch, every method): {plots}. Every batch: [table.md]({link_dir}/table.md); "
              f"data: [results.json]({link_dir}/results.json)."]
    lines += _provenance_lines(run)
    return "\n".join(lines)


def _untouched_line(points: dict[str, BatchPoint]) -> str:
    """The specificity of the untouched neighbours, for the points that measured it ('' if none)."""
    measured = {m: p for m, p in points.items() if p.specificity_untouched is not None}
    if not measured:
        return ""
    return ("Specificity on the neighbours whose subject no edit so far touched (per prompt; "
            "[evaluation.md](evaluation.md#the-lifelong-benchmark)): "
            + "; ".join(f"{m} {_f(p.specificity_untouched)} (unedited {_f(p.base_specificity_untouched)})"
                        for m, p in measured.items()) + ".")


def _best_line(points: dict[str, BatchPoint], first: int) -> str:
    """Which of several methods at one T leads on retention, specificity and perplexity ('' for fewer than two)."""
    best = []
    for metric, label, pick, fmt in (("retention", f"highest retention of the first {first} edits", max, ".3f"),
                                     ("specificity", "highest specificity", max, ".3f"),
                                     ("perplexity_change", "smallest perplexity change", min, "+.2%")):
        vals = {m: getattr(p, metric) for m, p in points.items() if getattr(p, metric) is not None}
        if len(vals) > 1:
            top = pick(vals.values())
            best.append(f"{label}: {', '.join(m for m, v in vals.items() if v == top)} ({top:{fmt}})")
    return "; ".join(best)


def _goal_row(method: str, p: BatchPoint, base_fluency: float | None = None) -> str:
    """A point's row of the docs table, with the goal marks."""
    g = _goal_marks(p, base_fluency)
    delta = None if p.specificity is None or p.base_specificity is None else p.specificity - p.base_specificity
    return (f"| {method} | {p.edits} | {_f(p.efficacy)}{_mark(g['efficacy'])} | "
            f"{_f(p.generalization)}{_mark(g['generalization'])} | {_f(p.specificity)} | "
            f"{_f(p.base_specificity)} | {_f(delta, '+.3f')}{_mark(g['specificity'])} | "
            f"{_f(p.retention)}{_mark(g['retention'])} | {_f(p.perplexity_change, '+.2%')}{_mark(g['perplexity'])} | "
            f"{_f(p.fluency, '.2f')}{_mark(g['fluency'])} |")


def _provenance_lines(run: LifelongRun) -> list[str]:
    """How to reproduce each method's points, and the sessions and machines they took."""
    groups: dict[str, list[str]] = {}  # command -> methods
    records = {m: provenance(run, m) for m in run.methods}
    for m, rec in records.items():
        if rec.get("command"):
            groups.setdefault(rec["command"], []).append(m)
    lines = []
    if len(groups) == 1:
        lines += ["", f"Reproduce (resumes from its checkpoint if stopped): `{next(iter(groups))}`"]
    elif groups:
        lines += ["", "Reproduce (one command per group of methods; each resumes from its own checkpoint "
                  "if stopped, and writes its methods into the same results.json):", ""]
        lines += [f"- {', '.join(ms)}: `{cmd}`" for cmd, ms in groups.items()]
    seen: dict[str, dict] = {}  # the same sessions are shared by the methods of one command
    for rec in records.values():
        for s in rec.get("sessions") or []:
            seen.setdefault(f"{s.get('started')}|{rec.get('machine')}", {**s, "machine": rec.get("machine")})
    if seen:
        sessions = sorted(seen.values(), key=lambda s: str(s.get("started")))
        hours = sum(s.get("seconds", 0) for s in sessions) / 3600
        machines = sorted({str(s["machine"]) for s in sessions if s.get("machine")})
        lines += ["", f"{len(sessions)} session(s), {hours:.1f} h of wall time so far, first started "
                  f"{sessions[0].get('started', '?')}; machine: {'; '.join(machines) or '?'}."]
    return lines


def _fluency_note(run: LifelongRun) -> str:
    f = run.info.get("fluency")
    if not f:
        return ""
    return (f" ({len(f['prompts'])} fixed prompts, greedy, {f['max_new_tokens']} new tokens each; "
            "ROME's weighted bigram/trigram entropy)")


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """`text` with what lies between the markers `begin` and `end` replaced by `body`."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise NmkevcError(f"the document needs exactly one {begin!r} … {end!r} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + begin + "\n" + body + "\n" + end + tail
