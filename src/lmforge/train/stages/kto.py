"""KTO: single answers labelled desirable or undesirable."""

from __future__ import annotations

from lmforge.data.encoding.collate import KTOCollator
from lmforge.data.encoding.encode import encode_kto
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_stage_samples
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


class KTOStage(Stage):
    name = "kto"
    prediction_loss_only = True  # evaluation reports losses and rewards, no logits

    def datasets(self, config, setup) -> StageData:
        return encode_stage_samples(config, setup, encode_kto_row(config, setup), "completions")

    def build_trainer(self, inputs: StageInputs):
        method = inputs.config.method
        collator = KTOCollator(inputs.setup.tokenizer.pad_token_id)
        return KTOTrainer(
            **inputs.trainer_arguments(inputs.model, collator),
            ref_model=load_reference_model(inputs.config, inputs.model),
            pref_beta=method.pref_beta,
            desirable_weight=method.kto_chosen_weight,
            undesirable_weight=method.kto_rejected_weight,
        )


STAGE = KTOStage()
