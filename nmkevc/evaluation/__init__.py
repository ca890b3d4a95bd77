"""Evaluation layer: does an edit hold, generalise, stay local, and leave the model fluent?

Everything is built on `scoring`, which scores continuations in padded batches; the
metrics follow the CounterFact and zsRE protocols of ROME / MEMIT / AlphaEdit.
"""

from __future__ import annotations

from .fluency import generation_entropy, ngram_entropy, text_ngram_entropy
from .metrics import (
    EvalCase,
    EvalReport,
    PromptResult,
    RequestResult,
    ZsreProbe,
    ZsreReport,
    ZsreResult,
    evaluate_requests,
    zsre_accuracy,
    zsre_locality_reference,
)
from .perplexity import perplexity
from .scoring import (
    TargetScore,
    greedy_continuation,
    greedy_token_ids,
    next_token_topk,
    target_logprobs,
    target_scores,
)

__all__ = [
    "EvalCase",
    "EvalReport",
    "PromptResult",
    "RequestResult",
    "TargetScore",
    "ZsreProbe",
    "ZsreReport",
    "ZsreResult",
    "evaluate_requests",
    "generation_entropy",
    "greedy_continuation",
    "greedy_token_ids",
    "next_token_topk",
    "ngram_entropy",
    "perplexity",
    "target_logprobs",
    "target_scores",
    "text_ngram_entropy",
    "zsre_accuracy",
    "zsre_locality_reference",
]
