"""Every constant of an editing method in one validated, JSON-serialisable record per method.

Commits store the hyperparameters next to the requests so an edit can be replayed
exactly (rebase, `merge --strategy replay`); hence plain JSON, strict validation and
no hidden defaults anywhere else in the engine. The shared part is `EditHparams`; each
method's own fields are in its record, beside the method (editing/methods/).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import EditRequestError
from .nullspace import NullspaceRule

#: Chosen on 20 dev facts of countryinfo (docs/figures/ridge.json, benchmarks/ridge.py; docs/method.md):
#: the largest value whose NMKE efficacy is the best measured (0.90 at 0.03 and 0.1, 0.80 at 0.3);
#: generalisation 0.77 (0.78 at 0.03), specificity 0.72 (0.71 at 0.03, 0.77 unedited). A lone
#: full-mask key writes 1 / 1.1 ≈ 91% of its share; AlphaEdit's layers wrote 88–89%.
RIDGE_RELATIVE_DEFAULT = 0.1


@dataclass
class EditHparams:
    """What every editing method shares: the edited layers, Step 1 (the target z), the keys and
    the context templates. Each method's record is a subclass registered with the method
    (editing/methods/: `NmkeHparams`, `AlphaEditHparams`, `MemitHparams`), holding the fields
    only that method reads; a commit stores that record's fields with the method's name, and
    the name is how a stored record is read back (`from_json`). `EditHparams(method=...)`
    builds the record of the method asked for (NMKE's by default). Defaults are the NMKE
    authors' (docs/method.md, table and "The formulae") unless a comment says otherwise."""

    method: str = "nmke"
    #: edited MLP layers l_1..l_m (ascending); None = the adapter's default for the model's depth
    layers: list[int] | None = None

    # -- Step 1: the target vector z ---------------------------------------------------
    z_lr: float = 0.5
    z_steps: int = 25
    z_stop_loss: float = 0.05  # a request stops once its loss (see z_stop_on) is below this
    #: "total": stop on NLL + KL + decay (the reference code); "nll": on the target NLL alone
    z_stop_on: str = "total"
    z_kl_factor: float = 0.0625
    z_weight_decay: float = 0.5
    #: decay = z_weight_decay · ||δ||^p / ||h||²: "norm" p = 1 (the reference code), "squared" p = 2
    z_decay_form: str = "norm"
    z_clamp: float = 0.75  # ||δ|| ≤ z_clamp · ||h||
    #: most-probable early stopping (MPES; ENCORE, Gupta et al. 2025, arXiv 2502.01636): k > 0 also
    #: stops a request once its target is the top-1 token at every target position (teacher-forced)
    #: of every one of its context-templated rewrite prompts, k passes in a row; 0 = off. Either
    #: rule stops a request (set z_stop_loss to 0 for MPES alone). docs/method.md, "Lifelong mechanisms".
    #: On (k = 2) for every method, chosen on the countryinfo dev split (T = 300, batches of 100): it
    #: cut the published forms' perplexity drift by a third to a half and their edit time by 34-40%
    #: at equal efficacy (docs/results/lifelong-countryinfo-dev-T300-B100); `preset="published"` is 0
    z_stop_top1: int = 2
    #: norm anchor (after NAS, arXiv 2602.02543): ||z|| ≤ z_norm_anchor · ||h_base||, h_base the
    #: unedited base model's output of l_m at the request's own subject token; a constraint of the
    #: Adam loop (z projected into that ball after every step); None = off. Needs `base_model`.
    z_norm_anchor: float | None = None
    #: the model Step 1 optimises δ on: "current" (the model being edited: the reference code) or
    #: "base" (the unedited base, z = h_base + δ: NSE's weights rewinding, arXiv 2410.04045); Step 4's
    #: residual z − h is read on the current model either way. "base" needs `base_model`.
    z_weights: str = "current"
    #: the precision of Step 1's Adam loop: "model" (the model's own dtype: the reference) or
    #: "bfloat16" (its matrix products in bfloat16 over bf16 copies of the weight matrices; the
    #: residual stream, losses, h and everything after Step 1 stay in the model's dtype). Beyond
    #: the paper: a CPU speed option whose effect on the edits is measured in docs/benchmarks.md.
    z_precision: str = "model"
    kl_prompt: str = "{} is a"
    #: where the KL term reads the next-token distribution of kl_prompt: "subject" (the subject's
    #: last token, the reference code) or "last" (the prompt's last token)
    kl_position: str = "subject"
    #: the start of every prompt the engine runs (models.tokens.START_RULES): "document" or "tokenizer"
    prompt_start: str = "document"

    #: keys K (and the final keys stored for C) at the subject's last token: "groups" = mean within
    #: each template group, then the two groups ("{}" alone; the prefixed ones) weigh 1/2 each (the
    #: reference code); "templates" = plain mean over all templates (the bare prompt weighs 1/T)
    key_average: str = "groups"
    #: the relation guard (editing/guard.py): μ_g > 0 also keeps, with weight μ_g each, the keys at
    #: every token after the subject in the edit's own prompts, which every subject asked the same
    #: way shares, so the update writes through the subject's token alone; 0 = off. Beyond the
    #: published methods: docs/method.md, "Lifelong mechanisms".
    relation_guard: float = 0.0
    # -- context templates -------------------------------------------------------------------
    context_n_tokens: int = 10
    #: what context_n_tokens counts: "total" = the prefix word's tokens and the sampled ones
    #: together (the reference code), "sampled" = the sampled tokens alone (prefix not counted)
    context_count: str = "total"
    context_prefixes: tuple[str, ...] = field(default=("The", "Therefore", "Because", "I", "You"))
    seed: int = 0

    def __new__(cls, *args, **kwargs):
        if cls is EditHparams:  # the shared part names no method: build the record of the one asked for
            cls = record_of(kwargs.get("method", args[0] if args else "nmke"))
        wrong = sorted(set(kwargs) - field_names(cls))
        if wrong:  # one line, not dataclass's TypeError
            raise EditRequestError(not_fields(wrong, field_default(cls, "method")))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        try:
            self._convert()
        except (TypeError, ValueError) as e:
            raise EditRequestError(f"invalid edit hyperparameters: {e}") from None
        self.validate()

    def _convert(self) -> None:
        """JSON lists to the tuples the record holds (a subclass converts its own fields too)."""
        self.context_prefixes = tuple(str(x) for x in self.context_prefixes)
        if self.layers is not None:
            self.layers = [_as_int(x) for x in self.layers]

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise EditRequestError(f"invalid edit hyperparameters: {msg}")

        if not isinstance(self.method, str):
            bad(f"method must be a name, got {self.method!r}")
        record = record_of(self.method)
        if type(self) is not record:
            bad(f"method {self.method} takes {record.__name__}, not {type(self).__name__} (use .updated(method=...))")
        self._check(bad)

    def _check(self, bad) -> None:
        """The shared fields' checks; a subclass adds its own after calling this."""
        if self.layers is not None:
            if not self.layers:
                bad("layers is empty")
            if any(x < 0 for x in self.layers) or sorted(set(self.layers)) != list(self.layers):
                bad(f"layers must be distinct, ascending and non-negative, got {self.layers}")
        positive(bad, self, "z_lr", "z_clamp")
        non_negative(bad, self, "z_stop_loss", "z_kl_factor", "z_weight_decay", "relation_guard")
        for name in ("z_steps", "z_stop_top1", "context_n_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name in NON_NEGATIVE_INTS else 1):
                bad(f"{name} must be a {'non-negative' if name in NON_NEGATIVE_INTS else 'positive'} integer")
        v = self.z_norm_anchor
        if v is not None and (isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)):
            bad(f"z_norm_anchor must be a positive number or null, got {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad("seed must be an integer")
        if self.kl_prompt.count("{}") != 1:
            bad("kl_prompt must contain '{}' exactly once")
        if not self.context_prefixes:
            bad("context_prefixes is empty")
        from ..models.tokens import START_RULES  # here: the record is read where torch is not loaded

        for name, allowed in {**CHOICES, "prompt_start": START_RULES}.items():
            if getattr(self, name) not in allowed:
                bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def reads_second_moment(self) -> bool:
        """Whether a solve with this record reads Σ_l beyond what its method always does."""
        return False

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def updated(self, **changes) -> EditHparams:
        """A validated copy with `changes` applied, in the record of `changes["method"]` if that
        is given: of the fields both records have, those set away from this record's defaults carry
        over and the rest take the new record's defaults (`--method memit` from NMKE's defaults is
        MEMIT's defaults, not NMKE's MPES); a change the record has no field for is refused
        (unknown, or not read by that method). `preset=NAME` applies a `PRESETS` entry first (the
        fields of it this method's record has), then the other changes."""
        if "preset" in changes:
            changes = dict(changes)
            preset = preset_settings(changes.pop("preset"))
            record = record_of(changes.get("method", self.method))
            changes = {**{k: v for k, v in preset.items() if k in field_names(record)}, **changes}
        name = changes.get("method", self.method)
        record = record_of(name) if isinstance(name, str) else type(self)
        own = field_names(record)
        wrong = sorted(set(changes) - own)
        if wrong:
            raise EditRequestError(not_fields(wrong, name))
        mine = self.to_json()
        if record is not type(self):
            defaults = type(self)().to_json()
            mine = {**record().to_json(), **{k: v for k, v in mine.items() if k != "method" and v != defaults[k]}}
        return record.from_json({**{k: v for k, v in mine.items() if k in own}, **changes})

    @classmethod
    def from_json(cls, d: dict) -> EditHparams:
        """Read a stored dict into the record of the method it names. Keys no method knows are an
        error (a typo must not silently fall back); keys of other methods' records are dropped (a
        record stored before each method had its own carries every method's fields); a missing
        field takes its `LEGACY` value (the dict predates it)."""
        if not isinstance(d, dict):
            raise EditRequestError("edit hyperparameters must be a JSON object")
        default = "nmke" if cls is EditHparams else field_default(cls, "method")
        name = d.get("method", default)
        if not isinstance(name, str):
            raise EditRequestError(f"invalid edit hyperparameters: method must be a name, got {name!r}")
        record = record_of(name)
        unknown = sorted(set(d) - every_field_name())
        if unknown:
            raise EditRequestError(f"unknown edit hyperparameter(s): {', '.join(unknown)}")
        own = field_names(record)
        d = {**{k: v for k, v in LEGACY.items() if k in own}, **{k: v for k, v in d.items() if k in own}}
        try:
            return record(**d)
        except (TypeError, ValueError) as e:
            raise EditRequestError(f"invalid edit hyperparameters: {e}") from None


@dataclass
class NullspaceHparams(EditHparams):
    """The fields of the null-space constrained update (AlphaEdit, and NMKE on top of it)."""

    #: λ of A = P(KKᵀ + C) + λI (docs/method.md, "Choices and deviations"). With `ridge_relative`
    #: (the default) λ_l = ridge · mean over the batch's keys of kᵀ P_l k, per layer, so one value
    #: carries across models: a lone full-mask key then writes 1 / (1 + ridge) of its share.
    #: The value is chosen on the countryinfo dev split (docs/figures/ridge.json, written by
    #: benchmarks/ridge.py). With `ridge_relative` false, λ = ridge as an absolute number; the
    #: authors' range 1–10 was set for models whose kᵀPk is far larger than SmolLM2-135M's ~7–130.
    ridge: float = RIDGE_RELATIVE_DEFAULT
    ridge_relative: bool = True
    #: which eigenvectors of Σ span the preserved keys' null space (`NullspaceRule`): eigenvalue
    #: < `nullspace_threshold` (AlphaEdit's and NMKE's code), or, when set, the smallest
    #: `nullspace_keep_fraction` share of directions, or the smallest-eigenvalue directions that
    #: carry at most `nullspace_energy` of trace Σ (relative to the model's key scale)
    nullspace_threshold: float = 2e-2
    nullspace_keep_fraction: float | None = None
    nullspace_energy: float | None = None

    @property
    def nullspace(self) -> NullspaceRule:
        return NullspaceRule(self.nullspace_threshold, self.nullspace_keep_fraction, self.nullspace_energy)

    def _check(self, bad) -> None:
        super()._check(bad)
        positive(bad, self, "nullspace_threshold", "ridge")
        if not isinstance(self.ridge_relative, bool):
            bad(f"ridge_relative must be true or false, got {self.ridge_relative!r}")
        for name in ("nullspace_keep_fraction", "nullspace_energy"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= 1)):
                bad(f"{name} must lie in [0, 1], got {v!r}")
        if self.nullspace_keep_fraction is not None and self.nullspace_energy is not None:
            bad("set at most one of nullspace_keep_fraction and nullspace_energy")


#: Named sets of settings, one option away (`--preset NAME`, `preset=NAME`). "published": the
#: methods as their papers and reference code run them, none of the lifelong mechanisms
#: (docs/method.md, "Lifelong mechanisms"; for the null-space methods the ridge at its single-edit
#: calibration, relative 0.1, where AlphaEdit's default adds a norm control; NMKE's mask at the
#: paper's bounds, whatever a record was given); a method takes the settings its record has.
PRESETS: dict[str, dict] = {
    "published": {"z_stop_top1": 0, "z_norm_anchor": None, "z_weights": "current", "memit_frobenius": 0.0,
                  "memit_prior": 0.0, "relation_guard": 0.0, "ridge": RIDGE_RELATIVE_DEFAULT, "ridge_relative": True,
                  "mask_bounds": (0.3, 0.4)},
}


def preset_settings(name) -> dict:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise EditRequestError(f"unknown preset {name!r} (choose one of {', '.join(PRESETS)})") from None


def positive(bad, hp, *names: str) -> None:
    for name in names:
        v = getattr(hp, name)
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            bad(f"{name} must be a positive number, got {v!r}")


def non_negative(bad, hp, *names: str) -> None:
    for name in names:
        v = getattr(hp, name)
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            bad(f"{name} must be a non-negative number, got {v!r}")


def record_of(method: str) -> type[EditHparams]:
    """The hyperparameter record of a registered method (one-line error for an unknown one)."""
    from .registry import get_method

    return get_method(method).hparams


def field_names(record: type) -> set[str]:
    return {f.name for f in fields(record)}


def field_default(record: type, name: str):
    return {f.name: f.default for f in fields(record)}[name]


def not_fields(names: list[str], method: str) -> str:
    """The one-line refusal of settings a method's record has no field for."""
    unknown = [k for k in names if k not in every_field_name()]
    if unknown:
        return f"unknown edit hyperparameter(s): {', '.join(unknown)}"
    return f"{', '.join(names)} do(es) not apply to method {method}"


def every_field_name() -> set[str]:
    """The fields of every registered method's record: what a stored dict may hold."""
    from .registry import hparams_records

    out: set[str] = set()
    for record in hparams_records().values():
        out |= field_names(record)
    return out


#: Fields added after commits were first stored, with the value that reproduces an edit made
#: before them. A stored dict lacking one of these keys was written by an older nmkevc, whose
#: engine behaved as this value says, so `from_json` fills it in and a replay (rebase, merge
#: --strategy replay) edits as it did then; a new edit gets the dataclass defaults. Never change
#: a value here. (`ridge` has been stored since the first engine, always absolute, default 10; it
#: is listed for a stored dict without any hyperparameters.)
LEGACY = {
    # absolute λ = `ridge`, the published masked update
    "ridge": 10.0,
    "ridge_relative": False,
    "masked_update": "published",
    # Step 1, keys and templates before they matched the reference code (docs/method.md)
    "z_stop_on": "nll",
    "z_decay_form": "squared",
    "kl_position": "last",
    "prompt_start": "tokenizer",
    "key_average": "templates",
    "context_count": "sampled",
    # the null space by the absolute eigenvalue threshold alone
    "nullspace_energy": None,
    # Step 1 in the model's own dtype
    "z_precision": "model",
    # the lifelong mechanisms, all off (docs/method.md, "Lifelong mechanisms")
    "z_stop_top1": 0,
    "z_norm_anchor": None,
    "z_weights": "current",
    "memit_frobenius": 0.0,
    "memit_prior": 0.0,
    "relation_guard": 0.0,
}

CHOICES = {
    "z_stop_on": ("total", "nll"),
    "z_decay_form": ("norm", "squared"),
    "kl_position": ("subject", "last"),
    "key_average": ("groups", "templates"),
    "context_count": ("total", "sampled"),
    "z_precision": ("model", "bfloat16"),
    "z_weights": ("current", "base"),
}

#: integer fields that may be 0 (the others must be positive)
NON_NEGATIVE_INTS = ("z_steps", "z_stop_top1")


def _as_int(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"layer {x!r} is not an integer")
    return int(x)


def parse_setting(text: str) -> tuple[str, object]:
    """'key=value' (a hyperparameter given on a command line) → (key, value): the value read
    as JSON (numbers, true/false, null, lists), else kept as text. The key is checked later,
    with the value, by `EditHparams.from_json`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise EditRequestError(f"a hyperparameter setting is key=value, not {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def split_top(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside brackets ('nmke:layers=[3,4],memit' is two items)."""
    out, depth, cur = [], 0, []
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [x.strip() for x in out if x.strip()]


def parse_arm(label: str) -> tuple[str, dict]:
    """A compared configuration, 'method' or 'method:key=value:key=value' (e.g.
    'nmke:masked_update=compensated'), → (method, its hyperparameter overrides): one run
    can then set the published form and a variant of one method side by side."""
    method, *settings = label.split(":")
    if not method.strip():
        raise EditRequestError(f"{label!r} names no method (method or method:key=value)")
    return method.strip(), dict(parse_setting(s) for s in settings)
