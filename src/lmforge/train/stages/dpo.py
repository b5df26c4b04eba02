"""DPO and its relatives (hinge, IPO, ORPO, SimPO) on preference pairs."""

from __future__ import annotations

from lmforge.data.encoding.collate import PairCollator
from lmforge.data.encoding.encode import encode_pair_row
from lmforge.train.losses.preference import REFERENCE_FREE
from lmforge.train.stages.base import StageContext, encode_stage_samples
from lmforge.train.trainers.preference import PairwisePreferenceTrainer
from lmforge.train.trainers.reference import load_reference_model


class DPOStage:
    name = "dpo"

    def datasets(self, config, setup):
        def encode(sample):
            return encode_pair_row(sample, setup.template, setup.tokenizer, config.data.cutoff_len)

        return encode_stage_samples(config, setup, encode, "pairs")

    def prepare(self, ctx: StageContext) -> None:
        ctx.trainer_kwargs["data_collator"] = PairCollator(ctx.setup.tokenizer.pad_token_id)
        ctx.args.prediction_loss_only = True  # evaluation reports losses and rewards, no logits
        method = ctx.config.method
        ctx.trainer_kwargs["ref_model"] = None
        if method.pref_loss not in REFERENCE_FREE:
            ctx.trainer_kwargs["ref_model"] = load_reference_model(ctx.config, ctx.model)

    def trainer(self, ctx: StageContext):
        method = ctx.config.method
        return PairwisePreferenceTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            eval_dataset=ctx.eval_set or None,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            pref_loss=method.pref_loss,
            pref_beta=method.pref_beta,
            pref_ftx=method.pref_ftx,
            simpo_gamma=method.simpo_gamma,
            **ctx.trainer_kwargs,
        )


STAGE = DPOStage()
