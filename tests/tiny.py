"""Tiny randomly initialised models (and a tiny tokenizer) built in the tests.

Each is saved as a standard Hugging Face directory, exactly what a user would point
`nmkevc init --base` at, so the tests exercise the real loading path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

TRAIN_TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The capital of Spain is Madrid. The capital of Germany is Berlin.",
    "The mother tongue of Danielle Darrieux is French. Toko Yasuda plays the guitar.",
    "Therefore the answer is yes. Because it rained, I stayed home. You are kind.",
    "The official language of Brazil is Portuguese. The currency of Japan is the yen.",
    "Paris London Rome Berlin Madrid Lisbon Vienna Prague Warsaw Athens Oslo Tokyo",
]

ARCHS = ("llama", "gpt2", "gptj", "gpt_neox")


def make_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def make_config(arch: str, vocab_size: int, n_layers: int = 4, d_model: int = 32, d_ff: int = 96):
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff,
            num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, tie_word_embeddings=True,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=d_model, n_inner=d_ff, n_layer=n_layers, n_head=4,
            n_positions=128,
        )
    if arch == "gptj":
        return GPTJConfig(
            vocab_size=vocab_size, n_embd=d_model, n_inner=d_ff, n_layer=n_layers, n_head=4,
            rotary_dim=4, n_positions=128, tie_word_embeddings=False,
        )
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_ff,
            num_hidden_layers=n_layers, num_attention_heads=4, max_position_embeddings=128,
            rotary_pct=0.5, tie_word_embeddings=False,
        )
    raise ValueError(arch)


def make_model_dir(path: Path, arch: str = "llama", seed: int = 0, **kw) -> Path:
    """Build, randomly initialise and save a tiny model with its tokenizer under `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = make_config(arch, vocab_size=len(tok), **kw)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def digest(model) -> str:
    """sha256 of every tensor's bytes, by name: equal digests mean bit-identical weights."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
