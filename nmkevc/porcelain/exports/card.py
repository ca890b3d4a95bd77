"""The model card every export writes (README.md with the Hugging Face front matter): which base,
which facts, by which method and protocol, how large the change is and how it scored.

An exported model goes to a hub; without a card it is anonymous. The front matter is written as
JSON-quoted YAML, which the hub and `huggingface_hub.ModelCard` read (tests/test_model_card.py
reads it back with them); building it here keeps `huggingface_hub` (0.1-0.4 s to import) off the
path of an export of a cached state, which loads no torch and aims at well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...bases import EMBEDDED_HUB_ID, EMBEDDED_LICENSE
from ...models.hf_dir import CARD_FILE, write_card
from ...units import human_bytes
from ...version import __version__
from ..describe import recorded_drift
from . import ExportJob

#: facts listed in the card; past this the card gives the count and points at the provenance file
MAX_FACTS = 200


def card_text(job: ExportJob, library: str, what: str, details: list[str] | None = None) -> str:
    """The card of one export: `library` ("transformers" or "peft") and `what` the export is."""
    repo = job.bench.repo
    source = repo.base_source(job.base)
    commits = [repo.commit(c) for c in job.provenance["effective_set"]]
    edits = [(cid, c) for cid, c in zip(job.provenance["effective_set"], commits, strict=True) if c.delta]
    methods = sorted({_method_name(c) for _, c in edits})
    meta: dict = {"library_name": library}
    base_model, licence = _base_identity(job, source)
    if base_model:
        meta["base_model"] = base_model
    if licence:
        meta["license"] = licence
    meta["tags"] = ["nmkevc", "knowledge-editing", "model-editing", *(m for m in methods if m != "direct")]
    front = "\n".join(_yaml(k, v) for k, v in meta.items())
    facts = _facts(edits)
    held = [f for f in facts if f["held"] is not None]
    stored = sum(repo.store.stored_size(c.delta) for _, c in edits)
    dense = sum(_dense_bytes(job, c) for _, c in edits)
    _, drift = recorded_drift(repo, job.commit)
    base_name = Path(source.location).name if source.kind == "local" else source.describe()  # no local paths
    lines = [
        "---", front, "---", "",
        f"# {base_name}, edited with nmkevc", "",
        f"This is {what} of the base model `{base_name}` (content id `{job.base[:12]}`) with "
        f"{len(facts)} fact(s) taught to it by knowledge editing, recorded as {len(edits)} commit(s) of an "
        f"nmkevc repository (version control for knowledge edits): revision `{job.commit}`, exported by "
        f"nmkevc {__version__}. The weights outside the edited MLP matrices are the base's, bit for bit.", "",
        "## Edited facts", "",
        "| subject | prompt | new answer | old answer | commit | held at commit (P after) |",
        "|---|---|---|---|---|---|",
    ]
    for f in facts[:MAX_FACTS]:
        held_text = "–" if f["held"] is None else f"{'yes' if f['held'] else 'no'} ({f['p']:.3f})"
        lines.append(f"| {_cell(f['subject'])} | {_cell(f['prompt'])} | {_cell(f['target_new'])} | "
                     f"{_cell(f['target_true'] or '')} | `{f['commit'][:10]}` | {held_text} |")
    if len(facts) > MAX_FACTS:
        lines.append(f"\n{len(facts) - MAX_FACTS} more fact(s): every one is in `nmkevc.json` beside this card.")
    lines += ["", "## How", ""]
    for name in methods:
        uses = [c for _, c in edits if _method_name(c) == name]
        hp = (uses[-1].method or {}).get("hparams") or {}
        lines.append(f"- **{name}**, {len(uses)} commit(s); the protocol of the latest (its hyperparameters, "
                     "stored with every commit so it can be replayed):")
        lines += ["", "```json", json.dumps(hp, sort_keys=True), "```", ""]
    lines += ["## Size", "",
              f"The change is stored as factored neuron deltas: {human_bytes(stored)} compressed, where the same "
              f"change as dense float32 differences takes {human_bytes(dense)}.", ""]
    lines += ["## Evaluation", ""]
    if held:
        mean_p = sum(f["p"] for f in held) / len(held)
        lines.append(f"- Efficacy at commit time (each fact checked right after its commit): "
                     f"{sum(f['held'] for f in held)}/{len(held)} held, mean P(new answer) {mean_p:.3f}.")
    if drift:
        parts = []
        if "norm_growth" in drift:
            parts.append(f"norm growth of the edited matrices {drift['norm_growth']:+.2%}")
        if "disturbance_cumulative" in drift:
            parts.append(f"disturbance of generic text {drift['disturbance_cumulative']:.3f} (relative RMS change "
                         "of the edited layers' output)")
        lines.append(f"- Drift from the base: {', '.join(parts)}.")
    if not held and not drift:
        lines.append("- No evaluation is stored for this revision.")
    lines += ["", *(details or []), "## Reproduce", "",
              "The revision, its facts and its protocol are in `nmkevc.json`; with the repository, "
              f"`nmkevc export {job.commit[:12]} DIR` writes this directory again, byte for byte.", ""]
    return "\n".join(lines)


def write(job: ExportJob, tmp: Path, library: str, what: str, details: list[str] | None = None) -> None:
    write_card(tmp, card_text(job, library, what, details))


def _base_identity(job: ExportJob, source) -> tuple[str | None, str | None]:
    """(hub id, licence) of the base where known: the embedded base's, a hub base's id, and a
    licence from the front matter of a README.md beside the base's files."""
    if source.kind == "embedded":
        return EMBEDDED_HUB_ID, EMBEDDED_LICENSE
    hub_id = source.location if source.kind == "hub" else None
    licence = None
    try:
        text = (job.bench.base_dir(job.base) / CARD_FILE).read_text("utf-8")
    except OSError:
        return hub_id, None
    if text.startswith("---"):
        for line in text.split("---", 2)[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "license" and value.strip():
                licence = value.strip().strip("'\"")
    return hub_id, licence


def _method_name(commit) -> str:
    """The method a commit's delta was made with ("direct": committed as a delta, no editor run)."""
    name = (commit.method or {}).get("name") if isinstance(commit.method, dict) else None
    return name if isinstance(name, str) and name else "direct"


def _dense_bytes(job: ExportJob, commit) -> int:
    """What a commit's change takes as dense float32 differences, from the base's recorded shapes
    and the layers its protocol names (no delta is loaded: an export of a cached state needs no torch)."""
    layers = ((commit.method or {}).get("hparams") or {}).get("layers") or []
    adapter, tensors = job.bench.adapter(job.base), job.bench.repo.manifest(job.base).tensors
    total = 0
    for layer in layers:
        names = [n for n in adapter.checkpoint_names(adapter.weight_name(layer)) if n in tensors]
        shape = tensors[names[0]].get("shape") or [] if names else []
        n = 4
        for d in shape:
            n *= d
        total += n if shape else 0
    return total


def _facts(edits) -> list[dict]:
    """Every fact in effect, with the commit that taught it and its check right after that commit."""
    out = []
    for cid, c in edits:
        checks = ((c.info or {}).get("evaluation") or {}).get("requests") or []
        for i, r in enumerate(c.requests):
            check = checks[i] if i < len(checks) and isinstance(checks[i], dict) else {}
            held = check.get("efficacy")
            out.append({"subject": r.get("subject", ""), "prompt": r.get("prompt", ""),
                        "target_new": r.get("target_new", ""), "target_true": r.get("target_true"),
                        "commit": cid, "held": held if isinstance(held, bool) else None,
                        "p": float(check.get("p_after") or 0.0)})
    return out


def _yaml(key: str, value) -> str:
    """One front-matter entry as JSON-quoted YAML (any text is safe in it)."""
    if isinstance(value, list):
        return f"{key}:\n" + "\n".join(f"- {json.dumps(v)}" for v in value)
    return f"{key}: {json.dumps(value)}"


def _cell(text: str) -> str:
    """A fact as a Markdown table cell: pipes escaped, line breaks and control characters dropped."""
    clean = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return clean.replace("|", "\\|")
