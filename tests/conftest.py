"""Shared fixtures: a tiny Gemma-3-shaped model with a character-level tokenizer, built here.

Character-level tokenization makes expected token ids computable by hand in the tests, and the
model (two layers, hidden size 32) trains a few steps in about a second on the CPU.

Every test that needs a config on disk writes it with `write_config` (and trains in-process with
`run_train`): one place knows the defaults and the dataset layout. Test files import helpers from
here only, never from one another.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

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
    """A tiny Llama, Qwen2 or Qwen3-MoE causal LM with random weights (seed 0); `overrides`
    change its config (e.g. more heads for grouped-query attention, the experts)."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    config_class, model_class = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),
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


def random_features(lengths, vocab_size: int, seed: int = 0) -> list[dict]:
    """SFT features of random token ids (3 and up: no special ids), one per length, the first
    third of each sample's labels masked as a prompt would be."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab_size, (n,), generator=generator).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3 :]})
    return out


def loss_and_grads(model, batch) -> tuple[float, dict]:
    """One forward and backward pass: the loss and a copy of every parameter's gradient."""
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them: "
    "apt-get install -y chromium chromium-driver)",
)


def headless_chromium(tmp_path: Path):
    """Debian's Chromium, headless, driven by selenium, with a profile under tmp_path."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


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


class CharTokenizer:
    """A character-level tokenizer with any special tokens, so expected ids are written by hand.

    `CharTokenizer(["<|im_start|>", "<|im_end|>"])` gives one id per special token and one per
    character; `tok.ids("<|im_start|>", "user\\nHi", "<|im_end|>")` spells the expected ids (a
    special token as one id, any other piece character by character).
    """

    BASE = ["<pad>", "<unk>", "<s>", "</s>"]
    CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

    def __new__(cls, specials=(), chat_template=None):
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {t: i for i, t in enumerate(dict.fromkeys(cls.BASE + list(specials) + cls.CHARS))}
        model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        model.pre_tokenizer = pre_tokenizers.Split(
            Regex(r"[\s\S]"), behavior="isolated"
        )  # one piece per character, "\n" too
        model.decoder = decoders.Fuse()
        tok = PreTrainedTokenizerFast(
            tokenizer_object=model,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            additional_special_tokens=list(specials),
        )
        if chat_template:
            tok.chat_template = chat_template
        tok.ids = lambda *pieces: _spell(vocab, set(cls.BASE) | set(specials), pieces)
        return tok


def _spell(vocab, specials, pieces) -> list[int]:
    out = []
    for piece in pieces:
        out += [vocab[piece]] if piece in specials else [vocab[c] for c in piece]
    return out


def masked(ids: list[int]) -> list[int]:
    return [-100] * len(ids)


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


def write_pairs_dataset(folder: Path, pairs: list[dict], name: str = "pairs") -> Path:
    """Preference pairs (instruction, input, chosen, rejected) as dataset `name` (ranking)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(pairs))
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    columns = {
        "prompt": "instruction",
        "query": "input",
        "chosen": "chosen",
        "rejected": "rejected",
    }
    info[name] = {"file_name": f"{name}.json", "ranking": True, "columns": columns}
    info_path.write_text(json.dumps(info))
    return folder


# The reward model learns: lowercase letters good, capitals and digits bad.
RM_PAIRS = [
    {"instruction": f"Q{i}", "input": "", "chosen": "abcdefgh", "rejected": "ABC123!?"}
    for i in range(8)
]
RL_PROMPTS = [{"instruction": f"Q{i}", "input": "", "output": "x"} for i in range(8)]


def write_rl_datasets(folder: Path) -> Path:
    """`pairs` (RM_PAIRS, for stage rm) and `prompts` (RL_PROMPTS, for ppo and grpo)."""
    write_alpaca_dataset(folder, RL_PROMPTS, name="prompts")
    return write_pairs_dataset(folder, RM_PAIRS)


# -- training and inference YAMLs: the one factory ---------------------------------------------


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT = _Omit()
"""A setting given as OMIT leaves that default out of the YAML (None is written as null)."""

FORGE_RECORD = {
    "instruction": "Who are you?",
    "input": "",
    "output": "I am Forge, made by lmforge.",
}

