"""A PEFT LoRA adapter on the MLP output projections: its config and tensor names.

PEFT keeps, for a target module with weight W (out × in), `lora_A` (r × in) and
`lora_B` (out × r) with W' = W + (alpha / r) B A. For `W_l` the inputs are the
neurons (d_ff) and the outputs the residual stream (d_model), whatever the storage
orientation: a Conv1D stores W transposed, which PEFT handles with `fan_in_fan_out`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..deltas.lowrank import LowRank
from ..tensorio import dumps
from .adapters import ArchAdapter
from .hf_dir import PROVENANCE_FILE

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def lora_tensors(adapter: ArchAdapter, factors: dict[int, LowRank]) -> tuple[dict[str, torch.Tensor], int]:
    """({tensor name: tensor}, rank): every layer padded with zeros to one rank (exact),
    because multi-LoRA servers take one rank per adapter."""
    rank = max(f.rank for f in factors.values())
    out: dict[str, torch.Tensor] = {}
    for layer, f in sorted(factors.items()):
        a = torch.zeros(rank, f.A.shape[1], dtype=torch.float32)
        b = torch.zeros(f.B.shape[0], rank, dtype=torch.float32)
        a[: f.rank] = f.A
        b[:, : f.rank] = f.B
        name = PREFIX + adapter.mlp_out_path(layer)
        out[f"{name}.lora_A.weight"] = a.contiguous()
        out[f"{name}.lora_B.weight"] = b.contiguous()
    return out, rank


def lora_config(adapter: ArchAdapter, layers: list[int], rank: int, base_name: str) -> dict:
    """adapter_config.json: scaling alpha / r = 1, so the adapter adds exactly B A."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": [adapter.mlp_out],
        "layers_to_transform": sorted(layers),
        "layers_pattern": adapter.layers_pattern,
        "fan_in_fan_out": adapter.fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_adapter_files(directory: Path, tensors: dict[str, torch.Tensor], config: dict, provenance: dict) -> int:
    """Write a PEFT adapter's files into `directory` (a staging directory the repository
    renames into place), each fsynced. Returns the weights' bytes."""
    directory = Path(directory)
    payload = dumps(tensors, {"format": "pt"})
    files = {WEIGHTS_FILE: payload, CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
             PROVENANCE_FILE: (json.dumps(provenance, indent=2) + "\n").encode("utf-8")}
    for name, data in files.items():
        with open(directory / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return len(payload)
