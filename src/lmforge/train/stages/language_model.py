"""What sft and pt share: a next-token trainer, with the loss on trained tokens only where that
gives the same result (not a stage itself); and SFT's trainer with ASFT's reference."""

from __future__ import annotations

import logging

from lmforge.train.launch import fsdp_requested
from lmforge.train.losses.anchored import AnchoredLinearLoss, AnchoredLogitsLoss
from lmforge.train.losses.linear_ce import (
    LastLogitCollator,
    LinearCrossEntropyLoss,
    logits_to_keep_for,
    output_projection,
    supports_linear_cross_entropy,
)
from lmforge.train.losses.token_weights import TokenWeighting, WeightedCrossEntropyLoss
from lmforge.train.monitor import argmax_logits, token_accuracy
from lmforge.train.stages.base import StageInputs
from lmforge.train.trainers.anchored import AnchoredSFTTrainer
from lmforge.train.trainers.base import AtomicCheckpointTrainer

logger = logging.getLogger(__name__)


def zero3_enabled() -> bool:
    """DeepSpeed ZeRO-3: every weight is sharded, whole only inside its module's forward."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


def uses_linear_ce(inputs: StageInputs) -> bool:
    """The loss without full logits: not when accuracy needs the logits, nor under liger (its
    own fused loss), nor when the output head itself is adapted, nor under ZeRO-3 or FSDP (the
    loss reads the head's weight outside the head's forward, where they hold only a shard),
    nor when the model cannot be told to skip its own projection (remote code)."""
    train = inputs.config.train
    if not train.chunked_loss or train.compute_accuracy or inputs.args.use_liger_kernel:
        return False
    if not supports_linear_cross_entropy(inputs.model):
        logger.info("chunked_loss: the output head is adapted, so the plain loss is used")
        return False
    if zero3_enabled():
        logger.info("chunked_loss: ZeRO-3 shards the output head, so the plain loss is used")
        return False
    if fsdp_requested(inputs.config):
        # FSDP turns the root unit's weights (the head among them) back into flattened views of
        # their shards after the forward pass, before the loss would read them
        logger.info("chunked_loss: FSDP shards the output head, so the plain loss is used")
        return False
    if logits_to_keep_for(inputs.model) is None:
        logger.info(
            "chunked_loss: this model's forward takes no logits_to_keep (it projects every "
            "position itself), so the plain loss is used"
        )
        return False
    return True


def language_model_trainer(
    inputs: StageInputs, collator, weighting: TokenWeighting | None = None
) -> AtomicCheckpointTrainer:
    """weighting: SFT's per-token loss weights (DFT, EAFT), in whichever loss runs."""
    accuracy = inputs.config.train.compute_accuracy
    loss = None
    if uses_linear_ce(inputs):
        collator = LastLogitCollator(collator, logits_to_keep_for(inputs.model))
        loss = LinearCrossEntropyLoss(
            inputs.model, dtype=inputs.plan.precision.autocast_dtype, weighting=weighting
        )
    elif weighting is not None:
        loss = WeightedCrossEntropyLoss(weighting, inputs.model)
    return AtomicCheckpointTrainer(
        **inputs.trainer_arguments(inputs.model, collator),
        compute_loss_func=loss,
        compute_metrics=token_accuracy if accuracy else None,
        preprocess_logits_for_metrics=argmax_logits if accuracy else None,
    )


def anchored_trainer(inputs: StageInputs, collator, ref_model) -> AnchoredSFTTrainer:
    """SFT with ASFT's loss (use_asft_loss) against `ref_model` (load_reference_model's: None
    with LoRA, the base with adapters disabled). Chunked where the plain chunked loss would be,
    unless the head trains added tokens' rows (their logits come from the adapter)."""
    model, accuracy = inputs.model, inputs.config.train.compute_accuracy
    alpha = inputs.config.method.asft_alpha
    reference = ref_model if ref_model is not None else model
    if uses_linear_ce(inputs) and _plain_head(model) and _plain_head(reference):
        collator = LastLogitCollator(collator, logits_to_keep_for(model))
        loss = AnchoredLinearLoss(model, alpha, dtype=inputs.plan.precision.autocast_dtype)
    else:
        loss = AnchoredLogitsLoss(alpha, model)
    return AnchoredSFTTrainer(
        **inputs.trainer_arguments(model, collator),
        ref_model=ref_model,
        compute_loss_func=loss,
        compute_metrics=token_accuracy if accuracy else None,
        preprocess_logits_for_metrics=argmax_logits if accuracy else None,
    )


def _plain_head(model) -> bool:
    projection = output_projection(model.get_output_embeddings())
    return projection is not None and projection[1] is None
