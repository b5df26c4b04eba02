"""What a stage provides, and the helpers the non-SFT stages share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from lmforge.config.schema import Config
from lmforge.data.encoding.loader import DataReport
from lmforge.data.sources.load import load_splits


@dataclass
class StageContext:
    """Everything a stage needs to build its trainer."""

    config: Config
    setup: Any  # lmforge.model.setup.ModelSetup: resolved model, tokenizer, template
    model: Any  # with the fine-tuning method applied
    args: Any  # transformers.TrainingArguments
    train_set: Any
    eval_set: Any
    callbacks: list
    output_dir: Path
    trainer_kwargs: dict = field(default_factory=dict)  # optimizers, metrics, ...


class Stage(Protocol):
    name: str

    def datasets(self, config: Config, setup) -> tuple[Any, Any, DataReport]: ...

    def prepare(self, ctx: StageContext) -> None:
        """Runs after the model exists, before the plan is printed (checks, extra models)."""

    def trainer(self, ctx: StageContext): ...


def encode_stage_samples(
    config: Config, setup, encode, label: str
) -> tuple[list, list, DataReport]:
    """Read and split the samples, then encode each with `encode(sample) -> dict | None` (None:
    nothing to train on, counted as dropped). For stages without SFT's cache and packing."""
    report = DataReport(cutoff_len=config.data.cutoff_len)
    train_samples, eval_samples = load_splits(
        config.data, report, seed=config.train.seed, stage=config.method.stage
    )
    encoded = []
    for part, samples in (("train", list(train_samples)), ("eval", list(eval_samples))):
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
    return encoded[0], encoded[1], report
