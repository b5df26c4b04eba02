"""The reference model of DPO, KTO and PPO, without a second copy where LoRA allows it."""

from __future__ import annotations

import copy
import logging

from lmforge.model.load import load_model

logger = logging.getLogger(__name__)


def load_reference_model(config, model):
    """`ref_model` when given; None with LoRA (the trainer disables the adapters to get the
    base, which is the reference); else a frozen copy of the starting model (full/freeze)."""
    if config.method.ref_model:
        from lmforge.model.source import resolve_model

        path = resolve_model(config.method.ref_model).path
        logger.info("Reference model: %s", path)
        reference = load_model(
            path,
            flash_attn=config.model.flash_attn,
            trust_remote_code=config.model.trust_remote_code,
        )
    elif config.method.finetuning_type == "lora":
        logger.info("Reference model: the base model (LoRA adapters disabled), no extra copy")
        return None
    else:
        logger.info("Reference model: a frozen copy of the starting model")
        reference = copy.deepcopy(model)
    return reference.eval().requires_grad_(False)
