"""GRPO: groups of sampled completions per prompt, rewarded by checks against a reference
answer, the user's functions and/or a reward model (see train/rewards/functions.py and
train/trainers/grpo.py)."""

from __future__ import annotations

from lmforge.train.stages.base import StageInputs
from lmforge.train.stages.rl import RolloutStage, rl_settings, rollout_parts
from lmforge.train.trainers.grpo import GRPOTrainer


class GRPOStage(RolloutStage):
    name = "grpo"

    def build_trainer(self, inputs: StageInputs):
        method = inputs.config.method
        parts = rollout_parts(inputs, needs_reference=method.ppo_kl_coef > 0)
        return GRPOTrainer(
            **inputs.trainer_arguments(inputs.model, parts.collator),
            settings=rl_settings(inputs.config, method.num_generations),
            ref_model=parts.ref_model,
            stop_ids=parts.stop_ids,
            reward_terms=parts.reward_terms,
        )


STAGE = GRPOStage()
