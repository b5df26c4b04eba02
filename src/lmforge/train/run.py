"""`lmforge train`: config -> checks -> data -> model -> Trainer -> files in output_dir."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge import device
from lmforge.compat import checkpointing_arguments
from lmforge.config.plan import RunPlan
from lmforge.config.resolve import resolve_for_training
from lmforge.config.run_files import RUN_CONFIG, RUN_PLAN, write_yaml
from lmforge.config.schema import Config
from lmforge.data.encoding.loader import DataReport
from lmforge.data.sources.load import check_datasets
from lmforge.errors import UserError
from lmforge.estimate.check import memory_line_and_check
from lmforge.evaluate.predict import check_predict_settings, run_prediction
from lmforge.model import pissa
from lmforge.model.adapters import apply_finetuning, trainable_line
from lmforge.model.gated_mlp import use_lean_gated_mlps
from lmforge.model.load import Quantization, attention_implementation, load_model, split_paths
from lmforge.model.new_tokens import (
    fit_vocabulary,
    grows_vocabulary,
    initialise_rows,
    vocabulary_line,
)
from lmforge.model.setup import prepare_model_setup
from lmforge.model.varlen_attention import restore_attention, varlen_kernel_of
from lmforge.train import badam
from lmforge.train.callbacks import JsonlLogCallback
from lmforge.train.checkpoints import choose_checkpoint, completed_run, planned_steps
from lmforge.train.interrupt import raise_if_interrupted
from lmforge.train.launch import (
    check_gpu_only_settings,
    check_reference_copy,
    is_launched,
    is_main_process,
    shards_weights,
    world_size,
)
from lmforge.train.monitor import (
    OverfitWarningCallback,
    tracker_callbacks,
    tracker_lines,
    trainer_report_to,
)
from lmforge.train.optimizers import low_rank_arguments
from lmforge.train.output_dir import check_output_dir, prepare_output_dir
from lmforge.train.plot import plot_loss
from lmforge.train.profiler import ProfilerSettings, TorchProfilerCallback
from lmforge.train.report import write_report
from lmforge.train.stages import get_stage
from lmforge.train.stages.base import Stage, StageInputs

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    output_dir: Path
    model: object  # the trained model (a PeftModel for LoRA), still in memory
    final_loss: float


def run_training(config: Config) -> TrainingRun:
    """Train as the config says. Every check that can fail on the user's input runs before the
    first file is written."""
    main_process = is_main_process()
    plan = resolve_for_training(
        config,
        bf16_supported=device.supports_bf16(),
        cuda=torch.cuda.is_available(),
        check_output_dir=main_process,  # other ranks would see rank 0's first files
    )
    plan = choose_checkpoint(config, plan)  # a whole checkpoint (`auto`: the newest whole one)
    check_gpu_only_settings(config, cuda=torch.cuda.is_available())
    check_distributed_settings(config)
    check_datasets(config.data, config.method.stage)  # fail fast on data, before the model
    stage = get_stage(config.method.stage)
    stage.check(config)  # e.g. grpo's reward functions
    check_predict_settings(config)  # do_predict: stage sft + predict_with_generate, as in LF
    setup = prepare_model_setup(config, training=True)
    plan = plan.with_template(setup.template.name)
    if config.model.rope_scaling:
        plan = plan.with_rope_factor(setup.rope_factor)  # inference loads with the same
    if main_process:
        check_output_dir(config, plan, setup.resolved.path)  # writable, not the model's folder
    data = stage.datasets(config, setup)
    has_eval = bool(data.eval)
    check_eval_data(config, plan, has_eval)
    # Stops a run that cannot fit; turns gradient checkpointing on where only that makes it fit.
    memory_line, plan = memory_line_and_check(config, plan, setup, data)

    # Built before the model loads: transformers checks these settings (optim, strategies, ...).
    args = training_arguments(config, plan, stage, has_eval=has_eval)
    if (
        done := completed_run(config, plan, args, data.report.train_rows)
    ) is not None:  # nothing to do
        _end_distributed()
        return TrainingRun(Path(config.train.output_dir), None, done.train_loss)

    from transformers import set_seed

    set_seed(config.train.seed)
    quantization = Quantization.of(
        config.method, plan.precision.compute_dtype, sharded=shards_weights(config)
    )
    model = load_model(
        setup.resolved.path,
        dtype=training_dtype(config, plan),
        flash_attn=config.model.flash_attn,
        trust_remote_code=config.model.trust_remote_code,
        quantization=quantization,
        random_weights=config.model.train_from_scratch,
        rope=setup.rope,
        router_aux_loss_coef=config.model.moe_aux_loss_coef,
    )
    trained_rows: tuple[int, ...] = ()
    if grows_vocabulary(config.model):
        new_rows = fit_vocabulary(model, setup.tokenizer)
        initialise_rows(model, setup.tokenizer, setup.new_tokens, new_rows)
        trained_rows = tuple(sorted({*setup.new_token_ids, *new_rows}))
    adapters = split_paths(config.model.adapter_name_or_path)
    model = apply_finetuning(model, config.method, plan, adapters, trained_rows)
    output_dir = Path(config.train.output_dir)
    inputs = StageInputs(
        config=config,
        plan=plan,
        setup=setup,
        model=model,
        args=args,
        data=data,
        callbacks=tuple(training_callbacks(config, has_eval=has_eval, output_dir=output_dir)),
    )
    trainer = stage.build_trainer(inputs)
    # On the CPU only: on an H100 the lean MLP measured slower (1.99 vs 1.71 ms a layer,
    # benchmarks/gpu/kernels.py). Not with liger (its own fused MLPs) or DeepSpeed (ZeRO-3
    # gathers weights in its hooks).
    if (
        args.device.type == "cpu"
        and not args.use_liger_kernel
        and not config.passthrough.get("deepspeed")
    ):
        use_lean_gated_mlps(trainer.model)
    lines = plan_lines(config, plan, setup, trainer, data.report, args, memory_line)
    for line in lines:
        logger.info(line)

    if main_process:
        steps = planned_steps(args, data.report.train_rows)
        prepare_output_dir(config, plan, output_dir, model=model, setup=setup, steps=steps)
        write_yaml(output_dir / RUN_CONFIG, config.to_flat_dict())  # as the user asked
        write_yaml(output_dir / RUN_PLAN, plan.to_dict())  # what was derived from it
        if pissa.converts_adapter(config.method) and _starts_pissa(model):
            # A0, B0: for the conversion
            pissa.save_initial_adapter(model, output_dir, resuming=bool(plan.resume.checkpoint))
    with lora_inputs_left_to_autocast(model, plan):
        result = trainer.train(resume_from_checkpoint=plan.resume.checkpoint)
    raise_if_interrupted(trainer, config)  # Ctrl-C/SIGTERM: checkpoint saved, resume command shown
    # Packing turns the KV cache and per-sample attention on for training; the saved model
    # generates with the cache and plain sdpa.
    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.config.use_cache = True
    restore_attention(trained)
    trainer.save_model()
    if main_process and pissa.converts_adapter(config.method):
        pissa.convert_adapter(output_dir)  # loads exactly on the original base
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    eval_metrics = final_eval_metrics(trainer) if has_eval else None
    if eval_metrics is not None:
        trainer.save_metrics("eval", eval_metrics)
    if main_process:
        # The template used in training goes into the saved tokenizer, so every consumer uses it.
        setup.tokenizer.chat_template = setup.template.jinja
        setup.tokenizer.save_pretrained(str(output_dir))
        if config.train.plot_loss:
            plot_loss(output_dir)
        write_report(
            config,
            trainer,
            setup,
            trained,
            plan_lines=lines,
            train_loss=result.training_loss,
            eval_metrics=eval_metrics,
        )
    logger.info("Saved to %s (final train loss %.4f)", output_dir, result.training_loss)
    if config.eval.do_predict and main_process:  # LLaMA-Factory's do_predict after training
        run_prediction(config, model=trained, setup=setup, folder=output_dir)
    _end_distributed()
    return TrainingRun(output_dir, trainer.model, result.training_loss)


def _starts_pissa(model) -> bool:
    """The trained adapter is a new PiSSA one (not an adapter loaded to train further)."""
    peft_config = getattr(model, "peft_config", {}).get("default")
    return str(getattr(peft_config, "init_lora_weights", "")).startswith("pissa")


def check_distributed_settings(config: Config) -> None:
    if config.method.use_badam and world_size() > 1:
        raise UserError(
            "use_badam runs on one process: the layer in training changes every few steps, "
            "which DDP's gradient synchronisation cannot follow",
            where=config.where("use_badam"),
            fix="train on one GPU (NPROC_PER_NODE=1), or remove use_badam",
        )
    if config.method.pissa_init and shards_weights(config):
        raise UserError(
            "pissa_init cannot start under DeepSpeed ZeRO-3 or FSDP: the SVD needs each whole "
            "weight, which they split across processes",
            where=config.where("pissa_init"),
            fix="train with ZeRO-2 (or one process), or remove pissa_init",
        )
    check_reference_copy(config)
    bits = config.method.quantization_bit
    if bits is not None and bits != 4 and shards_weights(config):
        raise UserError(
            f"quantization_bit: {bits} cannot be sharded by DeepSpeed ZeRO-3 or FSDP: only a "
            "4-bit base is stored in a dtype they can split",
            where=config.where("quantization_bit"),
            fix="use quantization_bit: 4, or ZeRO-2 (or no sharding) with 8 bits",
        )
    deepspeed = config.passthrough.get("deepspeed")
    if not deepspeed:
        return
    if not is_launched():
        raise UserError(
            "deepspeed needs a distributed launch, and this run was started as one process",
            where=config.source,
            fix="run with FORCE_TORCHRUN=1 (and NPROC_PER_NODE=N): `lmforge train` then "
            "re-executes itself under torchrun; or remove `deepspeed`",
        )
    try:
        import deepspeed as _  # noqa: F401
    except ImportError:
        raise UserError(
            "deepspeed is not installed", fix="pip install 'lmforge[deepspeed]'"
        ) from None


def _end_distributed() -> None:
    """Close the process group so its threads end cleanly (gloo otherwise aborts at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_eval_data(config: Config, plan: RunPlan, has_eval: bool) -> None:
    """Evaluation asked for, and `val_size: auto` held nothing out (too few records)."""
    if has_eval or (
        plan.evaluation.strategy == "no" and not plan.evaluation.load_best_model_at_end
    ):
        return
    raise UserError(
        "evaluation is asked for (eval_strategy, eval_steps, early_stopping_patience or "
        "load_best_model_at_end) but there is no evaluation data: val_size: auto held out none "
        "(fewer than 50 records)",
        where=config.source,
        fix="set val_size (e.g. 0.1, or a count such as 8) or eval_dataset",
    )


def final_eval_metrics(trainer) -> dict:
    """The evaluation at the last step if one ran there, else a fresh one."""
    step = trainer.state.global_step
    last = [
        h
        for h in trainer.state.log_history
        if h.get("step") == step and any(k.startswith("eval_") for k in h)
    ]
    if last:  # one entry per eval dataset when they are evaluated one by one
        return {k: v for h in last for k, v in h.items() if k.startswith("eval_")}
    return trainer.evaluate()


def training_callbacks(config: Config, *, has_eval: bool, output_dir: Path) -> list:
    callbacks = [JsonlLogCallback(output_dir), *tracker_callbacks(config)]
    profiler = ProfilerSettings.of(config.train)
    if profiler is not None:
        callbacks.append(TorchProfilerCallback(profiler))
    if has_eval:
        callbacks.append(OverfitWarningCallback())
    if config.train.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(config.train.early_stopping_patience))
    return callbacks


