"""PPO with a reward model from stage rm: our own loop on transformers' Trainer, since TRL 1.x
has no PPOTrainer (see train/trainers/ppo.py)."""

from __future__ import annotations

from lmforge.train.stages.base import StageInputs
from lmforge.train.stages.rl import RolloutStage, rl_settings, rollout_parts
from lmforge.train.trainers.ppo import PPOTrainer, with_critic


class PPOStage(RolloutStage):
    name = "ppo"

    def build_trainer(self, inputs: StageInputs):
        parts = rollout_parts(inputs, needs_reference=True)  # a reference copy has no critic
        # Policy and critic as one module: DDP/DeepSpeed wrap (and synchronise) both.
        model = with_critic(inputs.model)
        return PPOTrainer(
            **inputs.trainer_arguments(model, parts.collator),
            settings=rl_settings(inputs.config, 1),
            ref_model=parts.ref_model,
            stop_ids=parts.stop_ids,
            reward_terms=parts.reward_terms,
        )


STAGE = PPOStage()
