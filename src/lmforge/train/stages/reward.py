"""Reward model: a value head on the (LoRA-tuned) model, trained on preference pairs with the
Bradley-Terry loss; saved as the adapter/model plus value_head.safetensors for ppo/grpo."""

from __future__ import annotations

from lmforge.data.encoding.collate import PairCollator
from lmforge.data.encoding.encode import encode_pair_row
from lmforge.train.stages.base import StageContext, encode_stage_samples
from lmforge.train.trainers.preference import RewardModelTrainer
from lmforge.train.trainers.value_head import ModelWithValueHead, ValueHead


class RewardStage:
    name = "rm"

    def datasets(self, config, setup):
        def encode(sample):
            return encode_pair_row(sample, setup.template, setup.tokenizer, config.data.cutoff_len)

        return encode_stage_samples(config, setup, encode, "pairs")

    def prepare(self, ctx: StageContext) -> None:
        ctx.trainer_kwargs["data_collator"] = PairCollator(ctx.setup.tokenizer.pad_token_id)
        ctx.args.prediction_loss_only = True
        # One module: DDP/DeepSpeed wrap (and synchronise) the head with the body.
        hidden = ctx.model.config.get_text_config().hidden_size
        ctx.model = ModelWithValueHead(ctx.model, ValueHead(hidden))

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
