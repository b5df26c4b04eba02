"""The end of a synth run: the summary counts, the check of the written datasets
(`lmforge data validate`'s checks, and whether the config's template renders the reasoning),
output_dir/synth_report.json (written atomically) and the lines printed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmforge.config.schema import Config, DataConfig
from lmforge.synth.jobs import Jobs

REPORT_FILE = "synth_report.json"


@dataclass
class Report:
    kind: str  # synth | augment
    output_dir: str
    llm: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    llm_calls: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # datasets written with no record
    validation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        c, calls = self.counts, self.llm_calls
        out = [f"lmforge synth{' augment' if self.kind == 'augment' else ''}: {self.output_dir}"]
        if self.kind == "synth":
            out.append(
                f"  documents {c.get('documents', 0)}"
                + (
                    f" ({c['unreadable_documents']} not read)"
                    if c.get("unreadable_documents")
                    else ""
                )
                + f", chunks {c.get('chunks', 0)}, questions "
                f"{c.get('questions', 0)}, answers {c.get('answers', 0)}, dropped: "
                f"{c.get('low_score', 0)} low score, {c.get('duplicates', 0)} near-duplicates"
            )
        else:
            out.append(
                f"  records {c.get('records', 0)}, variants {c.get('variants', 0)}, dropped: "
                f"{c.get('duplicates', 0)} near-duplicates"
            )
        out.append(
            f"  written: {c.get('train_pairs', 0)} train, {c.get('eval_pairs', 0)} eval "
            f"({', '.join(self.files)}; datasets {', '.join(self.datasets)} in dataset_info.json)"
        )
        out.append(
            f"  LLM: {calls.get('asked', 0)} results asked, {calls.get('reused', 0)} read from the "
            f"store, {calls.get('http_requests', 0)} requests, {calls.get('retries', 0)} retries "
            f"(429/5xx/timeouts), {calls.get('strict_retries', 0)} stricter re-asks, "
            f"{calls.get('repairs', 0)} replies repaired, tokens {calls.get('tokens_in', 0)} in / "
            f"{calls.get('tokens_out', 0)} out"
        )
        if c.get("failed"):
            out.append(
                f"  failed: {c['failed']} (listed with the raw replies in failed.jsonl; the same "
                "command asks for them again)"
            )
        problems = self.validation.get("problems", 0)
        out.append(
            f"  validate: {self.validation.get('records', 0)} records read, {problems} problems"
        )
        out += [f"  {line}" for line in self.validation.get("lines", [])[:10]]
        out += [f"  note: {note}" for note in self.notes]
        out.append(f"  wall time {self.wall_s:.1f} s")
        return out


def finish_report(
    report: Report, jobs: Jobs, config: Config, folder: Path, started: float
) -> Report:
    stats = jobs.client_stats
    counts = jobs.counts
    report.llm_calls = {
        "asked": sum(counts.asked.values()),
        "reused": sum(counts.reused.values()),
        "asked_by_stage": counts.asked,
        "reused_by_stage": counts.reused,
        "failed_by_stage": counts.failed,
        "http_requests": stats.requests,
        "retries": stats.retries,
        "strict_retries": counts.strict_retries,
        "repairs": counts.repairs,
        "tokens_in": stats.tokens_in,
        "tokens_out": stats.tokens_out,
    }
    filled = [name for name in report.datasets if name not in report.empty]
    report.validation = validate_output(folder, filled, config)
    if report.empty:
        report.notes.append(
            f"no record written to {', '.join(report.empty)} (see failed.jsonl); training on "
            "an empty dataset fails"
        )
    report.notes += _template_notes(config)
    report.wall_s = round(time.monotonic() - started, 3)
    tmp = folder / (REPORT_FILE + ".tmp")
    tmp.write_text(
        json.dumps(asdict(report), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    os.replace(tmp, folder / REPORT_FILE)
    return report


def validate_output(folder: Path, datasets: list[str], config: Config) -> dict[str, Any]:
    """`lmforge data validate` over what was written: every record read as training reads it."""
    from lmforge.data.sources.validation import validate_data

    if not datasets:
        return {"records": 0, "problems": 0, "lines": []}
    data = DataConfig(dataset=",".join(datasets), dataset_dir=str(folder))
    result = validate_data(data, "sft", config.train.seed)
    return {
        "records": sum(result.records.values()),
        "problems": len(result.problems),
        "lines": result.lines(limit=20) if result.problems else [],
    }


def _template_notes(config: Config) -> list[str]:
    name = config.model.template
    if not config.synth.cot:
        return []
    if not name:
        return [
            "cot: true writes <think> blocks; give `template` (the target model's) to check "
            "that it renders them"
        ]
    from lmforge.data.templates.named import available_templates

    template = available_templates().get(name)
    if template is not None and template.thinking is None:
        return [
            f"template `{name}` has no reasoning markers: training with it drops the <think> "
            "blocks (use a reasoning template such as qwen3, or cot: false)"
        ]
    return []