def training_dtype(config: Config, plan: RunPlan) -> torch.dtype:
    """The dtype weights load in: fp32 master weights for full fine-tuning; bf16 under pure_bf16
    and for LoRA/freeze (QLoRA's weights that are not quantized too) in bf16 mixed precision,
    whose trained weights `apply_finetuning` then turns fp32."""
    precision = plan.precision
    if precision.pure_bf16 or precision.frozen_bf16:
        return torch.bfloat16
    return torch.float32


def lora_inputs_left_to_autocast(model, plan: RunPlan):
    """peft casts each LoRA layer's input to the adapter's fp32 and autocast casts it back to
    16 bits for the matmul: two copies of every adapted layer's input, forward and backward,
    for the same result (bf16 -> fp32 -> bf16 is exact). Under mixed precision the casting is
    switched off while training (peft's own switch): every forward pass then runs under
    autocast, the trainer's and the rollouts' (trainers/rollout_base.py)."""
    from peft.helpers import disable_input_dtype_casting
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        # peft's switch reads the flag of every tuner layer, and its trainable-token layers
        # (rows of added tokens) have none: AttributeError. They do not cast their input.
        if isinstance(module, BaseTunerLayer) and not hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = True
    return disable_input_dtype_casting(model, active=plan.precision.autocast_dtype is not None)


