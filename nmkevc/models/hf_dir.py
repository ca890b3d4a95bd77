"""Writing a standard Hugging Face model directory that mirrors a base's files.

The output has the base's safetensors files (same names, same tensors per file, index
copied) and its config and tokenizer files, so `from_pretrained` loads it like the base.
Tensors are produced one at a time and streamed, and the directory appears whole or not
at all (written beside the target, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import NmkevcError
from ..storage.fsutil import fsync_dir
from ..tensorio import TensorSpec, write_streaming
from .weights import AUX_FILES, BaseWeights

#: The file beside the weights that says where they came from.
PROVENANCE_FILE = "nmkevc.json"


def check_export_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NmkevcError(f"export target {out} exists and is not an empty directory")


def write_model_dir(
    weights: BaseWeights,
    out: Path,
    produce: Callable[[TensorSpec], torch.Tensor],
    provenance: dict,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write every tensor of `weights` as `produce` gives it; returns the bytes of weights written."""
    out = Path(out)
    check_export_target(out)
    model_dir = weights.model_dir
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export", dir=out.parent))
    total = len(weights.specs())
    done = [0]

    def tick(_spec: TensorSpec) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    written = 0
    try:
        for fname, names in sorted(weights.files().items()):
            specs = [weights.spec(n) for n in names]
            with open(tmp / fname, "wb") as fh:
                write_streaming(fh, specs, produce, metadata={"format": "pt"}, on_tensor=tick)
                fh.flush()
                os.fsync(fh.fileno())
            written += (tmp / fname).stat().st_size
        for name in AUX_FILES:
            src = model_dir / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
        for index in model_dir.glob("*.safetensors.index.json"):
            shutil.copyfile(index, tmp / index.name)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n", "utf-8")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
