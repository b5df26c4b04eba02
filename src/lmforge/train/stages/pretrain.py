"""Pre-training (continued): plain text, every token trained, long texts cut into blocks."""

from __future__ import annotations

from lmforge.data.encoding.collate import PadCollator
from lmforge.data.encoding.encode import encode_pretrain
from lmforge.data.encoding.loader import DataReport
from lmforge.data.sources.load import load_splits
from lmforge.train.stages.base import Stage, StageData, StageInputs
from lmforge.train.stages.language_model import language_model_trainer


class PretrainStage(Stage):
    name = "pt"

    def datasets(self, config, setup) -> StageData:
        report = DataReport(cutoff_len=config.data.cutoff_len)
        train, evaluation = load_splits(config.data, report, seed=config.train.seed, stage="pt")
        parts = []
        for samples in (train, evaluation):
            rows = []
            for sample in samples:
                for block in encode_pretrain(sample, setup.tokenizer, config.data.cutoff_len):
                    rows.append({"input_ids": block.input_ids, "labels": block.labels})
            parts.append(rows)
        report.train_samples, report.eval_samples = len(parts[0]), len(parts[1])
        report.train_rows = report.train_samples
        report.tokens = report.trained_tokens = sum(len(r["input_ids"]) for r in parts[0])
        report.notes.append("pre-training: texts longer than cutoff_len become several blocks")
        return StageData(parts[0], parts[1], report)

    def build_trainer(self, inputs: StageInputs):
        return language_model_trainer(inputs, PadCollator(inputs.setup.tokenizer.pad_token_id))


STAGE = PretrainStage()
