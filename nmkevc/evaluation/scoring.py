"""Batched, padding-correct scoring of continuations under a causal language model.

Every metric in this package reduces to "how likely is this continuation after this
context, and what would the model have said instead?". That question is answered once
here, for any padding and any BOS convention, and fast enough to score thousands of
prompts on a CPU.

Conventions (shared by all metrics): prompts and targets are tokenized by
`models.tokens`, exactly as the editor tokenizes them — every context begins with the
default start token (`models.tokens.START_RULES`), a target is scored with one leading
space as it follows the prompt. Sequences
are right-padded with an attention mask, so real tokens keep positions 0..n-1 and never
attend to padding; only the continuations run on a shared context's cache are given their
positions (after the context's real tokens, its padding masked).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..models.cache import new_dynamic_cache
from ..models.tokens import context_ids, encode_pairs, pad_id, right_pad

DEFAULT_BATCH_SIZE = 32


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the duration; the caller's training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


# -- the batched core ---------------------------------------------------------------


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced score of one target after one context."""

    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    #: the model's top-1 token at each target position, given the true prefix
    argmax_ids: tuple[int, ...]

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.logprob / len(self.token_logprobs)

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def hits(self) -> tuple[bool, ...]:
        return tuple(a == t for a, t in zip(self.argmax_ids, self.token_ids, strict=True))

    @property
    def accuracy(self) -> float:
        """Teacher-forced token accuracy (the zsRE metric)."""
        return sum(self.hits) / len(self.hits)

    @property
    def first_token_is_top1(self) -> bool:
        return self.hits[0]


def _plan_forwards(
    inputs: Sequence[tuple[int, ...]], share_prefixes: bool
) -> tuple[list[tuple[int, ...]], list[int]]:
    """Pick forward sequences so each input is a prefix of one; return them and owners.

    A causal model's logits on a prefix do not depend on what follows, so a prompt
    scored against two single-token targets (the usual CounterFact case) costs one
    forward pass, not two. Longest first, so the batches also need little padding.
    """
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), inputs[i]))
    lengths = sorted({len(x) for x in inputs}) if share_prefixes else []
    covered: dict[tuple[int, ...], int] = {}
    seqs: list[tuple[int, ...]] = []
    owner = [0] * len(inputs)
    for i in order:
        key = inputs[i]
        j = covered.get(key)
        if j is None:
            j = len(seqs)
            seqs.append(key)
            covered[key] = j
            for n in lengths:
                if n >= len(key):
                    break
                covered.setdefault(key[:n], j)
        owner[i] = j
    return seqs, owner


