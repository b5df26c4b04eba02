"""Supervised fine-tuning: conversations, answers trained, optional packing."""

from __future__ import annotations

import logging
from dataclasses import replace

from lmforge.data.encoding.collate import make_collator
from lmforge.data.encoding.loader import build_datasets, packing_enabled
from lmforge.data.encoding.packing import check_isolation, prepare_model_for_packing
from lmforge.model.varlen_attention import use_varlen_attention
from lmforge.train.losses.linear_ce import (
    HiddenStatesCollator,
    LinearCrossEntropyLoss,
    supports_linear_cross_entropy,
)
from lmforge.train.monitor import argmax_logits, token_accuracy
from lmforge.train.stages.base import StageContext
from lmforge.train.trainers.base import AtomicCheckpointTrainer

logger = logging.getLogger(__name__)


def use_linear_ce(ctx: StageContext) -> None:
    """The loss on trained tokens only, without full logits, where it gives the same result."""
    train = ctx.config.train
    if (
        not train.chunked_loss
        or train.compute_accuracy
        or getattr(ctx.args, "use_liger_kernel", False)
    ):
        return
    if not supports_linear_cross_entropy(ctx.model):
        logger.info("chunked_loss: the output head is adapted, so the plain loss is used")
        return
    ctx.trainer_kwargs["data_collator"] = HiddenStatesCollator(ctx.trainer_kwargs["data_collator"])
    ctx.trainer_kwargs["compute_loss_func"] = LinearCrossEntropyLoss(ctx.model)


class SFTStage:
    name = "sft"

    def datasets(self, config, setup):
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
        return train, evaluation, report

    def _build(self, config, setup, data):
        return build_datasets(
            data,
            setup.template,
            setup.tokenizer,
            config.train.seed,
            stage=config.method.stage,
            max_steps=config.train.max_steps,
        )

    def prepare(self, ctx: StageContext) -> None:
        packing = packing_enabled(ctx.config.data)
        padding_free = ctx.config.data.padding_free
        impl = ctx.model.config._attn_implementation
        # Several samples per row: sdpa attends per sample instead of through a row-wide mask.
        collator = make_collator(
            ctx.setup.tokenizer.pad_token_id,
            packing=packing,
            attn_implementation=impl,
            padding_free=padding_free,
            varlen=(packing or padding_free) and use_varlen_attention(ctx.model),
        )
        if packing or padding_free:  # isolation is checked on this very model, not assumed
            prepare_model_for_packing(ctx.model)
            check_isolation(ctx.model, collator)
        ctx.trainer_kwargs["data_collator"] = collator
        use_linear_ce(ctx)

    def trainer(self, ctx: StageContext):
        accuracy = ctx.config.train.compute_accuracy
        return AtomicCheckpointTrainer(
            model=ctx.model,
            args=ctx.args,
            train_dataset=ctx.train_set,
            eval_dataset=ctx.eval_set or None,
            processing_class=ctx.setup.tokenizer,
            callbacks=ctx.callbacks,
            compute_metrics=token_accuracy if accuracy else None,
            preprocess_logits_for_metrics=argmax_logits if accuracy else None,
            **ctx.trainer_kwargs,
        )


STAGE = SFTStage()
