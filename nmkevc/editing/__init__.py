"""The editing engine: NMKE (and AlphaEdit / MEMIT in the same code path).

`compute_edit` is the one entry point; the statistics helpers compute what the
repository caches per base model (Σ_l and the null-space projectors P_l), and
`generate_context_templates` the stored context templates. The method registry
(`methods`) imports no torch, so the CLI can list choices without loading it; the
names below are therefore resolved lazily.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "generate_context_templates": ".context",
    "key_second_moment": ".covariance",
    "nullspace_projector": ".covariance",
    "EditResult": ".engine",
    "LayerUpdate": ".engine",
    "compute_edit": ".engine",
    "EditHparams": ".hparams",
    "NullspaceHparams": ".hparams",
    "NmkeHparams": ".methods.nmke",
    "AlphaEditHparams": ".methods.alphaedit",
    "MemitHparams": ".methods.memit",
    "NullspaceRule": ".nullspace",
    "entropy_ratios": ".masking",
    "neuron_mask": ".masking",
    "EditMethod": ".registry",
    "get_method": ".registry",
    "method_names": ".registry",
    "register_method": ".registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
