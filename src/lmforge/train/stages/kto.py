"""KTO: single answers labelled desirable or undesirable."""

from __future__ import annotations

from lmforge.data.encoding.collate import KTOCollator
from lmforge.data.encoding.encode import encode_kto
from lmforge.train.stages.base import StageContext, encode_stage_samples
from lmforge.train.trainers.preference import KTOTrainer
from lmforge.train.trainers.reference import load_reference_model


def encode_kto_row(config, setup):
    def encode(sample):
        item = encode_kto(sample, setup.template, setup.tokenizer, config.data.cutoff_len)
        if not item.completion_ids:
            return None
        input_ids, labels = item.joined()
        return {
            "input_ids": input_ids,
            "labels": labels,
            "prompt_ids": item.prompt_ids,
            "answer_ids": item.completion_ids,
            "kto_label": bool(item.label),
            "truncated": item.truncated,
        }

    return encode


class KTOStage:
    name = "kto"

    def datasets(self, config, setup):
        return encode_stage_samples(config, setup, encode_kto_row(config, setup), "completions")

    def prepare(self, ctx: StageContext) -> None:
        ctx.trainer_kwargs["data_collator"] = KTOCollator(ctx.setup.tokenizer.pad_token_id)
        ctx.trainer_kwargs["ref_model"] = load_reference_model(ctx.config, ctx.model)
        ctx.args.prediction_loss_only = True

    def trainer(self, ctx: StageContext):
        method = ctx.config.method
        return KTOTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            eval_dataset=ctx.eval_set or None,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            pref_beta=method.pref_beta,
            desirable_weight=method.kto_chosen_weight,
            undesirable_weight=method.kto_rejected_weight,
            **ctx.trainer_kwargs,
        )


STAGE = KTOStage()