def sampling_arguments(config: Config) -> dict:
    """LLaMA-Factory's disable_shuffling and group_by_length (a TrainingArguments key in
    transformers 4) are transformers 5's train_sampling_strategy; the rollout stages' own
    sampler reads `sequential` too."""
    train = config.train
    asked = [
        (key, strategy)
        for key, strategy in (
            ("disable_shuffling", "sequential"),
            ("group_by_length", "group_by_length"),
        )
        if getattr(train, key)
    ]
    if not asked:
        return {}
    key, strategy = asked[0]
    chosen = config.passthrough.get("train_sampling_strategy", strategy)
    if len(asked) > 1 or chosen != strategy:
        other = asked[1][0] if len(asked) > 1 else f"train_sampling_strategy: {chosen}"
        raise UserError(
            f"{key}: true and {other} ask for two orders",
            where=config.where(key),
            fix="keep one of them",
        )
    if strategy == "group_by_length" and config.method.stage not in ("sft", "pt"):
        raise UserError(
            f"group_by_length groups samples by their length, and stage {config.method.stage} "
            "batches pairs or prompts it does not group",
            where=config.where(key),
            fix="remove group_by_length (it is for stages sft and pt)",
        )
    return {"train_sampling_strategy": strategy}


def training_arguments(config: Config, plan: RunPlan, stage: Stage, *, has_eval: bool):
    from transformers import TrainingArguments

    train = config.train
    # transformers 5 folded warmup_ratio into warmup_steps (a float < 1 is a ratio).
    warmup = train.warmup_steps if train.warmup_steps > 0 else train.warmup_ratio
    kwargs = dict(
        output_dir=train.output_dir,
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        eval_strategy=plan.evaluation.strategy if has_eval else "no",
        eval_steps=train.eval_steps or train.logging_steps,
        bf16=plan.precision.bf16,
        fp16=plan.precision.fp16,
        seed=train.seed,
        report_to=trainer_report_to(config),
        # activation_checkpointing (transformers >= 5.23) or gradient_checkpointing, whichever
        # TrainingArguments has; non-reentrant works with frozen inputs.
        **checkpointing_arguments(
            plan.checkpointing.on,
            {"use_reentrant": False} if plan.checkpointing.on else None,
        ),
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        prediction_loss_only=stage.prediction_loss_only,
        use_cpu=not torch.cuda.is_available(),
    )
    if plan.evaluation.load_best_model_at_end:  # also with early stopping (it compares eval losses)
        kwargs.update(
            load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False
        )
    kwargs.update(sampling_arguments(config))
    kwargs.update(low_rank_arguments(config.method))  # GaLore, APOLLO
    kwargs.update(config.passthrough)
    try:
        return TrainingArguments(**kwargs)
    except ValueError as exc:  # e.g. an unknown optim, or strategies that do not fit together
        passed = ", ".join(sorted(config.passthrough)) or "none"
        raise UserError(
            f"transformers refused the training settings: {' '.join(str(exc).split())}",
            where=config.source,
            fix=f"correct the key it names (keys passed through unchanged: {passed}; "
            "see docs/config.md and transformers' TrainingArguments)",
        ) from None


