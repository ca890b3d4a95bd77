"""CounterFact and zsRE edit metrics, following ROME / MEMIT / AlphaEdit.

CounterFact, per request (token log-prob *sums* unless `length_normalize=True`, which
compares per-token means as ROME's released code does):
- efficacy: logP(target_new) > logP(target_true) on the rewrite prompt;
- generalization: the same on each paraphrase, averaged;
- specificity: logP(answer) > logP(target_new) on each neighbourhood prompt, averaged,
  where the answer is the prompt's own answer if the case gives one (see `EvalCase`),
  else the edited fact's `target_true`.
When no true answer is known a comparison is impossible, so the top-1 criterion is used
instead: success on rewrite/paraphrase prompts means target_new's first token is the
model's argmax next token; on a neighbourhood prompt it means it is *not*. Each prompt
result records which criterion applied. Aggregates are means over requests (each
request's paraphrase/neighbourhood mean counts once), skipping requests with no such
prompts; `score` is their harmonic mean, MEMIT's "S".

zsRE: teacher-forced token accuracy of the target on the prompt and the rephrase; for
locality see `zsre_accuracy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import EditRequestError
from ..facts import EditRequest
from .scoring import DEFAULT_BATCH_SIZE, TargetScore, target_scores

# -- CounterFact ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalCase:
    """An edit request plus what only evaluation needs.

    Some datasets give every neighbourhood prompt its own correct answer (a neighbour
    subject's true object need not be the edited subject's); CounterFact's neighbours
    all share `target_true`. `neighborhood_answers[i]` answers `request.neighborhood[i]`.
    `relation` and `neighborhood_subjects[i]` (whose fact that prompt asks), when the
    dataset gives them, let a history of edits tell which neighbours it edited itself
    (`evaluation.neighbours`).
    """

    request: EditRequest
    neighborhood_answers: tuple[str, ...] | None = None
    relation: str | None = None
    neighborhood_subjects: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name, what in (("neighborhood_answers", "answer"), ("neighborhood_subjects", "subject")):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(values)
            if len(values) != len(self.request.neighborhood):
                raise EditRequestError(
                    f"{len(values)} neighbourhood {what}s for "
                    f"{len(self.request.neighborhood)} neighbourhood prompts "
                    f"(subject {self.request.subject!r})"
                )
            if any(not isinstance(v, str) or not v.strip() for v in values):
                raise EditRequestError(f"empty neighbourhood {what} (subject {self.request.subject!r})")
            object.__setattr__(self, name, values)

    def neighbour_answer(self, i: int) -> str | None:
        if self.neighborhood_answers is not None:
            return self.neighborhood_answers[i]
        return self.request.target_true


@dataclass(frozen=True)
class PromptResult:
    """One prompt's outcome; `logp_true` is None when the top-1 criterion applied."""

    prompt: str
    logp_new: float
    logp_true: float | None
    true_answer: str | None
    new_is_top1: bool
    success: bool

    @property
    def criterion(self) -> str:
        return "top1" if self.logp_true is None else "compare"

    @property
    def p_new(self) -> float:
        return math.exp(self.logp_new)

    @property
    def p_true(self) -> float | None:
        return None if self.logp_true is None else math.exp(self.logp_true)

    def to_json(self) -> dict:
        d = {
            "prompt": self.prompt,
            "criterion": self.criterion,
            "success": self.success,
            "logp_new": self.logp_new,
            "p_new": self.p_new,
            "new_is_top1": self.new_is_top1,
        }
        if self.logp_true is not None:
            d.update(true_answer=self.true_answer, logp_true=self.logp_true, p_true=self.p_true)
        return d


