"""PPO with a reward model from stage rm: our own loop on transformers' Trainer, since TRL 1.x
has no PPOTrainer (see train/trainers/ppo.py)."""

from __future__ import annotations

from lmforge.train.stages.base import StageContext
from lmforge.train.stages.rl import check_rl_config, encode_prompts, prepare_rl, rl_settings
from lmforge.train.trainers.ppo import PPOTrainer, with_critic


class PPOStage:
    name = "ppo"

    def check(self, config) -> None:
        check_rl_config(config)

    def datasets(self, config, setup):
        self.check(config)  # before the model loads, whoever calls us
        return encode_prompts(config, setup)

    def prepare(self, ctx: StageContext) -> None:
        prepare_rl(ctx, needs_reference=True)  # a reference copy, if any, has no critic
        # Policy and critic as one module: DDP/DeepSpeed wrap (and synchronise) both.
        ctx.model = with_critic(ctx.model)

    def trainer(self, ctx: StageContext):
        return PPOTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            settings=rl_settings(ctx.config, 1),
            **ctx.trainer_kwargs,
        )


STAGE = PPOStage()
