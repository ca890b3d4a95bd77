"""The one table of architecture specifics.

Everything the editor and the repository must know about a model family lives here:
where the decoder layers are, which module is the MLP output projection `W_l` (whose
input is the neuron coefficient vector, the "key"), how that weight is oriented, the
final norm and the unembedding. No other module may test architecture names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import EditRequestError, UnsupportedModelError

if TYPE_CHECKING:  # annotations only: the table itself is read without loading torch
    import torch
    from torch import nn

#: `W_l` stored as (d_model, d_ff): nn.Linear(d_ff -> d_model).
OUT_IN = "out_in"
#: `W_l` stored as (d_ff, d_model): GPT-2's Conv1D.
IN_OUT = "in_out"


@dataclass(frozen=True)
class ArchAdapter:
    name: str
    model_types: tuple[str, ...]
    layers: str  # dotted path of the ModuleList of decoder layers
    mlp_out: str  # path of W_l's module relative to one decoder layer
    orientation: str  # OUT_IN or IN_OUT
    final_norm: str  # dotted path of the final norm
    norm_kind: str  # "rms" or "layer"
    #: default edited layers: start at this fraction of depth, this many layers
    default_start_frac: float
    default_count: int
    #: config.json key holding the number of decoder layers
    layer_count_key: str = "num_hidden_layers"
    #: config.json key holding the context length in tokens
    context_key: str = "max_position_embeddings"
    #: prefix that old checkpoints of the family leave off their tensor names (GPT-2's files)
    checkpoint_prefix: str = ""

    # -- module access -------------------------------------------------------------
    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return get_submodule(model, self.layers)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.layer_modules(model))

    def layer(self, model: nn.Module, i: int) -> nn.Module:
        return self.layer_modules(model)[i]

    def mlp_out_module(self, model: nn.Module, i: int) -> nn.Module:
        return get_submodule(self.layer(model, i), self.mlp_out)

    def weight_name(self, i: int) -> str:
        """State-dict name of `W_l` for layer i (as the loaded model names it)."""
        return f"{self.mlp_out_path(i)}.weight"

    def mlp_out_path(self, i: int) -> str:
        """Module path of `W_l` for layer i (what a LoRA adapter targets)."""
        return f"{self.layers}.{i}.{self.mlp_out}"

    @property
    def layers_pattern(self) -> str:
        """The name of the decoder-layer list inside its path (PEFT's `layers_pattern`)."""
        return self.layers.rsplit(".", 1)[-1]

    @property
    def fan_in_fan_out(self) -> bool:
        """True when `W_l` is stored (in, out), as GPT-2's Conv1D is (PEFT's flag of that name)."""
        return self.orientation == IN_OUT

    def weight(self, model: nn.Module, i: int) -> torch.Tensor:
        return self.mlp_out_module(model, i).weight

    def dims(self, model: nn.Module, i: int = 0) -> tuple[int, int]:
        """(d_model, d_ff) of layer i's `W_l`."""
        w = self.weight(model, i)
        if self.orientation == OUT_IN:
            return int(w.shape[0]), int(w.shape[1])
        return int(w.shape[1]), int(w.shape[0])

    def final_norm_module(self, model: nn.Module) -> nn.Module:
        return get_submodule(model, self.final_norm)

    def final_norm_params(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(weight, bias or None, eps) of the final norm, for applying it linearly."""
        norm = self.final_norm_module(model)
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None:
            eps = getattr(norm, "eps", 1e-5)
        return norm.weight, getattr(norm, "bias", None), float(eps)

    def lm_head_module(self, model: nn.Module) -> nn.Module:
        """The unembedding `U` (transformers knows it for every family)."""
        head = model.get_output_embeddings()
        if head is None:
            raise UnsupportedModelError(f"{type(model).__name__} has no output embedding (lm head)")
        return head

    def layer_count(self, config: dict) -> int:
        """Decoder layers of a model, from its config.json (no model needs loading)."""
        try:
            return int(config[self.layer_count_key])
        except (KeyError, TypeError, ValueError):
            raise UnsupportedModelError(f"config.json has no layer count ({self.layer_count_key})") from None

    def context_length(self, config: dict) -> int | None:
        """Tokens the model attends over, from its config.json (None if it does not say)."""
        v = config.get(self.context_key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    def checkpoint_names(self, name: str) -> tuple[str, ...]:
        """The names a parameter may bear in a checkpoint file: its own, then the short form."""
        p = self.checkpoint_prefix
        return (name, name[len(p):]) if p and name.startswith(p) else (name,)

    def default_layers(self, n_layers: int) -> list[int]:
        count = min(self.default_count, n_layers)
        start = min(int(n_layers * self.default_start_frac), n_layers - count)
        return list(range(start, start + count))

    def edit_layers(self, requested: list[int] | None, n_layers: int) -> list[int]:
        """The layers an edit writes: the requested ones, checked against the depth, or the default."""
        if requested is None:
            return self.default_layers(n_layers)
        bad = [x for x in requested if not 0 <= x < n_layers]
        if bad:
            raise EditRequestError(f"layer {bad[0]} does not exist (the model has {n_layers} layers)")
        return list(requested)

    # -- orientation-aware algebra -------------------------------------------------
    def to_out_in(self, w: torch.Tensor) -> torch.Tensor:
        """View `W_l` as (d_model, d_ff) whatever its storage orientation."""
        return w if self.orientation == OUT_IN else w.T


ADAPTERS: tuple[ArchAdapter, ...] = (
    ArchAdapter(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
        layers="model.layers",
        mlp_out="mlp.down_proj",
        orientation=OUT_IN,
        final_norm="model.norm",
        norm_kind="rms",
        default_start_frac=0.12,
        default_count=5,
    ),
    ArchAdapter(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        mlp_out="mlp.c_proj",
        orientation=IN_OUT,
        final_norm="transformer.ln_f",
        norm_kind="layer",
        default_start_frac=0.27,
        default_count=5,
        layer_count_key="n_layer",
        context_key="n_positions",
        checkpoint_prefix="transformer.",
    ),
    ArchAdapter(
        name="gptj",
        model_types=("gptj",),
        layers="transformer.h",
        mlp_out="mlp.fc_out",
        orientation=OUT_IN,
        final_norm="transformer.ln_f",
        norm_kind="layer",
        default_start_frac=0.11,
        default_count=6,
        layer_count_key="n_layer",
        context_key="n_positions",
    ),
    ArchAdapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers="gpt_neox.layers",
        mlp_out="mlp.dense_4h_to_h",
        orientation=OUT_IN,
        final_norm="gpt_neox.final_layer_norm",
        norm_kind="layer",
        default_start_frac=0.12,
        default_count=5,
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for_model_type(model_type: str | None) -> ArchAdapter:
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise UnsupportedModelError(
        f"model type {model_type!r} is not supported; nmkevc needs a decoder-only model with a "
        f"known MLP output projection (supported: {', '.join(supported_model_types())})"
    )


def adapter_for(model_or_config) -> ArchAdapter:
    """Adapter for a loaded model, a config object, or a config.json dict."""
    cfg = getattr(model_or_config, "config", model_or_config)
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else getattr(cfg, "model_type", None)
    return adapter_for_model_type(model_type)


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UnsupportedModelError(
            f"model has no module {path!r}; its layout does not match the {type(root).__name__} adapter"
        ) from None