@dataclass(frozen=True)
class RequestResult:
    """All prompts of one request, with its efficacy / generalization / specificity."""

    request: EditRequest
    rewrite: PromptResult
    paraphrases: tuple[PromptResult, ...]
    neighborhood: tuple[PromptResult, ...]

    @property
    def efficacy(self) -> float:
        return float(self.rewrite.success)

    @property
    def generalization(self) -> float | None:
        return _mean([float(p.success) for p in self.paraphrases])

    @property
    def specificity(self) -> float | None:
        return _mean([float(p.success) for p in self.neighborhood])

    def to_json(self) -> dict:
        r = self.request
        d = {
            "case_id": r.case_id,
            "subject": r.subject,
            "target_new": r.target_new,
            "target_true": r.target_true,
            "efficacy": self.efficacy,
            "generalization": self.generalization,
            "specificity": self.specificity,
            "rewrite": self.rewrite.to_json(),
            "paraphrases": [p.to_json() for p in self.paraphrases],
            "neighborhood": [p.to_json() for p in self.neighborhood],
        }
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class EvalReport:
    """Per-request results and their aggregate means (see the module docstring)."""

    records: tuple[RequestResult, ...]
    length_normalized: bool = False

    @property
    def efficacy(self) -> float | None:
        return _mean([r.efficacy for r in self.records])

    @property
    def generalization(self) -> float | None:
        return _mean([r.generalization for r in self.records if r.generalization is not None])

    @property
    def specificity(self) -> float | None:
        return _mean([r.specificity for r in self.records if r.specificity is not None])

    @property
    def score(self) -> float | None:
        """Harmonic mean of the defined ones of efficacy, generalization, specificity."""
        parts = [x for x in (self.efficacy, self.generalization, self.specificity) if x is not None]
        if not parts:
            return None
        if min(parts) == 0:
            return 0.0
        return len(parts) / sum(1 / x for x in parts)

    @property
    def mean_p_new(self) -> float | None:
        """Mean P(target_new) on rewrite prompts: how strongly, not just whether."""
        return _mean([r.rewrite.p_new for r in self.records])

    @property
    def mean_p_true(self) -> float | None:
        return _mean([r.rewrite.p_true for r in self.records if r.rewrite.p_true is not None])

    @property
    def efficacy_magnitude(self) -> float | None:
        """Mean P(new) - P(true) on rewrite prompts (ROME's efficacy magnitude)."""
        return _mean([_margin(r.rewrite) for r in self.records if r.rewrite.p_true is not None])

    @property
    def generalization_magnitude(self) -> float | None:
        return _mean(
            [m for r in self.records if (m := _mean_margin(r.paraphrases)) is not None]
        )

    @property
    def specificity_magnitude(self) -> float | None:
        """Mean P(answer) - P(new) on neighbourhood prompts."""
        means = [_mean_margin(r.neighborhood) for r in self.records]
        return _mean([-m for m in means if m is not None])

    def summary(self) -> dict:
        return {
            "n": len(self.records),
            "length_normalized": self.length_normalized,
            "efficacy": self.efficacy,
            "generalization": self.generalization,
            "specificity": self.specificity,
            "score": self.score,
            "mean_p_new": self.mean_p_new,
            "mean_p_true": self.mean_p_true,
            "efficacy_magnitude": self.efficacy_magnitude,
            "generalization_magnitude": self.generalization_magnitude,
            "specificity_magnitude": self.specificity_magnitude,
        }

    def to_json(self) -> dict:
        return {"summary": self.summary(), "records": [r.to_json() for r in self.records]}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _margin(p: PromptResult) -> float:
    assert p.p_true is not None
    return p.p_new - p.p_true


def _mean_margin(prompts: Sequence[PromptResult]) -> float | None:
    return _mean([_margin(p) for p in prompts if p.p_true is not None])


def _as_case(item: EditRequest | EvalCase) -> EvalCase:
    return item if isinstance(item, EvalCase) else EvalCase(item)


def evaluate_requests(
    model: torch.nn.Module,
    tokenizer,
    requests: Sequence[EditRequest | EvalCase],
    batch_size: int = DEFAULT_BATCH_SIZE,
    length_normalize: bool = False,
) -> EvalReport:
    """CounterFact metrics for every request, all prompts scored in shared batches.

    Accepts plain `EditRequest`s or `EvalCase`s (for per-neighbour answers).
    """
    cases = [_as_case(item) for item in requests]
    # (kind, prompt, true answer or None) per prompt of each case
    specs = []
    for c in cases:
        r = c.request
        rows = [("rewrite", r.text, r.target_true)]
        rows += [("paraphrase", p, r.target_true) for p in r.paraphrases]
        rows += [("neighborhood", p, c.neighbour_answer(i)) for i, p in enumerate(r.neighborhood)]
        specs.append(rows)

    index: dict[tuple[str, str], int] = {}
    for c, rows in zip(cases, specs, strict=True):
        for _, prompt, answer in rows:
            index.setdefault((prompt, c.request.target_new), len(index))
            if answer is not None:
                index.setdefault((prompt, answer), len(index))
    pairs = list(index)
    scores = target_scores(
        model, tokenizer, [p for p, _ in pairs], [t for _, t in pairs], batch_size
    )

    def judge(kind: str, prompt: str, new: str, answer: str | None) -> PromptResult:
        s_new = scores[index[(prompt, new)]]
        s_true = scores[index[(prompt, answer)]] if answer is not None else None
        if s_true is None:
            ok = s_new.first_token_is_top1
            success = ok if kind != "neighborhood" else not ok
        else:
            a, b = _value(s_new, length_normalize), _value(s_true, length_normalize)
            success = a > b if kind != "neighborhood" else b > a
        return PromptResult(
            prompt=prompt,
            logp_new=s_new.logprob,
            logp_true=None if s_true is None else s_true.logprob,
            true_answer=answer,
            new_is_top1=s_new.first_token_is_top1,
            success=success,
        )

    records = []
    for c, rows in zip(cases, specs, strict=True):
        results = [judge(kind, p, c.request.target_new, a) for kind, p, a in rows]
        n_para = len(c.request.paraphrases)
        records.append(
            RequestResult(
                request=c.request,
                rewrite=results[0],
                paraphrases=tuple(results[1 : 1 + n_para]),
                neighborhood=tuple(results[1 + n_para :]),
            )
        )
    return EvalReport(tuple(records), length_normalized=length_normalize)


