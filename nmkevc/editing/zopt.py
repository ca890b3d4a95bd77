"""Step 1: the target hidden vector z of every request (one batched optimisation).

Each request r gets its own δ_r, added to the output of the last edited layer l_m at the
subject's last token of all of r's rows; the requests share forward/backward passes but
not parameters, so the sum of their losses has exactly each δ_r's own gradient.

The maths is that of a plain forward pass with a hook adding δ at l_m. It runs faster
because most of that pass does not depend on δ:
- δ changes nothing at or below l_m: those layers run once per row (without autograd),
  and every Adam step replays only the layers above, from the stored output of l_m;
- causal attention: positions before a row's subject never see δ, so their keys and
  values at the layers above are computed once (a cache prefix) and a step re-runs only
  the positions from the subject's last token on;
- rows are packed by subject position and length (not all padded to the longest), so a
  pack's prefix is long and its padding short;
- a request that has converged is frozen; a pack holding its rows is cut down to the active
  rows (its stored states, cache and recorded layer arguments sliced, no layer re-run), and
  dropped once none is left;
- with `z_precision="bfloat16"` the loop's matrix products run in bfloat16 (autocast, over
  bfloat16 copies of the weight matrices; 2× faster on a CPU with bfloat16 instructions)
  while the residual stream, norms and losses stay float32; h, and so z = h + δ, is the
  model's own, and everything after Step 1 runs on the model itself.
`tests/test_editing_zopt.py` checks all of this against the plain hooked forward pass.

The lifelong options (docs/method.md, "Lifelong mechanisms"; all off by default) act here:
`z_stop_top1` adds most-probable early stopping beside the loss rule, `z_norm_anchor` keeps
||z|| within a multiple of the unedited base model's ||h|| (projected after every step, like the
clamp), and `z_weights="base"` runs the whole loop on the unedited base model.
`tests/test_editing_lifelong.py` checks them.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import EditRequestError, NmkevcError
from ..facts import EditRequest
from ..models.adapters import ArchAdapter
from ..models.cache import new_dynamic_cache
from ..models.tokens import Batch, encode, target_ids
from .hooks import LayerCall, attention_kernel, hidden_of, hooks, recorded_calls, run_until, stop_after
from .hparams import EditHparams
from .tokens import fill, templated

#: the suffix tokens (rows × positions re-run per step) of one pack: bounds the autograd
#: graph held at once (memory) while keeping matrix products large enough to be efficient
#: (a batch of 100 on SmolLM2: docs/benchmarks.md, the batch-of-100 rows before and after)
PACK_TOKENS = 256
#: a pack's fixed cost per step, in re-run tokens: rows join a pack unless that costs more
PACK_OVERHEAD = 16
#: rebuild a pack once fewer than this share of its rows belongs to active requests (when it
#: cannot be sliced: `UpperRunner.shrink`)
REBUILD_BELOW = 0.5
#: a sliced pack's first replay without δ must give back its stored final states within this
#: relative (Frobenius) distance: the check that slicing described the recorded calls exactly
SLICE_TOLERANCE = 1e-3


@dataclass
class ZResult:
    z: torch.Tensor  # (d_model, n) = h + δ
    h: torch.Tensor  # (d_model, n) original output of l_m at the subject's last token (rewrite row)
    delta: torch.Tensor  # (d_model, n)
    nll: list[float]  # final target NLL per request (mean over templates and target tokens)
    kl: list[float]  # final KL(original || edited) on the KL prompt, per request
    steps: list[int]  # Adam steps taken per request
    history: list[float] = field(default_factory=list)  # total loss per forward pass (all requests)
    #: why each request stopped: "loss" (z_stop_loss), "top1" (z_stop_top1, MPES), "loss+top1" (both
    #: on the same pass) or "steps" (it ran all z_steps)
    stop: list[str] = field(default_factory=list)
    #: per request, on its last pass: its target was the top-1 token at every target position of
    #: every rewrite row (the MPES condition, recorded whether or not MPES is on)
    top1: list[bool] = field(default_factory=list)
    #: the norm anchor (z_norm_anchor): each request's reference norm ||h_base|| and whether the
    #: anchor moved its z at any step (empty lists when the anchor is off)
    ref_norm: list[float] = field(default_factory=list)
    capped: list[bool] = field(default_factory=list)
    #: (d_model, n) the current model's output of l_m at the subject's last token (rewrite row) when
    #: δ was optimised on another model (z_weights="base"); None when that is `h`
    start: torch.Tensor | None = None


@dataclass
class ZRows:
    """Every row the loss reads: request r's prompt under each template followed by its
    target (rows r·T + t), then one KL prompt per request (rows n·T + r)."""

    batch: Batch
    request: torch.Tensor  # (R,) request of each row
    rewrite: torch.Tensor  # (n,) row of each request's first template (its rewrite prompt)
    kl: torch.Tensor  # (n,) KL row of each request
    kl_pos: torch.Tensor  # (n,) position the KL term reads in that row (hp.kl_position)
    # target tokens: row, position predicting it, token id, weight 1/(T_r · n_templates)
    t_row: torch.Tensor
    t_pos: torch.Tensor
    t_tok: torch.Tensor
    t_w: torch.Tensor


def optimise_z(
    model,
    tokenizer,
    adapter: ArchAdapter,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    layer: int,
    hp: EditHparams,
    progress: Callable[[int], None] | None = None,
    pack_tokens: int = PACK_TOKENS,
    base_model=None,
) -> ZResult:
    """Find δ for every request (Adam, weight decay, clamp, early stop per request); the
    model's weights must not require grad (see `frozen_eval`).

    A request stops (its δ is frozen) as soon as its own loss (`z_stop_on`: the total, or
    the target NLL) is below `z_stop_loss`, or (`z_stop_top1` = k > 0) once its target has been
    the top-1 token on all its rewrite rows for k passes in a row, so its z does not depend on
    which other requests share the batch. `base_model` (the unedited base, same architecture)
    is what `z_weights="base"` optimises on and what `z_norm_anchor` reads its reference from."""
    if (hp.z_weights == "base" or hp.z_norm_anchor is not None) and base_model is None:
        raise EditRequestError("z_weights=base and z_norm_anchor need the unedited base model (base_model)")
    rows = build_rows(tokenizer, requests, templates, hp)
    on = base_model if hp.z_weights == "base" else model
    fast, dtype = replay_model(on, adapter, hp.z_precision)
    # z = h + δ with the model's own h: the replay's precision stays in δ
    h = None if fast is on else layer_output(on, adapter, rows, layer)
    # the anchor's reference: the base model's h at each request's own subject token (per request,
    # not a batch mean, so a request's z stays independent of its batch; docs/method.md). When the
    # loop runs on the base model that is its own h, read in the loop.
    ref = None
    if hp.z_norm_anchor is not None and on is not base_model:
        ref = layer_output(base_model, adapter, rows, layer).norm(dim=-1)
    start = None if on is model else layer_output(model, adapter, rows, layer)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with attention_kernel(fast, dtype), autocast:
        res = _optimise(fast, adapter, rows, layer, hp, progress, pack_tokens, h, ref)
    res.start = None if start is None else start.T.contiguous()
    return res


def _optimise(model, adapter: ArchAdapter, rows: ZRows, layer: int, hp: EditHparams,
              progress: Callable[[int], None] | None, pack_tokens: int, h: torch.Tensor | None,
              ref: torch.Tensor | None = None) -> ZResult:
    """The Adam loop on `model`; h is the rewrite rows' output of l_m when given, else read here;
    ref the anchor's reference norms (n,) when they are not ||h||."""
    runner = UpperRunner(model, adapter, layer)
    packs = [runner.prepare(rows.batch, idx) for idx in plan_packs(rows.batch, pack_tokens)]
    n = rows.rewrite.numel()
    if h is None:
        h = _rewrite_hidden(packs, rows)
    p0 = _kl_reference(runner, packs, rows)
    delta = torch.zeros(n, h.shape[1], requires_grad=True)
    anchor = capped = None
    if hp.z_norm_anchor is not None:
        ref = h.norm(dim=-1) if ref is None else ref
        anchor = hp.z_norm_anchor * ref
        with torch.no_grad():  # the first pass already reads a z inside the anchor's ball
            capped = _anchor_step(delta, h, anchor, torch.ones(n, dtype=torch.bool))
    opt = torch.optim.Adam([delta], lr=hp.z_lr)
    h_norm2 = h.pow(2).sum(-1).clamp_min(1e-12)
    nll, kl = torch.zeros(n), torch.zeros(n)
    active = torch.ones(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    history: list[float] = []
    # MPES: target tokens per request, whether all were top-1 on the last pass, passes in a row so
    tokens = torch.zeros(n).index_add_(0, rows.request[rows.t_row], torch.ones(rows.t_row.numel()))
    top1 = torch.zeros(n, dtype=torch.bool)
    streak = torch.zeros(n, dtype=torch.long)
    stop = ["steps"] * n
    for step in range(hp.z_steps + 1):
        last = step == hp.z_steps
        opt.zero_grad()
        pass_nll, pass_kl, pass_hits = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        for pack in packs:  # forward and backward pack by pack: one graph held at a time
            part_nll, part_kl, part_hits = _pack_losses(runner, pack, rows, delta, p0, n)
            pass_nll += part_nll.detach()
            pass_kl += part_kl.detach()
            pass_hits += part_hits
            if not last:
                (part_nll.sum() + hp.z_kl_factor * part_kl.sum()).backward()
        # every row of an active request is in some pack; frozen requests keep their last values
        nll = torch.where(active, pass_nll, nll)
        kl = torch.where(active, pass_kl, kl)
        top1 = torch.where(active, pass_hits >= tokens, top1)
        streak = torch.where(active, torch.where(top1, streak + 1, 0), streak)
        decay = weight_decay(delta, h_norm2, hp)
        total = nll + hp.z_kl_factor * kl + decay.detach()
        history.append(float(total.sum()))
        keep = (total if hp.z_stop_on == "total" else nll) >= hp.z_stop_loss
        by_top1 = active & (streak >= hp.z_stop_top1) if hp.z_stop_top1 > 0 else torch.zeros_like(active)
        _record_stops(stop, active & ~keep, by_top1)
        active &= keep
        active &= ~by_top1
        if last or not bool(active.any()):
            break
        decay.sum().backward()
        _adam_step(opt, delta, active, hp.z_clamp * h_norm2.sqrt())
        if anchor is not None:
            with torch.no_grad():
                capped |= _anchor_step(delta, h, anchor, active)
        steps += active.long()
        packs = runner.shrink(packs, rows, active)
        if progress is not None:
            progress(step + 1)
    d = delta.detach().clone()
    return ZResult(
        z=(h + d).T.contiguous(),
        h=h.T.contiguous(),
        delta=d.T.contiguous(),
        nll=[float(x) for x in nll],
        kl=[float(x) for x in kl],
        steps=[int(x) for x in steps],
        history=history,
        stop=stop,
        top1=[bool(x) for x in top1],
        ref_norm=[] if anchor is None else [float(x) for x in ref],
        capped=[] if capped is None else [bool(x) for x in capped],
    )


def _record_stops(stop: list[str], by_loss: torch.Tensor, by_top1: torch.Tensor) -> None:
    """Name the rule that froze each request on this pass (both rules may fire at once)."""
    for r in torch.nonzero(by_loss | by_top1)[:, 0].tolist():
        stop[r] = "+".join(name for name, hit in (("loss", by_loss[r]), ("top1", by_top1[r])) if bool(hit))


def _anchor_step(delta: torch.Tensor, h: torch.Tensor, limit: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Project z = h + δ of the active requests into the ball ||z|| ≤ limit (z scaled toward 0, so
    δ ← s·z − h); returns which requests it moved. The projection onto a convex set is
    non-expansive and leaves h where it is when ||h|| ≤ limit, so there it never undoes the clamp
    ||δ|| ≤ z_clamp·||h||; only a request whose h is already above the limit (an earlier edit
    inflated it) can end with a larger δ, and the anchor wins."""
    z = h + delta
    norm = z.norm(dim=-1)
    over = active & (norm > limit)
    if bool(over.any()):
        scale = (limit / norm.clamp_min(1e-12))[:, None]
        delta.copy_(torch.where(over[:, None], z * scale - h, delta))
    return over


def replay_model(model, adapter: ArchAdapter, precision: str) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model Step 1's loop replays and the dtype its matrix products autocast to (None:
    the model's own). For "bfloat16": a copy whose weight matrices (2-D parameters other than
    embeddings, and the unembedding, untied) are bfloat16, so autocast finds them already cast;
    embeddings, norms and buffers are shared with the model, not copied. The residual stream
    then stays float32: only where δ is found differs from the reference, not the model it is
    found on (a pure bfloat16 copy's δ transferred badly to the float32 model: docs/method.md)."""
    if precision == "model":
        return model, None
    dtype = {"bfloat16": torch.bfloat16}[precision]
    params = list(model.parameters())
    if all(p.dtype == dtype for p in params):
        return model, None
    if len({p.device for p in params}) > 1:
        raise NmkevcError(f"z_precision={precision} needs the model on one device; this one is spread "
                          f"over several (use z_precision=model)")
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}

    def cast(p: torch.Tensor) -> torch.nn.Parameter:
        return torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)

    memo = {id(p): (cast(p) if p.dim() == 2 and id(p) not in embeddings else p) for p in params}
    fast = copy.deepcopy(model, memo)
    head = adapter.lm_head_module(fast)
    if head.weight.dtype != dtype:
        head.weight = cast(head.weight)
    return fast, dtype


