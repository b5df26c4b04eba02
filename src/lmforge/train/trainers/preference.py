"""Trainers for preference data: pairwise (DPO family), KTO, and Bradley-Terry reward models.

Written on transformers' Trainer rather than TRL's: TRL 1.x re-tokenizes with the tokenizer's
own chat template and has no ORPO/SimPO in DPOTrainer; here the samples arrive already encoded
by lmforge's templates (the same tokens SFT and chat use) and every objective is in losses.py.
With LoRA the reference model is the base itself (adapters disabled), so no second copy.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from lmforge.data.encoding.encode import IGNORE_INDEX
from lmforge.train.losses.preference import (
    REFERENCE_FREE,
    bradley_terry_loss,
    kto_loss,
    preference_loss,
    sequence_logps,
)
from lmforge.train.trainers.base import AtomicCheckpointTrainer


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    length = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (length - len(r)) for r in rows], dtype=torch.long)


class PairCollator:
    """Chosen rows first, then rejected rows, in one padded batch."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["chosen_input_ids"] for f in features] + [
            f["rejected_input_ids"] for f in features
        ]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        input_ids = pad_rows(ids, self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
        }


class KTOCollator:
    """Each completion, plus a mismatched one (the next sample's answer to this prompt) whose
    log-ratio estimates KL(policy || reference) for the batch, as in the KTO paper."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = len(features)
        ids = [f["input_ids"] for f in features]
        labels = [f["labels"] for f in features]
        for i, f in enumerate(features):
            other = features[(i + 1) % n]
            ids.append(f["prompt_ids"] + other["answer_ids"])
            labels.append([IGNORE_INDEX] * len(f["prompt_ids"]) + other["answer_ids"])
        return {
            "input_ids": pad_rows(ids, self.pad_token_id),
            "attention_mask": pad_rows([[1] * len(r) for r in ids], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
            "desirable": torch.tensor([bool(f["kto_label"]) for f in features]),
        }


class _MetricsMixin:
    """Averages per-batch metrics (rewards, accuracies) into each logging step."""

    def _store(self, split: str, values: dict[str, torch.Tensor]) -> None:
        if not hasattr(self, "_stored"):
            self._stored = defaultdict(list)
        for key, value in values.items():
            self._stored[f"{split}{key}"].append(value.detach().float().mean().item())

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        evaluating = "eval_loss" in logs
        stored = getattr(self, "_stored", {})
        for key in [k for k in stored if k.startswith("eval_") == evaluating]:
            values = stored.pop(key)
            logs[key] = sum(values) / len(values)
        super().log(logs, *args, **kwargs)


class _ReferenceMixin:
    """Reference log-probabilities: a frozen copy when given, else the model with its LoRA
    adapters disabled (the base is the reference, without a second copy in memory)."""

    ref_model: nn.Module | None = None

    @torch.no_grad()
    def reference_logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.ref_model is not None:
            return self.ref_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        unwrapped = self.accelerator.unwrap_model(model)
        disable = getattr(unwrapped, "disable_adapter", None)
        if disable is None:
            raise RuntimeError("full fine-tuning needs a reference model copy")
        with disable():
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits


class PairwisePreferenceTrainer(_MetricsMixin, _ReferenceMixin, AtomicCheckpointTrainer):
    def __init__(
        self,
        *args,
        pref_loss: str,
        pref_beta: float,
        pref_ftx: float,
        simpo_gamma: float,
        ref_model: nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.pref_loss, self.pref_beta = pref_loss, pref_beta
        self.pref_ftx, self.simpo_gamma = pref_ftx, simpo_gamma
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        half = batch["input_ids"].shape[0] // 2
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, tokens = sequence_logps(logits, batch["labels"])
        ref_c = ref_r = None
        if self.pref_loss not in REFERENCE_FREE:
            ref_logps, _ = sequence_logps(self.reference_logits(model, batch), batch["labels"])
            ref_c, ref_r = ref_logps[:half], ref_logps[half:]
        losses, chosen_rewards, rejected_rewards = preference_loss(
            self.pref_loss,
            self.pref_beta,
            logps[:half],
            logps[half:],
            tokens[:half],
            tokens[half:],
            ref_c,
            ref_r,
            self.simpo_gamma,
        )
        if self.pref_ftx > 0:  # keep the chosen answers likely (SFT term, as LLaMA-Factory's)
            losses = losses + self.pref_ftx * (-logps[:half] / tokens[:half].clamp(min=1))
        split = "" if model.training else "eval_"
        self._store(
            split,
            {
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
            },
        )
        loss = losses.mean()
        return (loss, {"logits": logits}) if return_outputs else loss


class KTOTrainer(_MetricsMixin, _ReferenceMixin, AtomicCheckpointTrainer):
    def __init__(
        self,
        *args,
        pref_beta: float,
        desirable_weight: float,
        undesirable_weight: float,
        ref_model: nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.pref_beta = pref_beta
        self.desirable_weight, self.undesirable_weight = desirable_weight, undesirable_weight
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        n = inputs["desirable"].shape[0]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, _ = sequence_logps(logits, batch["labels"])
        ref_logps, _ = sequence_logps(self.reference_logits(model, batch), batch["labels"])
        kl_reference = (logps[n:] - ref_logps[n:]).mean()
        losses, rewards = kto_loss(
            self.pref_beta,
            logps[:n],
            ref_logps[:n],
            inputs["desirable"],
            kl_reference,
            self.desirable_weight,
            self.undesirable_weight,
        )
        split = "" if model.training else "eval_"
        desirable = inputs["desirable"]
        metrics = {"kl": kl_reference.detach()}
        if desirable.any():
            metrics["rewards/desirable"] = rewards[desirable]
        if (~desirable).any():
            metrics["rewards/undesirable"] = rewards[~desirable]
        self._store(split, metrics)
        loss = losses.mean()
        return (loss, {"logits": logits}) if return_outputs else loss


VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """hidden state of the last real token -> one scalar reward."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


