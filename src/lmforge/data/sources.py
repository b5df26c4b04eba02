"""Which records are used: datasets read, converted to Samples, mixed and split."""

from __future__ import annotations

import random

from lmforge.config.schema import DataConfig
from lmforge.data.formats import to_samples
from lmforge.data.readers import read_records
from lmforge.data.registry import resolve_datasets
from lmforge.data.sample import Sample
from lmforge.errors import UserError


def dataset_names(data: DataConfig) -> list[str]:
    names = [n.strip() for n in (data.dataset or "").split(",") if n.strip()]
    if not names:
        raise UserError(
            "no dataset given", fix="set `dataset` to names from dataset_info.json, e.g. identity"
        )
    return names


def load_samples(data: DataConfig, report) -> list[Sample]:
    samples: list[Sample] = []
    for spec in resolve_datasets(dataset_names(data), data.dataset_dir):
        records = read_records(spec.path)
        if data.max_samples is not None:
            records = records[: data.max_samples]
        report.records[spec.name] = len(records)
        samples += to_samples(spec, records)
    return samples


def split(samples: list, val_size: float, seed: int) -> tuple[list, list]:
    if val_size <= 0:
        return samples, []
    count = int(val_size) if val_size >= 1 else int(round(len(samples) * val_size))
    if not 0 < count < len(samples):
        raise UserError(
            f"val_size {val_size} leaves {count} of {len(samples)} samples for evaluation",
            fix="use a fraction between 0 and 1, or a count smaller than the number of samples",
        )
    shuffled = samples[:]
    random.Random(seed).shuffle(shuffled)
    return shuffled[count:], shuffled[:count]