def weight_decay(delta: torch.Tensor, h_norm2: torch.Tensor, hp: EditHparams) -> torch.Tensor:
    """Per request: z_weight_decay · ||δ|| / ||h||² ("norm", the reference code) or with ||δ||²
    ("squared"). torch takes the norm's gradient at δ = 0 as 0, as the reference code's first step does."""
    size = delta.pow(2).sum(-1) if hp.z_decay_form == "squared" else torch.linalg.vector_norm(delta, dim=-1)
    return hp.z_weight_decay * size / h_norm2


# -- Step 1a: the rows and their targets ------------------------------------------------------------
def build_rows(tokenizer, requests: Sequence[EditRequest], templates: Sequence[str], hp: EditHparams) -> ZRows:
    n, n_t = len(requests), len(templates)
    # target ids as they follow the rewrite prompt (as the evaluator scores them); edits made
    # before the shared tokenization (prompt_start "tokenizer") tokenized the target alone
    legacy = hp.prompt_start == "tokenizer"
    tgt = [target_ids(tokenizer, "" if legacy else r.text, r.target_new) for r in requests]
    texts, ends = templated(requests, templates)
    suffixes = [tgt[i // n_t][:-1] for i in range(n * n_t)]
    for req in requests:  # one KL row per request: "{subject} is a"
        text, end = fill("{}", hp.kl_prompt, req.subject)
        texts.append(text)
        ends.append(end)
        suffixes.append([])
    batch = encode(tokenizer, texts, ends, suffixes, start=hp.prompt_start)
    kl = torch.arange(n * n_t, n * n_t + n)
    t_row, t_pos, t_tok, t_w = [], [], [], []
    for row in range(n * n_t):
        ids = tgt[row // n_t]
        start = int(batch.prompt_lengths[row]) - 1
        for j, tok in enumerate(ids):
            t_row.append(row)
            t_pos.append(start + j)
            t_tok.append(tok)
            t_w.append(1.0 / (len(ids) * n_t))
    return ZRows(
        batch=batch,
        request=torch.cat([torch.arange(n).repeat_interleave(n_t), torch.arange(n)]),
        rewrite=torch.arange(n) * n_t,
        kl=kl,
        kl_pos=batch.subject_pos[kl] if hp.kl_position == "subject" else batch.last[kl],
        t_row=torch.tensor(t_row, dtype=torch.long),
        t_pos=torch.tensor(t_pos, dtype=torch.long),
        t_tok=torch.tensor(t_tok, dtype=torch.long),
        t_w=torch.tensor(t_w, dtype=torch.float32),
    )


def plan_packs(batch: Batch, budget: int = PACK_TOKENS, rows: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Rows grouped so that each group re-runs few tokens. A pack re-runs, per row, the
    positions from the subject's last token to the pack's longest such tail; sorted by that
    tail, a row joins the current pack unless the padding it adds costs more than a pack of
    its own, or the pack would exceed `budget` tokens."""
    tail = (batch.lengths - batch.subject_pos).tolist()
    order = sorted(range(len(tail)) if rows is None else rows, key=lambda r: tail[r])
    packs: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for r in order:
        if cur:
            new_width = max(width, tail[r])
            grown = (len(cur) + 1) * new_width - len(cur) * width
            if (len(cur) + 1) * new_width > budget or grown > tail[r] + PACK_OVERHEAD:
                packs.append(cur)
                cur, width = [], 0
        cur.append(r)
        width = max(width, tail[r])
    if cur:
        packs.append(cur)
    return [torch.tensor(p, dtype=torch.long) for p in packs]


# -- Step 1b: the layers above l_m, replayed ------------------------------------------------------
@dataclass
class Pack:
    rows: torch.Tensor  # (b,) global row indices
    #: (b,) column j of the re-run part holds position offset + j of the row: the subject's
    #: last token (rows aligned on it), or 0 when the whole row is re-run
    offset: torch.Tensor
    h: torch.Tensor  # (b, W, d_model) output of l_m on the re-run columns, without δ
    final: torch.Tensor  # (b, W, d_model) final hidden state there, without δ
    calls: list[LayerCall]  # every layer above l_m as this pack's pass called it
    cache: object | None  # the cache holding the prefix keys/values, or None
    prefix: list | None  # the cache's per-layer (keys, values) of the prefix alone


class UpperRunner:
    """Runs a pack once up to l_m (and fills the prefix cache), then replays the layers above."""

    def __init__(self, model, adapter: ArchAdapter, layer: int):
        self.model, self.adapter, self.layer = model, adapter, layer
        #: whether packs are cut down by slicing (None until the first slice is checked), and
        #: which recorded layer arguments (call, args/kwargs, position...) have the rows' dimension
        self.slicing: bool | None = None
        self.batch_args: frozenset | None = None
        self.block = adapter.layer(model, layer)
        self.upper = list(adapter.layer_modules(model))[layer + 1 :]
        self.norm = adapter.final_norm_module(model)
        params = inspect.signature(model.base_model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else ("past_key_values" if "past_key_values" in params else None)

    @torch.no_grad()
    def prepare(self, batch: Batch, idx: torch.Tensor) -> Pack:
        """Run the pack's rows once, aligned on their subjects' last tokens (left-padded, true
        position ids): the columns before that token fill the prefix cache, the rest is the
        part every step re-runs. Without a usable cache, the whole right-padded rows are kept."""
        aligned = _align(batch, idx)
        cache = self._new_cache() if aligned is not None else None
        prefix = None
        if cache is not None:
            ids, mask, pos, split = aligned
            self.model.base_model(input_ids=ids[:, :split], attention_mask=mask[:, :split],
                                  position_ids=pos[:, :split], use_cache=True, **{self.cache_kw: cache})
            prefix = _cache_state(cache)
        if prefix is None:  # a cache this code cannot rewind: re-run whole rows instead
            cache = None
            sub = batch.select(idx)
            inputs = {"input_ids": sub.input_ids, "attention_mask": sub.attention_mask, "use_cache": False}
            offset = torch.zeros(idx.numel(), dtype=torch.long)
        else:
            inputs = {"input_ids": ids[:, split:], "attention_mask": mask, "position_ids": pos[:, split:],
                      "use_cache": True, self.cache_kw: cache}
            offset = batch.subject_pos[idx]
        got: dict = {}

        def grab_h(_m, _a, out):
            got["h"] = hidden_of(out).detach()

        with hooks(post={self.block: grab_h}), recorded_calls(self.upper) as calls:
            out = self.model.base_model(**inputs)
        final = out.last_hidden_state if hasattr(out, "last_hidden_state") else hidden_of(out)
        if cache is not None:
            prefix = self._upper_only(prefix)
            _restore(cache, prefix)
        return Pack(rows=idx, offset=offset, h=got["h"], final=final.detach(), calls=list(calls), cache=cache,
                    prefix=prefix)

    def replay(self, pack: Pack, delta_rows: torch.Tensor, spos: torch.Tensor) -> torch.Tensor:
        """Final (normed) hidden states of the pack's re-run columns with δ added at l_m."""
        b = pack.rows.numel()
        hidden = pack.h.index_put((torch.arange(b), spos - pack.offset), delta_rows.to(pack.h.dtype),
                                  accumulate=True)
        try:
            for call in pack.calls:
                hidden = call(hidden)
        finally:
            if pack.cache is not None:
                _restore(pack.cache, pack.prefix)
        return self.norm(hidden)

    def shrink(self, packs: list[Pack], rows: ZRows, active: torch.Tensor) -> list[Pack]:
        """Drop packs with no active request and cut the others down to their active rows. A
        cut is a slice of what the pack holds (no layer runs again); where the recorded calls
        cannot be sliced, a pack mostly made of frozen rows is rebuilt by running them again."""
        out = []
        for pack in packs:
            live = active[rows.request[pack.rows]]
            if not bool(live.any()):
                continue
            if bool(live.all()):
                out.append(pack)
                continue
            cut = self._sliced(pack, rows, torch.nonzero(live)[:, 0]) if self.slicing is not False else None
            if cut is not None:
                out.append(cut)
            elif float(live.float().mean()) < REBUILD_BELOW:
                for idx in plan_packs(rows.batch, rows=pack.rows[live].tolist()):
                    out.append(self.prepare(rows.batch, idx))
            else:
                out.append(pack)
        return out

    @torch.no_grad()
    def _sliced(self, pack: Pack, rows: ZRows, keep: torch.Tensor) -> Pack | None:
        """The pack cut to its rows `keep` (local indices), or None if its recorded calls hold
        something this cannot slice. Only the batch dimension is cut, and the cache is rewound to
        the kept rows' prefix. Which arguments have one is decided on the first slice of a run: a
        tensor whose first dimension is the pack's row count is cut, one broadcast over rows (first
        dimension 1) or without rows (1-D: cache positions) is kept, anything else stops slicing;
        that slice is checked by a replay without δ, and later ones cut the same arguments."""
        b = pack.rows.numel()
        deciding = self.batch_args is None
        found: set = set()

        def cut(x, path: tuple):
            if isinstance(x, torch.Tensor):
                if deciding:
                    if x.dim() >= 2 and x.shape[0] == b:
                        found.add(path)
                        return x[keep]
                    if x.dim() >= 2 and x.shape[0] != 1:
                        raise _Unsliceable
                    return x
                if path not in self.batch_args:
                    return x
                if x.shape[0] != b:
                    raise _Unsliceable
                return x[keep]
            if isinstance(x, tuple | list):
                return type(x)(cut(y, (*path, i)) for i, y in enumerate(x))
            if isinstance(x, dict):
                return {k: cut(v, (*path, k)) for k, v in x.items()}
            if x is None or x is pack.cache or isinstance(x, bool | int | float | str):
                return x
            raise _Unsliceable

        try:
            calls = [LayerCall(c.module, cut(c.args, (j, "args")), cut(c.kwargs, (j, "kwargs")))
                     for j, c in enumerate(pack.calls)]
        except _Unsliceable:
            if deciding:
                self.slicing = False
            return None
        prefix = None if pack.prefix is None else [(k[keep], v[keep]) for k, v in pack.prefix]
        if pack.cache is not None:
            _restore(pack.cache, prefix)
        out = Pack(rows=pack.rows[keep], offset=pack.offset[keep], h=pack.h[keep], final=pack.final[keep],
                   calls=calls, cache=pack.cache, prefix=prefix)
        if deciding:
            spos = rows.batch.subject_pos[out.rows]
            again = self.replay(out, torch.zeros(keep.numel(), out.h.shape[-1]), spos).float()
            want = out.final.float()
            self.slicing = bool((again - want).norm() <= SLICE_TOLERANCE * want.norm())
            if not self.slicing:  # the pack stays as it was
                if pack.cache is not None:
                    _restore(pack.cache, pack.prefix)
                return None
            self.batch_args = frozenset(found)
        return out

    def _upper_only(self, prefix: list) -> list:
        """The prefix without the keys and values of the layers at and below l_m, which are
        never re-run (a quarter of the cache on SmolLM2 edited at layers 3..7)."""
        return [kv if j > self.layer else tuple(t.new_empty((*t.shape[:-2], 0, t.shape[-1])) for t in kv)
                for j, kv in enumerate(prefix)]

    def _new_cache(self):
        return None if self.cache_kw is None else new_dynamic_cache(self.model.config)


class _Unsliceable(Exception):
    """A recorded layer argument whose rows `UpperRunner._sliced` cannot tell apart."""


def _cache_state(cache) -> list | None:
    """Per-layer (keys, values) of a dynamic cache; None if it is not laid out that way."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(x, "keys") and hasattr(x, "values") for x in layers):
        return None
    if not all(isinstance(x.keys, torch.Tensor) for x in layers):
        return None
    return [(x.keys, x.values) for x in layers]


def _restore(cache, state: list) -> None:
    """Back to the prefix: the cache grows by concatenation, so the prefix tensors are intact."""
    for x, (k, v) in zip(cache.layers, state, strict=True):
        x.keys, x.values = k, v


def _align(batch: Batch, idx: torch.Tensor) -> tuple | None:
    """Rows `idx` left-padded so that every subject's last token sits in one column `split`:
    (input_ids, attention_mask, position_ids, split); None when no row has a prefix."""
    spos, length = batch.subject_pos[idx], batch.lengths[idx]
    split = int(spos.max())
    if split == 0:
        return None
    width = split + int((length - spos).max())
    ids = torch.full((idx.numel(), width), int(batch.input_ids[idx[0], 0]), dtype=torch.long)
    mask = torch.zeros((idx.numel(), width), dtype=torch.long)
    pos = torch.zeros((idx.numel(), width), dtype=torch.long)
    for j, row in enumerate(idx.tolist()):
        shift, n = split - int(spos[j]), int(length[j])
        ids[j, shift : shift + n] = batch.input_ids[row, :n]
        mask[j, shift : shift + n] = 1
        pos[j, shift : shift + n] = torch.arange(n)
    return ids, mask, pos, split


# -- Step 1c: the loss ---------------------------------------------------------------------------------
def _rewrite_hidden(packs: list[Pack], rows: ZRows) -> torch.Tensor:
    """h (n × d_model): the output of l_m at the subject's last token of each rewrite row."""
    n = rows.rewrite.numel()
    h = torch.empty(n, packs[0].h.shape[-1])
    for pack in packs:
        for j, row in enumerate(pack.rows.tolist()):
            req = int(rows.request[row])
            if row == int(rows.rewrite[req]):
                h[req] = pack.h[j, int(rows.batch.subject_pos[row] - pack.offset[j])].float()
    return h


@torch.no_grad()
def layer_output(model, adapter: ArchAdapter, rows: ZRows, layer: int) -> torch.Tensor:
    """h (n × d_model) as `_rewrite_hidden` reads it, from one forward of the rewrite rows cut
    short after l_m (for a replay that runs at another precision than the model, the norm
    anchor's ‖h_base‖, and the lifelong diagnosis's growth of h)."""
    sub = rows.batch.select(rows.rewrite)
    got = {}

    def grab(_m, _a, out):
        got["h"] = hidden_of(out)[torch.arange(sub.input_ids.shape[0]), sub.subject_pos].float()

    block = adapter.layer(model, layer)
    with hooks(post={block: grab}), stop_after(block):
        run_until(model, sub)
    return got["h"]


def _kl_reference(runner: UpperRunner, packs: list[Pack], rows: ZRows) -> torch.Tensor:
    """log p0 (n × vocab): the unedited next-token distribution of each KL row."""
    head = runner.adapter.lm_head_module(runner.model)
    out = {}
    with torch.no_grad():
        for pack in packs:
            for j, row in enumerate(pack.rows.tolist()):
                req = int(rows.request[row])
                if row == int(rows.kl[req]):
                    x = pack.final[j, int(rows.kl_pos[req] - pack.offset[j])]
                    out[req] = F.log_softmax(head(x[None]).float(), dim=-1)[0]
    return torch.stack([out[r] for r in range(rows.kl.numel())])


def _pack_losses(runner: UpperRunner, pack: Pack, rows: ZRows, delta: torch.Tensor, p0: torch.Tensor,
                 n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This pack's share of every request's target NLL and its KL (n each; zeros elsewhere), and
    how many of each request's target tokens in the pack are the top-1 prediction (teacher-forced)."""
    local = torch.full((rows.request.numel(),), -1, dtype=torch.long)
    local[pack.rows] = torch.arange(pack.rows.numel())
    spos = rows.batch.subject_pos[pack.rows]
    final = runner.replay(pack, delta[rows.request[pack.rows]], spos)
    head = runner.adapter.lm_head_module(runner.model)

    sel = local[rows.t_row] >= 0
    t_local = local[rows.t_row[sel]]
    logp = F.log_softmax(head(final[t_local, rows.t_pos[sel] - pack.offset[t_local]]).float(), dim=-1)
    tok_nll = -logp.gather(1, rows.t_tok[sel][:, None])[:, 0]
    nll = torch.zeros(n).index_add(0, rows.request[rows.t_row[sel]], tok_nll * rows.t_w[sel])
    with torch.no_grad():
        hit = (logp.argmax(-1) == rows.t_tok[sel]).float()
        hits = torch.zeros(n).index_add_(0, rows.request[rows.t_row[sel]], hit)

    kl = torch.zeros(n)
    kl_sel = local[rows.kl] >= 0
    if bool(kl_sel.any()):
        reqs = torch.nonzero(kl_sel)[:, 0]
        kl_rows = rows.kl[reqs]
        kl_local = local[kl_rows]
        kl_logp = F.log_softmax(head(final[kl_local, rows.kl_pos[reqs] - pack.offset[kl_local]]).float(), dim=-1)
        ref = p0[reqs]
        kl = kl.index_put((reqs,), (ref.exp() * (ref - kl_logp)).sum(-1))
    return nll, kl, hits


def _adam_step(opt: torch.optim.Optimizer, delta: torch.Tensor, active: torch.Tensor, limit: torch.Tensor) -> None:
    """One Adam step for the active requests; frozen ones keep their δ; then ‖δ‖ ≤ limit."""
    with torch.no_grad():
        frozen = delta[~active].clone()
    opt.step()
    with torch.no_grad():
        delta[~active] = frozen
        norm = delta.norm(dim=-1)
        scale = torch.where(norm > limit, limit / norm.clamp_min(1e-12), torch.ones_like(norm))
        delta.mul_(scale[:, None])
