"""Config -> encoded train/eval sets, with a report of what was read, cut and dropped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from lmforge.config.schema import DataConfig
from lmforge.data.encode import encode_sample
from lmforge.data.sources import load_samples, split
from lmforge.data.template import Template
from lmforge.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    records: dict[str, int] = field(default_factory=dict)  # per dataset, after max_samples
    train_samples: int = 0
    eval_samples: int = 0
    truncated: int = 0
    no_target: int = 0  # dropped: nothing left to train on after truncation
    tokens: int = 0
    trained_tokens: int = 0

    def lines(self) -> list[str]:
        read = ", ".join(f"{name} {count}" for name, count in self.records.items())
        lines = [
            f"records: {read}; train {self.train_samples}, eval {self.eval_samples}",
            f"tokens: {self.tokens} ({self.trained_tokens} trained)",
        ]
        if self.truncated:
            lines.append(f"truncated at cutoff_len: {self.truncated} samples")
        if self.no_target:
            lines.append(f"dropped (no trained token left after truncation): {self.no_target}")
        return lines


def build_datasets(
    data: DataConfig, template: Template, tokenizer, seed: int
) -> tuple[list[dict], list[dict], DataReport]:
    report = DataReport()
    samples = load_samples(data, report)
    train_samples, eval_samples = split(samples, data.val_size, seed)
    train = _encode_all(train_samples, data, template, tokenizer, report, "train")
    evaluation = _encode_all(eval_samples, data, template, tokenizer, report, "eval")
    report.train_samples, report.eval_samples = len(train), len(evaluation)
    if not train:
        raise UserError(
            "no training sample is left after encoding",
            fix=f"raise cutoff_len (now {data.cutoff_len}) or check the data",
        )
    return train, evaluation, report


def _encode_all(samples, data, template, tokenizer, report, label) -> list[dict]:
    encoded = []
    for sample in tqdm(samples, desc=f"Encoding {label}", unit="sample", disable=not samples):
        result = encode_sample(sample, template, tokenizer, data.cutoff_len, data.train_on_prompt)
        report.truncated += result.truncated
        if result.trained_tokens == 0:
            report.no_target += 1
            logger.warning("%s: no trained token within cutoff_len, dropped", sample.where)
            continue
        report.tokens += len(result.input_ids)
        report.trained_tokens += result.trained_tokens
        encoded.append({"input_ids": result.input_ids, "labels": result.labels})
    return encoded
