"""zsRE question-answering edits in the MEND/ROME schema.

A record looks like::

    {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
     "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
     "rephrase": "What university did Watts Humphrey take part in?",
     "loc": "nq question: who played desmond doss father in hacksaw ridge",
     "loc_ans": "Hugo Weaving"}

Choices made here (the evaluation code relies on them):
- Target: `alt` is the new answer when present; `answers[0]` is then the true answer.
  Files without `alt` use `answers[0]` as the new answer (as ROME's loader does) and have
  no true answer.
- Prompt: `src` with the subject replaced by `{}`. If `src` holds the subject only in a
  different letter case, that span is replaced. If it does not hold the subject at all,
  the prompt is `"{}: " + src`, so the subject still comes right before the question and
  the answer still follows the question mark, which is what the zsRE metric scores.
- `loc` / `loc_ans` are kept verbatim (with MEND's "nq question: " prefix), for the
  teacher-forced locality accuracy the evaluation computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..facts import EditRequest
from .records import Located, make_request, read_records, text_field


@dataclass(frozen=True)
class ZsreRecord:
    """One zsRE case: the edit request and its locality question with answer."""

    request: EditRequest
    loc: str
    loc_ans: str


def zsre_prompt(src: str, subject: str) -> str:
    """The question as a template with `{}` where the subject is (see the module doc)."""
    if subject in src:
        return src.replace(subject, "{}", 1)
    at = src.lower().find(subject.lower())
    if at >= 0:
        return src[:at] + "{}" + src[at + len(subject) :]
    return "{}: " + src


def zsre_record(loc: Located, index: int) -> ZsreRecord:
    rec = loc.record
    subject = text_field(loc, "subject")
    src = text_field(loc, "src")
    answers = rec.get("answers")
    first_answer = answers[0] if isinstance(answers, list) and answers else answers
    if first_answer is not None and not isinstance(first_answer, str):
        raise loc.error("field 'answers' must be a list of strings")
    if rec.get("alt") is not None:
        target_new = text_field(loc, "alt")
        target_true = first_answer
    elif first_answer is not None:
        target_new, target_true = first_answer, None
    else:
        raise loc.error("missing field 'alt' (or 'answers')")
    rephrase = text_field(loc, "rephrase", required=False)
    case_id = rec.get("case_id", index)
    request = make_request(
        loc,
        subject=subject,
        prompt=zsre_prompt(src, subject),
        target_new=target_new,
        target_true=target_true if target_true != target_new else None,
        paraphrases=(rephrase,) if rephrase.strip() else (),
        case_id=str(case_id),
    )
    return ZsreRecord(request=request, loc=text_field(loc, "loc"), loc_ans=text_field(loc, "loc_ans"))


def load_zsre(path: str | Path) -> list[ZsreRecord]:
    """Every record of a zsRE JSON (list) or JSONL file."""
    return [zsre_record(loc, i) for i, loc in enumerate(read_records(path))]
