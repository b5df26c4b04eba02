"""The settings an estimate depends on, read once from the config (and the run plan).

Advice changes a copy of these (`dataclasses.replace`) and estimates again; nothing here is
read from the config a second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from lmforge.config.plan import keeps_frozen_weights_bf16, loads_untrained_models_bf16
from lmforge.config.schema import copies_reference_model, uses_reference_model
from lmforge.errors import UserError
from lmforge.train.launch import fsdp_requested

# Optimizer states per trainable parameter, in units of the parameter's bytes (adam: two
# states) or absolute bytes (8-bit optimizers keep one byte per state).
OPTIMIZER_STATES: dict[str, tuple[float, str]] = {
    "adamw_torch": (2, "x"),
    "adamw_torch_fused": (2, "x"),
    "adamw_hf": (2, "x"),
    "adamw_apex_fused": (2, "x"),
    "adamw_torch_xla": (2, "x"),
    "adamw_torch_npu_fused": (2, "x"),
    "paged_adamw_32bit": (2, "x"),
    "adamw_anyprecision": (2, "x"),
    "adamw_8bit": (2, "bytes"),
    "adamw_bnb_8bit": (2, "bytes"),
    "paged_adamw_8bit": (2, "bytes"),
    "adamw_torch_4bit": (1, "bytes"),
    "lion_32bit": (1, "x"),
    "paged_lion_32bit": (1, "x"),
    "lion_8bit": (1, "bytes"),
    "paged_lion_8bit": (1, "bytes"),
    "rmsprop": (1, "x"),
    "adagrad": (1, "x"),
    "sgd": (0, "x"),
    "adafactor": (0.02, "x"),  # factored second moments: rows + columns, not rows x columns
    "adam_mini": (1, "x"),  # first moments; one second moment per block (counted as none)
}


# LLaMA-Factory's optimizers that keep fewer states than AdamW but are counted as AdamW's
# (an upper bound): Muon one per hidden weight, GaLore and APOLLO low-rank ones.
FEWER_THAN_ADAMW = ("muon", "galore_adamw", "apollo_adamw")


def optimizer_name(method, passthrough: dict) -> str:
    """The optimizer a run uses: LLaMA-Factory's optimizer keys (train/optimizers.py) or
    transformers' `optim`. FEWER_THAN_ADAMW are not in OPTIMIZER_STATES: the report says
    their states are counted as AdamW's, more than they keep."""
    for key, name in (
        ("use_muon", "muon"),
        ("use_adam_mini", "adam_mini"),
        ("use_galore", "galore_adamw"),
        ("use_apollo", "apollo_adamw"),
    ):
        if getattr(method, key):
            return name
    return str(passthrough.get("optim") or "adamw_torch")


@dataclass(frozen=True)
class Settings:
    stage: str
    finetuning_type: str
    lora_rank: int
    quantization_bit: int | None
    pure_bf16: bool
    autocast_16bit: bool  # bf16/fp16 mixed precision: activations kept in 16 bits
    batch_size: int
    accumulation: int
    gradient_checkpointing: bool
    chunked_loss: bool  # asked for; used unless the head is adapted (see memory.py)
    lean_mlp: bool  # model/gated_mlp.py (not with liger or DeepSpeed)
    optim: str
    zero_stage: int  # 0: no DeepSpeed
    offload_optimizer: bool
    offload_param: bool
    world_size: int
    cutoff_len: int
    packing: bool
    padding_free: bool
    per_sample_attention: bool  # sdpa/fa2 run attention per sample in flattened rows
    reference_copy: (
        bool  # a frozen copy of the model as reference (dpo/kto/ppo/grpo/ASFT, not LoRA)
    )
    reward_model: bool  # ppo (grpo with reward_model): a second model scores rollouts
    generated_tokens: int  # ppo/grpo: tokens generated after each prompt
    generations: int  # grpo: completions per prompt
    epochs: float
    max_steps: int
    seed: int
    liger: bool = False  # use_liger_kernel: liger's fused loss, RMSNorm, RoPE and gated MLPs
    bf16: bool = False  # bf16 mixed precision (autocast_16bit is bf16 or fp16)
    # Precision.frozen_bf16: bf16 mixed precision with LoRA or freeze loads the model in bf16 and
    # turns only the trained parameters fp32 (config/resolve.py, train/run.py training_dtype)
    frozen_bf16: bool = False
    reference_loaded: bool = False  # an explicit `ref_model`: a second model, loaded
    reference_bits: int | None = None  # ref_model_quantization_bit
    reward_bits: int | None = None  # reward_model_quantization_bit
    # dpo/kto/ASFT: every batch also runs forward through the reference (no gradient)
    reference_forward: bool = False
    double_quantization: bool = True  # QLoRA 4-bit: the scales quantized too

    @property
    def frozen_model_bytes(self) -> int:
        """Bytes per weight of a model that never trains (`ref_model`, the reward model), as
        Precision.frozen_model_dtype loads it."""
        return 2 if loads_untrained_models_bf16(self.bf16, self.pure_bf16) else 4

    @property
    def frozen_weights_bf16(self) -> bool:
        """Frozen weights in bf16 under bf16 autocast, trained ones in fp32; with QLoRA the
        frozen linear layers are quantized and the rest bf16 (under fp16 or none: fp32)."""
        return self.frozen_bf16 and self.autocast_16bit and not self.pure_bf16

    @property
    def weight_bytes(self) -> int:
        """Bytes per frozen weight (QLoRA: per one not quantized, see memory.py), and of the
        model's hidden states: fp32, bf16 with pure_bf16 or frozen_bf16."""
        return 2 if (self.pure_bf16 or self.frozen_weights_bf16) else 4

    @property
    def activation_bytes(self) -> int:
        return 2 if (self.autocast_16bit or self.pure_bf16) else 4

    @property
    def mixed_precision(self) -> bool:
        """bf16/fp16 autocast over fp32 weights (full fine-tuning, fp16): the residual stream
        and norms stay fp32 while the linear layers compute in 16 bits."""
        return self.autocast_16bit and not (self.pure_bf16 or self.frozen_weights_bf16)


