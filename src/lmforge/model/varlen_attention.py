"""Which variable-length attention kernel a packed or padding-free run uses, and switching to it.

transformers isolates the samples of a packed row under sdpa with a block-diagonal mask over the
whole row: the kernel then works on every (query, key) pair of the row and masks most of them
away. A variable-length kernel takes the row's sample boundaries instead (cu_seq_lens_q from our
collator) and computes each sample's causal pairs only. The kernels are in varlen_kernels.py;
this module picks one per device and `flash_attn` setting:

| device | flash_attn | kernel |
|---|---|---|
| CPU | auto, sdpa | one sdpa call per sample (fastest measured on the CPU); softcapping: none |
| CUDA | fa2, or auto with flash-attn installed | flash-attn's flash_attn_varlen_func |
| CUDA | auto, sdpa (fp16/bf16, no softcapping) | torch's varlen_attn (torch >= 2.10) |
| CUDA | otherwise (fp32 training, softcapping, older torch) | FlexAttention, document mask |
| any | disabled (eager) | none: eager with transformers' masks |

The chosen kernel is registered with transformers' AttentionInterface under its own name, used
while a packed or padding-free run trains, and the model goes back to the attention it was loaded
with afterwards (generation and padded batches need masks). Custom names also spare the model
transformers' mask construction, which scans position ids on the device every forward pass.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

from lmforge.model import varlen_kernels as kernels
from lmforge.model.hf_config import text_config


@dataclass(frozen=True)
class VarlenKernel:
    name: str  # the AttentionInterface name
    describe: str  # for the plan: what runs
    function: Callable


PER_SAMPLE_SDPA = VarlenKernel(
    "lmforge_varlen_sdpa", "sdpa, one call per sample (no row-wide mask)", kernels.per_sample_sdpa
)
TORCH_VARLEN = VarlenKernel(
    "lmforge_varlen_torch", "torch varlen_attn (flash-attention in torch)", kernels.torch_varlen
)
FLASH_ATTN_VARLEN = VarlenKernel(
    "lmforge_varlen_fa2", "flash-attn flash_attn_varlen_func", kernels.flash_attn_varlen
)
FLEX_DOCUMENT = VarlenKernel(
    "lmforge_varlen_flex", "FlexAttention with a document mask", kernels.flex_document
)
KERNELS = {k.name: k for k in (PER_SAMPLE_SDPA, TORCH_VARLEN, FLASH_ATTN_VARLEN, FLEX_DOCUMENT)}

NAME = PER_SAMPLE_SDPA.name  # the CPU kernel's name (tests, older callers)

# model -> the attention it was loaded with (not kept on its config: that is saved to config.json)
_loaded_attention: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def choose_kernel(
    flash_attn: str,
    *,
    device_type: str,
    half_precision: bool,
    softcap: bool = False,
    dropout: bool = False,
    flash_attn_installed: bool | None = None,
    torch_varlen_installed: bool | None = None,
) -> VarlenKernel | None:
    """The kernel for packed/padding-free rows, or None when the model keeps its own attention
    with masks (`flash_attn: disabled`, i.e. eager)."""
    if flash_attn == "disabled":
        return None
    if flash_attn_installed is None:
        flash_attn_installed = kernels.flash_attn_available()
    if torch_varlen_installed is None:
        torch_varlen_installed = kernels.torch_varlen_available()
    if device_type != "cuda":  # (FlexAttention has no backward pass on the CPU)
        return None if softcap else PER_SAMPLE_SDPA
    wants_fa2 = flash_attn == "fa2" or (flash_attn == "auto" and flash_attn_installed)
    if wants_fa2 and flash_attn_installed and half_precision:
        return FLASH_ATTN_VARLEN  # softcapping and dropout included
    if dropout:
        return PER_SAMPLE_SDPA  # the only other kernel with attention dropout
    if half_precision and not softcap and torch_varlen_installed:
        return TORCH_VARLEN
    return FLEX_DOCUMENT


def kernel_for_model(
    model, flash_attn: str, *, device_type: str, half_precision: bool
) -> VarlenKernel | None:
    """The kernel for this model on the device it will train on (the Trainer moves it there
    later: at this point it may still be on the CPU)."""
    config = text_config(model.config)
    return choose_kernel(
        flash_attn,
        device_type=device_type,
        half_precision=half_precision,
        softcap=getattr(config, "attn_logit_softcapping", None) is not None,
        dropout=bool(getattr(config, "attention_dropout", 0.0)),
    )


def use_varlen_attention(model, kernel: VarlenKernel | None = PER_SAMPLE_SDPA) -> bool:
    """Switch the model to `kernel` for flattened rows; False (unchanged) when there is none or
    the model runs eager attention (whose masks isolate packed samples by themselves)."""
    current = getattr(model.config, "_attn_implementation", None)
    if kernel is None or current in (None, "eager"):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(kernel.name, kernel.function)
    if current not in KERNELS:
        _loaded_attention[model] = current  # what restore_attention goes back to
    model.set_attn_implementation(kernel.name)
    return True


def varlen_kernel_of(model) -> VarlenKernel | None:
    return KERNELS.get(getattr(model.config, "_attn_implementation", None))


def restore_attention(model) -> None:
    """Back to the attention the model was loaded with, after training."""
    if varlen_kernel_of(model) is not None:
        model.set_attn_implementation(_loaded_attention.get(model, "sdpa"))
