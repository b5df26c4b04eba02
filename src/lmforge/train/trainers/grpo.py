"""GRPO: per prompt, a group of completions; each one's advantage is its reward relative to
its group, so no critic is needed (Shao et al., 2024, DeepSeekMath)."""

from __future__ import annotations

import torch

from lmforge.train.losses.rl import group_advantages, grpo_loss
from lmforge.train.rewards.functions import RewardTerm, score_terms
from lmforge.train.trainers.rollout import completion_logps, sample_completions
from lmforge.train.trainers.rollout_base import Rollout, RolloutTrainer


class GRPOTrainer(RolloutTrainer):
    def __init__(self, *args, reward_terms: list[RewardTerm], **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_terms = reward_terms

    def make_rollout(self, model, inputs: dict) -> Rollout:
        settings = self.settings
        group = settings.num_generations
        seqs = sample_completions(
            self.policy(model),
            inputs["input_ids"],
            inputs["attention_mask"],
            num_generations=group,
            max_new_tokens=settings.max_completion_length,
            stop_ids=self.stop_ids,
            pad_token_id=self.processing_class.pad_token_id,
        )
        batch = self.reward_batch(inputs["rows"], seqs, group)
        totals, per_term = score_terms(self.reward_terms, batch)
        rewards = torch.tensor(totals, dtype=torch.float32, device=seqs.input_ids.device)
        advantages = group_advantages(rewards, group)
        old_logps = ref_logps = None
        with torch.no_grad():
            if settings.epochs > 1:  # later passes compare with the policy that sampled
                old_logps = completion_logps(model, seqs)[0]
            if settings.kl_coef > 0:
                ref_logps = self.reference_logps(model, seqs)
        metrics = {
            "reward": rewards,
            "reward_std": rewards.view(-1, group).std(-1) if group > 1 else rewards * 0,
            **{f"rewards/{name}": torch.tensor(v) for name, v in per_term.items()},
            **self.length_metrics(seqs),
        }
        return Rollout(seqs, advantages, old_logps, ref_logps, metrics=metrics)

    def rollout_loss(self, model, rollout: Rollout) -> tuple[torch.Tensor, dict]:
        logps, _ = completion_logps(model, rollout.seqs)
        old = rollout.old_logps if rollout.old_logps is not None else logps.detach()
        return grpo_loss(
            logps,
            old,
            rollout.ref_logps,
            rollout.advantages,
            rollout.seqs.completion_mask,
            clip=self.settings.clip,
            beta=self.settings.kl_coef,
        )
