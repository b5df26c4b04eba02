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

from lmforge.model.moe import with_router_loss
from lmforge.train.losses.logps import sequence_logps
from lmforge.train.losses.preference import (
    PairwiseObjective,
    bco_loss,
    bradley_terry_loss,
    kto_loss,
    preference_loss,
)
from lmforge.train.trainers.base import AtomicCheckpointTrainer
from lmforge.train.trainers.reference import ReferenceMixin, prepared_reference
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


class PairwisePreferenceTrainer(_MetricsMixin, ReferenceMixin, AtomicCheckpointTrainer):
    def __init__(
        self,
        *args,
        objective: PairwiseObjective,
        ref_model: nn.Module | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.ref_model = prepared_reference(self, ref_model)
        self.mean_reward = RunningMean()  # BCO's delta

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        objective = self.objective
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        half = batch["input_ids"].shape[0] // 2
        outputs = model(**_forward_inputs(batch))
        logits = outputs.logits
        logps, tokens = sequence_logps(logits, batch["labels"], objective.ld_alpha)
        ref_c = ref_r = None
        if objective.needs_reference:
            reference = self.reference_logits(model, _forward_inputs(batch))
            ref_logps, _ = sequence_logps(reference, batch["labels"], objective.ld_alpha)
            ref_c, ref_r = ref_logps[:half], ref_logps[half:]
        losses, chosen_rewards, rejected_rewards = preference_loss(
            objective, logps[:half], logps[half:], tokens[:half], tokens[half:], ref_c, ref_r
        )
        if objective.bco_weight > 0 and objective.needs_reference:
            losses = self._with_bco(losses, logps[:half] - ref_c, logps[half:] - ref_r, model)
        if objective.ftx > 0:  # keep the chosen answers likely (SFT term, as LLaMA-Factory's)
            losses = losses + objective.ftx * (-logps[:half] / tokens[:half].clamp(min=1))
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
        loss = with_router_loss(losses.mean(), outputs, model)
        return (loss, {"logits": logits}) if return_outputs else loss

    def _with_bco(self, losses, chosen_ratio, rejected_ratio, model) -> torch.Tensor:
        """(loss + w * BCO) / (1 + w), as LLaMA-Factory weighs them. BCO's delta is the mean
        reward of all training batches so far, this one included (over every process); an
        evaluation batch is judged against it without moving it."""
        beta, weight = self.objective.beta, self.objective.bco_weight
        chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
        if model.training:
            batch_mean = torch.cat((chosen, rejected)).mean().detach()
            self.mean_reward.add(self.accelerator.gather(batch_mean[None]))
        delta = self.mean_reward.value
        return (losses + weight * bco_loss(chosen, rejected, delta)) / (1 + weight)

    def checkpoint_state(self) -> dict:
        return {"bco_mean_reward": self.mean_reward.state()} if self.objective.bco_weight else {}

    def restore_checkpoint_state(self, state: dict) -> None:
        if "bco_mean_reward" in state:
            self.mean_reward = RunningMean.from_state(state["bco_mean_reward"])


class RunningMean:
    """The mean of every value added so far (BCO's running reward baseline); saved with each
    checkpoint, so a resumed run continues from the same baseline."""

    def __init__(self, total: float = 0.0, count: int = 0):
        self.total, self.count = total, count

    def add(self, values: torch.Tensor) -> None:
        self.total += float(values.float().sum())
        self.count += values.numel()

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 0.0

    def state(self) -> dict:
        return {"total": self.total, "count": self.count}

    @classmethod
    def from_state(cls, state: dict) -> RunningMean:
        return cls(float(state["total"]), int(state["count"]))


class KTOTrainer(_MetricsMixin, ReferenceMixin, AtomicCheckpointTrainer):
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
        self.ref_model = prepared_reference(self, ref_model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
        n = inputs["desirable"].shape[0]
        outputs = model(**_forward_inputs(batch))
        logits = outputs.logits
        logps, _ = sequence_logps(logits, batch["labels"])
        reference = self.reference_logits(model, _forward_inputs(batch))
        ref_logps, _ = sequence_logps(reference, batch["labels"])
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
        loss = with_router_loss(losses.mean(), outputs, model)
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


def _forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's arguments of a batch (its labels are read by the loss)."""
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
