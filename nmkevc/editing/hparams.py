"""Every constant of the editing method in one validated, JSON-serialisable record.

Commits store the hyperparameters next to the requests so an edit can be replayed
exactly (rebase, `merge --strategy replay`); hence plain JSON, strict validation and
no hidden defaults anywhere else in the engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import EditRequestError
from ..models.tokens import START_RULES
from .nullspace import NullspaceRule

#: Chosen on 20 dev facts of countryinfo (docs/figures/ridge.json, benchmarks/ridge.py; docs/method.md):
#: the largest value whose NMKE efficacy is the best measured (0.90 at 0.03 and 0.1, 0.80 at 0.3);
#: generalisation 0.77 (0.78 at 0.03), specificity 0.72 (0.71 at 0.03, 0.77 unedited). A lone
#: full-mask key writes 1 / 1.1 ≈ 91% of its share; AlphaEdit's layers wrote 88–89%.
RIDGE_RELATIVE_DEFAULT = 0.1
#: MEMIT's λ0 calibrated for SmolLM2-135M by the same rule on the same facts: the largest of
#: 15000 (published), 3000, 1000, 300 reaching the best efficacy (0.95; 15000 gives 0.65, 3000 0.90);
#: specificity 0.69 (0.68–0.72 across the four). Other models need their own λ0 (Σ's scale differs).
MEMIT_LAMBDA0_DEFAULT = 1000.0


@dataclass
class EditHparams:
    """Defaults are the NMKE authors' (docs/method.md, table and "The formulae") unless a comment
    says otherwise."""

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

    # -- Step 2: neuron attribution ------------------------------------------------------
    amplification: float = 30.0  # s = logp(r + 30·v_i) − logp(r)
    prob_clamp: float = 1e-8  # probabilities clamped to [p, 1 − p]
    #: elements (prompts × neurons × vocab-chunk) materialised at once; bounds attribution memory
    attribution_chunk: int = 1 << 24

    # -- Step 3: the entropy-guided mask ---------------------------------------------------
    mask_bounds: tuple[float, float] = (0.3, 0.4)
    mask_exponents: tuple[float, float] = (3.0, 2.0)  # (general ρ_r, specific ρ_b)
    entropy_alpha: float = 30.0

    # -- Step 4: the update ----------------------------------------------------------------
    #: λ of A = P(KKᵀ + C) + λI (docs/method.md, "Choices and deviations"). With `ridge_relative`
    #: (the default) λ_l = ridge · mean over the batch's keys of kᵀ P_l k, per layer, so one value
    #: carries across models: a lone full-mask key then writes 1 / (1 + ridge) of its share.
    #: The value is chosen on the countryinfo dev split (docs/figures/ridge.json, written by
    #: benchmarks/ridge.py). With `ridge_relative` false, λ = ridge as an absolute number; the
    #: authors' range 1–10 was set for models whose kᵀPk is far larger than SmolLM2-135M's ~7–130.
    ridge: float = RIDGE_RELATIVE_DEFAULT
    ridge_relative: bool = True
    #: how a neuron mask enters the solve: "published" (solve for all neurons, then zero the rows
    #: outside the mask: NMKE as published) or "compensated" (solve the same system restricted to
    #: the mask's rows, so a masked layer writes its full share; beyond the paper, measured in
    #: docs/figures/ridge.json). The registry of forms is editing/methods.py.
    masked_update: str = "published"
    #: MEMIT: U = (λ0 Σ + KKᵀ)⁻¹ K. The published 15000 was set for GPT-J/Llama; SmolLM2-135M's Σ is
    #: small (trace 16–40), so λ0 is calibrated for it on the dev split (MEMIT_LAMBDA0_DEFAULT above).
    memit_lambda0: float = MEMIT_LAMBDA0_DEFAULT
    #: keys K (and the final keys stored for C) at the subject's last token: "groups" = mean within
    #: each template group, then the two groups ("{}" alone; the prefixed ones) weigh 1/2 each (the
    #: reference code); "templates" = plain mean over all templates (the bare prompt weighs 1/T)
    key_average: str = "groups"
    #: which eigenvectors of Σ span the preserved keys' null space (`NullspaceRule`): eigenvalue
    #: < `nullspace_threshold` (AlphaEdit's and NMKE's code), or, when set, the smallest
    #: `nullspace_keep_fraction` share of directions, or the smallest-eigenvalue directions that
    #: carry at most `nullspace_energy` of trace Σ (relative to the model's key scale)
    nullspace_threshold: float = 2e-2
    nullspace_keep_fraction: float | None = None
    nullspace_energy: float | None = None

    # -- context templates -------------------------------------------------------------------
    context_n_tokens: int = 10
    #: what context_n_tokens counts: "total" = the prefix word's tokens and the sampled ones
    #: together (the reference code), "sampled" = the sampled tokens alone (prefix not counted)
    context_count: str = "total"
    context_prefixes: tuple[str, ...] = field(default=("The", "Therefore", "Because", "I", "You"))
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            self.mask_bounds = tuple(float(x) for x in self.mask_bounds)
            self.mask_exponents = tuple(float(x) for x in self.mask_exponents)
            self.context_prefixes = tuple(str(x) for x in self.context_prefixes)
            if self.layers is not None:
                self.layers = [_as_int(x) for x in self.layers]
        except (TypeError, ValueError) as e:
            raise EditRequestError(f"invalid edit hyperparameters: {e}") from None
        self.validate()

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise EditRequestError(f"invalid edit hyperparameters: {msg}")

        from .methods import get_method, masked_update_form

        if not isinstance(self.method, str):
            bad(f"method must be a name, got {self.method!r}")
        method = get_method(self.method)
        if self.layers is not None:
            if not self.layers:
                bad("layers is empty")
            if any(x < 0 for x in self.layers) or sorted(set(self.layers)) != list(self.layers):
                bad(f"layers must be distinct, ascending and non-negative, got {self.layers}")
        for name in ("z_lr", "z_clamp", "amplification", "entropy_alpha", "memit_lambda0",
                     "nullspace_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(f"{name} must be a positive number, got {v!r}")
        for name in ("z_stop_loss", "z_kl_factor", "z_weight_decay", "ridge"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(f"{name} must be a non-negative number, got {v!r}")
        if method.uses_projector and self.ridge <= 0:
            bad("ridge (λ) must be positive for the null-space update")
        if not isinstance(self.ridge_relative, bool):
            bad(f"ridge_relative must be true or false, got {self.ridge_relative!r}")
        if not isinstance(self.masked_update, str):
            bad(f"masked_update must be a name, got {self.masked_update!r}")
        masked_update_form(self.masked_update)
        for name in ("z_steps", "context_n_tokens", "attribution_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "z_steps" else 1):
                bad(f"{name} must be a {'non-negative' if name == 'z_steps' else 'positive'} integer")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            bad("seed must be an integer")
        if not 0 < self.prob_clamp < 0.5:
            bad("prob_clamp must lie in (0, 0.5)")
        lo, hi = self.mask_bounds if len(self.mask_bounds) == 2 else (None, None)
        if lo is None or not 0 < lo <= hi <= 1:
            bad(f"mask_bounds must be (lo, hi) with 0 < lo ≤ hi ≤ 1, got {self.mask_bounds}")
        if len(self.mask_exponents) != 2 or any(not e > 0 for e in self.mask_exponents):
            bad(f"mask_exponents must be two positive numbers, got {self.mask_exponents}")
        for name in ("nullspace_keep_fraction", "nullspace_energy"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= 1)):
                bad(f"{name} must lie in [0, 1], got {v!r}")
        if self.nullspace_keep_fraction is not None and self.nullspace_energy is not None:
            bad("set at most one of nullspace_keep_fraction and nullspace_energy")
        if self.kl_prompt.count("{}") != 1:
            bad("kl_prompt must contain '{}' exactly once")
        if not self.context_prefixes:
            bad("context_prefixes is empty")
        for name, allowed in {**CHOICES, "prompt_start": START_RULES}.items():
            if getattr(self, name) not in allowed:
                bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = asdict(self)
        d["mask_bounds"] = list(self.mask_bounds)
        d["mask_exponents"] = list(self.mask_exponents)
        d["context_prefixes"] = list(self.context_prefixes)
        return d

    @property
    def nullspace(self) -> NullspaceRule:
        return NullspaceRule(self.nullspace_threshold, self.nullspace_keep_fraction, self.nullspace_energy)

    def updated(self, **changes) -> EditHparams:
        """A validated copy with `changes` applied (unknown keys refused, as `from_json` does)."""
        return EditHparams.from_json({**self.to_json(), **changes})

    @classmethod
    def from_json(cls, d: dict) -> EditHparams:
        """Read a stored dict; unknown keys are an error (a typo must not silently fall back), and
        a missing rule field takes its `LEGACY` value (the dict predates it)."""
        if not isinstance(d, dict):
            raise EditRequestError("edit hyperparameters must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EditRequestError(f"unknown edit hyperparameter(s): {', '.join(unknown)}")
        d = {**LEGACY, **d}  # an older commit's missing keys mean its older behaviour
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise EditRequestError(f"invalid edit hyperparameters: {e}") from None


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
}

CHOICES = {
    "z_stop_on": ("total", "nll"),
    "z_decay_form": ("norm", "squared"),
    "kl_position": ("subject", "last"),
    "key_average": ("groups", "templates"),
    "context_count": ("total", "sampled"),
    "z_precision": ("model", "bfloat16"),
}


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
