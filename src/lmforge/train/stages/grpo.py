"""GRPO: groups of sampled completions per prompt, rewarded by checks against a reference
answer, the user's functions and/or a reward model (see train/rewards/functions.py, train/trainers/grpo.py)."""

from __future__ import annotations

from lmforge.train.stages.base import StageContext
from lmforge.train.stages.rl import check_rl_config, encode_prompts, prepare_rl, rl_settings
from lmforge.train.trainers.grpo import GRPOTrainer


class GRPOStage:
    name = "grpo"

    def check(self, config) -> None:
        check_rl_config(config)

    def datasets(self, config, setup):
        self.check(config)  # before the model loads, whoever calls us
        return encode_prompts(config, setup)

    def prepare(self, ctx: StageContext) -> None:
        prepare_rl(ctx, needs_reference=ctx.config.method.ppo_kl_coef > 0)

    def trainer(self, ctx: StageContext):
        return GRPOTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            settings=rl_settings(ctx.config, ctx.config.method.num_generations),
            **ctx.trainer_kwargs,
        )


STAGE = GRPOStage()
