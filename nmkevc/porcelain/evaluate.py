"""`eval`: does the model at a revision still hold its edits, and still work?

Without a dataset every fact in effect at the revision is checked (efficacy, and
generalisation / specificity where the requests carry paraphrases / neighbourhood
prompts). With a dataset, its records are evaluated with their standard metrics
(CounterFact or zsRE, detected from the records). Both report perplexity on held-out
text (a slice of the shipped corpus never used for statistics) against the base.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import EditRequestError
from ..facts import EditRequest
from ..repo.repository import Repo
from ..workbench import Workbench
from .describe import facts_at

HELDOUT_CHARS = 20_000


@dataclass
class EvalResult:
    commit: str
    dataset: str | None
    kind: str  # "history" | "counterfact" | "zsre"
    count: int
    summary: dict
    perplexity: dict = field(default_factory=dict)
    records: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def history_requests(repo: Repo, cid: str) -> list[EditRequest]:
    """Facts in effect at cid; a later edit of the same (subject, prompt) supersedes."""
    latest: dict[tuple, EditRequest] = {}
    for _, r in facts_at(repo, cid):
        req = EditRequest.from_json(r)
        latest.pop(req.key, None)
        latest[req.key] = req
    return list(latest.values())


def dataset_kind(path: str | Path) -> str:
    from ..datasets.counterfact import is_counterfact
    from ..datasets.records import read_records

    first = read_records(path)[0].record
    if is_counterfact(first):
        return "counterfact"
    if "loc" in first and ("src" in first or "prompt" in first):
        return "zsre"
    if "subject" in first and ("target" in first or "target_new" in first):
        return "simple"
    raise EditRequestError(f"{path}: records are neither CounterFact, zsRE nor simple edit records")


def perplexity_change(bench: Workbench, base_id: str, commits: list[str], heldout_chars: int = HELDOUT_CHARS,
                      base_ppl: float | None = None) -> dict:
    """Held-out perplexity of the model of `commits` and of the base (pass `base_ppl` to reuse it)."""
    from ..evaluation.perplexity import perplexity

    texts = bench.corpus().heldout_texts(heldout_chars)
    if base_ppl is None:
        base = bench.base_model(base_id)
        base_ppl = perplexity(base.model, base.tokenizer, texts)
    state = bench.model_of(base_id, commits)
    ppl = perplexity(state.model, state.tokenizer, texts)
    return {"base": round(base_ppl, 4), "model": round(ppl, 4), "change": round(ppl - base_ppl, 4),
            "relative": round(ppl / base_ppl - 1, 6)}


def evaluate(bench: Workbench, rev: str = "HEAD", dataset: str | Path | None = None,
             perplexity: bool = True, records: bool = False) -> EvalResult:
    from ..evaluation.metrics import evaluate_requests

    repo = bench.repo
    cid = repo.resolve(rev)
    base_id = repo.commit(cid).base
    commits = repo.effective(cid)
    kind = "history" if dataset is None else dataset_kind(dataset)
    if kind == "zsre":
        from ..datasets import load_zsre
        from ..evaluation.metrics import ZsreProbe, zsre_accuracy, zsre_locality_reference

        items = [ZsreProbe(prompt=z.request.text, target=z.request.target_new,
                            rephrase=(z.request.paraphrases or (z.request.text,))[0], loc=z.loc, loc_ans=z.loc_ans)
                 for z in load_zsre(dataset)]
        base = bench.base_model(base_id)
        reference = zsre_locality_reference(base.model, base.tokenizer, items)
        state = bench.model_at(cid)
        report = zsre_accuracy(state.model, state.tokenizer, items, reference=reference)
        result = EvalResult(cid, str(dataset), kind, len(items), report.summary(),
                            records=[r.to_json() for r in report.records] if records else [])
    else:
        if kind == "history":
            cases: list = history_requests(repo, cid)
        elif kind == "counterfact":
            from ..datasets import load_counterfact_records
            from .datasets import eval_case

            cases = [eval_case(r) for r in load_counterfact_records(dataset)]
        else:
            from ..datasets import read_edit_file

            cases = read_edit_file(dataset)
        state = bench.model_at(cid)
        report = evaluate_requests(state.model, state.tokenizer, cases) if cases else None
        summary = report.summary() if report else {"requests": 0}
        result = EvalResult(cid, str(dataset) if dataset else None, kind, len(cases), summary,
                            records=[r.to_json() for r in report.records] if (records and report) else [])
    if perplexity:
        result.perplexity = perplexity_change(bench, base_id, commits)
    return result
