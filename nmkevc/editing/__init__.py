"""The editing engine: NMKE (and AlphaEdit / MEMIT in the same code path).

`compute_edit` is the one entry point; the statistics helpers compute what the
repository caches per base model (Σ_l and the null-space projectors P_l), and
`generate_context_templates` the stored context templates. The method registry
(`methods`) imports no torch, so the CLI can list choices without loading it; the
names below are therefore resolved lazily.
"""

from importlib import import_module

_EXPORTS = {
    "generate_context_templates": ".context",
    "key_second_moment": ".covariance",
    "nullspace_projector": ".covariance",
    "EditResult": ".engine",
    "LayerUpdate": ".engine",
    "compute_edit": ".engine",
    "EditHparams": ".hparams",
    "NullspaceRule": ".nullspace",
    "entropy_ratios": ".masking",
    "neuron_mask": ".masking",
    "EditMethod": ".methods",
    "get_method": ".methods",
    "method_names": ".methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(name)
    return getattr(import_module(_EXPORTS[name], __name__), name)
