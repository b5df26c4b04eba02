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

from lmforge.train.losses.logps import sequence_logps
from lmforge.train.losses.preference import (
    REFERENCE_FREE,
    bradley_terry_loss,
    kto_loss,
    preference_loss,
)
from lmforge.train.trainers.base import AtomicCheckpointTrainer
from lmforge.train.trainers.reference import reference_model
from lmforge.train.trainers.value_head import ValueHeadTrainerMixin, last_token_scores


class _MetricsMixin:
    """Averages per-batch metrics (rewards, accuracies) into each logging step; and what the
    Trainer must know of losses that the trainer computes itself.

    The losses of these trainers are means over their batch, not sums over tokens: the Trainer
    must divide them by the gradient accumulation steps (it would not, since the batches hold
    labels and the model accepts loss kwargs, and the loss and gradients came out that many
    times too large)."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # compute_loss always returns a loss, though `labels` is no argument of the model's
        # forward (the Trainer finds no label names): evaluation must still call it, or no
        # eval_loss is reported (and load_best_model_at_end / early stopping fail).
        self.can_return_loss = True

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
    """Reference logits: a frozen copy when given, else the model with its LoRA adapters
    disabled (the base is the reference, without a second copy in memory)."""

    ref_model: nn.Module | None = None

    @torch.no_grad()
    def reference_logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Under the trainer's autocast, as the policy's forward: a frozen copy (full/freeze) or
        # a ref_model is not wrapped by accelerate.
        unwrapped = self.accelerator.unwrap_model(model)
        with self.accelerator.autocast(), reference_model(unwrapped, self.ref_model) as reference:
            return reference(
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


class RewardModelTrainer(ValueHeadTrainerMixin, _MetricsMixin, AtomicCheckpointTrainer):
    """Pairwise Bradley-Terry reward model: the model is a ModelWithValueHead, so the value
    head and the (LoRA) body learn together (and stay in sync across processes); saved as the
    adapter/model plus value_head.safetensors."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = last_token_scores(model, inputs["input_ids"], inputs["attention_mask"])
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
