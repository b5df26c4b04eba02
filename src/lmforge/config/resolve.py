"""Derived values and cross-checks, in one explicit pass after loading.

Only configuration logic lives here; facts about the machine (bf16 support) are passed in, so
this module imports nothing else of lmforge.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config.method_checks import check_method_settings
from lmforge.config.plan import (
    Batching,
    Checkpointing,
    Evaluation,
    Precision,
    Resume,
    RunPlan,
    keeps_frozen_weights_bf16,
)
from lmforge.config.schema import STAGES, Config, comma_separated
from lmforge.errors import UserError

_RESUME_AUTO = {"auto", "true", "latest"}
_RESUME_OFF = {"false", "none", "no", ""}


def resolve_for_training(
    config: Config, *, bf16_supported: bool, cuda: bool, check_output_dir: bool = True
) -> RunPlan:
    """Check the config for training and derive the run plan. The config is not changed."""
    model, method, data, train = config.model, config.method, config.data, config.train
    _require(config, "model_name_or_path", model.model_name_or_path, "gemma-3-270m")
    if not train.do_train:
        raise UserError(
            "do_train is false, so `lmforge train` has nothing to do",
            where=config.where("do_train"),
            fix="set do_train: true",
        )
    if method.stage not in STAGES:
        raise UserError(
            f"stage `{method.stage}` is not available in this version of lmforge",
            fix=f"use stage: {' or '.join(STAGES)}",
        )
    if not data.datasets:  # inline datasets are all used when `dataset` is not set
        _require(config, "dataset", data.dataset, "identity")
    _require(config, "output_dir", train.output_dir, "saves/my-run")
    if method.stage == "ppo" and not method.reward_model:
        raise UserError(
            "stage ppo needs a reward model",
            where=config.where("reward_model"),
            fix="train one with stage: rm, then set reward_model: to its output_dir",
        )
    if method.stage == "grpo" and not (method.reward_funcs or method.reward_model):
        raise UserError(
            "stage grpo needs rewards",
            where=config.where("reward_funcs"),
            fix="set reward_funcs (exact_match, regex_match, numeric_match or module:function) "
            "and/or reward_model (the output_dir of an rm run)",
        )
    _check_quantization(config)
    _check_frozen_model_loading(config)
    check_method_settings(config)
    if method.loraplus_lr_ratio is not None and method.finetuning_type != "lora":
        raise UserError(
            "loraplus_lr_ratio works with finetuning_type: lora only",
            where=config.where("loraplus_lr_ratio"),
            fix="set finetuning_type: lora or remove loraplus_lr_ratio",
        )
    _check_scheduler(config)
    notes: list[str] = []
    precision = _precision(config, bf16_supported, cuda, notes)
    evaluation = _evaluation(config)
    resume = _resume(config)
    if check_output_dir:
        _check_output_dir(config, resume)
    return RunPlan(
        lora_alpha=method.lora_alpha if method.lora_alpha is not None else 2 * method.lora_rank,
        precision=precision,
        evaluation=evaluation,
        resume=resume,
        batching=_batching(config),
        checkpointing=_checkpointing(config),
        notes=tuple(notes),
    )


def _checkpointing(config: Config) -> Checkpointing:
    """gradient_checkpointing as given; else LLaMA-Factory's disable_gradient_checkpointing as
    given (false: on); else off, and the memory check may turn it on."""
    train = config.train
    if "gradient_checkpointing" in config.given:
        return Checkpointing(on=train.gradient_checkpointing)
    if "disable_gradient_checkpointing" in config.given:
        return Checkpointing(on=not train.disable_gradient_checkpointing)
    return Checkpointing(on=False, auto=True)


def _batching(config: Config) -> Batching:
    """padding_free unset: on for supervised fine-tuning without packing, the fastest correct
    layout on the CPU and on CUDA (benchmarks/README.md); the stage falls back to padded rows
    when the model cannot keep samples in one row apart."""
    data = config.data
    if data.padding_free is not None:
        return Batching(padding_free=data.padding_free)
    packing = bool(data.packing or data.neat_packing)
    return Batching(padding_free=config.method.stage == "sft" and not packing, auto=True)


def _precision(config: Config, bf16_supported: bool, cuda: bool, notes: list[str]) -> Precision:
    """What the device can run of the precision asked for; each fallback noted."""
    train, method = config.train, config.method
    if train.bf16 and train.fp16:
        raise UserError(
            "bf16 and fp16 are both true", where=config.where("fp16"), fix="keep one of them"
        )
    bf16, fp16, pure_bf16 = train.bf16, train.fp16, method.pure_bf16
    if bf16 and not bf16_supported:
        bf16 = False
        notes.append(
            "bf16: this device has no native bfloat16, so training runs in fp32 "
            "(slower emulated bf16 would not save time here)"
        )
    if pure_bf16 and not bf16_supported:
        pure_bf16 = False
        notes.append("pure_bf16: this device has no native bfloat16; weights stay fp32")
    if pure_bf16:
        bf16 = False  # the weights are bf16 already: autocast would only add casts
    if fp16 and not cuda:
        fp16 = False
        notes.append("fp16: mixed fp16 needs a CUDA GPU; training runs in fp32")
    # as LLaMA-Factory
    frozen_bf16 = keeps_frozen_weights_bf16(bf16, method.finetuning_type, method.use_badam)
    return Precision(
        bf16=bf16,
        fp16=fp16,
        pure_bf16=pure_bf16,
        frozen_bf16=frozen_bf16,
        quantization_bit=method.quantization_bit,
        quantization_type=method.quantization_type,
    )


def _check_quantization(config: Config) -> None:
    """QLoRA's settings for training (_check_quantized_loading, and what trains on it)."""
    bits = config.method.quantization_bit
    if bits is None:
        return
    _check_quantized_loading(config)
    if config.method.finetuning_type != "lora":
        raise UserError(
            f"quantization_bit needs finetuning_type: lora (QLoRA), not "
            f"{config.method.finetuning_type}: quantized weights cannot be trained directly",
            where=config.source,
            fix="set finetuning_type: lora, or remove quantization_bit",
        )
    if config.method.pissa_init:
        raise UserError(
            "pissa_init cannot start from a quantized base: PiSSA splits the full-precision "
            f"weights into adapter and residual, and quantization_bit: {bits} leaves none",
            where=config.where("pissa_init"),
            fix="remove pissa_init (plain LoRA init), or quantization_bit (PiSSA on the "
            "full-precision base)",
        )


