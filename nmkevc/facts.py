"""The edit request: one fact a user teaches the model.

Kept dependency-free because every layer speaks it: commits store requests as JSON,
the editor consumes them, the evaluator checks them, merges compare them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import EditRequestError


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
        if not self.subject or not self.subject.strip():
            raise EditRequestError("subject is empty")
        if not self.target_new or not self.target_new.strip():
            raise EditRequestError(f"target is empty for subject {self.subject!r}")
        prompt = self.prompt
        if "{}" not in prompt:
            if self.subject in prompt:
                prompt = prompt.replace(self.subject, "{}", 1)
            else:
                raise EditRequestError(
                    f"prompt {self.prompt!r} contains neither '{{}}' nor the subject {self.subject!r}"
                )
        if prompt.count("{}") != 1:
            raise EditRequestError(f"prompt {self.prompt!r} must contain '{{}}' exactly once")
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)
        object.__setattr__(self, "paraphrases", tuple(self.paraphrases))
        object.__setattr__(self, "neighborhood", tuple(self.neighborhood))

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)

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
