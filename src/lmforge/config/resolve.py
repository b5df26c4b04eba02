"""Derived values and cross-checks, in one explicit pass after loading.

Only configuration logic lives here; facts about the machine (bf16 support) are passed in, so
this module imports nothing else of lmforge.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.config.plan import (
    Batching,
    Evaluation,
    Precision,
    Resume,
    RunPlan,
    keeps_frozen_weights_bf16,
)
from lmforge.config.schema import STAGES, Config, comma_separated, trains_adapter
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
    _check_preference(config)
    _check_sft_loss(config)
    _check_from_scratch(config)
    _check_llama_pro(config)
    _check_new_tokens(config)
    _one_optimizer(config)
    _check_own_optimizers(config)
    _check_low_rank(config)
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
        notes=tuple(notes),
    )


def _check_preference(config: Config) -> None:
    """Settings of one DPO loss given with another, which would ignore them."""
    method = config.method
    if method.stage != "dpo":
        return
    if method.dpo_label_smoothing > 0 and method.pref_loss != "sigmoid":
        raise UserError(
            f"dpo_label_smoothing works with pref_loss: sigmoid only (it is {method.pref_loss})",
            where=config.where("dpo_label_smoothing"),
            fix="set pref_loss: sigmoid or remove dpo_label_smoothing",
        )
    if method.pref_bco_weight > 0 and method.pref_loss in ("orpo", "simpo"):
        raise UserError(
            f"pref_bco_weight needs a reference model, which pref_loss: {method.pref_loss} "
            "does not use",
            where=config.where("pref_bco_weight"),
            fix="set pref_loss: sigmoid, hinge or ipo, or remove pref_bco_weight",
        )


def _check_sft_loss(config: Config) -> None:
    """DFT and EAFT weigh SFT's token losses, which only lmforge's own losses compute."""
    method = config.method
    asked = [k for k in ("use_dft_loss", "use_eaft_loss") if getattr(method, k)]
    if not asked:
        return
    if len(asked) > 1:
        raise UserError(
            "use_dft_loss and use_eaft_loss are both true",
            where=config.where("use_eaft_loss"),
            fix="keep one of them",
        )
    key = asked[0]
    if method.stage != "sft":
        raise UserError(
            f"{key} weighs supervised fine-tuning's loss, and this is stage {method.stage}",
            where=config.where(key),
            fix=f"set stage: sft or remove {key}",
        )
    if config.passthrough.get("use_liger_kernel"):
        raise UserError(
            f"{key} needs lmforge's loss, and use_liger_kernel computes liger's own inside the "
            "model",
            where=config.where(key),
            fix=f"remove use_liger_kernel or {key}",
        )


def _check_from_scratch(config: Config) -> None:
    """Random weights are worth training only whole: an adapter or a few unfrozen layers on
    them would be saved without the random base they need."""
    model, method = config.model, config.method
    if not model.train_from_scratch:
        return
    if method.finetuning_type != "full":
        raise UserError(
            f"train_from_scratch starts from random weights, and finetuning_type "
            f"{method.finetuning_type} would save only part of the model (the random rest "
            "is lost)",
            where=config.where("finetuning_type"),
            fix="set finetuning_type: full, or remove train_from_scratch",
        )
    if model.adapter_name_or_path:
        raise UserError(
            "train_from_scratch starts from random weights, so adapter_name_or_path (trained "
            "on other weights) cannot apply",
            where=config.where("adapter_name_or_path"),
            fix="remove adapter_name_or_path or train_from_scratch",
        )


def _check_llama_pro(config: Config) -> None:
    method = config.method
    if method.use_llama_pro and method.finetuning_type == "full":
        raise UserError(
            "use_llama_pro trains only the layers `lmforge models expand` added, and "
            "finetuning_type full trains every layer",
            where=config.where("use_llama_pro"),
            fix="set finetuning_type: freeze (or lora), with freeze_trainable_layers: the "
            "number of layers added",
        )
    if method.use_llama_pro and method.freeze_trainable_layers < 0:
        raise UserError(
            f"use_llama_pro: freeze_trainable_layers {method.freeze_trainable_layers} counts "
            "first layers; with LLaMA Pro it is how many layers were added",
            where=config.where("freeze_trainable_layers"),
            fix="set freeze_trainable_layers to the --num-expand the model was expanded with",
        )


def _check_new_tokens(config: Config) -> None:
    from lmforge.model.new_tokens import grows_vocabulary

    if grows_vocabulary(config.model) and config.method.quantization_bit:
        key = next(
            k
            for k in (
                "add_tokens",
                "add_special_tokens",
                "new_special_tokens_config",
                "resize_vocab",
            )
            if getattr(config.model, k)
        )
        raise UserError(
            f"{key} grows the embedding, which a quantized base (quantization_bit) cannot "
            "have resized",
            where=config.where(key),
            fix="train LoRA on the unquantized model (remove quantization_bit), or remove " + key,
        )


def _one_optimizer(config: Config) -> None:
    """use_muon, use_galore, use_apollo, LoRA+ and transformers' `optim` each choose the
    optimizer: at most one of them."""
    method = config.method
    chosen = [
        key
        for key, on in (
            ("use_muon", method.use_muon),
            ("use_galore", method.use_galore),
            ("use_apollo", method.use_apollo),
            ("use_adam_mini", method.use_adam_mini),
            ("loraplus_lr_ratio", method.loraplus_lr_ratio is not None),
            ("optim", bool(config.passthrough.get("optim"))),
        )
        if on
    ]
    if len(chosen) > 1:
        first, second = chosen[:2]
        raise UserError(
            f"{first} and {second} each choose the optimizer",
            where=config.where(first),
            fix=f"keep one of {first} and {second}",
        )


def _check_whole_weights(config: Config, key: str) -> None:
    """Muon, GaLore and APOLLO work on whole 2-D weights: DeepSpeed hands an optimizer flat
    shards, FSDP sharded ones."""
    sharding = [k for k in ("deepspeed", "fsdp") if config.passthrough.get(k)]
    if sharding:
        raise UserError(
            f"{key} needs whole weights, and {sharding[0]} gives the optimizer shards of them",
            where=config.where(key),
            fix=f"remove {sharding[0]} (several GPUs still train with plain data parallelism) "
            f"or {key}",
        )


def _check_own_optimizers(config: Config) -> None:
    """Muon needs whole weights; Adam-mini its package."""
    if config.method.use_muon:
        _check_whole_weights(config, "use_muon")
    if config.method.use_adam_mini:
        if trains_adapter(config.method):
            raise UserError(
                "use_adam_mini splits whole attention weights by head, and an adapter (LoRA, "
                "OFT) trains small matrices beside them (Adam-mini fails on their shapes)",
                where=config.where("use_adam_mini"),
                fix="set finetuning_type: full or freeze, or remove use_adam_mini",
            )
        _check_package(config, "use_adam_mini")


def _check_low_rank(config: Config) -> None:
    """GaLore and APOLLO: full fine-tuning (as LLaMA-Factory), whole weights, their package
    installed; layer-wise updates without gradient accumulation."""
    from lmforge.train.optimizers import low_rank_kind

    method = config.method
    kind = low_rank_kind(method)
    if kind is None:
        return
    key = f"use_{kind}"
    if method.finetuning_type != "full":
        raise UserError(
            f"{key} projects the gradients of whole weights: it works with finetuning_type: "
            f"full (this run: {method.finetuning_type})",
            where=config.where(key),
            fix=f"set finetuning_type: full, or remove {key}",
        )
    _check_whole_weights(config, key)
    if getattr(method, f"{kind}_layerwise") and config.train.gradient_accumulation_steps != 1:
        raise UserError(
            f"{kind}_layerwise updates each weight as its gradient arrives, so gradients cannot "
            f"accumulate (gradient_accumulation_steps: {config.train.gradient_accumulation_steps})",
            where=config.where(f"{kind}_layerwise"),
            fix="set gradient_accumulation_steps: 1 (a larger per_device_train_batch_size "
            f"instead), or {kind}_layerwise: false",
        )
    _check_package(config, key)


def _check_package(config: Config, key: str) -> None:
    """The package an optimizer key needs (PACKAGES), with the extra that installs it."""
    import importlib.util

    from lmforge.train.optimizers import PACKAGES

    module, extra = PACKAGES[key]
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"{key} needs the {module} package, which is not installed",
            where=config.where(key),
            fix=f"pip install 'lmforge[{extra}]'",
        )


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
    frozen_bf16 = keeps_frozen_weights_bf16(bf16, method.finetuning_type)  # as LLaMA-Factory
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


def _check_quantized_loading(config: Config) -> None:
    """`quantization_bit` (training or inference): 4 or 8, and a bitsandbytes that can."""
    bits = config.method.quantization_bit
    if bits is None:
        return
    if bits not in (4, 8):
        raise UserError(
            f"quantization_bit: {bits} is not supported",
            where=config.where("quantization_bit"),
            fix="use 4 or 8",
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
