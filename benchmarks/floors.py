"""The arithmetic floor of each phase of an edit: FLOPs and exponentials counted, machine rates measured.

Why: a phase's time means little alone on a shared 2-core machine; against the least work the
method needs for *those* facts, at the best rate this machine reaches in the same run, it says how
far the engine is from what no engineering can beat (issue #22, item 1). `benchmarks/editing.py`
puts every phase beside its floor; `benchmarks/z_floor.py` reports Step 1's and attribution's
products. One module counts for both.

The counting is pure (plain ints in, `PhaseCount` out; no torch, no tokenizer) so it is unit-tested
against hand counts; `case_rows` reads the engine's own tokenization and packing of a case, and
`measure_rates` times the products and exponentials. A FLOP is one multiply or one add (a
multiply-add is 2); norms, activations, biases, softmax's divisions, the optimiser and every copy
are left out, so each floor is a lower bound. Phases:

- z (Step 1), as z_floor.py has always counted it: per Adam step, each row of each request (context
  templates, bare prompt, KL prompt) re-runs the layers above l_m forward and input-gradient over its
  pack's width of positions from the subject on, attends over its whole row, and reads the unembedding
  at every target position and its KL position.
- keys (Step 4's forward passes, rows cut after the subject's last token; the schedule of
  `nmkevc.editing.update.LayerInputs`): all rows run layers 0..l_1 once, then layer l_i alone for
  each later edited layer (an edit's change to its own layer's output is added, not re-run); the n
  rewrite rows (each request's first template) run layers 0..l_m once, then l_i+1..l_m after the
  keys of each later l_i. The added changes ΔW a (about a tenth of a layer pass each) are not counted.
- attribution (Steps 2-3, NMKE): one forward pass of every prompt through all layers, the top-1
  token's logits, then per edited layer B = U·N(W_l) (vocab × d_ff), the prompts' base logits, and
  the perturbed log-sum-exp: below `moments_min` prompts one multiply-add and one exponential per
  (prompt, neuron, vocabulary entry); from it on the `order` moment products, and the exponentials of
  the base distribution only (the pairs beyond the series' radius, taken exactly, are not counted).
- update (Step 4's solves, float64, and the in-place writes, float32): per layer the method's factor
  for the shapes used (the projector product once, the ridge, the Gram and the LU solve; with earlier
  edits' C the d_ff × d_ff system), and W[:, S] += R Uᵀ.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

#: the formats `measure_rates` times (a `Work` item in another, e.g. float16, has no floor)
PRECISIONS = ("float32", "bfloat16", "float64")
#: method families whose solve `update_count` knows (`method_form` maps a method to one)
FORMS = ("nullspace", "compensated", "projected", "memit", "weighted")
#: the architectures without a gated MLP (two products per MLP, full multi-head attention)
UNGATED = ("gpt2", "gptj", "gpt_neox")


# -- the model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the counts read of a model: sizes, and the weights one token meets per decoder layer."""

    d_model: int
    d_ff: int
    n_layers: int
    n_heads: int
    head_dim: int
    vocab: int
    #: weights of one decoder layer's matrix products (q, k, v, o and the MLP's; norms and biases aside)
    linear_per_layer: int

    @classmethod
    def from_config(cls, cfg: Mapping) -> ModelShape:
        """From a Hugging Face config dict (`model.config.to_dict()`): the Llama family (gated MLP,
        grouped keys and values) or GPT-2 / GPT-J / GPT-NeoX (two MLP products, full heads)."""
        kind = cfg.get("model_type", "")
        d = int(cfg.get("hidden_size") or cfg["n_embd"])
        heads = int(cfg.get("num_attention_heads") or cfg["n_head"])
        layers = int(cfg.get("num_hidden_layers") or cfg["n_layer"])
        d_ff = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d)
        head_dim = int(cfg.get("head_dim") or d // heads)
        if kind in UNGATED:
            linear = 4 * d * d + 2 * d * d_ff
        else:
            kv = int(cfg.get("num_key_value_heads") or heads)
            linear = d * head_dim * (heads + 2 * kv) + heads * head_dim * d + 3 * d * d_ff
        return cls(d, d_ff, layers, heads, head_dim, int(cfg["vocab_size"]), linear)

    def layers_flops(self, tokens: int, layers: int) -> int:
        """Forward FLOPs of `tokens` tokens through `layers` decoder layers' matrix products."""
        return 2 * self.linear_per_layer * tokens * layers

    def attention_flops(self, pairs: int, layers: int) -> int:
        """Forward FLOPs of scores and weighted values for `pairs` (query, key) pairs per layer."""
        return 2 * 2 * self.n_heads * self.head_dim * pairs * layers


# -- the tokenized rows of one case ----------------------------------------------------------------
@dataclass(frozen=True)
class ZGeometry:
    """Step 1's rows (`editing.zopt.build_rows`: prompt + target under each template, then one KL
    prompt per request) and the engine's packing of them."""

    lengths: list[int]  # real tokens per row
    subject_pos: list[int]  # the subject's last token per row
    request: list[int]  # the request of each row
    packs: list[list[int]]  # rows per pack (`editing.zopt.plan_packs`)
    reads: list[int]  # unembedding reads per request per step: its target tokens and its KL position


@dataclass(frozen=True)
class PromptGeometry:
    """Steps 2-4's rows: every request's prompt under every template, request-major (row r·T + t;
    row r·T is request r's rewrite prompt)."""

    lengths: list[int]  # prompt tokens per row (start token included)
    subject_pos: list[int]
    n_templates: int

    @property
    def rewrite_rows(self) -> list[int]:
        return list(range(0, len(self.lengths), self.n_templates))


@dataclass(frozen=True)
class CaseRows:
    n_requests: int
    z: ZGeometry
    prompts: PromptGeometry

    def to_json(self) -> dict:
        return asdict(self)


# -- counts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Work:
    """One part of a phase's arithmetic, in the format it runs in."""

    name: str
    flops: float
    precision: str = "float32"


@dataclass
class PhaseCount:
    """The counted work of one phase: FLOPs by part, exponentials, and what was (not) counted."""

    phase: str
    work: list[Work] = field(default_factory=list)
    exps: float = 0.0
    detail: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, flops: float, precision: str = "float32") -> None:
        self.work.append(Work(name, float(flops), precision))

    @property
    def flops(self) -> float:
        return sum(w.flops for w in self.work)

    def part(self, name: str) -> float:
        return sum(w.flops for w in self.work if w.name == name)

    def by_precision(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for w in self.work:
            out[w.precision] = out.get(w.precision, 0.0) + w.flops
        return out

    def floor_seconds(self, rates: Rates, part_rates: Mapping[str, float] | None = None) -> float | None:
        """Each part's FLOPs at the best rate measured in its precision (or at `part_rates[name]`,
        GFLOP/s, for the parts named there), plus the exponentials at the best exp rate; None when
        a rate this phase needs was not measured."""
        part_rates = part_rates or {}
        total = 0.0
        for w in self.work:
            rate = part_rates.get(w.name) or rates.best(w.precision)
            if rate is None:
                return None
            total += w.flops / (rate * 1e9)
        if self.exps:
            total += self.exps / (rates.best_exp() * 1e9)
        return total

    def merged(self, other: PhaseCount, phase: str) -> PhaseCount:
        """Both phases' work as one (keys timed inside the update by an engine before the split)."""
        return PhaseCount(phase, [*self.work, *other.work], self.exps + other.exps,
                          {self.phase: self.detail, other.phase: other.detail}, [*self.notes, *other.notes])

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> PhaseCount:
        return cls(d["phase"], [Work(**w) for w in d["work"]], d.get("exps", 0.0), d.get("detail", {}),
                   d.get("notes", []))


def z_count(shape: ModelShape, rows: ZGeometry, steps: Sequence[int], top_layer: int,
            precision: str = "float32") -> PhaseCount:
    """Step 1, forward plus input gradient (weights frozen: backward is one product per forward
    product), over each request's own number of Adam steps `steps[r]`."""
    upper = shape.n_layers - top_layer - 1
    tail = [n - s for n, s in zip(rows.lengths, rows.subject_pos)]
    token_steps, pairs = 0, 0
    for pack in rows.packs:
        width = max(tail[r] for r in pack)
        for r in pack:
            s = steps[rows.request[r]]
            token_steps += width * s
            pairs += s * width * rows.lengths[r]  # a re-run position attends over its whole row
    head = sum(2 * shape.d_model * shape.vocab * rows.reads[r] * steps[r] for r in range(len(rows.reads)))
    c = PhaseCount("z")
    c.add("layers", 2 * shape.layers_flops(token_steps, upper), precision)
    c.add("attention", 2 * shape.attention_flops(pairs, upper), precision)
    c.add("unembedding", 2 * head, precision)
    c.detail = {"rows": len(rows.lengths), "packs": len(rows.packs), "upper_layers": upper,
                "steps_mean": round(sum(steps) / len(steps), 2), "rerun_token_steps": token_steps,
                "step_tokens": z_step_tokens(rows), "unembedding_reads": sum(rows.reads)}
    c.notes.append("products only: norms, the log-softmax's exponentials and the optimiser not counted")
    return c


def z_step_tokens(rows: ZGeometry) -> int:
    """Re-run tokens of one Adam step over every pack, before any request freezes: the most rows
    any of that step's layer products can have, however the rows are packed (a step needs the
    last step's δ, so no two steps share a product)."""
    tail = [n - s for n, s in zip(rows.lengths, rows.subject_pos)]
    return sum(max(tail[r] for r in pack) * len(pack) for pack in rows.packs)


def _cut(prompts: PromptGeometry, rows: Sequence[int]) -> tuple[int, int]:
    """Tokens and causal (query, key) pairs of `rows` cut after the subject's last token."""
    tokens = [prompts.subject_pos[r] + 1 for r in rows]
    return sum(tokens), sum(t * (t + 1) // 2 for t in tokens)


def keys_count(shape: ModelShape, prompts: PromptGeometry, layers: Sequence[int],
               precision: str = "float32") -> PhaseCount:
    """Step 4's forward passes for the keys K_l at the subject's last token and h at l_m (the
    module docstring's schedule), in whole decoder layers."""
    layers = sorted(layers)
    every = (layers[0] + 1) + len(layers) - 1
    rewrite = (layers[-1] + 1) + sum(layers[-1] - l for l in layers[1:])  # h at l_m before each layer's write
    tok_all, pairs_all = _cut(prompts, range(len(prompts.lengths)))
    tok_rw, pairs_rw = _cut(prompts, prompts.rewrite_rows)
    c = PhaseCount("keys")
    c.add("layers", shape.layers_flops(tok_all, every) + shape.layers_flops(tok_rw, rewrite), precision)
    c.add("attention", shape.attention_flops(pairs_all, every) + shape.attention_flops(pairs_rw, rewrite),
          precision)
    c.detail = {"rows": len(prompts.lengths), "tokens": tok_all, "layer_passes_all_rows": every,
                "layer_passes_rewrite_rows": rewrite}
    return c


def attribution_count(shape: ModelShape, prompts: PromptGeometry, layers: Sequence[int],
                      moments_min: float = float("inf"), order: int = 16,
                      precision: str = "float32") -> PhaseCount:
    """Steps 2-3 (NMKE's attribution) for every prompt of the batch; the entropy mask itself is
    O(P · d_ff) and not counted."""
    p, m, v, d, f = len(prompts.lengths), len(layers), shape.vocab, shape.d_model, shape.d_ff
    tokens = sum(prompts.lengths)
    pairs = sum(n * (n + 1) // 2 for n in prompts.lengths)
    c = PhaseCount("attribution")
    c.add("forward", shape.layers_flops(tokens, shape.n_layers) + shape.attention_flops(pairs, shape.n_layers)
          + 2 * p * d * v, precision)
    c.add("B", m * 2 * v * d * f)
    c.add("base logits", m * 2 * p * d * v + m * 2 * p * d * f)
    if p < moments_min:
        c.add("perturbed logits", m * 2 * p * f * v)
        c.exps = m * (p * f * v + p * v)
        form = "exact"
    else:
        c.add("moments", m * order * 2 * p * v * f)
        c.add("powers", m * (order - 1) * v * f)
        c.exps = m * p * v
        form = "moments"
        c.notes.append("moment form: the (prompt, neuron) pairs beyond its radius, taken exactly, are not counted")
    c.detail = {"prompts": p, "layers": m, "tokens": tokens, "form": form}
    return c


def method_form(method: str, masked_update: str | None = None) -> str | None:
    """The solve `update_count` counts for a method (None: a method it does not know)."""
    if method == "memit":
        return "memit"
    if method == "alphaedit":
        return "nullspace"
    if method == "nmke":
        return {"published": "nullspace", "compensated": "compensated",
                "projected": "projected", "weighted": "weighted"}.get(masked_update or "published")
    return None


def update_count(form: str, d_model: int, d_ff: int, n: int, kept: Sequence[int], projector: bool = True,
                 prior: bool = False, ridge_relative: bool = True) -> PhaseCount:
    """Step 4's solves (float64) and writes (float32) over the edited layers; `kept[i]` is layer i's
    mask size (d_ff when unmasked), `n` the requests, `prior` whether earlier edits' C enters."""
    if form not in FORMS:
        raise ValueError(f"unknown solve form {form!r} (one of {', '.join(FORMS)})")
    c = PhaseCount("update")
    d = d_ff
    for s in kept:
        solve = _solve_flops(form, d, s, n, projector, prior, ridge_relative)
        for name, flops in solve.items():
            c.add(name, flops, "float64")
        c.add("write", 2 * d_model * s * n)
    c.detail = {"form": form, "requests": n, "layers": len(kept), "kept": list(kept), "prior": prior,
                "projector": projector}
    if form == "projected":
        c.notes.append("projected: the mask's eigendecomposition counted as its tridiagonal reduction only")
    return c


def _solve_flops(form: str, d: int, s: int, n: int, projector: bool, prior: bool,
                 ridge_relative: bool) -> dict[str, float]:
    """FLOPs of one layer's factor U by part (`update.nullspace_factor` and its masked forms,
    `update.memit_factor`); an LU of size k costs 2k³/3, a solve with r right-hand sides 2k²r."""
    out: dict[str, float] = {}

    def add(name: str, flops: float) -> None:
        out[name] = out.get(name, 0.0) + flops

    if form in ("memit", "weighted"):  # weighted: MEMIT's solve on the mask's rows
        k = d if form == "memit" else s
        add("gram", 2 * k * k * n)
        add("lu", 2 * k**3 / 3)
        add("solve", 2 * k * k * n)
        return out
    if form == "projected":  # the null space of Σ restricted to the mask, then the null-space solve on it
        add("eigh", 4 * s**3 / 3)
        d, form = s, "nullspace"
    if projector:
        add("projector", 2 * d * d * n)  # X = P K, shared by the ridge and the solve
    if ridge_relative:
        add("ridge", 2 * d * n)
    if form == "nullspace":
        if prior:
            add("gram", 2 * d * d * n)
            if projector:
                add("projector", 2 * d**3)
            add("lu", 2 * d**3 / 3)
            add("solve", 2 * d * d * n)
        else:  # push-through: an n × n system
            add("gram", 2 * n * n * d)
            add("lu", 2 * n**3 / 3)
            add("solve", 2 * n * n * d)
        return out
    # compensated: the system restricted to the mask's rows
    if prior:
        add("gram", 2 * d * s * n)
        add("projector", 2 * s * d * s if projector else 0)
        add("lu", 2 * s**3 / 3)
        add("solve", 2 * s * s * n)
    else:
        add("gram", 2 * n * n * s)
        add("lu", 2 * n**3 / 3)
        add("solve", 2 * n * n * s)
    return out


@dataclass(frozen=True)
class CaseCounts:
    """Every phase's count for one edit."""

    z: PhaseCount
    keys: PhaseCount
    attribution: PhaseCount | None
    update: PhaseCount | None  # None: a method whose solve is not counted

    def phases(self) -> dict[str, PhaseCount | None]:
        return {"z": self.z, "keys": self.keys, "attribution": self.attribution, "update": self.update}


def count_case(shape: ModelShape, rows: CaseRows, steps: Sequence[int], layers: Sequence[int],
               kept: Sequence[int], form: str | None, *, masks: bool, projector: bool = True,
               prior: bool = False, z_precision: str = "float32", forward_precision: str = "float32",
               moments_min: float = float("inf"), order: int = 16) -> CaseCounts:
    """All phases of one edit of `rows.n_requests` facts that took `steps[r]` Adam steps each."""
    layers = sorted(layers)
    z = z_count(shape, rows.z, steps, layers[-1], z_precision)
    keys = keys_count(shape, rows.prompts, layers, forward_precision)
    attr = attribution_count(shape, rows.prompts, layers, moments_min, order, forward_precision) if masks else None
    update = None if form is None else update_count(form, shape.d_model, shape.d_ff, rows.n_requests, kept,
                                                    projector, prior)
    return CaseCounts(z, keys, attr, update)


# -- the engine's own rows -------------------------------------------------------------------------
def case_rows(tokenizer, requests: Sequence, templates: Sequence[str], hp) -> CaseRows:
    """The rows the engine builds for these requests (its tokenization and packing, imported from
    the nmkevc on the path, so a worktree of older code is counted with its own)."""
    from nmkevc.editing.tokens import templated
    from nmkevc.editing.zopt import PACK_TOKENS, build_rows, plan_packs
    from nmkevc.models.tokens import encode

    zr = build_rows(tokenizer, list(requests), list(templates), hp)
    batch = zr.batch
    n = len(requests)
    reads = [1] * n  # the KL position
    for row in zr.t_row.tolist():
        reads[int(zr.request[row])] += 1
    z = ZGeometry(batch.lengths.tolist(), batch.subject_pos.tolist(), zr.request.tolist(),
                  [p.tolist() for p in plan_packs(batch, PACK_TOKENS)], reads)
    pb = encode(tokenizer, *templated(list(requests), list(templates)), start=hp.prompt_start)
    prompts = PromptGeometry(pb.prompt_lengths.tolist(), pb.subject_pos.tolist(), len(templates))
    return CaseRows(n, z, prompts)


# -- machine rates ---------------------------------------------------------------------------------
@dataclass
class Rates:
    """This machine's best measured rates, with the load around the measurement."""

    float32: dict[str, float]  # GFLOP/s per shape, forward plus input gradient (z_floor's shapes)
    float64: dict[str, float]  # GFLOP/s per shape
    exp: dict[str, float]  # G exponentials/s: a cache-sized block in place, a large tensor
    bfloat16: dict[str, float] = field(default_factory=dict)
    threads: int = 0
    seconds_per_shape: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0

    def best(self, precision: str) -> float | None:
        """GFLOP/s of the fastest product measured in `precision` (None: not measured)."""
        table = getattr(self, precision, None) or {}
        return max(table.values()) if table else None

    def best_exp(self) -> float:
        return max(self.exp.values())

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Rates:
        return cls(**d)


def throughput(rows: int, d_in: int, d_out: int, seconds: float = 3.0, dtype: str = "float32") -> float:
    """GFLOP/s of (rows × d_in) @ (d_in × d_out) in `dtype`, forward plus the input gradient."""
    import torch

    dt = getattr(torch, dtype)
    x = torch.randn(rows, d_in, dtype=dt, requires_grad=True)
    w = torch.randn(d_out, d_in, dtype=dt)
    for _ in range(3):
        torch.nn.functional.linear(x, w).sum().backward()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.nn.functional.linear(x, w).sum().backward()
        n += 1
    return 2 * 2 * rows * d_in * d_out * n / (time.perf_counter() - t0) / 1e9


def step_rate(d_model: int, d_ff: int, tokens: int, seconds: float = 3.0, dtype: str = "float32") -> float:
    """The best GFLOP/s of z's three product shapes with `tokens` rows (forward plus input gradient)."""
    return max(throughput(*shape, seconds=seconds, dtype=dtype)
               for shape in matmul_shapes(d_model, d_ff, tokens).values())


def matmul_rate(size: int, seconds: float = 3.0, dtype: str = "float64") -> float:
    """GFLOP/s of a square size × size product in `dtype` (the update's d_ff-sized products)."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
    out = torch.empty(size, size, dtype=dt)
    torch.matmul(a, b, out=out)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b, out=out)
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0) / 1e9


def exp_rate(elements: int, seconds: float = 3.0) -> float:
    """G float32 exponentials/s, in place on `elements` (the attribution's exp_ on a block)."""
    import torch

    x = torch.rand(elements) * -4.0
    buf = torch.empty_like(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.exp(x, out=buf)
        n += 1
    return elements * n / (time.perf_counter() - t0) / 1e9


def matmul_shapes(d_model: int, d_ff: int, pack_tokens: int) -> dict[str, tuple[int, int, int]]:
    """z_floor's shapes: a pack of re-run tokens through the layers' products."""
    return {f"{pack_tokens}x{d_model}->{d_ff}": (pack_tokens, d_model, d_ff),
            f"{pack_tokens}x{d_ff}->{d_model}": (pack_tokens, d_ff, d_model),
            f"{pack_tokens}x{d_model}->{d_model}": (pack_tokens, d_model, d_model)}


def measure_rates(d_model: int, d_ff: int, pack_tokens: int = 1024, seconds: float = 3.0,
                  bfloat16: bool = False, cache_block: int = 1 << 18) -> Rates:
    """The float32 (and optionally bfloat16) product rates at z's shapes, float64 at d_ff², and the
    exponential rate in a cache-sized block and on a large tensor; the load before and after."""
    import torch

    load0 = round(os.getloadavg()[0], 2)
    shapes = matmul_shapes(d_model, d_ff, pack_tokens)
    f32 = {k: round(throughput(*v, seconds=seconds), 1) for k, v in shapes.items()}
    bf16 = {k: round(throughput(*v, seconds=seconds, dtype="bfloat16"), 1) for k, v in shapes.items()} \
        if bfloat16 else {}
    f64 = {f"{d_ff}x{d_ff}x{d_ff}": round(matmul_rate(d_ff, seconds), 1)}
    exps = {f"block {cache_block}": round(exp_rate(cache_block, seconds), 3),
            f"tensor {64 * cache_block}": round(exp_rate(64 * cache_block, seconds), 3)}
    return Rates(f32, f64, exps, bf16, torch.get_num_threads(), seconds, load0, round(os.getloadavg()[0], 2))


# -- a phase beside its floor ----------------------------------------------------------------------
@dataclass
class PhaseFigures:
    """One phase of one edit: measured, floor, their ratio, the achieved rate."""

    seconds: float | None  # measured (None: not timed on its own; see `inside`)
    floor_seconds: float | None = None
    floor_exp_seconds: float | None = None  # the floor's share spent on exponentials
    ratio: float | None = None  # measured / floor
    gflop: float | None = None  # counted FLOPs (10⁹)
    gexp: float | None = None  # counted exponentials (10⁹)
    achieved_gflops: float | None = None  # counted FLOPs / measured seconds
    #: the phase this one was timed inside (keys in "update", engines before Step 4 was split)
    inside: str | None = None
    #: phases whose time and work this one carries besides its own
    includes: list[str] = field(default_factory=list)
    #: z only: one step's re-run tokens, the best product rate at that many rows, and the floor
    #: and ratio with the layers' products at that rate (`add_step_floor`)
    step_tokens: int | None = None
    step_rate_gflops: float | None = None
    step_floor_seconds: float | None = None
    step_ratio: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # GFLOP per part
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {})}


def figures(seconds: float | None, count: PhaseCount | None, rates: Rates, **extra) -> PhaseFigures:
    """`seconds` beside the floor of `count` (either may be missing)."""
    out = PhaseFigures(None if seconds is None else round(seconds, 3), **extra)
    if count is None:
        return out
    out.gflop = round(count.flops / 1e9, 3)
    out.gexp = round(count.exps / 1e9, 4) if count.exps else None
    parts: dict[str, float] = {}
    for w in count.work:
        parts[w.name] = parts.get(w.name, 0.0) + w.flops
    out.parts = {k: round(v / 1e9, 3) for k, v in parts.items()}
    out.notes = list(count.notes)
    floor = count.floor_seconds(rates)
    if count.exps:
        out.floor_exp_seconds = round(count.exps / (rates.best_exp() * 1e9), 4)
    if floor is not None:
        out.floor_seconds = round(floor, 4)
        if seconds:
            out.ratio = round(seconds / floor, 2) if floor > 0 else None
    if seconds:
        out.achieved_gflops = round(count.flops / seconds / 1e9, 2)
    return out


def add_step_floor(z: PhaseFigures, count: PhaseCount, rates: Rates, d_model: int, d_ff: int,
                   largest: int, seconds: float = 3.0) -> None:
    """Put z beside its floor at the rows one of its steps has too, when they are fewer than the
    `largest` rows the rates were measured at (z's pack budget); the product rate at that many
    rows is measured now, in z's precision."""
    tokens = count.detail.get("step_tokens")
    layers = [w for w in count.work if w.name == "layers"]
    if not tokens or not layers or tokens >= largest or not z.seconds:
        return
    rate = step_rate(d_model, d_ff, tokens, seconds, layers[0].precision)
    # a step's products cannot be larger than its rows, however they are packed: the layers'
    # products at the rate of that many rows, the rest (unembedding, attention) as before
    floor = count.floor_seconds(rates, {"layers": rate})
    if floor is None:
        return
    z.step_tokens, z.step_rate_gflops = tokens, round(rate, 1)
    z.step_floor_seconds = round(floor, 4)
    z.step_ratio = round(z.seconds / floor, 2) if floor > 0 else None


def phase_figures(timings: Mapping[str, float], wall: float, counts: CaseCounts | None,
                  rates: Rates) -> dict[str, PhaseFigures]:
    """Every phase of an edit from the engine's timings, `Repository.edit`'s wall time and the
    counts. Timings without "keys" (an engine before Step 4 was split) carry the keys inside
    "update": that row's time and floor then both include them, and "keys" says where it went."""
    c = counts.phases() if counts is not None else dict.fromkeys(("z", "keys", "attribution", "update"))
    out = {"z": figures(timings.get("z"), c["z"], rates)}
    if "attribution" in timings:
        out["attribution"] = figures(timings["attribution"], c["attribution"], rates)
    update = c["update"]
    if "keys" in timings:
        out["keys"] = figures(timings["keys"], c["keys"], rates)
        out["update"] = figures(timings.get("update"), update, rates)
    else:
        out["keys"] = figures(None, c["keys"], rates, inside="update")
        both = None if update is None or c["keys"] is None else c["keys"].merged(update, "update")
        out["update"] = figures(timings.get("update"), both, rates, includes=["keys"])
    maths = sum(timings.values())
    out["commit"] = figures(wall - maths, None, rates,
                            notes=["Repository.edit minus the engine's maths: checks before and after, "
                                   "storing, commit; no floor counted"])
    floors = [f.floor_seconds for k, f in out.items() if k != "commit" and f.inside is None]
    total = PhaseFigures(round(maths, 3))
    if floors and all(x is not None for x in floors):
        total.floor_seconds = round(sum(floors), 4)
        total.ratio = round(maths / total.floor_seconds, 2) if total.floor_seconds else None
    out["maths"] = total
    return out
