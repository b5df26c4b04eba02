"""DPO and its relatives (hinge, IPO, ORPO, SimPO) on preference pairs."""

from __future__ import annotations

from lmforge.data.encoding.collate import PairCollator
from lmforge.train.losses.preference import PairwiseObjective
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_pair_samples
from lmforge.train.trainers.preference import PairwisePreferenceTrainer
from lmforge.train.trainers.reference import load_reference_model


class DPOStage(Stage):
    name = "dpo"
    prediction_loss_only = True  # evaluation reports losses and rewards, no logits

    def datasets(self, config, setup) -> StageData:
        return encode_pair_samples(config, setup)

    def build_trainer(self, inputs: StageInputs):
        objective = pairwise_objective(inputs.config.method)
        reference = None
        if objective.needs_reference:
            reference = load_reference_model(inputs)
        collator = PairCollator(inputs.setup.tokenizer.pad_token_id)
        return PairwisePreferenceTrainer(
            **inputs.trainer_arguments(inputs.model, collator),
            ref_model=reference,
            objective=objective,
        )


def pairwise_objective(method) -> PairwiseObjective:
    return PairwiseObjective(
        kind=method.pref_loss,
        beta=method.pref_beta,
        ftx=method.pref_ftx,
        simpo_gamma=method.simpo_gamma,
        label_smoothing=method.dpo_label_smoothing,
        ld_alpha=method.ld_alpha,
        bco_weight=method.pref_bco_weight,
    )


STAGE = DPOStage()
