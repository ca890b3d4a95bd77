"""The editing engine: NMKE (and AlphaEdit / MEMIT in the same code path).

`compute_edit` is the one entry point; the statistics helpers compute what the
repository caches per base model (Σ_l and the null-space projectors P_l), and
`generate_context_templates` the stored context templates.
"""

from .context import generate_context_templates
from .covariance import key_second_moment, nullspace_projector
from .engine import EditResult, LayerUpdate, compute_edit
from .hparams import METHODS, EditHparams
from .masking import entropy_ratios, neuron_mask

__all__ = [
    "METHODS",
    "EditHparams",
    "EditResult",
    "LayerUpdate",
    "compute_edit",
    "entropy_ratios",
    "generate_context_templates",
    "key_second_moment",
    "neuron_mask",
    "nullspace_projector",
]
