"""Reading JSON / JSONL record files so that every error says where it is.

Fact files are written by hand as often as by scripts; a message like "missing field
'subject'" is useless in a 20,000-record file. Each record therefore travels with its
location: `line N` for JSONL (1-based, as editors show it) and `record index N` for a
JSON list (0-based, as `json.load(f)[N]` finds it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EditRequestError
from ..facts import EditRequest

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Located:
    """One record and where it came from, for error messages."""

    where: str  # "<file>: line 3" or "<file>: record index 2"
    record: dict

    def error(self, message: str) -> EditRequestError:
        return EditRequestError(f"{self.where}: {message}")


def read_text(path: str | Path) -> tuple[Path, str]:
    p = Path(path).expanduser()
    if not p.exists():
        raise EditRequestError(f"{p}: no such file")
    if p.is_dir():
        raise EditRequestError(f"{p}: is a directory, not a JSON or JSONL file")
    try:
        return p, p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise EditRequestError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise EditRequestError(f"{p}: cannot read: {e.strerror}") from None


def _jsonl(p: Path, text: str) -> Iterator[Located]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EditRequestError(f"{p}: line {lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(rec, dict):
            raise EditRequestError(f"{p}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
        yield Located(f"{p}: line {lineno}", rec)


def _json(p: Path, data: object) -> Iterator[Located]:
    if isinstance(data, dict):
        yield Located(f"{p}: record index 0", data)
        return
    if not isinstance(data, list):
        raise EditRequestError(
            f"{p}: expected a JSON list of records or one record, got {type(data).__name__}"
        )
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise EditRequestError(f"{p}: record index {i}: expected a JSON object, got {type(rec).__name__}")
        yield Located(f"{p}: record index {i}", rec)


def read_records(path: str | Path) -> list[Located]:
    """Records of a JSON file (a list or one object) or a JSONL file (one object a line).

    `.jsonl`/`.ndjson` files are read as JSONL; any other file is read as JSON, and as
    JSONL if it turns out to hold several JSON values one after another.
    """
    p, text = read_text(path)
    if not text.strip():
        raise EditRequestError(f"{p}: the file is empty")
    if p.suffix.lower() in JSONL_SUFFIXES:
        records = list(_jsonl(p, text))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise EditRequestError(
                    f"{p}: line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})"
                ) from None
            records = list(_jsonl(p, text))
        else:
            records = list(_json(p, data))
    if not records:
        raise EditRequestError(f"{p}: no records in the file")
    return records


def text_field(loc: Located, *keys: str, required: bool = True, obj: dict | None = None) -> str:
    """The first of `keys` present in the record (or `obj`), as a string.

    CounterFact wraps targets as `{"str": ...}`; that form is unwrapped here too.
    """
    rec = loc.record if obj is None else obj
    for key in keys:
        if key in rec and rec[key] is not None:
            value = rec[key]
            if isinstance(value, dict) and "str" in value:
                value = value["str"]
            if not isinstance(value, str):
                raise loc.error(f"field {key!r} must be a string, got {type(value).__name__}")
            return value
    if required:
        raise loc.error(f"missing field {keys[0]!r}")
    return ""


def string_list(loc: Located, key: str, obj: dict | None = None) -> list[str]:
    """A list-of-strings field (absent = empty); a lone string counts as a list of one."""
    rec = loc.record if obj is None else obj
    value = rec.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise loc.error(f"field {key!r} must be a list of strings")
    return list(value)


def fill_subject(text: str, subject: str) -> str:
    """A paraphrase given as a template (`{}` for the subject) becomes the full prompt text.

    EditRequest keeps paraphrases and neighbourhood prompts as full texts, as CounterFact
    stores them; hand-written files may use either form for paraphrases.
    """
    return text.replace("{}", subject, 1) if "{}" in text else text


def make_request(loc: Located, **fields) -> EditRequest:
    """Build an EditRequest, turning any complaint into one that names the record."""
    try:
        return EditRequest(**fields)  # refuses stray braces, over-long text, empty fields
    except EditRequestError as e:
        raise loc.error(str(e)) from None