def with_finetuning_type(settings: Settings, finetuning_type: str, **changes) -> Settings:
    """`settings` with another fine-tuning method (and `changes`); the frozen weights' dtype
    follows as config/resolve.py derives it: bf16 under bf16 mixed precision unless full."""
    new = replace(settings, finetuning_type=finetuning_type, **changes)
    return replace(new, frozen_bf16=keeps_frozen_weights_bf16(new.bf16, finetuning_type))


def settings_from_config(
    config, plan=None, *, world_size: int = 1, device_kind: str = "cpu"
) -> Settings:
    """Settings of the run `config` describes on `world_size` devices of `device_kind`."""
    method, data, train = config.method, config.data, config.train
    passthrough = config.passthrough
    zero, offload_opt, offload_param = deepspeed_settings(passthrough.get("deepspeed"), config)
    if plan is not None:
        precision = plan.precision
        autocast = precision.bf16 or precision.fp16
        pure = precision.pure_bf16
        bf16 = precision.bf16
        frozen_bf16 = precision.frozen_bf16
    else:  # what config/resolve.py's _precision derives on a device with bf16
        autocast = bool(train.bf16 or train.fp16)
        pure = bool(method.pure_bf16)
        bf16 = bool(train.bf16) and not pure
        frozen_bf16 = keeps_frozen_weights_bf16(bf16, method.finetuning_type, method.use_badam)
    liger = bool(passthrough.get("use_liger_kernel"))  # only when asked for (train/run.py)
    stage = method.stage
    uses_reference = uses_reference_model(method)
    return Settings(
        stage=stage,
        finetuning_type=method.finetuning_type,
        lora_rank=method.lora_rank,
        quantization_bit=method.quantization_bit,
        double_quantization=method.double_quantization,
        pure_bf16=pure,
        autocast_16bit=autocast,
        batch_size=train.per_device_train_batch_size,
        accumulation=train.gradient_accumulation_steps,
        gradient_checkpointing=plan.checkpointing.on
        if plan is not None
        else bool(train.gradient_checkpointing),
        # as train/stages/language_model.py: not under ZeRO-3 or FSDP (the head's weight is a
        # shard where the loss reads it)
        chunked_loss=bool(train.chunked_loss and not train.compute_accuracy and not liger)
        and stage in ("sft", "pt")
        and zero != 3
        and not fsdp_requested(config),
        lean_mlp=device_kind == "cpu" and not liger and not zero,  # CPU only, as train/run.py
        optim=optimizer_name(method, passthrough),
        zero_stage=zero,
        offload_optimizer=offload_opt,
        offload_param=offload_param,
        world_size=max(1, world_size),
        cutoff_len=data.cutoff_len,
        packing=bool(data.packing or data.neat_packing),
        padding_free=_padding_free(config, plan),
        per_sample_attention=config.model.flash_attn != "disabled",
        reference_copy=copies_reference_model(method),
        reference_loaded=uses_reference and bool(method.ref_model),
        reference_bits=method.ref_model_quantization_bit if method.ref_model else None,
        reward_bits=method.reward_model_quantization_bit if method.reward_model else None,
        reference_forward=uses_reference and stage in ("dpo", "kto", "sft"),
        reward_model=stage == "ppo" or (stage == "grpo" and bool(method.reward_model)),
        generated_tokens=method.max_completion_length if stage in ("ppo", "grpo") else 0,
        generations=method.num_generations if stage == "grpo" else 1,
        epochs=float(train.num_train_epochs),
        max_steps=int(train.max_steps),
        seed=int(train.seed),
        liger=liger,
        bf16=bool(bf16),
        frozen_bf16=bool(frozen_bf16),
    )


def _padding_free(config, plan) -> bool:
    """The plan's batching (padding_free unset: on for sft without packing), else the key."""
    batching = getattr(plan, "batching", None)
    if batching is not None:
        return bool(batching.padding_free)
    data = config.data
    if data.padding_free is None:
        return config.method.stage == "sft" and not (data.packing or data.neat_packing)
    return bool(data.padding_free)


def deepspeed_settings(value, config) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offloaded, parameters offloaded) of a DeepSpeed config file or
    dict; (0, False, False) without DeepSpeed."""
    if not value:
        return 0, False, False
    if isinstance(value, dict):
        ds = value
    else:
        path = Path(str(value))
        try:
            ds = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(
                f"deepspeed: {value} cannot be read as a DeepSpeed JSON file ({exc})",
                where=config.where("deepspeed"),
                fix="point deepspeed at a JSON file such as examples/deepspeed/ds_z3_config.json",
            ) from None
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0) or 0)

    def offloaded(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() in ("cpu", "nvme")

    return stage, offloaded("offload_optimizer"), offloaded("offload_param")


def optimizer_bytes_per_param(optim: str, param_bytes: int) -> tuple[float, bool]:
    """Bytes of optimizer state per trainable parameter, and whether the optimizer is known."""
    name = optim.lower()
    if name in OPTIMIZER_STATES:
        count, unit = OPTIMIZER_STATES[name]
        return (count * param_bytes if unit == "x" else float(count)), True
    for known, (count, unit) in OPTIMIZER_STATES.items():  # e.g. adamw_torch_fused variants
        if name.startswith(known.split("_")[0]) and ("8bit" in name) == ("8bit" in known):
            return (count * param_bytes if unit == "x" else float(count)), True
    return 2.0 * param_bytes, False
