"""Questions to the model at a commit: ask, blame, and whether edits still hold."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..facts import EditRequest
from ..workbench import Workbench
from .inputs import check_count, check_prompt, context_of


@dataclass
class Answer:
    commit: str
    prompt: str
    top: list[tuple[str, float]]
    continuation: str

    def to_json(self) -> dict:
        return asdict(self)


def ask(bench: Workbench, prompt: str, rev: str = "HEAD", top_k: int = 5, max_new_tokens: int = 12) -> Answer:
    from ..evaluation.scoring import greedy_continuation, next_token_topk

    cid = bench.repo.resolve(rev)
    base_id = bench.repo.commit(cid).base
    check_count(top_k, "--top-k", 1, 1000)
    check_count(max_new_tokens, "--max-new-tokens", 0, context_of(bench, base_id))
    check_prompt(bench, base_id, prompt, room=max(1, max_new_tokens))
    state = bench.model_at(cid)
    top = next_token_topk(state.model, state.tokenizer, prompt, k=top_k)
    cont = greedy_continuation(state.model, state.tokenizer, prompt, max_new_tokens=max_new_tokens) \
        if max_new_tokens > 0 else ""
    return Answer(cid, prompt, [(t, round(p, 6)) for t, p in top], cont)


@dataclass
class BlameLine:
    commit: str
    summary: str
    before: str
    after: str
    p_before: float
    p_after: float


@dataclass
class BlameReport:
    prompt: str
    answer: str
    lines: list[BlameLine] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def blame(bench: Workbench, prompt: str, rev: str = "HEAD") -> BlameReport:
    """Walk the history of rev in canonical order; name each commit whose model's top
    answer differs from its first parent's."""
    from ..evaluation.scoring import next_token_topk

    repo = bench.repo
    tip = repo.resolve(rev)
    check_prompt(bench, repo.commit(tip).base, prompt)
    order = repo.graph.canonical_order(repo.graph.ancestors(tip))
    memo: dict[str, tuple[str, float]] = {}

    def top1(cid: str) -> tuple[str, float]:
        key = repo.state_key(repo.commit(cid).base, repo.effective(cid))
        if key not in memo:
            state = bench.model_at(cid)
            memo[key] = next_token_topk(state.model, state.tokenizer, prompt, k=1)[0]
        return memo[key]

    lines = []
    for cid in order:
        c = repo.commit(cid)
        if not c.parents:
            continue
        (b, pb), (a, pa) = top1(c.parents[0]), top1(cid)
        if a != b:
            lines.append(BlameLine(cid, c.summary, b, a, round(pb, 6), round(pa, 6)))
    return BlameReport(prompt, top1(tip)[0], lines)


def functional_check(bench: Workbench, base_id: str, merged: list[str],
                     requests: list[tuple[str, EditRequest]]) -> list[dict]:
    """Edits that no longer hold on the model of `merged`: the target is not preferred
    over the old answer (target_true, or the base model's top-1 answer)."""
    from ..evaluation.scoring import next_token_topk, target_logprobs

    olds = []
    for _, r in requests:
        if r.target_true:
            olds.append(r.target_true)
        else:
            base = bench.base_model(base_id)
            olds.append(next_token_topk(base.model, base.tokenizer, r.text, k=1)[0][0].strip())
    state = bench.model_of(base_id, merged, label="the merged history")
    texts = [r.text for _, r in requests]
    lp_new = target_logprobs(state.model, state.tokenizer, texts, [r.target_new for _, r in requests])
    lp_old = target_logprobs(state.model, state.tokenizer, texts, olds)
    failures = []
    for (cid, r), old, n, o in zip(requests, olds, lp_new, lp_old, strict=True):
        if old and old.lower() != r.target_new.lower() and not n > o:
            now = next_token_topk(state.model, state.tokenizer, r.text, k=1)[0][0]
            failures.append({"commit": cid, "subject": r.subject, "text": r.text, "target": r.target_new,
                             "old": old, "now": now.strip(), "logp_target": n, "logp_old": o})
    return failures
