"""DPO and its relatives (hinge, IPO, ORPO, SimPO) on preference pairs."""

from __future__ import annotations

from lmforge.data.encoding.collate import PairCollator
from lmforge.train.losses.preference import REFERENCE_FREE
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_pair_samples
from lmforge.train.trainers.preference import PairwisePreferenceTrainer
from lmforge.train.trainers.reference import load_reference_model


class DPOStage(Stage):
    name = "dpo"
    prediction_loss_only = True  # evaluation reports losses and rewards, no logits

    def datasets(self, config, setup) -> StageData:
        return encode_pair_samples(config, setup)

    def build_trainer(self, inputs: StageInputs):
        method = inputs.config.method
        reference = None
        if method.pref_loss not in REFERENCE_FREE:
            reference = load_reference_model(inputs.config, inputs.plan, inputs.model)
        collator = PairCollator(inputs.setup.tokenizer.pad_token_id)
        return PairwisePreferenceTrainer(
            **inputs.trainer_arguments(inputs.model, collator),
            ref_model=reference,
            pref_loss=method.pref_loss,
            pref_beta=method.pref_beta,
            pref_ftx=method.pref_ftx,
            simpo_gamma=method.simpo_gamma,
        )


STAGE = DPOStage()
