"""The reference model of DPO, KTO, PPO, GRPO and ASFT, without a second copy where LoRA allows
it: which model it is (load_reference_model, when the stage prepares) and how its outputs are
computed during training (reference_model, ReferenceMixin)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from lmforge.config.schema import trains_adapter
from lmforge.model.load import (
    Quantization,
    attach_adapters,
    is_quantized,
    load_model,
    split_paths,
)

if TYPE_CHECKING:
    from lmforge.train.stages.base import StageInputs

logger = logging.getLogger(__name__)


def load_reference_model(inputs: StageInputs) -> nn.Module | None:
    """`ref_model` when given (in the plan's dtype for frozen models); None with LoRA (the
    trainer disables the adapters to get the base, which is the reference); else a frozen copy
    of the starting model (full/freeze), in its dtypes, so the policy starts at the reference.
    On the training device: the Trainer moves the model it trains, not this one (on a GPU the
    copy stayed on the CPU, where the batches it was given are not)."""
    config, plan, model = inputs.config, inputs.plan, inputs.model
    if config.method.ref_model:
        from lmforge.model.rope import rope_scaling_for
        from lmforge.model.source import resolve_model

        path = resolve_model(config.method.ref_model).path
        logger.info("Reference model: %s", path)
        # It reads the same rows as the policy: the same RoPE scaling as the policy's.
        rope, _ = rope_scaling_for(
            path,
            config.model.rope_scaling,
            factor=plan.rope_factor,
            trust_remote_code=config.model.trust_remote_code,
            where=config.where("ref_model"),
        )
        method = config.method
        quantization = Quantization.of_frozen(
            method.ref_model_quantization_bit, method, plan.precision.compute_dtype
        )
        reference = load_model(
            path,
            dtype=plan.precision.frozen_model_dtype,
            flash_attn=config.model.flash_attn,
            trust_remote_code=config.model.trust_remote_code,
            rope=rope,
            quantization=quantization,
        )
        adapters = split_paths(method.ref_model_adapters)
        if adapters:  # merged, unless into quantized weights (merging would round them again)
            logger.info("Reference model adapters: %s", ", ".join(adapters))
            reference = attach_adapters(reference, adapters, merge=quantization is None)
    elif trains_adapter(config.method):
        logger.info("Reference model: the base model (adapters disabled), no extra copy")
        return None
    else:
        logger.info("Reference model: a frozen copy of the starting model")
        reference = copy.deepcopy(model)
    from transformers.integrations import is_deepspeed_zero3_enabled

    # quantized: placed on its device at load; ZeRO-3: sharded at load, placed by its engine
    if not is_quantized(reference) and not is_deepspeed_zero3_enabled():
        reference = reference.to(inputs.args.device)
    return reference.eval().requires_grad_(False)


@contextmanager
def reference_model(model: nn.Module, ref_model: nn.Module | None) -> Iterator[nn.Module]:
    """The module whose outputs are the reference's: `ref_model` when there is one, else
    `model` (unwrapped from DDP/DeepSpeed, a causal LM) with its LoRA adapters disabled, for as
    long as the block runs. Call it without gradients."""
    if ref_model is not None:
        yield ref_model
        return
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise RuntimeError("full or freeze tuning needs a reference model copy")
    with disable():
        yield model


def prepared_reference(trainer, ref_model: nn.Module | None) -> nn.Module | None:
    """`ref_model` as the trainer's processes run it. Under DeepSpeed ZeRO-3 a ref_model was
    sharded as it loaded (a copy is refused: launch.check_reference_copy), and runs inside a
    DeepSpeed engine that gathers each layer's weights for its forward pass (TRL's
    prepare_deepspeed, which TRL's and LLaMA-Factory's trainers use); elsewhere as it is, on
    the training device already."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if ref_model is None or is_quantized(ref_model) or not is_deepspeed_zero3_enabled():
        return ref_model  # quantized: placed on its device at load, and not sharded
    from trl.models.utils import prepare_deepspeed

    return prepare_deepspeed(ref_model, trainer.accelerator)


class ReferenceMixin:
    """For a Trainer: the reference's outputs on a batch, without gradients and under the
    trainer's autocast, as the policy's forward runs (a frozen copy or a ref_model is not
    wrapped by accelerate). `ref_model`: a frozen copy when there is one, else the model
    itself with its LoRA adapters disabled (no second copy in memory)."""

    ref_model: nn.Module | None = None

    @contextmanager
    def _reference(self, model) -> Iterator[nn.Module]:
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.accelerator.autocast():
            with reference_model(unwrapped, self.ref_model) as reference:
                yield reference

    def reference_logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of every position; `batch`: the model's forward arguments."""
        with self._reference(model) as reference:
            return reference(**batch).logits

    def reference_hidden(
        self, model, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(final hidden states of every position, the weight its output head projects them
        with, or None where the head is more than a weight): for a loss that projects
        positions itself (batch asks the head for as few logits as it takes)."""
        from lmforge.train.losses.linear_ce import final_hidden_states, output_projection

        kept: list[torch.Tensor] = []

        def keep(module, args, output) -> None:
            kept.append(final_hidden_states(output))

        with self._reference(model) as reference:
            handle = reference.get_decoder().register_forward_hook(keep)
            try:
                reference(**batch)
            finally:
                handle.remove()
            projection = output_projection(reference.get_output_embeddings())
        weight = None if projection is None or projection[1] is not None else projection[0]
        return kept[-1], weight
