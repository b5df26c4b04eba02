"""Helpers for the tutorial tests: a LLaMA-Factory folder to run them in, tiny Qwen models.

tests/compat holds what LLaMA-Factory users bring, as their tutorials write it (README.md there
says where each file's shape comes from): `data/` (dataset_info.json and the demo-shaped
datasets), `examples/` (YAML files, laid out as in a LLaMA-Factory checkout) and `llamaboard/`
(commands as LLaMA Board's preview prints them). Each test copies them into a fresh folder,
`cd`s there as the tutorials do, and runs the tutorial's command unchanged with `lmforge`
in place of `llamafactory-cli`, plus only `max_steps=2` (or `--max_steps 2`).

The tutorials' model paths are replaced by tiny models built here (Qwen3- and Qwen2-shaped, two
layers, hidden size 32) at `models/tiny-qwen3` and `models/tiny-qwen2.5` in that folder. Their
tokenizer has one token per character of the data (and the prompts below), and the Qwen special
tokens, so every text in the tutorials' data is spelled without unknown tokens.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

COMPAT = Path(__file__).resolve().parent
PROMPTS = {
    "medical": "一位60岁女性，反复咳嗽咳痰十年，近一周加重，伴气短。最可能的诊断是什么？",
}
"""Prompts the tests send at inference, so that their characters are in the vocabulary too."""

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN3_ADDED = ["<think>", "</think>"]  # added tokens, not special: decoded as text, as in Qwen3


def _texts(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _texts(item)


def compat_characters() -> list[str]:
    """Every character of the tutorial data and the prompts, and printable ASCII."""
    chars = {chr(c) for c in range(32, 127)} | {"\n"}
    for path in sorted((COMPAT / "data").glob("*.json")):
        for text in _texts(json.loads(path.read_text(encoding="utf-8"))):
            chars.update(text)
    for prompt in PROMPTS.values():
        chars.update(prompt)
    return sorted(chars)


def build_tiny_qwen(folder: Path, kind: str) -> Path:
    """A tiny Qwen3 (`kind` qwen3) or Qwen2 (qwen2, the Qwen2.5 architecture) causal LM with a
    character-level tokenizer, saved as a local Hugging Face folder."""
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    added = QWEN3_ADDED if kind == "qwen3" else []
    vocab_list = ["<unk>", *QWEN_SPECIALS, *added, *compat_characters()]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    model.decoder = decoders.Fuse()
    model.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=QWEN_SPECIALS,
    )
    config_class, model_class = {
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    config = config_class(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        initializer_range=0.3,
    )
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen_models(tmp_path_factory) -> Path:
    """A folder with `tiny-qwen3` and `tiny-qwen2.5` in it."""
    folder = tmp_path_factory.mktemp("tiny-qwen")
    build_tiny_qwen(folder / "tiny-qwen3", "qwen3")
    build_tiny_qwen(folder / "tiny-qwen2.5", "qwen2")
    return folder


@pytest.fixture
def llamafactory_dir(tmp_path, tiny_qwen_models, monkeypatch) -> Path:
    """A folder laid out like a LLaMA-Factory checkout (data/, examples/, llamaboard/, and the
    tiny models in models/), made the working directory, as the tutorials run from it."""
    folder = tmp_path / "LLaMA-Factory"
    for name in ("data", "examples", "llamaboard"):
        shutil.copytree(COMPAT / name, folder / name)
    (folder / "models").mkdir()
    for model in tiny_qwen_models.iterdir():
        (folder / "models" / model.name).symlink_to(model, target_is_directory=True)
    monkeypatch.chdir(folder)
    for name in ("FORCE_TORCHRUN", "LOCAL_RANK", "WORLD_SIZE", "LMFORGE_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SWANLAB_API_KEY", "SWANLAB_MODE", "SWANLAB_LOG_DIR", "SWANLAB_LOGDIR"):
        monkeypatch.delenv(name, raising=False)
    return folder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny models' matrices are too small to split across threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shell_command(path: Path) -> list[str]:
    """The words of the one command in a shell file (comments skipped, `\\` lines joined)."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    return shlex.split("\n".join(lines).replace("\\\n", " "))  # a shell's line continuation


def lmforge_argv(path: Path, *extra: str) -> list[str]:
    """A `llamafactory-cli COMMAND --flag value ...` file as `lmforge`'s argv (without the
    program name), with `extra` words appended."""
    words = shell_command(path)
    assert words[0] == "llamafactory-cli", words[:2]
    return [*words[1:], *extra]


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(f"--{flag}") + 1]


def step_losses(output_dir: Path) -> dict[int, float]:
    """{step: loss} of every logged step in output_dir/trainer_log.jsonl."""
    lines = (output_dir / "trainer_log.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    return {entry["current_steps"]: entry["loss"] for entry in entries if "loss" in entry}


def not_used_lines(err: str) -> dict[str, str]:
    """The plan's "key: not used here, because REASON" lines: {key: REASON}."""
    found = {}
    for line in err.splitlines():
        key, sep, reason = line.strip().partition(": not used here, because ")
        if sep:
            found[key.strip("`")] = reason
    return found
