"""Reward model: a value head on the (LoRA-tuned) model, trained on preference pairs with the
Bradley-Terry loss; saved as the adapter/model plus value_head.safetensors for ppo/grpo."""

from __future__ import annotations

from lmforge.data.encoding.collate import PairCollator
from lmforge.train.stages.base import Stage, StageData, StageInputs, encode_pair_samples
from lmforge.train.trainers.preference import RewardModelTrainer
from lmforge.train.trainers.value_head import ModelWithValueHead, ValueHead


class RewardStage(Stage):
    name = "rm"
    prediction_loss_only = True  # evaluation reports losses and accuracy, no logits

    def datasets(self, config, setup) -> StageData:
        return encode_pair_samples(config, setup)

    def build_trainer(self, inputs: StageInputs):
        # One module: DDP/DeepSpeed wrap (and synchronise) the head with the body.
        hidden = inputs.model.config.get_text_config().hidden_size
        model = ModelWithValueHead(inputs.model, ValueHead(hidden))
        collator = PairCollator(inputs.setup.tokenizer.pad_token_id)
        return RewardModelTrainer(**inputs.trainer_arguments(model, collator))


STAGE = RewardStage()
