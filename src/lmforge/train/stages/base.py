"""The Stage seam: what every training stage provides, and the inputs the runner gives it.

A stage turns the config's data into encoded rows (`datasets`) and builds its transformers
Trainer from typed inputs (`build_trainer`): collator, model wrapping (value heads, packing),
reference model, loss settings. The runner (train/run.py) owns everything else: the plan,
TrainingArguments (built once, never changed afterwards), output folder, saving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tqdm.auto import tqdm

from lmforge.config.schema import Config
from lmforge.data.encoding.encode import encode_pair_row
from lmforge.data.encoding.loader import DataReport, reasoning_notes
from lmforge.data.sources.load import load_splits
from lmforge.errors import UserError
from lmforge.model.adapters import loraplus_param_groups

if TYPE_CHECKING:  # heavy imports, needed for the annotations only
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lmforge.config.plan import RunPlan
    from lmforge.model.setup import ModelSetup

# Encoded rows: a list of dicts, a datasets.Dataset or a packed set (anything indexable).
Rows = object


@dataclass(frozen=True)
class StageData:
    """A stage's encoded data and the report of what was read, cut and dropped."""

    train: Rows
    eval: Rows | dict[str, Rows] | None  # a dict: one eval set per dataset (eval_<name>_loss)
    report: DataReport


@dataclass(frozen=True)
class StageInputs:
    """What the runner hands a stage to build its trainer from."""

    config: Config
    plan: RunPlan  # what was derived from the config: precision, batching, ...
    setup: ModelSetup  # resolved model, tokenizer, template
    model: torch.nn.Module  # with the fine-tuning method (LoRA, freeze, full) applied
    args: TrainingArguments
    data: StageData
    callbacks: tuple[TrainerCallback, ...]

    def trainer_arguments(self, model: torch.nn.Module, collator) -> dict:
        """transformers.Trainer's own arguments, the same for every stage's trainer. `model` is
        the one trained (with any head the stage added), so LoRA+ groups include the head."""
        return {
            "model": model,
            "args": self.args,
            "data_collator": collator,
            "train_dataset": self.data.train,
            "eval_dataset": self.data.eval or None,
            "processing_class": self.setup.tokenizer,
            "callbacks": list(self.callbacks),
            "optimizers": (custom_optimizer(self.config, model, self.args), None),
        }


def custom_optimizer(config: Config, model, args) -> torch.optim.Optimizer | None:
    """`optim`'s optimizer with LoRA+ learning rates or under BAdam, Muon with AdamW,
    Adam-mini, or None to let the Trainer build its own optimizer (`optim`)."""
    if config.method.use_muon:
        from lmforge.train.optimizers import muon_optimizer

        return muon_optimizer(model, args)
    if config.method.use_adam_mini:
        from lmforge.train.optimizers import adam_mini_optimizer

        return adam_mini_optimizer(model, args)
    if config.method.use_badam:
        from lmforge.train.badam import badam_optimizer

        return badam_optimizer(model, args, config.method)
    ratio = config.method.loraplus_lr_ratio
    if not ratio:
        return None
    groups = loraplus_param_groups(
        model,
        args.learning_rate,
        ratio,
        args.weight_decay,
        embedding_lr=config.method.loraplus_lr_embedding,
    )
    # The optimizer `optim` names (adamw_torch_fused, adamw_8bit, ...), as LLaMA-Factory's
    # LoRA+ builds it: only the learning rates differ per group.
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if "params" in kwargs or "model" in kwargs:  # GaLore, LOMO, ...: own parameter handling
        raise UserError(
            f"loraplus_lr_ratio cannot be combined with optim: {args.optim}",
            where=config.where("loraplus_lr_ratio"),
            fix="remove loraplus_lr_ratio, or use an AdamW-family optim (e.g. adamw_torch)",
        )
    return optimizer_cls(groups, **kwargs)


class Stage(ABC):
    """One training stage (pt, sft, rm, dpo, kto, ppo, grpo)."""

    name: ClassVar[str]
    # Evaluation reports losses (and rewards) only: no logits are gathered. Read by the runner
    # when it builds TrainingArguments.
    prediction_loss_only: ClassVar[bool] = False

    def check(self, config: Config) -> None:  # noqa: B027 - optional hook
        """Checks on the user's settings that need no model (run before the model loads)."""

    @abstractmethod
    def datasets(self, config: Config, setup: ModelSetup) -> StageData:
        """Read, convert and encode the config's datasets."""

    @abstractmethod
    def build_trainer(self, inputs: StageInputs) -> Trainer:
        """The stage's trainer over `inputs.model` (wrapped as the stage needs)."""


def encode_stage_samples(config: Config, setup: ModelSetup, encode, label: str) -> StageData:
    """Read and split the samples, then encode each with `encode(sample) -> dict | None` (None:
    nothing to train on, counted as dropped). For stages without SFT's cache and packing."""
    report = DataReport(cutoff_len=config.data.cutoff_len)
    train_samples, eval_samples = (
        list(part)
        for part in load_splits(
            config.data, report, seed=config.train.seed, stage=config.method.stage
        )
    )
    report.notes += reasoning_notes(train_samples + eval_samples, setup.template)
    encoded = []
    for part, samples in (("train", train_samples), ("eval", eval_samples)):
        rows = []
        for sample in tqdm(
            samples, desc=f"Encoding {label} {part}", unit="sample", disable=not samples
        ):
            row = encode(sample)
            if row is None:
                report.no_target += 1
                if len(report.no_target_where) < 3:
                    report.no_target_where.append(sample.where)
                continue
            report.truncated += bool(row.pop("truncated", False))
            report.tokens += sum(len(v) for k, v in row.items() if k.endswith("input_ids"))
            rows.append(row)
        encoded.append(rows)
    report.train_samples, report.eval_samples = len(encoded[0]), len(encoded[1])
    report.train_rows = report.train_samples
    return StageData(encoded[0], encoded[1], report)


def encode_pair_samples(config: Config, setup: ModelSetup) -> StageData:
    """Preference pairs (chosen and rejected answer to one prompt), for rm and the dpo family."""

    def encode(sample):
        return encode_pair_row(sample, setup.template, setup.tokenizer, config.data.cutoff_len)

    return encode_stage_samples(config, setup, encode, "pairs")
