"""Tokenizer and model from a resolved local folder: dtype, attention, adapters for inference."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge import device
from lmforge.config.schema import comma_separated
from lmforge.errors import UserError
from lmforge.model.moe import enable_router_loss
from lmforge.model.pissa import check_reloadable
from lmforge.model.rope import RopeScaling, apply_rope_scaling

logger = logging.getLogger(__name__)

_ATTENTION = {"auto": "sdpa", "sdpa": "sdpa", "disabled": "eager", "fa2": "flash_attention_2"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def attention_implementation(flash_attn: str) -> str:
    name = _ATTENTION[flash_attn]
    if name == "flash_attention_2":
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise UserError(
                "flash_attn: fa2 needs the flash-attn package and a CUDA GPU",
                fix="pip install flash-attn, or set flash_attn: sdpa",
            ) from None
    return name


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss; EOS is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class Quantization:
    """How a base loads quantized (bitsandbytes): QLoRA's for training, `quantization_bit` for
    inference."""

    bits: int  # 4 or 8
    kind: str = "nf4"  # 4-bit: nf4 or fp4
    double: bool = True  # 4-bit: the scales quantized too
    # What the quantized linear layers compute in: the run's 16-bit autocast dtype, else fp32
    # (bf16 on a GPU without it would be emulated, or refused).
    compute_dtype: torch.dtype = torch.bfloat16
    # ZeRO-3 or FSDP: the packed 4-bit values are stored as bf16, the dtype of the rest, so they
    # can be flattened and split with it, and the model is not placed on a device here (the
    # sharding engine places each shard), as LLaMA-Factory does for fsdp+qlora and ZeRO-3.
    sharded: bool = False

    @classmethod
    def of(cls, method_config, compute_dtype: torch.dtype, *, sharded: bool = False):
        """The config's quantization (`MethodConfig`), or None without quantization_bit."""
        return cls.of_frozen(
            method_config.quantization_bit, method_config, compute_dtype, sharded=sharded
        )

    @classmethod
    def of_frozen(
        cls, bits: int | None, method_config, compute_dtype: torch.dtype, *, sharded: bool = False
    ):
        """A model loaded in `bits` (quantization_bit; for a model that never trains,
        ref_model_quantization_bit or reward_model_quantization_bit) with the config's 4-bit
        settings; None without bits."""
        if not bits:
            return None
        return cls(
            bits=bits,
            kind=method_config.quantization_type,
            double=method_config.double_quantization,
            compute_dtype=compute_dtype,
            sharded=sharded,
        )

    def transformers_config(self):
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=self.bits == 4,
            load_in_8bit=self.bits == 8,
            bnb_4bit_quant_type=self.kind,
            bnb_4bit_use_double_quant=self.double,
            bnb_4bit_compute_dtype=self.compute_dtype,
            bnb_4bit_quant_storage=torch.bfloat16 if self.sharded else torch.uint8,
        )