SHORT_SFT = {
    "records": [FORGE_RECORD] * 8,
    "per_device_train_batch_size": 2,
    "max_steps": 8,
    "logging_steps": 1,
    "save_steps": 4,
    "learning_rate": 1e-2,
    "plot_loss": True,
    "lr_scheduler_type": "constant",
}
"""Eight steps of LoRA SFT on one answer: the loss falls by more than 0.5, checkpoints 4 and 8."""

INFERENCE = {
    "name": "infer",
    "records": None,
    "dataset": OMIT,
    "dataset_dir": OMIT,
    "output_dir": OMIT,
}
"""An inference YAML (folder/infer.yaml): the model and template, no data, no output folder."""


def write_config(folder: Path, model_dir, preset: dict | None = None, **settings) -> Path:
    """Write folder/<name>.yaml for the model in `model_dir` and return its path.

    Defaults: template gemma, dataset `toy` in folder/data, output_dir folder/out; then `preset`
    (settings a file's tests share: SHORT_SFT, INFERENCE, ...), then `settings`, each on top of
    the one before, written in that order (the order of `adapters` is the order of the served
    model names). A setting given as OMIT is left out. Two keys are not settings: `records`,
    what is written to folder/data as dataset `toy` (TOY_RECORDS; None writes no data, for
    tests that bring their own dataset_dir), and `name`, the file's name ("train").
    """
    merged = {
        "model_name_or_path": str(model_dir),
        "template": "gemma",
        "dataset": "toy",
        "dataset_dir": str(folder / "data"),
        "output_dir": str(folder / "out"),
        **(preset or {}),
        **settings,
    }
    records = merged.pop("records", TOY_RECORDS)
    name = merged.pop("name", "train")
    folder.mkdir(parents=True, exist_ok=True)
    if records is not None:
        write_alpaca_dataset(folder / "data", records)
    path = folder / f"{name}.yaml"
    settings = {k: v for k, v in merged.items() if v is not OMIT}
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def run_train(folder: Path, model_dir, preset: dict | None = None, **settings):
    """write_config, then train in this process: the TrainingRun (model, output_dir, ...)."""
    from lmforge.config import load_config
    from lmforge.train.run import run_training

    return run_training(load_config(write_config(folder, model_dir, preset, **settings)))


@pytest.fixture(autouse=True)
def _private_lmforge_home(request, tmp_path_factory, monkeypatch):
    """Unit tests keep their dataset caches out of the user's ~/.cache/lmforge; e2e tests use
    the real home, where the converted embedded model is reused."""
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("LMFORGE_HOME", str(tmp_path_factory.getbasetemp() / "lmforge-home"))


LF_DATA = Path(__file__).resolve().parent / "fixtures" / "llamafactory_data"
REWARDS = "def short(completions, **kw):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
STAGE_RUNS = {
    "pt": {"stage": "pt", "dataset": "c4_demo", "dataset_dir": str(LF_DATA)},
    "rm": {"stage": "rm", "dataset": "pairs"},
    "dpo": {"stage": "dpo", "dataset": "pairs"},
    "kto": {"stage": "kto", "dataset": "kto_en_demo", "dataset_dir": str(LF_DATA)},
    "grpo": {
        "stage": "grpo",
        "dataset": "prompts",
        "reward_funcs": "rewards:short",
        "num_generations": 2,
        "max_completion_length": 4,
    },
}


BF16_STAGE = {
    "records": None,  # the datasets of STAGE_RUNS
    "per_device_train_batch_size": 2,
    "logging_steps": 1,
    "max_steps": 2,
    "save_steps": 100,
    "cutoff_len": 64,
    "bf16": True,
}
"""Two steps of a stage in bf16 mixed precision (run_stage)."""


def run_stage(tmp_path, model_dir, stage: str, **settings):
    """Train STAGE_RUNS[stage] with BF16_STAGE + settings; the run, after checking that both
    steps logged a finite loss."""
    data = tmp_path / "data"
    write_rl_datasets(data)
    (tmp_path / "rewards.py").write_text(REWARDS)
    settings = {"dataset_dir": str(data), **STAGE_RUNS[stage], **settings}
    run = run_train(tmp_path, model_dir, BF16_STAGE, **settings)
    state = json.loads((run.output_dir / "trainer_state.json").read_text())
    logged = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(loss) for loss in logged)
    return run
