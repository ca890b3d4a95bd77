"""Which of an edit's neighbours the history of edits touched itself.

Specificity asks whether prompts of the edited fact's relation about *other* subjects keep
their true answers. When those subjects are edited too, as a long history on a fact set of a
few hundred countries does, the prompts stop being plain neighbours: one whose own fact (same
relation, same subject) is in the history is *meant* to have lost its old answer, and one whose
subject was edited under another relation measures whether an edit stays within its relation.
Split by kind, the figure reads without that mixing (docs/method.md, "Which neighbours lose").
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EditRequestError
from .metrics import EvalCase, EvalReport

#: no fact of the neighbour's subject is in the history
UNTOUCHED = "untouched"
#: the neighbour's subject was edited, under another relation only
SUBJECT_EDITED = "subject edited"
#: the neighbour's own fact (its relation and subject) was edited
FACT_EDITED = "own fact edited"
KINDS = (UNTOUCHED, SUBJECT_EDITED, FACT_EDITED)


def neighbour_kinds(cases: Sequence[EvalCase], history: Sequence[EvalCase]) -> list[tuple[str, ...]]:
    """Per case, the kind of each of its neighbourhood prompts against the facts edited in
    `history`; the cases must say their relation and their neighbours' subjects."""
    if not says_neighbours(cases):
        raise EditRequestError("the cases do not say their relation and their neighbours' subjects "
                               "(a countryinfo fact set does)")
    facts = {(c.relation, c.request.subject) for c in history}
    subjects = {c.request.subject for c in history}

    def kind(relation: str, subject: str) -> str:
        if (relation, subject) in facts:
            return FACT_EDITED
        return SUBJECT_EDITED if subject in subjects else UNTOUCHED

    return [tuple(kind(c.relation, s) for s in (c.neighborhood_subjects or ())) for c in cases]


def specificity_by_kind(report: EvalReport, kinds: Sequence[tuple[str, ...]]) -> dict[str, dict]:
    """{kind: {"prompts": n, "specificity": share of its prompts that kept their answer}}, per
    prompt (a request's mean, as `EvalReport.specificity` takes it, would weigh kinds unevenly)."""
    return share_by_kind([[p.success for p in r.neighborhood] for r in report.records], kinds)


def share_by_kind(successes: Sequence[Sequence[bool]], kinds: Sequence[tuple[str, ...]]) -> dict[str, dict]:
    """`specificity_by_kind` from each request's neighbourhood outcomes (True: kept its answer)."""
    if len(kinds) != len(successes):
        raise EditRequestError(f"{len(kinds)} kind lists for {len(successes)} evaluated requests")
    tally = {k: [0, 0] for k in KINDS}
    for row, kind_row in zip(successes, kinds, strict=True):
        for ok, k in zip(row, kind_row, strict=True):
            tally[k][0] += int(bool(ok))
            tally[k][1] += 1
    return {k: {"prompts": n, "specificity": None if n == 0 else round(ok / n, 4)} for k, (ok, n) in tally.items()}


def says_neighbours(cases: Sequence) -> bool:
    """Whether every case says its relation and its neighbours' subjects (`neighbour_kinds` can
    read them): EvalCases built from a fact set that records them, such as countryinfo's."""
    return all(isinstance(c, EvalCase) and c.relation is not None
               and (c.neighborhood_subjects is not None or not c.request.neighborhood) for c in cases)
