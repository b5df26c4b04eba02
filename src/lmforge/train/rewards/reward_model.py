"""A trained reward model (the output_dir of an `rm` run) that scores completions.

The folder holds a LoRA adapter (or a whole model for full/freeze tuning), value_head.safetensors,
the tokenizer and run_config.yaml. It is loaded once, frozen, and scores each conversation the
way it was trained: rendered by its own template, the value head read at the last token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from lmforge.config.run_files import run_settings
from lmforge.data.encoding.encode import prompt_and_answer
from lmforge.data.sample import Sample
from lmforge.errors import UserError
from lmforge.train.rewards.functions import RewardBatch
from lmforge.train.trainers.value_head import (
    VALUE_HEAD_FILE,
    ModelWithValueHead,
    ValueHead,
    last_token_scores,
    load_value_head,
)

logger = logging.getLogger(__name__)


def check_reward_model_dir(path: str, where: str | None = None) -> Path:
    """Fail before any model loads when `reward_model` is not an rm run's output_dir."""
    folder = Path(path)
    fix = "train one with stage: rm and set reward_model: to its output_dir"
    if not folder.is_dir():
        raise UserError(f"reward_model {path} does not exist", where=where, fix=fix)
    if not (folder / VALUE_HEAD_FILE).is_file():
        raise UserError(
            f"reward_model {path} has no {VALUE_HEAD_FILE}, so it is not the output of an rm run",
            where=where,
            fix=fix,
        )
    if not ((folder / "adapter_config.json").is_file() or (folder / "config.json").is_file()):
        raise UserError(
            f"reward_model {path} holds neither an adapter nor a model", where=where, fix=fix
        )
    return folder


def _run_settings(folder: Path) -> dict:
    return run_settings(folder) or {}


def _load_body(folder: Path, settings: dict, trust_remote_code: bool, dtype, quantization=None):
    """Base model + the rm run's earlier adapters + its own adapter, merged (unless into a
    quantized base: merging would round them again)."""
    from lmforge.model.load import attach_adapters, load_model, split_paths
    from lmforge.model.rope import rope_scaling_for
    from lmforge.model.source import resolve_model

    if not (folder / "adapter_config.json").is_file():
        return load_model(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, quantization=quantization
        )
    base = settings.get("model_name_or_path")
    if not base:
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base_path = resolve_model(base).path
    rope, _ = rope_scaling_for(  # the RoPE scaling the rm run trained with
        base_path,
        settings.get("rope_scaling"),
        factor=settings.get("rope_factor", 1.0),
        trust_remote_code=trust_remote_code,
    )
    model = load_model(
        base_path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        rope=rope,
        quantization=quantization,
    )
    earlier = split_paths(settings.get("adapter_name_or_path"))
    if earlier and not settings.get("create_new_adapter"):
        earlier = earlier[:-1]  # the rm run trained this one further; the folder holds it
    return attach_adapters(model, [*earlier, str(folder)], merge=quantization is None)


class RewardModelScorer:
    """Scores (conversation, completion) pairs with the reward model; no gradients."""

    def __init__(
        self,
        path: str,
        data_config,
        *,
        dtype: torch.dtype = torch.float32,
        trust_remote_code: bool = False,
        batch: int = 8,
        quantization=None,
    ):
        """quantization: a model.load.Quantization (reward_model_quantization_bit)."""
        from lmforge.data.templates.auto import load_template
        from lmforge.model.load import load_tokenizer
        from lmforge.model.setup import tokenizer_folder

        folder = check_reward_model_dir(path)
        settings = _run_settings(folder)
        # A checkpoint-N folder holds no tokenizer: it is saved once, in the run folder.
        self.tokenizer = load_tokenizer(
            tokenizer_folder(folder), trust_remote_code=trust_remote_code
        )
        name = settings.get("template") or "auto"
        self.template = load_template(name, self.tokenizer, data_config)
        self.cutoff_len = int(settings.get("cutoff_len") or data_config.cutoff_len)
        body = _load_body(folder, settings, trust_remote_code, dtype, quantization)
        head = load_value_head(ValueHead(body.config.get_text_config().hidden_size), folder)
        self.model = ModelWithValueHead(body, head).eval().requires_grad_(False)
        self.batch = batch
        logger.info("Reward model: %s (template %s)", folder, self.template.name)

    def to(self, device) -> RewardModelScorer:
        from lmforge.model.load import is_quantized

        # a quantized body was placed on its device at load: only the value head moves
        module = self.model.value_head if is_quantized(self.model.pretrained_model) else self.model
        module.to(device)
        return self

    def encode(self, conversation: dict, completion: str) -> list[int]:
        sample = Sample(
            list(conversation["messages"]), conversation.get("system"), conversation.get("tools")
        )
        answer = {"role": "assistant", "content": completion}
        prompt, answer_ids = prompt_and_answer(self.template, self.tokenizer, sample, answer)
        ids = prompt + answer_ids
        return ids[-self.cutoff_len :]  # keep the end: the score is read at the last token

    @torch.no_grad()
    def score(self, batch: RewardBatch) -> list[float]:
        rows = [self.encode(c, text) for c, text in zip(batch.conversations, batch.completions)]
        device = self.model.value_head.summary.weight.device
        pad = self.tokenizer.pad_token_id or 0
        scores: list[float] = []
        for start in range(0, len(rows), self.batch):
            chunk = rows[start : start + self.batch]
            length = max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (length - len(r)) for r in chunk], device=device)
            mask = torch.tensor(
                [[1] * len(r) + [0] * (length - len(r)) for r in chunk], device=device
            )
            scores += last_token_scores(self.model, ids, mask).float().tolist()
        return scores
