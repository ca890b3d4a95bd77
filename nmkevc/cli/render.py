"""Text rendering of porcelain records (the JSON form is the records' own to_json)."""

from __future__ import annotations

import json
import time

import click

from ..units import human_bytes

__all__ = ["emit_json", "human_bytes", "when"]


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))


def decorate(refs: list[str]) -> str:
    return f" ({', '.join(refs)})" if refs else ""


def fact_line(r: dict) -> str:
    text = r["prompt"].format(r["subject"]) if "{}" in r["prompt"] else r["prompt"]
    old = f" (was {r['target_true']!r})" if r.get("target_true") else ""
    return f"{text} -> {r['target_new']!r}{old}"


def commit_header(ci) -> list[str]:
    lines = [click.style(f"commit {ci.id}", fg="yellow") + decorate(ci.refs)]
    if len(ci.parents) > 1:
        lines.append("Merge:  " + " ".join(p[:10] for p in ci.parents))
    lines.append(f"Author: {ci.author}")
    lines.append(f"Date:   {when(ci.time)}")
    lines.append("")
    lines.extend("    " + m for m in ci.message.splitlines())
    return lines


def written(info: dict) -> str:
    """A layer's written fraction ‖ΔW k‖ / ‖r‖ (deltas made before it was recorded have none)."""
    wf = info.get("written_fraction")
    return f"  wrote {wf:.0%} of its share" if isinstance(wf, int | float) else ""


def health(h: dict) -> str:
    """A state's drift in one line: norm growth of the edited matrices, disturbance of generic text."""
    parts = []
    if "norm_growth" in h:
        parts.append(f"norm growth {h['norm_growth']:+.2%}")
    if "disturbance" in h:
        parts.append(f"disturbance {h['disturbance']:.3f} (this commit)")
    if "disturbance_cumulative" in h:
        parts.append(f"{h['disturbance_cumulative']:.3f} (since the base)")
    return ", ".join(parts) or "not measured"


def stat_lines(ci) -> list[str]:
    lines = []
    for r in ci.requests:
        lines.append(f"    + {fact_line(r)}")
    if ci.cancels:
        lines.append(f"    cancels: {', '.join(c[:10] for c in ci.cancels)}")
    for w in ci.weights:
        extra = ""
        if "rho_r" in w.info:
            extra = f"  rho_r {w.info['rho_r']:.3f} rho_b {w.info['rho_b']:.3f}"
        extra += written(w.info)
        lines.append(
            f"    layer {w.layer:>3}  neurons {w.neurons:>6}/{w.d_ff:<6} ({w.neurons / w.d_ff:5.1%})"
            f"  rank {w.rank:<3} |dW| {w.norm:.4g}{extra}"
        )
    h = ci.info.get("health") if isinstance(ci.info, dict) else None
    if isinstance(h, dict) and h:
        lines.append(f"    health: {health(h)}")
    if ci.delta:
        ratio = ci.dense_bytes / ci.stored_bytes if ci.stored_bytes else 0
        lines.append(
            f"    delta {ci.delta[:10]}: {human_bytes(ci.stored_bytes)} stored "
            f"(dense float32: {human_bytes(ci.dense_bytes)}, {ratio:.1f}x smaller)"
        )
    return lines