def template_line(config: Config, setup) -> str:
    """The template used, and the name the config gave it where that was another name for it
    (LLaMA-Factory's `gemma3` is `gemma`)."""
    name, given = setup.template.name, config.model.template
    return f"{name} (as `{given}`)" if given not in (name, "auto", None) else name


def attention_line(config: Config, model) -> str:
    """The kernel that actually runs: a variable-length one for packed/padding-free rows."""
    kernel = varlen_kernel_of(model)
    return kernel.describe if kernel else attention_implementation(config.model.flash_attn)


def batching_line(plan: RunPlan, trainer) -> str:
    """What the collator does (padding_free unset falls back to padded rows for some models)."""
    collator = trainer.data_collator
    collator = getattr(collator, "collator", collator)  # under LastLogitCollator
    if getattr(collator, "flatten", False) and plan.batching.padding_free:
        return ", " + plan.batching.describe()
    return ""


def method_line(config: Config, plan: RunPlan) -> str:
    """`sft / lora (r=8, alpha=16, target=all; QLoRA, 4-bit base)`."""
    method = config.method
    line = f"{method.stage} / {method.finetuning_type}"
    if config.model.train_from_scratch:
        line += " from random weights (train_from_scratch)"
    if method.use_badam:
        line += f" ({badam.describe(method)})"
    if method.finetuning_type == "oft":
        size = f"block size {method.oft_block_size}" if method.oft_block_size else ""
        return line + f" ({size or f'{method.oft_rank} blocks'}, target={method.oft_target})"
    if method.finetuning_type != "lora":
        return line
    line += f" (r={method.lora_rank}, alpha={plan.lora_alpha}, target={method.lora_target}"
    if plan.precision.quantization_bit:
        line += f"; QLoRA, {plan.precision.quantization_bit}-bit base"
    if method.pissa_init:
        line += f"; {pissa.describe(method)}"
    return line + ")"


