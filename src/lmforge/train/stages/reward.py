"""Reward model: a value head on the (LoRA-tuned) model, trained on preference pairs with the
Bradley-Terry loss; saved as the adapter/model plus value_head.safetensors for ppo/grpo."""

from __future__ import annotations

from lmforge.train.trainers.preference import PairCollator, RewardModelTrainer, ValueHead
from lmforge.train.stages.base import StageContext, encode_stage_samples
from lmforge.train.stages.dpo import encode_pair


class RewardStage:
    name = "rm"

    def datasets(self, config, setup):
        return encode_stage_samples(config, setup, encode_pair(config, setup), "pairs")

    def prepare(self, ctx: StageContext) -> None:
        ctx.trainer_kwargs["data_collator"] = PairCollator(ctx.setup.tokenizer.pad_token_id)
        hidden = ctx.model.config.get_text_config().hidden_size
        ctx.trainer_kwargs["value_head"] = ValueHead(hidden)
        ctx.args.prediction_loss_only = True

    def trainer(self, ctx: StageContext):
        return RewardModelTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            eval_dataset=ctx.eval_set or None,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            **ctx.trainer_kwargs,
        )


STAGE = RewardStage()
