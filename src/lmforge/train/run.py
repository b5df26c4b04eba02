"""`lmforge train`: config -> checks -> data -> model -> Trainer -> files in output_dir."""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from lmforge import device
from lmforge.config.resolve import resolve_for_training
from lmforge.config.schema import Config
from lmforge.data.collate import PadCollator
from lmforge.data.loader import DataReport, build_datasets
from lmforge.data.registry import resolve_datasets
from lmforge.data.sources import dataset_names
from lmforge.model.adapters import apply_finetuning, trainable_line
from lmforge.model.load import attention_implementation, load_model, split_paths
from lmforge.model.setup import prepare_model_setup
from lmforge.train.callbacks import JsonlLogCallback
from lmforge.train.plot import plot_loss
from lmforge.train.trainer import STAGING, AtomicCheckpointTrainer

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"


@dataclass
class TrainingRun:
    output_dir: Path
    model: object  # the trained model (a PeftModel for LoRA), still in memory
    final_loss: float


def run_training(config: Config) -> TrainingRun:
    """Train as the config says. Every check that can fail on the user's input runs before the
    first file is written."""
    resolve_for_training(
        config, bf16_supported=device.supports_bf16(), cuda=torch.cuda.is_available()
    )
    resolve_datasets(dataset_names(config.data), config.data.dataset_dir)  # fail fast on data
    setup = prepare_model_setup(config)
    train_set, eval_set, report = build_datasets(
        config.data, setup.template, setup.tokenizer, config.train.seed
    )

    from transformers import set_seed

    set_seed(config.train.seed)
    model = load_model(
        setup.resolved.path,
        dtype=torch.float32,
        flash_attn=config.model.flash_attn,
        trust_remote_code=config.model.trust_remote_code,
    )
    model = apply_finetuning(model, config.method, split_paths(config.model.adapter_name_or_path))
    args = training_arguments(config, has_eval=bool(eval_set))
    for line in plan_lines(config, setup, model, report, args):
        logger.info(line)

    output_dir = Path(config.train.output_dir)
    _prepare_output_dir(config, output_dir)
    write_run_config(config, output_dir)
    trainer = AtomicCheckpointTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=PadCollator(setup.tokenizer.pad_token_id),
        processing_class=setup.tokenizer,
        callbacks=[JsonlLogCallback(output_dir)],
    )
    result = trainer.train(resume_from_checkpoint=config.train.resume_from_checkpoint)
    trainer.save_model()
    # The template used in training goes into the saved tokenizer, so every consumer uses it.
    setup.tokenizer.chat_template = setup.template.jinja
    setup.tokenizer.save_pretrained(str(output_dir))
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_set:
        trainer.save_metrics("eval", trainer.evaluate())
    if config.train.plot_loss:
        plot_loss(output_dir)
    logger.info("Saved to %s (final train loss %.4f)", output_dir, result.training_loss)
    return TrainingRun(output_dir, trainer.model, result.training_loss)


def training_arguments(config: Config, *, has_eval: bool):
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
        eval_strategy=train.eval_strategy if has_eval else "no",
        eval_steps=train.eval_steps or train.logging_steps,
        bf16=train.bf16,
        fp16=train.fp16,
        seed=train.seed,
        report_to=[r.strip() for r in train.report_to.split(",") if r.strip()] or "none",
        # transformers 5 renamed gradient_checkpointing; non-reentrant works with frozen inputs.
        activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if train.gradient_checkpointing
        else None,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(config.passthrough)
    return TrainingArguments(**kwargs)


def total_steps(args, train_size: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    batches = math.ceil(train_size / (args.per_device_train_batch_size * args.world_size))
    per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    return math.ceil(per_epoch * args.num_train_epochs)


def plan_lines(config: Config, setup, model, report: DataReport, args) -> list[str]:
    train = config.train
    effective = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    precision = "bf16 mixed" if train.bf16 else "fp16 mixed" if train.fp16 else "fp32"
    lines = [
        "Plan",
        f"  model: {config.model.model_name_or_path} ({setup.resolved.origin}: {setup.resolved.path})",
        f"  method: {config.method.stage} / {config.method.finetuning_type}"
        + (
            f" (r={config.method.lora_rank}, alpha={config.method.lora_alpha}, "
            f"target={config.method.lora_target})"
            if config.method.finetuning_type == "lora"
            else ""
        ),
        f"  {trainable_line(model)}",
        f"  template: {setup.template.name}; cutoff_len: {config.data.cutoff_len}",
        *(f"  data: {line}" for line in report.lines()),
        f"  batch: {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
        f"accumulation x {args.world_size} process(es) = {effective}",
        f"  steps: {total_steps(args, report.train_samples)}; learning rate {args.learning_rate}",
        f"  precision: {precision}; attention: {attention_implementation(config.model.flash_attn)}",
        f"  device: {device.describe()}",
        f"  output: {train.output_dir}",
    ]
    if train.resume_from_checkpoint:
        lines.append(f"  resume from: {train.resume_from_checkpoint}")
    if config.passthrough:
        passed = ", ".join(f"{k}={v}" for k, v in config.passthrough.items())
        lines.append(f"  passed to TrainingArguments: {passed}")
    if config.data.preprocessing_num_workers:
        config.notes.append(
            "preprocessing_num_workers is accepted but not used yet: encoding runs in this process"
        )
    lines += [f"  note: {note}" for note in config.notes]
    return lines


def _prepare_output_dir(config: Config, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_dir / STAGING, ignore_errors=True)  # a save that never finished
    if config.train.overwrite_output_dir and not config.train.resume_from_checkpoint:
        # A fresh run: old checkpoints would otherwise be picked up by `resume: auto` later.
        for old in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old)


def write_run_config(config: Config, output_dir: Path) -> Path:
    """The resolved config, written atomically (temporary file, then rename)."""
    path = output_dir / RUN_CONFIG
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(config.to_flat_dict(), sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
    return path