def model_config(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    rope=None,
    router_aux_loss_coef: float | None = None,
):
    """The transformers config of the model in `path`, with `rope` (a RopeScaling) applied,
    and a mixture-of-experts model's router loss on at `router_aux_loss_coef` (moe_aux_loss_coef)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if rope is not None:
        apply_rope_scaling(config, rope)
    if router_aux_loss_coef is not None:
        enable_router_loss(config, router_aux_loss_coef)
    return config


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    flash_attn: str = "auto",
    trust_remote_code: bool = False,
    quantization: Quantization | None = None,
    random_weights: bool = False,
    rope: RopeScaling | None = None,
    router_aux_loss_coef: float | None = None,
):
    """The causal LM in `path`; random_weights: its architecture with freshly initialised
    weights (train_from_scratch; the caller seeds the generator); rope: its rotary embedding
    scaled so (model/rope.py); router_aux_loss_coef: see model_config."""
    from transformers import AutoModelForCausalLM

    config = None
    if random_weights or rope is not None or router_aux_loss_coef is not None:
        config = model_config(
            path,
            trust_remote_code=trust_remote_code,
            rope=rope,
            router_aux_loss_coef=router_aux_loss_coef,
        )
    if random_weights:
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=dtype,
            attn_implementation=attention_implementation(flash_attn),
            trust_remote_code=trust_remote_code,
        )
        _fold_head_inputs(model)
        return model
    extra = {}
    if quantization is not None:
        # On this process's GPU (bitsandbytes quantizes as the weights move there), or on the
        # CPU, which bitsandbytes >= 0.47.0 (BITSANDBYTES_MIN) runs too.
        extra["quantization_config"] = quantization.transformers_config()
        if not quantization.sharded:
            device = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.is_available() else "cpu"
            extra["device_map"] = {"": device}
    if config is not None:
        extra["config"] = config
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        attn_implementation=attention_implementation(flash_attn),
        trust_remote_code=trust_remote_code,
        **extra,
    )
    _fold_head_inputs(model)
    if quantization is not None:
        if not torch.cuda.is_available():
            _keep_4bit_weights_unpacked(model)
        # The base is frozen and its other weights (embeddings, norms, head) stay in the dtype
        # they loaded in (bf16 under bf16), as LLaMA-Factory keeps them. peft's
        # prepare_model_for_kbit_training turns them fp32, which on Gemma's 262k-token
        # embeddings costs more than quantizing the linear layers saves (gemma-3-270m QLoRA on
        # the CPU: 2.88 GB peak vs LoRA's 2.43); the norms compute in fp32 inside the model.
        model.requires_grad_(False)
    return model


def _fold_head_inputs(model) -> None:
    """Give the output head its input with plain strides. With logits_to_keep (scoring,
    reward values, generation's prefill) the model hands the head a slice hidden[:, -k:] that
    keeps the whole sequence's batch stride; torch.matmul then does not fold it into one
    matrix product but runs a batched one, which for 16-bit weights on a CPU first copies the
    whole weight (gemma-3-270m, bf16, one position: 0.9 s a call instead of 27 ms; a batch of
    4: 3.2 s). A copy of the few kept positions avoids it."""
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Module):
        head.register_forward_pre_hook(_with_plain_strides)


def _with_plain_strides(_module, args):
    hidden = args[0] if args else None
    if isinstance(hidden, torch.Tensor) and hidden.dim() > 2 and not _plain_strides(hidden):
        return (hidden.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def _plain_strides(tensor: torch.Tensor) -> bool:
    """Row-major strides in every dimension, size-1 ones included (torch calls a tensor
    contiguous whatever the stride of a size-1 dimension; matmul's folding does not)."""
    expected = 1
    for size, stride in zip(reversed(tensor.shape), reversed(tensor.stride())):
        if stride != expected:
            return False
        expected *= size
    return True


def _keep_4bit_weights_unpacked(model) -> None:
    """bitsandbytes (0.49 on) repacks a 4-bit weight for its fast CPU kernel the first time
    the layer runs in eval mode without gradients (the packing check, an evaluation), in place,
    and the input gradients through a repacked weight come out wrong (LoRA gradient norm 0.13
    instead of 0.29 after one eval forward, same loss). Training keeps the layout it was
    loaded in; the flag does not exist in the versions that never repack."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def inference_dtype(infer_dtype: str) -> torch.dtype:
    """`auto`: bf16 where the device inference runs on (a CUDA GPU, else the CPU) computes it
    natively: a GPU that supports it, a CPU with AVX512-BF16/AMX/Arm BF16 (generation reads
    every weight once per token; half the bytes made it 1.9x faster on Gemma-3-270M). Else
    fp16 on a GPU, fp32 on a CPU (emulated bf16 is slower than fp32)."""
    if infer_dtype != "auto":
        return _DTYPES[infer_dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.cpu_supports_bf16() else torch.float32


def load_for_inference(path, model_config, method_config=None, tokenizer=None, rope=None):
    """The model at `path` as inference loads it: the config's infer_dtype, attention
    implementation and trust_remote_code (`model_config` is a ModelConfig); with
    `method_config.quantization_bit` its linear layers in 4 or 8 bits (bitsandbytes), on this
    process's device already, as LLaMA-Factory's `quantization_bit` does for chat and eval.
    On a GPU, there (adapters attached afterwards follow it). With `tokenizer`: rows for the
    tokens training added to it (the adapter brings their trained values); with `rope`
    (ModelSetup.rope): the RoPE scaling it was trained with."""
    from lmforge.model.new_tokens import fit_vocabulary, grows_vocabulary

    dtype = inference_dtype(model_config.infer_dtype)
    quantization = Quantization.of(method_config, dtype) if method_config is not None else None
    model = load_model(
        path,
        dtype=dtype,
        flash_attn=model_config.flash_attn,
        trust_remote_code=model_config.trust_remote_code,
        quantization=quantization,
        rope=rope,
    )
    if tokenizer is not None and grows_vocabulary(model_config):
        fit_vocabulary(model, tokenizer)
    if torch.cuda.is_available() and not is_quantized(model):  # quantized: placed at load
        model = model.to("cuda")
    return model


def is_quantized(model) -> bool:
    """Loaded in 4 or 8 bits: placed on its device at load, and adapters stay unmerged (merging
    into quantized weights would round them again)."""
    return getattr(model, "hf_quantizer", None) is not None


def attach_adapters(model, adapter_paths: list[str], *, merge: bool):
    """Load LoRA adapters on top of `model`; merged for inference speed when `merge`."""
    from peft import PeftModel

    for adapter in adapter_paths:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(
                f"adapter folder {adapter} has no adapter_config.json",
                fix="point adapter_name_or_path at a training output_dir (or a checkpoint in it), "
                "or set adapter_name_or_path=null to use the base model",
            )
        check_reloadable(adapter)
        model = PeftModel.from_pretrained(model, adapter)
        if merge:
            model = model.merge_and_unload()
    return model


split_paths = comma_separated  # adapter_name_or_path's folders