def _check_frozen_model_loading(config: Config) -> None:
    """ref_model_adapters and ref_model_quantization_bit change how ref_model loads;
    reward_model_quantization_bit how reward_model does."""
    method = config.method
    for key, model, example in (
        ("ref_model_adapters", "ref_model", "to model_name_or_path"),
        ("ref_model_quantization_bit", "ref_model", "to model_name_or_path"),
        ("reward_model_quantization_bit", "reward_model", "to an rm run's output_dir"),
    ):
        if getattr(method, key) is not None and not getattr(method, model):
            raise UserError(
                f"{key} applies to {model}, which is not set",
                where=config.where(key),
                fix=f"set {model} ({example}), or remove {key}",
            )
        if key.endswith("_bit"):
            _check_bits(config, key)
    for folder in comma_separated(method.ref_model_adapters):
        if not (Path(folder) / "adapter_config.json").is_file():
            raise UserError(
                f"ref_model_adapters: {folder} has no adapter_config.json",
                where=config.where("ref_model_adapters"),
                fix="point it at the output_dir (or a checkpoint) of a LoRA run",
            )


def _check_quantized_loading(config: Config) -> None:
    """`quantization_bit` (training or inference): 4 or 8, and a bitsandbytes that can."""
    _check_bits(config, "quantization_bit")


def _check_bits(config: Config, key: str) -> None:
    """A quantization key of the method (`quantization_bit`, `ref_model_quantization_bit`,
    `reward_model_quantization_bit`): unset, or 4 or 8 with a bitsandbytes that can."""
    bits = getattr(config.method, key)
    if bits is None:
        return
    if bits not in (4, 8):
        raise UserError(
            f"{key}: {bits} is not supported", where=config.where(key), fix="use 4 or 8"
        )
    _check_bitsandbytes()


# transformers 5 quantizes with 0.46.1 on; on the CPU 0.46.1 trains 8-bit LoRA without
# learning (losses flat) and has no fp4, so 0.47.0 is the floor (.ci/lower-bounds tests it).
BITSANDBYTES_MIN = "0.47.0"


def _check_bitsandbytes() -> None:
    from packaging.version import Version

    try:
        import bitsandbytes
    except ImportError:
        raise UserError(
            "quantization_bit needs the bitsandbytes package",
            fix="pip install 'lmforge[bitsandbytes]'",
        ) from None
    if Version(bitsandbytes.__version__) < Version(BITSANDBYTES_MIN):
        raise UserError(
            f"quantization_bit needs bitsandbytes >= {BITSANDBYTES_MIN}, and "
            f"{bitsandbytes.__version__} is installed",
            fix="pip install -U 'lmforge[bitsandbytes]'",
        )


