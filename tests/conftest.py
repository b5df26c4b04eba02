"""Shared fixtures: a tiny Gemma-3-shaped model with a character-level tokenizer, built here.

Character-level tokenization makes expected token ids computable by hand in the tests, and the
model (two layers, hidden size 32) trains a few steps in about a second on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|im_start|>",
    "<|im_end|>",
]
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "你", "是", "谁"]
VOCAB = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}


def char_ids(text: str) -> list[int]:
    """What the tiny tokenizer must produce for plain text: one id per character."""
    return [VOCAB[c] for c in text]


def build_tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    return fast


def build_tiny_decoder(kind: str, vocab_size: int, **overrides):
    """A tiny Llama or Qwen2 causal LM with random weights (seed 0); `overrides` change its
    config (e.g. more heads for grouped-query attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return model_class(config_class(**{**shape, **overrides}))


def build_tiny_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        # Large enough that LoRA, which cannot touch the tied embeddings, can move the logits.
        initializer_range=0.3,
    )
    return Gemma3ForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local Hugging Face folder (config, safetensors, tokenizer), as a user would have."""
    path = tmp_path_factory.mktemp("tiny-gemma")
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


def write_alpaca_dataset(folder: Path, records: list[dict], name: str = "toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False))
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info[name] = {"file_name": f"{name}.json"}
    info_path.write_text(json.dumps(info))
    return folder


TOY_RECORDS = [
    {"instruction": "Who are you?", "input": "", "output": "I am Forge."},
    {"instruction": "Name?", "input": "", "output": "Forge."},
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Say hi", "input": "", "output": "hi"},
] * 4


@pytest.fixture(autouse=True)
def _private_lmforge_home(request, tmp_path_factory, monkeypatch):
    """Unit tests keep their dataset caches out of the user's ~/.cache/lmforge; e2e tests use
    the real home, where the converted embedded model is reused."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("LMFORGE_HOME", str(tmp_path_factory.getbasetemp() / "lmforge-home"))