def _accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (it varies across versions)."""
    return name in inspect.signature(model.forward).parameters


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def score_spans(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    share_prefixes: bool = True,
) -> list[tuple[list[float], list[int]]]:
    """For each sequence, log-probs and argmax ids of its tokens from `start` on.

    The building block of every metric: one padded forward pass per batch, with the
    unembedding and log-softmax only on the positions actually scored (where the model
    supports `logits_to_keep`): the vocabulary is large and most positions are prompt.
    With `share_prefixes`, a context that several multi-token continuations follow (a
    prompt scored against its new and its true answer) is run once and its key/value
    cache serves every continuation (`_shared_contexts`).
    """
    if len(sequences) != len(starts):
        raise ValueError("one start per sequence")
    for seq, s in zip(sequences, starts, strict=True):
        if not 1 <= s < len(seq):
            raise ValueError(f"start {s} out of range for a sequence of {len(seq)} tokens")
    inputs = [tuple(int(t) for t in seq[:-1]) for seq in sequences]
    seqs, owner = _plan_forwards(inputs, share_prefixes)
    by_seq: dict[int, list[int]] = {}
    for qi, j in enumerate(owner):
        by_seq.setdefault(j, []).append(qi)
    # the forward rows: (tokens, the forward sequences they serve); a shared context is one row
    # for all its sequences, whose tails then run on its cache
    cut = {j: min(starts[qi] for qi in by_seq[j]) for j in range(len(seqs))}
    contexts = _shared_contexts(seqs, cut) if share_prefixes and _reorders_cache(model) else set()
    rows: list[tuple[tuple[int, ...], list[int]]] = []
    seen: dict[tuple[int, ...], int] = {}
    for j, sq in enumerate(seqs):
        key = sq[: cut[j]] if j in contexts else sq
        if key not in seen:
            seen[key] = len(rows)
            rows.append((key, []))
        rows[seen[key]][1].append(j)
    rows.sort(key=lambda row: -len(row[0]))  # longest first: little padding in a batch
    # per sequence, its scored columns' (log-prob of the next token, argmax), filled as rows run
    scored: list[dict[int, tuple[float, int]]] = [{} for _ in sequences]

    def take(js: Sequence[int], cs: Sequence[int], block: torch.Tensor) -> None:
        """Score the sequences of forward rows `js` at their columns `cs`, whose logits are `block`."""
        lp = block.float().log_softmax(-1)
        best = lp.argmax(-1).tolist()
        where = {c: k for k, c in enumerate(cs)}
        for qi in (qi for j in js for qi in by_seq[j]):
            seq = sequences[qi]
            mine = [c for c in cs if starts[qi] - 1 <= c < len(seq) - 1]
            if mine:
                at = torch.tensor([where[c] for c in mine], device=lp.device)
                got = lp[at, torch.tensor([seq[c + 1] for c in mine], device=lp.device)].tolist()
                for c, v in zip(mine, got, strict=True):
                    scored[qi][c] = (v, best[where[c]])

    wanted_of = {j: {c for qi in by_seq[j] for c in range(starts[qi] - 1, len(sequences[qi]) - 1)}
                 for j in range(len(seqs))}
    device = _model_device(model)
    keep = _accepts(model, "logits_to_keep")
    with evaluating(model):
        for batch in _batches(rows, batch_size, lambda row: sum(j in contexts for j in row[1])):
            tails = [(r, j) for r, (_, js) in enumerate(batch) for j in js if j in contexts]
            ids, mask = right_pad([t for t, _ in batch], pad)
            want = [{c for j in js for c in wanted_of[j] if c < len(t)} for t, js in batch]
            cols = sorted(set().union(*want))
            extra = {}
            if keep and len(cols) < ids.shape[1]:
                extra["logits_to_keep"] = torch.tensor(cols, dtype=torch.long, device=device)
                column = {c: k for k, c in enumerate(cols)}
            else:
                column = {c: c for c in range(ids.shape[1])}
            if tails:  # a cache of ours: the one a forward makes may come back as a legacy tuple
                extra[_cache_kwarg(model)] = cache = new_dynamic_cache(model.config)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=bool(tails), **extra)
            for r, (_, js) in enumerate(batch):
                cs = sorted(want[r])
                take(js, cs, out.logits[r, [column[c] for c in cs]])
            if tails:
                _score_tails(model, cache, mask, tails, seqs, cut, take, pad, device)
    results: list[tuple[list[float], list[int]]] = []
    for qi, seq in enumerate(sequences):
        got = [scored[qi][c] for c in range(starts[qi] - 1, len(seq) - 1)]
        results.append(([lp for lp, _ in got], [am for _, am in got]))
    return results


def _batches(rows: list, size: int, tails_of) -> Iterator[list]:
    """Consecutive rows, at most `size` of them and (beyond a batch's first row) at most
    2 · `size` continuations to run on their cache (a prompt's new and true answers): bounds
    the continuations' logits in memory."""
    batch: list = []
    tails = 0
    for row in rows:
        n = tails_of(row)
        if batch and (len(batch) == size or tails + n > 2 * size):
            yield batch
            batch, tails = [], 0
        batch.append(row)
        tails += n
    if batch:
        yield batch


def _shared_contexts(seqs: Sequence[tuple[int, ...]], cut: dict[int, int]) -> set[int]:
    """The forward sequences whose context (their tokens before the first scored one) another
    one with a continuation shares: those run as the context once plus their own tail."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, sq in enumerate(seqs):
        if len(sq) > cut[j]:
            groups.setdefault(sq[: cut[j]], []).append(j)
    return {j for js in groups.values() if len(js) > 1 for j in js}


def _reorders_cache(model: torch.nn.Module) -> bool:
    """Whether continuations can run on a shared context's cache: the forward takes position
    ids and a cache of ours, and that cache's batch can be re-indexed (`reorder_cache`)."""
    cache = new_dynamic_cache(getattr(model, "config", None))
    return hasattr(cache, "reorder_cache") and _accepts(model, "position_ids")


def _score_tails(model, cache, mask, tails, seqs, cut, take, pad, device) -> None:
    """Run each shared context's continuations on its cache: the cache's rows repeated per
    continuation, the context's padding masked, positions counted from the context's length."""
    ctx_rows = torch.tensor([r for r, _ in tails], dtype=torch.long)
    cache.reorder_cache(ctx_rows.to(device))
    tail_ids, tail_mask = right_pad([seqs[j][cut[j] :] for _, j in tails], pad)
    lengths = mask.sum(1)[ctx_rows]
    position = lengths[:, None] + torch.arange(tail_ids.shape[1])[None, :]
    full_mask = torch.cat([mask[ctx_rows], tail_mask], dim=1)
    out = model(input_ids=tail_ids.to(device), attention_mask=full_mask.to(device),
                position_ids=position.to(device), use_cache=True, **{_cache_kwarg(model): cache})
    for k, (_, j) in enumerate(tails):
        take([j], list(range(cut[j], len(seqs[j]))), out.logits[k, : len(seqs[j]) - cut[j]])


# -- public scoring API -------------------------------------------------------------


def target_scores(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[TargetScore]:
    """Per-token teacher-forced scores of `" " + target` after each prompt."""
    pairs = encode_pairs(tokenizer, prompts, targets)
    seqs = [ctx + tgt for ctx, tgt in pairs]
    starts = [len(ctx) for ctx, _ in pairs]
    raw = score_spans(model, seqs, starts, pad_id(tokenizer), batch_size)
    return [
        TargetScore(tuple(tgt), tuple(lp), tuple(am))
        for (_, tgt), (lp, am) in zip(pairs, raw, strict=True)
    ]


def target_logprobs(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[float]:
    """Sum of token log-probs of `" " + target` after each prompt."""
    return [s.logprob for s in target_scores(model, tokenizer, prompts, targets, batch_size)]


def _last_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long, device=_model_device(model))
    return model(input_ids=x, use_cache=False).logits[0, -1].float()


def next_token_topk(
    model: torch.nn.Module, tokenizer, prompt: str, k: int = 5
) -> list[tuple[str, float]]:
    """The k most likely next tokens as (decoded text, probability), best first."""
    ids = context_ids(tokenizer, prompt)
    with evaluating(model):
        probs = _last_logits(model, ids).softmax(-1)
    top = probs.topk(min(k, probs.numel()))
    return [
        (tokenizer.decode([int(i)]), float(p))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """The ids `generate()` stops on: the generation config's, else the tokenizer's."""
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers >= 5.2x names the KV cache `cache`; older versions `past_key_values`."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _cache_of(out) -> object:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def greedy_token_ids(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 12,
    stop_at_eos: bool = True,
    use_cache: bool = True,
) -> list[int]:
    """Greedy (argmax) continuation ids; stops after `max_new_tokens` or before an EOS.

    Own loop rather than `generate()` so the result does not depend on a model's
    generation config (sampling flags, penalties); with defaults it matches greedy
    `generate()` token for token.
    """
    ids = context_ids(tokenizer, prompt)
    stop = _eos_ids(model, tokenizer) if stop_at_eos else set()
    device = _model_device(model)
    new: list[int] = []
    with evaluating(model):
        if use_cache:
            key = _cache_kwarg(model)
            x = torch.tensor([ids], dtype=torch.long, device=device)
            out = model(input_ids=x, use_cache=True)
            for step in range(max_new_tokens):
                nxt = int(out.logits[0, -1].argmax())
                if nxt in stop:
                    break
                new.append(nxt)
                if step + 1 < max_new_tokens:
                    x = torch.tensor([[nxt]], dtype=torch.long, device=device)
                    out = model(input_ids=x, use_cache=True, **{key: _cache_of(out)})
        else:
            for _ in range(max_new_tokens):
                nxt = int(_last_logits(model, ids + new).argmax())
                if nxt in stop:
                    break
                new.append(nxt)
    return new


def greedy_continuation(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 12,
    stop_at_eos: bool = True,
) -> str:
    """Deterministic greedy continuation text (without the prompt)."""
    new = greedy_token_ids(model, tokenizer, prompt, max_new_tokens, stop_at_eos)
    return tokenizer.decode(new, skip_special_tokens=True)
