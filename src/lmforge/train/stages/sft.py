"""Supervised fine-tuning: conversations, answers trained, optional packing."""

from __future__ import annotations

import logging
from dataclasses import replace

from lmforge.data.encoding.collate import PadCollator, make_collator
from lmforge.data.encoding.loader import build_datasets, packing_enabled
from lmforge.errors import UserError
from lmforge.model.packing import check_isolation, prepare_model_for_packing
from lmforge.model.varlen_attention import (
    kernel_for_model,
    restore_attention,
    use_varlen_attention,
    varlen_kernel_of,
)
from lmforge.train.losses.token_weights import sft_token_weighting
from lmforge.train.stages.base import Stage, StageData, StageInputs
from lmforge.train.stages.language_model import (
    anchored_trainer,
    language_model_trainer,
    zero3_enabled,
)
from lmforge.train.trainers.reference import load_reference_model


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
        data, model, plan = inputs.config.data, inputs.model, inputs.plan
        weighting = sft_token_weighting(inputs.config.method)
        packing = packing_enabled(data)
        padding_free = plan.batching.padding_free and not packing
        padded = PadCollator(inputs.setup.tokenizer.pad_token_id)
        if not (packing or padding_free):
            return _trainer(inputs, padded, weighting)
        if plan.batching.auto and not packing and zero3_enabled():
            # Sharded weights cannot run the isolation check outside DeepSpeed's engine.
            logger.warning("padded rows: padding-free batches are not the default under ZeRO-3")
            return _trainer(inputs, padded, weighting)
        # Several samples per row: a variable-length kernel attends per sample instead of
        # through a row-wide mask (the device's fastest: model/varlen_attention.py).
        autocast = plan.precision.autocast_dtype
        device = inputs.args.device
        kernel = kernel_for_model(
            model,
            inputs.config.model.flash_attn,
            device_type=device.type,
            half_precision=autocast is not None or plan.precision.pure_bf16,
        )
        collator = make_collator(
            inputs.setup.tokenizer.pad_token_id,
            packing=packing,
            attn_implementation=model.config._attn_implementation,
            padding_free=padding_free,
            varlen=use_varlen_attention(model, kernel),
        )
        prepare_model_for_packing(model)
        try:  # isolation is checked on this very model, on its training device, not assumed
            with _full_weights(model):
                _move_to(model, device)
                check_isolation(model, collator, autocast_dtype=autocast)
        except UserError as exc:
            if packing or not plan.batching.auto:
                raise
            # padding_free unset: padded rows are correct for every model, just slower.
            restore_attention(model)
            logger.warning("padded rows instead of padding-free batches: %s", exc.what)
            collator = padded
        return _trainer(inputs, collator, weighting)


def _trainer(inputs: StageInputs, collator, weighting):
    """The next-token trainer; with ASFT's, the reference made now, from the model as it
    trains (on its device, with the attention kernel the rows need)."""
    if not inputs.config.method.use_asft_loss:
        return language_model_trainer(inputs, collator, weighting)
    reference = load_reference_model(inputs)
    if reference is not None:  # a copy has the model's kernel; a ref_model is given it here
        use_varlen_attention(reference, varlen_kernel_of(inputs.model))
        prepare_model_for_packing(reference)
    return anchored_trainer(inputs, collator, reference)


def _full_weights(model):
    """ZeRO-3 shards every weight: gather them for the check's two small forward passes."""
    import contextlib

    if not zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def _move_to(model, device) -> None:
    """Onto the training device now (the Trainer would move it there next) so the check runs
    the kernel training will run; quantized and sharded models are already where they train."""
    weight = next(model.parameters())
    if weight.device.type == "cpu" and device.type != "cpu" and not zero3_enabled():
        model.to(device)


logger = logging.getLogger(__name__)
STAGE = SFTStage()
