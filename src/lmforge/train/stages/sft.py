"""Supervised fine-tuning: conversations, answers trained, optional packing."""

from __future__ import annotations

from dataclasses import replace

from lmforge.data.encoding.collate import make_collator
from lmforge.data.encoding.loader import build_datasets, packing_enabled
from lmforge.model.packing import check_isolation, prepare_model_for_packing
from lmforge.model.varlen_attention import use_varlen_attention
from lmforge.train.stages.base import Stage, StageData, StageInputs
from lmforge.train.stages.language_model import language_model_trainer


class SFTStage(Stage):
    name = "sft"

    def datasets(self, config, setup) -> StageData:
        train, evaluation, report = self._build(config, setup, config.data)
        names = [n.strip() for n in (config.data.eval_dataset or "").split(",") if n.strip()]
        if config.data.eval_on_each_dataset and len(names) > 1:
            # Each eval dataset encoded on its own: the Trainer reports eval_<name>_loss.
            evaluation = {
                name: self._build(
                    config, setup, replace(config.data, dataset=name, eval_dataset=None, val_size=0)
                )[0]
                for name in names
            }
        return StageData(train, evaluation, report)

    def _build(self, config, setup, data):
        return build_datasets(
            data,
            setup.template,
            setup.tokenizer,
            config.train.seed,
            stage=config.method.stage,
            max_steps=config.train.max_steps,
        )

    def build_trainer(self, inputs: StageInputs):
        data, model = inputs.config.data, inputs.model
        packing = packing_enabled(data)
        several_per_row = packing or data.padding_free
        # Several samples per row: sdpa attends per sample instead of through a row-wide mask.
        collator = make_collator(
            inputs.setup.tokenizer.pad_token_id,
            packing=packing,
            attn_implementation=model.config._attn_implementation,
            padding_free=data.padding_free,
            varlen=several_per_row and use_varlen_attention(model),
        )
        if several_per_row:  # isolation is checked on this very model, not assumed
            prepare_model_for_packing(model)
            check_isolation(model, collator)
        return language_model_trainer(inputs, collator)


STAGE = SFTStage()
