"""Training-method settings that fit together only in some ways (LLaMA-Factory's DPO variants,
SFT loss variants, train_from_scratch, LLaMA Pro, added tokens, and the optimizer keys), each
refused in one paragraph that names the key and the fix, before any model loads."""

from __future__ import annotations

from lmforge.config.schema import REFERENCE_FREE, Config, trains_adapter
from lmforge.errors import UserError


def check_method_settings(config: Config) -> None:
    _check_preference(config)
    _check_sft_loss(config)
    _check_from_scratch(config)
    _check_llama_pro(config)
    _check_new_tokens(config)
    _one_optimizer(config)
    _check_own_optimizers(config)
    _check_low_rank(config)
    _check_router_loss(config)
    _check_badam(config)


def _check_badam(config: Config) -> None:
    """BAdam: full fine-tuning, layer mode, one process, its package (train/badam.py)."""
    method = config.method
    if not method.use_badam:
        return
    _require_full(config, "use_badam", "trains the model's own weights a layer at a time")
    if method.badam_mode != "layer":
        raise UserError(
            "badam_mode: ratio (sparse updates of every layer) is not available; BAdam trains "
            "one layer at a time here",
            where=config.where("badam_mode"),
            fix="set badam_mode: layer (or remove it)",
        )
    sharding = _sharding_key(config)
    if sharding:
        raise UserError(
            f"use_badam runs on one process, and {sharding} is set",
            where=config.where(sharding),
            fix=f"remove {sharding} (BAdam fits a full fine-tuning on one GPU), or use_badam",
        )
    _check_package(config, "use_badam")


# The stages whose losses add a mixture-of-experts router loss (model/moe.py).
ROUTER_LOSS_STAGES = ("pt", "sft", "dpo", "kto")


def _check_router_loss(config: Config) -> None:
    stage = config.method.stage
    if config.model.moe_aux_loss_coef is not None and stage not in ROUTER_LOSS_STAGES:
        raise UserError(
            f"moe_aux_loss_coef is not used by stage {stage}: the router loss is added in "
            f"stages {', '.join(ROUTER_LOSS_STAGES)}",
            where=config.where("moe_aux_loss_coef"),
            fix="remove moe_aux_loss_coef",
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
    if method.pref_bco_weight > 0 and method.pref_loss in REFERENCE_FREE:
        raise UserError(
            f"pref_bco_weight needs a reference model, which pref_loss: {method.pref_loss} "
            "does not use",
            where=config.where("pref_bco_weight"),
            fix="set pref_loss: sigmoid, hinge or ipo, or remove pref_bco_weight",
        )


def _check_sft_loss(config: Config) -> None:
    """DFT, EAFT and ASFT change SFT's token losses, which only lmforge's own losses compute."""
    method = config.method
    asked = [k for k in ("use_dft_loss", "use_eaft_loss", "use_asft_loss") if getattr(method, k)]
    if not asked:
        return
    if len(asked) > 1:
        raise UserError(
            f"{', '.join(asked[:-1])} and {asked[-1]} are {'both' if len(asked) == 2 else 'all'} "
            "true",
            where=config.where(asked[-1]),
            fix="keep one of them (use_asft_loss is DFT's loss with a KL term added)",
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
            ("use_badam", method.use_badam),
            ("loraplus_lr_ratio", method.loraplus_lr_ratio is not None),
            ("optim", bool(config.passthrough.get("optim"))),
        )
        if on
    ]
    if chosen == ["use_badam", "optim"]:
        return  # BAdam wraps the optimizer `optim` names
    if len(chosen) > 1:
        first, second = chosen[:2]
        raise UserError(
            f"{first} and {second} each choose the optimizer",
            where=config.where(first),
            fix=f"keep one of {first} and {second}",
        )


def _sharding_key(config: Config) -> str | None:
    """`deepspeed` or `fsdp`, whichever the config sets (first), else None."""
    return next((k for k in ("deepspeed", "fsdp") if config.passthrough.get(k)), None)


def _require_full(config: Config, key: str, why: str) -> None:
    """`key` works with full fine-tuning only; `why` says what it does."""
    method = config.method
    if method.finetuning_type != "full":
        raise UserError(
            f"{key} {why}: it works with finetuning_type: full (this run: "
            f"{method.finetuning_type})",
            where=config.where(key),
            fix=f"set finetuning_type: full, or remove {key}",
        )


def _check_whole_weights(config: Config, key: str) -> None:
    """Muon, GaLore and APOLLO work on whole 2-D weights: DeepSpeed hands an optimizer flat
    shards, FSDP sharded ones."""
    sharding = _sharding_key(config)
    if sharding:
        raise UserError(
            f"{key} needs whole weights, and {sharding} gives the optimizer shards of them",
            where=config.where(key),
            fix=f"remove {sharding} (several GPUs still train with plain data parallelism) "
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
    _require_full(config, key, "projects the gradients of whole weights")
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