def loss_line(trainer) -> str | None:
    """What the trainer optimises, where lmforge computes it: the SFT/pt loss (chunked or from
    full logits, plain or weighted) or the pairwise preference objective."""
    described = getattr(trainer, "objective", None) or getattr(trainer, "compute_loss_func", None)
    return described.describe() if hasattr(described, "describe") else None


def plan_lines(
    config: Config, plan: RunPlan, setup, trainer, report: DataReport, args, memory=None
) -> list[str]:
    model = trainer.model
    train = config.train
    effective = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    lines = [
        "Plan",
        f"  model: {config.model.model_name_or_path} ({setup.resolved.origin}: {setup.resolved.path})",
        f"  method: {method_line(config, plan)}",
        f"  {trainable_line(model)}",
        f"  template: {template_line(config, setup)}; cutoff_len: {config.data.cutoff_len}",
        *([f"  {setup.rope_note}"] if setup.rope_note else []),
        *(
            [
                f"  vocabulary: {vocabulary_line(setup.new_tokens, setup.new_token_ids, config.method)}"
            ]
            if setup.new_tokens
            else []
        ),
        *(f"  data: {line}" for line in report.lines()),
        f"  batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
        f"accumulation x {args.world_size} process(es) = {effective}"
        + batching_line(plan, trainer),
        f"  steps: {planned_steps(args, report.train_rows)}; learning rate {args.learning_rate}",
        *([f"  loss: {loss}"] if (loss := loss_line(trainer)) else []),
        f"  precision: {plan.precision.describe()}; attention: {attention_line(config, model)}",
        f"  device: {device.describe()}",
        *([f"  memory: {memory}"] if memory else []),
        f"  output: {train.output_dir}",
    ]
    if plan.resume.checkpoint:
        lines.append(f"  resume from: {plan.resume.checkpoint}")
    passed = ", ".join(f"{k}={v}" for k, v in config.passthrough.items() if v is not None)
    if passed:  # `key=null` on the command line unsets a passed-through key
        lines.append(f"  passed to TrainingArguments: {passed}")
    lines += [f"  {key}: not used here, because {reason}" for key, reason in config.not_used]
    lines += [f"  path {key}: {found}" for key, found in config.paths.items()]
    lines += [f"  tracking: {line}" for line in tracker_lines(config)]
    lines += [f"  note: {note}" for note in (*config.notes, *plan.notes)]
    return lines
