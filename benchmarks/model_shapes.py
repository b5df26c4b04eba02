"""Random-weight models of published shapes, with the embedded model's tokenizer.

A GPU machine without internet cannot download a model; a benchmark does not need trained
weights, only the right layers, widths and heads. `build(name, tokenizer_dir, out_dir)` writes a
bf16 safetensors folder (config, weights, the embedded Gemma tokenizer and its 262k vocabulary)
of one of these shapes, from their published configs:

    python benchmarks/model_shapes.py gemma-3-1b OUT_DIR [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

# Gemma's token ids in the embedded tokenizer: every shape uses that vocabulary.
_GEMMA_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}

SHAPES: dict[str, dict] = {
    # The embedded model itself (its own config.json is the base of the Gemma shapes).
    "gemma-3-270m": {},
    "gemma-3-1b": {  # google/gemma-3-1b-pt text config
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 4
        + ["sliding_attention"] * 2,
    },
    "qwen3-1.7b": {  # Qwen/Qwen3-1.7B
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_theta": 1000000,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
    "llama-3.2-3b": {  # meta-llama/Llama-3.2-3B (3.2B with its own 128k vocabulary)
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    },
}


def shape_config(name: str, tokenizer_dir: Path) -> dict:
    base = json.loads((tokenizer_dir / "config.json").read_text())
    change = SHAPES[name]
    if "model_type" not in change:  # a Gemma 3 shape: the embedded model's config, changed
        return dict(base, **change, dtype="bfloat16")
    return dict(change, vocab_size=base["vocab_size"], dtype="bfloat16", **_GEMMA_IDS)


def build(name: str, tokenizer_dir: Path, out_dir: Path, device: str | None = None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in SHAPES:
        raise SystemExit(f"unknown model shape {name!r}; choose from {', '.join(SHAPES)}")
    folder = out_dir / f"{name}-shape"
    if (folder / "model.safetensors.index.json").exists() or (
        folder / "model.safetensors"
    ).exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(shape_config(name, tokenizer_dir), indent=1))
    config = AutoConfig.from_pretrained(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    for file in (
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
    ):
        if (tokenizer_dir / file).exists():
            shutil.copy(tokenizer_dir / file, folder / file)
    count = sum(p.numel() for p in model.parameters())
    print(f"{name}: {count / 1e9:.2f}B parameters, random bf16 weights -> {folder}", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SHAPES))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="default: the embedded model's folder")
    args = parser.parse_args()
    build(args.name, args.tokenizer or embedded_model_dir(), args.out_dir)


def embedded_model_dir() -> Path:
    from lmforge.model.pull import pull_model

    return pull_model("gemma-3-270m")


if __name__ == "__main__":
    main()