def resolve_for_inference(config: Config) -> Config:
    _require(config, "model_name_or_path", config.model.model_name_or_path, "gemma-3-270m")
    _check_quantized_loading(config)  # quantization_bit: the base answers in 4/8 bits
    adapters = comma_separated(config.model.adapter_name_or_path)
    if config.method.quantization_bit and len(adapters) > 1:
        raise UserError(
            f"quantization_bit: {config.method.quantization_bit} takes one adapter in "
            f"adapter_name_or_path, and {len(adapters)} are given: adapters are merged into "
            "the base, and merging into quantized weights would round them again",
            where=config.where("adapter_name_or_path"),
            fix="merge them into a full-precision model first (`lmforge export` without "
            "quantization_bit) and answer with that, or remove quantization_bit",
        )
    return config


def _get(config: Config, key: str):
    for section in (config.model, config.method, config.data, config.train, config.generate):
        if hasattr(section, key):
            return getattr(section, key)
    raise KeyError(key)


def _require(config: Config, key: str, value, example: str) -> None:
    if value in (None, ""):
        raise UserError(
            f"`{key}` is not set",
            where=config.where(key),
            fix=f"add `{key}: {example}` (or {key}=...)",
        )


def _check_scheduler(config: Config) -> None:
    from transformers.trainer_utils import SchedulerType

    names = [s.value for s in SchedulerType]
    if config.train.lr_scheduler_type not in names:
        raise UserError(
            f"unknown lr_scheduler_type `{config.train.lr_scheduler_type}`",
            where=config.where("lr_scheduler_type"),
            fix=f"use one of: {', '.join(names)}",
        )


def _evaluation(config: Config) -> Evaluation:
    data, train = config.data, config.train
    # `val_size: auto` may hold data out (known once the data is read; run.py checks then).
    auto = data.val_size == "auto" and config.method.stage not in ("ppo", "grpo")
    has_eval = (auto and not data.streaming) or bool(data.eval_dataset)
    has_eval = has_eval or (data.val_size != "auto" and data.val_size > 0)
    wants_eval = (
        train.eval_strategy != "no"
        or train.early_stopping_patience
        or train.compute_accuracy
        or train.load_best_model_at_end
    )
    if wants_eval and not has_eval:
        raise UserError(
            "evaluation is asked for (eval_strategy, early_stopping_patience, compute_accuracy "
            "or load_best_model_at_end) but there is no evaluation data",
            where=config.source,
            fix="set val_size (e.g. 0.1) or eval_dataset",
        )
    # Early stopping ends on the best checkpoint, so it needs evaluation and keeps the best.
    load_best = bool(train.load_best_model_at_end or train.early_stopping_patience)
    strategy = train.eval_strategy if has_eval else "no"
    if strategy == "no" and has_eval and train.eval_steps:  # eval_steps set: evaluate then
        strategy = "steps"
    if load_best:
        if strategy == "no":
            strategy = "steps"
        eval_steps = train.eval_steps or train.logging_steps
        if strategy == "steps" and train.save_steps % eval_steps:
            reason = "early stopping" if train.early_stopping_patience else "load_best_model_at_end"
            raise UserError(
                f"{reason} keeps the best checkpoint, so save_steps ({train.save_steps}) "
                f"must be a multiple of eval_steps ({eval_steps})",
                where=config.source,
                fix=f"set save_steps: {eval_steps * max(train.save_steps // eval_steps, 1)}",
            )
    return Evaluation(strategy=strategy, load_best_model_at_end=load_best)


def _resume(config: Config) -> Resume:
    """The checkpoint named by resume_from_checkpoint, or `auto` (train/checkpoints.py picks the
    newest whole one once the run starts)."""
    value = config.train.resume_from_checkpoint
    name = (value or "").lower()
    if name in _RESUME_OFF:
        return Resume()
    if name in _RESUME_AUTO:
        return Resume(auto=True)
    if not (Path(value) / "trainer_state.json").is_file():
        raise UserError(
            f"resume_from_checkpoint: {value} is not a checkpoint folder (no trainer_state.json)",
            where=config.where("resume_from_checkpoint"),
            fix="give a checkpoint-N folder from a previous run, or `auto` for the newest one",
        )
    return Resume(checkpoint=value)


def _check_output_dir(config: Config, resume: Resume) -> None:
    output_dir = Path(config.train.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir {output_dir} is a file", fix="choose a folder path")
    if config.train.overwrite_output_dir or resume.checkpoint or resume.auto:
        return  # `auto` without a checkpoint yet: a fresh start is fine
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise UserError(
            f"output_dir {output_dir} is not empty",
            where=config.where("output_dir"),
            fix="choose a new output_dir, set overwrite_output_dir: true to replace it, "
            "or resume_from_checkpoint: auto to continue its newest checkpoint",
        )