def last_token_scores(model, value_head: ValueHead, input_ids, attention_mask) -> torch.Tensor:
    """The reward of each row: the value head on the hidden state of its last real token."""
    outputs = model(  # logits for one position only: the scores need hidden states, not logits
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
    )
    hidden = outputs.hidden_states[-1]
    last = attention_mask.sum(-1) - 1  # right padding: the last real position of each row
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return value_head(hidden[rows, last].to(value_head.summary.weight.dtype))


class RewardModelTrainer(_MetricsMixin, AtomicCheckpointTrainer):
    """Pairwise Bradley-Terry reward model: the value head and the (LoRA) body learn together."""

    def __init__(self, *args, value_head: ValueHead, **kwargs):
        super().__init__(*args, **kwargs)
        self.value_head = value_head

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        head = [p for p in self.value_head.parameters() if id(p) not in known]
        if head:
            optimizer.add_param_group({"params": head, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.value_head.to(inputs["input_ids"].device)
        scores = last_token_scores(
            model, self.value_head, inputs["input_ids"], inputs["attention_mask"]
        )
        half = scores.shape[0] // 2
        chosen, rejected = scores[:half], scores[half:]
        split = "" if model.training else "eval_"
        self._store(
            split,
            {
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/accuracies": (chosen > rejected).float(),
            },
        )
        loss = bradley_terry_loss(chosen, rejected).mean()
        return (loss, {"scores": scores}) if return_outputs else loss

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        output_dir = output_dir or self.args.output_dir
        head = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(head, f"{output_dir}/{VALUE_HEAD_FILE}")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_value_head(self.value_head, resume_from_checkpoint)


def load_value_head(value_head: ValueHead, folder) -> ValueHead:
    from safetensors.torch import load_file

    value_head.load_state_dict(load_file(f"{folder}/{VALUE_HEAD_FILE}"))
    return value_head
