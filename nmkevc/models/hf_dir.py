"""Writing a standard Hugging Face model directory that mirrors a base's files.

The output has the base's safetensors files (same names, same tensors per file, index
copied) and its config and tokenizer files, so `from_pretrained` loads it like the base.
Tensors are produced one at a time and streamed; every file is fsynced. The caller
writes into a staging directory and renames it into place (the repository's
`staging_dir`), so the result appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import NmkevcError
from ..tensorio import Part, TensorSpec, overwrite_tensors, write_streaming
from .weights import AUX_FILES, BaseWeights

#: The file beside the weights that says where they came from.
PROVENANCE_FILE = "nmkevc.json"


def check_export_target(out: Path) -> None:
    """Refuse, before any model is loaded, a target that cannot be written: one that
    exists and is not an empty directory, lies under a regular file, or whose nearest
    existing ancestor is not writable."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or any(out.iterdir()):
            raise NmkevcError(f"export target {out} exists and is not an empty directory")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise NmkevcError(f"cannot export to {out}: {ancestor} is a broken link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NmkevcError(f"cannot export to {out}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise NmkevcError(f"cannot export to {out}: {ancestor} is not writable")


def write_model_files(
    weights: BaseWeights,
    directory: Path,
    produce: Callable[[TensorSpec], Part],
    provenance: dict,
    progress: Callable[[int, int], None] | None = None,
    late: Callable[[], dict[str, Part]] | None = None,
) -> int:
    """Write every tensor of `weights` as `produce` gives it (its bytes, or the range of a file
    to copy them from), the base's config, tokenizer and index files, and the provenance into
    `directory`, each file fsynced; returns the bytes of weights written.

    `late` gives {tensor name: bytes} of tensors computed meanwhile (an export's edited weights,
    on another thread): they are written over their places once everything else is on disk, and
    their files fsynced again, so copying and flushing the rest overlaps the computation."""
    directory = Path(directory)
    model_dir = weights.model_dir
    total = len(weights.specs())
    done = [0]

    def tick(_spec: TensorSpec) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    written = 0
    for fname, names in sorted(weights.files().items()):
        specs = [weights.spec(n) for n in names]
        with open(directory / fname, "wb", buffering=0) as fh:
            write_streaming(fh.fileno(), specs, produce, metadata={"format": "pt"}, on_tensor=tick)
            os.fsync(fh.fileno())
        written += (directory / fname).stat().st_size
    copies = [model_dir / name for name in AUX_FILES if (model_dir / name).is_file()]
    copies += sorted(model_dir.glob("*.safetensors.index.json"))
    for src in copies:
        with open(src, "rb") as fin, open(directory / src.name, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
    with open(directory / PROVENANCE_FILE, "wb") as fh:
        fh.write((json.dumps(provenance, indent=2) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
    if late is not None:
        parts = late()
        for fname, names in sorted(weights.files().items()):
            mine = {n: parts[n] for n in names if n in parts}
            if mine:
                with open(directory / fname, "r+b", buffering=0) as fh:
                    overwrite_tensors(fh, mine)
                    os.fsync(fh.fileno())
    return written


CARD_FILE = "README.md"


def write_card(directory: Path, text: str) -> None:
    """The model card (README.md, the file every hub user reads first), fsynced like the rest."""
    with open(Path(directory) / CARD_FILE, "wb") as fh:
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())
