"""The edit request: one fact a user teaches the model.

Kept dependency-free because every layer speaks it: commits store requests as JSON,
the editor consumes them, the evaluator checks them, merges compare them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import EditRequestError

#: Longest text field of a request, in characters: the cheap check made before any
#: tokenizer or model is loaded (a fact is a sentence, not a document). The exact
#: limit, in tokens against the model's context, is checked once the tokenizer is up.
MAX_TEXT_CHARS = 2000
#: Most paraphrase or neighbourhood prompts one request may carry.
MAX_EXTRA_PROMPTS = 100
PLACEHOLDER = "{}"


def _check_length(what: str, text: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise EditRequestError(f"{what} is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}")


def _check_prompt(original: str, prompt: str) -> None:
    """Exactly one '{}' and no other brace: a prompt is a sentence with one hole."""
    if prompt.count(PLACEHOLDER) != 1:
        raise EditRequestError(f"prompt {_short(original)} must contain '{{}}' exactly once")
    rest = prompt.replace(PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        raise EditRequestError(
            f"prompt {_short(original)} has a stray brace: only one '{{}}' (where the subject goes) is allowed"
        )


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass(frozen=True)
class EditRequest:
    """`prompt` holds `{}` where the subject goes; targets are scored with a leading space."""

    subject: str
    prompt: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = field(default=())
    neighborhood: tuple[str, ...] = field(default=())
    case_id: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("subject", self.subject), ("prompt", self.prompt), ("target", self.target_new),
                            ("target_true", self.target_true)):
            if value is not None and not isinstance(value, str):
                raise EditRequestError(f"{what} must be text, not {type(value).__name__}")
            if value is not None:
                _check_length(what, value)
        if not self.subject or not self.subject.strip():
            raise EditRequestError("subject is empty")
        if not self.target_new or not self.target_new.strip():
            raise EditRequestError(f"target is empty for subject {_short(self.subject)}")
        prompt = self.prompt
        if PLACEHOLDER not in prompt:
            if self.subject in prompt:
                prompt = prompt.replace(self.subject, PLACEHOLDER, 1)
            else:
                raise EditRequestError(
                    f"prompt {_short(self.prompt)} contains neither '{{}}' nor the subject {_short(self.subject)}"
                )
        _check_prompt(self.prompt, prompt)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)
        for what in ("paraphrases", "neighborhood"):
            extra = getattr(self, what)
            if isinstance(extra, str):
                extra = (extra,)
            extra = tuple(extra)
            if len(extra) > MAX_EXTRA_PROMPTS:
                raise EditRequestError(f"{len(extra)} {what} prompts; the limit is {MAX_EXTRA_PROMPTS}")
            for text in extra:
                if not isinstance(text, str):
                    raise EditRequestError(f"{what} prompts must be text")
                _check_length(f"a {what} prompt", text)
            object.__setattr__(self, what, extra)

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        before, _, after = self.prompt.partition(PLACEHOLDER)
        return before + self.subject + after

    @property
    def key(self) -> tuple[str, str]:
        """What a fact conflict compares: the same subject asked the same way."""
        return (self.subject.strip(), " ".join(self.prompt.split()))

    def to_json(self) -> dict:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        d["neighborhood"] = list(self.neighborhood)
        return {k: v for k, v in d.items() if v not in (None, [], ())}

    @classmethod
    def from_json(cls, d: dict) -> EditRequest:
        """Read our own stored form (see `to_json`)."""
        try:
            return cls(
                subject=d["subject"],
                prompt=d["prompt"],
                target_new=d["target_new"],
                target_true=d.get("target_true"),
                paraphrases=tuple(d.get("paraphrases", ())),
                neighborhood=tuple(d.get("neighborhood", ())),
                case_id=d.get("case_id"),
            )
        except KeyError as e:
            raise EditRequestError(f"edit request lacks field {e.args[0]!r}") from None
