"""CounterFact and multi-CounterFact (the ROME/MEMIT JSON schema) as edit requests.

A record looks like::

    {"case_id": 0,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                           "target_new": {"str": "English"}, "target_true": {"str": "French"}},
     "paraphrase_prompts": ["... Danielle Darrieux speaks the language of"],
     "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
     "attribute_prompts": [...], "generation_prompts": [...]}

Paraphrase and neighbourhood prompts are full texts (the subject already written in); they
become `EditRequest.paraphrases` / `.neighborhood` unchanged. The attribute and generation
prompts, which EditRequest has no place for, are kept on `CounterFactRecord`, as is the
optional `neighborhood_answers` extension written by `countryinfo_set` (one true answer per
neighbourhood prompt, for sets where neighbours do not all share the edited fact's answer) and
its `neighborhood_subjects` (whose fact each neighbourhood prompt asks: a lifelong evaluation
tells apart the neighbours whose own fact the history edited).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..facts import EditRequest
from .records import Located, fill_subject, make_request, read_records, string_list, text_field


@dataclass(frozen=True)
class CounterFactRecord:
    """One CounterFact case: the edit plus the prompts only the evaluation uses."""

    request: EditRequest
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    neighborhood_answers: tuple[str, ...] | None = None
    relation_id: str | None = None
    neighborhood_subjects: tuple[str, ...] | None = None


def is_counterfact(record: dict) -> bool:
    return "requested_rewrite" in record


def counterfact_record(loc: Located) -> CounterFactRecord:
    """Parse one located CounterFact record; errors name the record's line or index."""
    rec = loc.record
    rw = rec.get("requested_rewrite")
    if isinstance(rw, list) and len(rw) == 1:
        rw = rw[0]
    if not isinstance(rw, dict):
        raise loc.error("field 'requested_rewrite' must be an object")
    subject = text_field(loc, "subject", obj=rw)
    case_id = rec.get("case_id")
    request = make_request(
        loc,
        subject=subject,
        prompt=text_field(loc, "prompt", obj=rw),
        target_new=text_field(loc, "target_new", obj=rw),
        target_true=text_field(loc, "target_true", obj=rw, required=False) or None,
        paraphrases=tuple(fill_subject(p, subject) for p in string_list(loc, "paraphrase_prompts")),
        neighborhood=tuple(string_list(loc, "neighborhood_prompts")),
        case_id=None if case_id is None else str(case_id),
    )
    answers, subjects = (_per_neighbour(loc, name, len(request.neighborhood))
                         for name in ("neighborhood_answers", "neighborhood_subjects"))
    relation = rw.get("relation_id")
    return CounterFactRecord(
        request=request,
        attribute_prompts=tuple(string_list(loc, "attribute_prompts")),
        generation_prompts=tuple(string_list(loc, "generation_prompts")),
        neighborhood_answers=answers,
        relation_id=relation if isinstance(relation, str) else None,
        neighborhood_subjects=subjects,
    )


def _per_neighbour(loc: Located, name: str, count: int) -> tuple[str, ...] | None:
    """An optional extension list with one entry per neighbourhood prompt."""
    if loc.record.get(name) is None:
        return None
    values = tuple(string_list(loc, name))
    if len(values) != count:
        raise loc.error(f"'{name}' has {len(values)} entries for {count} neighborhood prompts")
    return values


def load_counterfact_records(path: str | Path) -> list[CounterFactRecord]:
    """Every record of a CounterFact JSON (list) or JSONL file, with its evaluation prompts."""
    records = []
    for loc in read_records(path):
        if not is_counterfact(loc.record):
            raise loc.error("not a CounterFact record: no 'requested_rewrite' field")
        records.append(counterfact_record(loc))
    return records


def load_counterfact(path: str | Path) -> list[EditRequest]:
    """The edit requests of a CounterFact / multi-CounterFact JSON or JSONL file."""
    return [r.request for r in load_counterfact_records(path)]