def _value(s: TargetScore, length_normalize: bool) -> float:
    return s.mean_logprob if length_normalize else s.logprob


# -- zsRE -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ZsreProbe:
    """What the zsRE metric scores: the edit (prompt -> target), its rephrase, an unrelated
    NQ question with its answer. Files are read by `nmkevc.datasets.load_zsre`."""

    prompt: str
    target: str
    rephrase: str
    loc: str
    loc_ans: str


@dataclass(frozen=True)
class ZsreResult:
    """Teacher-forced token accuracies of one record."""

    rewrite_acc: float
    rephrase_acc: float
    locality: float
    #: the evaluated model's argmax ids on the loc_ans positions (a future reference)
    loc_argmax: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            "rewrite_acc": self.rewrite_acc,
            "rephrase_acc": self.rephrase_acc,
            "locality": self.locality,
        }


@dataclass(frozen=True)
class ZsreReport:
    """Per-record results and means; `locality_vs` is "reference" or "answer"."""

    records: tuple[ZsreResult, ...]
    locality_vs: str

    @property
    def efficacy(self) -> float | None:
        return _mean([r.rewrite_acc for r in self.records])

    @property
    def generalization(self) -> float | None:
        return _mean([r.rephrase_acc for r in self.records])

    @property
    def specificity(self) -> float | None:
        return _mean([r.locality for r in self.records])

    def locality_reference(self) -> list[tuple[int, ...]]:
        """Pass this from the unedited model's report to `zsre_accuracy(reference=...)`."""
        return [r.loc_argmax for r in self.records]

    def summary(self) -> dict:
        return {
            "n": len(self.records),
            "efficacy": self.efficacy,
            "generalization": self.generalization,
            "specificity": self.specificity,
            "locality_vs": self.locality_vs,
        }

    def to_json(self) -> dict:
        return {"summary": self.summary(), "records": [r.to_json() for r in self.records]}


def zsre_accuracy(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[ZsreProbe],
    reference: Sequence[Sequence[int]] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ZsreReport:
    """zsRE metrics: teacher-forced token accuracy of `target` on prompt and rephrase.

    Locality, teacher-forced over `loc` + `loc_ans`:
    - with `reference` (the unedited model's argmax ids there, from
      `zsre_locality_reference` or `ZsreReport.locality_reference()`): the fraction of
      positions where this model predicts the same token. This is MEND/EasyEdit's
      "unchanged predictions" locality, 1.0 for the unedited model itself.
    - without: the fraction of `loc_ans` tokens this model predicts, as in ROME/MEMIT's
      released zsRE evaluation (low in absolute terms for small models; compare the
      edited figure with the unedited one).
    """
    if reference is not None and len(reference) != len(records):
        raise ValueError(f"{len(reference)} reference rows for {len(records)} records")
    prompts, targets = [], []
    for r in records:
        prompts += [r.prompt, r.rephrase, r.loc]
        targets += [r.target, r.target, r.loc_ans]
    scores = target_scores(model, tokenizer, prompts, targets, batch_size)
    results = []
    for i in range(len(records)):
        rew, reph, loc = scores[3 * i : 3 * i + 3]
        if reference is None:
            locality = loc.accuracy
        else:
            ref = tuple(int(t) for t in reference[i])
            if len(ref) != len(loc.argmax_ids):
                raise ValueError(
                    f"reference row {i} has {len(ref)} tokens, loc_ans has "
                    f"{len(loc.argmax_ids)}: was it made with another tokenizer?"
                )
            same = [a == b for a, b in zip(loc.argmax_ids, ref, strict=True)]
            locality = sum(same) / len(same)
        results.append(ZsreResult(rew.accuracy, reph.accuracy, locality, loc.argmax_ids))
    return ZsreReport(tuple(results), "answer" if reference is None else "reference")


def zsre_locality_reference(
    model: torch.nn.Module,
    tokenizer,
    records: Sequence[ZsreProbe],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[tuple[int, ...]]:
    """The (unedited) model's teacher-forced argmax ids on each `loc` + `loc_ans`."""
    scores = target_scores(
        model, tokenizer, [r.loc for r in records], [r.loc_ans for r in records], batch_size
    )
    return [s.argmax_ids for s in scores]
