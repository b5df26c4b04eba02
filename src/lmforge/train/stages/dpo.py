"""DPO and its relatives (hinge, IPO, ORPO, SimPO) on preference pairs."""

from __future__ import annotations

from lmforge.data.encoding.encode import encode_pairwise
from lmforge.train.losses.preference import REFERENCE_FREE
from lmforge.train.trainers.preference import PairCollator, PairwisePreferenceTrainer
from lmforge.train.stages.base import StageContext, encode_stage_samples
from lmforge.train.stages.reference import load_reference_model


def encode_pair(config, setup):
    def encode(sample):
        pair = encode_pairwise(sample, setup.template, setup.tokenizer, config.data.cutoff_len)
        (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = (
            pair.chosen(),
            pair.rejected(),
        )
        if not pair.chosen_ids or not pair.rejected_ids:
            return None
        return {
            "chosen_input_ids": chosen_ids,
            "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_ids,
            "rejected_labels": rejected_labels,
            "truncated": pair.truncated,
        }

    return encode


class DPOStage:
    name = "dpo"

    def datasets(self, config, setup):
        return encode_stage_samples(config, setup, encode_pair(config, setup), "pairs")

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
