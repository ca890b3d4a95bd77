"""The file format of `nmkevc edit --file F`: the facts a user wants to teach, in bulk.

JSON (a list of records, or one record) or JSONL (one record a line). Each record is
either the simple form::

    {"subject": "Danielle Darrieux", "prompt": "The mother tongue of {} is", "target": "English"}

(`target_new` may stand for `target`; `target_true`, `paraphrases`, `neighborhood` and
`case_id` are optional; the prompt may name the subject instead of using `{}`), or a
CounterFact record (`requested_rewrite` ...). The form is recognised per record, so one
file may mix them. Unknown fields in a simple record are errors rather than ignored, so
a typo such as `paraphrase` does not silently drop data. Every error names the file and
the line (JSONL) or record index (JSON).
"""

from __future__ import annotations

from pathlib import Path

from ..facts import EditRequest
from .counterfact import counterfact_record, is_counterfact
from .records import Located, fill_subject, make_request, read_records, string_list, text_field

SIMPLE_FIELDS = (
    "subject",
    "prompt",
    "target",
    "target_new",
    "target_true",
    "paraphrases",
    "neighborhood",
    "case_id",
)


def simple_request(loc: Located) -> EditRequest:
    rec = loc.record
    unknown = sorted(k for k in rec if k not in SIMPLE_FIELDS)
    if unknown:
        raise loc.error(f"unknown field {unknown[0]!r} (expected some of: {', '.join(SIMPLE_FIELDS)})")
    if "target" in rec and "target_new" in rec:
        raise loc.error("give either 'target' or 'target_new', not both")
    subject = text_field(loc, "subject")
    case_id = rec.get("case_id")
    return make_request(
        loc,
        subject=subject,
        prompt=text_field(loc, "prompt"),
        target_new=text_field(loc, "target", "target_new"),
        target_true=text_field(loc, "target_true", required=False) or None,
        paraphrases=tuple(fill_subject(p, subject) for p in string_list(loc, "paraphrases")),
        neighborhood=tuple(string_list(loc, "neighborhood")),
        case_id=None if case_id is None else str(case_id),
    )


def read_edit_file(path: str | Path) -> list[EditRequest]:
    """The edit requests in a JSON / JSONL edit file, in file order."""
    return [
        counterfact_record(loc).request if is_counterfact(loc.record) else simple_request(loc)
        for loc in read_records(path)
    ]
