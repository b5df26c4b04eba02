"""`lmforge synth augment`: each record of `dataset` (read as training reads it) -> the record
and `augment_variants` rewrites, through the same store, resume, repair and provenance rules as
`lmforge synth`. No record is dropped silently: a record that cannot be read, or whose rewrites
failed, is counted and listed in failed.jsonl (its original is still written with
augment_keep_original)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from lmforge.config.schema import Config
from lmforge.errors import UserError
from lmforge.synth import settings as synth_settings
from lmforge.synth.dedupe import NearDuplicates
from lmforge.synth.export import DatasetWriter, Pair
from lmforge.synth.jobs import Jobs
from lmforge.synth.llm_client import LLMClient
from lmforge.synth.pipeline import FAILED_FILE, eval_chunks, raise_first_error
from lmforge.synth.progress import Bars
from lmforge.synth.prompts import detect_language, load_prompts
from lmforge.synth.report import Report, finish_report
from lmforge.synth.store import Store, result_key

logger = logging.getLogger(__name__)


class _Record:
    """One source record as a plain conversation."""

    def __init__(self, dataset: str, source: str, index: int, turns, system, problem=None):
        self.dataset, self.source, self.index = dataset, source, index
        self.turns: list[tuple[str, str]] = turns
        self.system: str | None = system
        self.problem: str | None = problem

    @property
    def id(self) -> str:
        return f"{self.source}:record {self.index}"


def run_augment(config: Config) -> Report:
    started = time.monotonic()
    llm = synth_settings.llm_settings(config)
    folder = Path(synth_settings.output_folder(config))
    prompts = load_prompts(config.synth.prompt_dir, config.where("prompt_dir"))
    records = _read_records(config)
    folder.mkdir(parents=True, exist_ok=True)
    variants = config.synth.augment_variants
    with Store(folder) as store:
        jobs = Jobs(store, None, {lang: p["strict"] for lang, p in prompts.items()})

        def plan(record: _Record) -> tuple[str, list[dict], str]:
            text = " ".join(q + " " + a for q, a in record.turns)
            lang = config.synth.language
            lang = detect_language(text) if lang == "auto" else lang
            p = prompts[lang]
            conversation = json.dumps(
                [
                    {"role": r, "content": c}
                    for q, a in record.turns
                    for r, c in (("user", q), ("assistant", a))
                ],
                ensure_ascii=False,
            )
            key = result_key(
                "augment", conversation, variants, p["system"], p["augment"], llm.model
            )
            user = p["augment"].format(count=variants, conversation=conversation)
            messages = [
                {"role": "system", "content": p["system"]},
                {"role": "user", "content": user},
            ]
            return key, messages, lang

        asyncio.run(_ask_all(records, plan, jobs, llm, variants))
        report = Report(kind="augment", output_dir=str(folder), llm=synth_settings.redacted(llm))
        eval_ids = eval_chunks([r.id for r in records], config.synth.eval_share, config.train.seed)
        _export(records, plan, store, folder, eval_ids, config, report)
    return finish_report(report, jobs, config, folder, started)


def _read_records(config: Config) -> list[_Record]:
    from lmforge.data.sources.load import read_dataset, resolve_specs

    if not config.data.dataset:
        raise UserError(
            "`synth augment` needs `dataset`: the records to rewrite",
            where=config.source,
            fix="add `dataset: NAME` and `dataset_dir` (dataset_info.json), as for training",
        )
    records: list[_Record] = []
    for spec in resolve_specs(config.data, stage="sft"):
        read = read_dataset(spec, config.data, "sft", config.train.seed, limit=False)
        for problem in read.problems:
            index = problem.record if problem.record is not None else -1
            records.append(_Record(spec.name, problem.file, index, [], None, str(problem)))
        for sample in read.samples:
            turns, problem = _turns(sample.messages)
            records.append(
                _Record(
                    spec.name,
                    sample.source_file,
                    sample.record_index,
                    turns,
                    sample.system,
                    problem,
                )
            )
    return records


def _turns(messages: list[dict]) -> tuple[list[tuple[str, str]], str | None]:
    roles = [m["role"] for m in messages]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        return [], "not a plain user/assistant conversation (tools or other roles): not rewritten"
    turns = []
    for user, assistant in zip(messages[::2], messages[1::2]):
        answer = assistant.get("content") or ""
        if assistant.get("reasoning"):
            answer = f"<think>\n{assistant['reasoning']}\n</think>\n\n{answer}"
        turns.append((user.get("content") or "", answer))
    return turns, None


def check_variants(turn_count: int, count: int):
    def check(value: Any) -> list[list[str]]:
        good = []
        for variant in value:
            if isinstance(variant, dict):
                variant = variant.get("messages") or variant.get("conversation") or []
            texts = (
                [v.get("content") if isinstance(v, dict) else v for v in variant]
                if isinstance(variant, list)
                else []
            )
            if len(texts) == 2 * turn_count and all(
                isinstance(t, str) and t.strip() for t in texts
            ):
                good.append([t.strip() for t in texts])
        if not good:
            raise ValueError(f"no variant with {2 * turn_count} turns in the reply")
        return good[:count]

    return check


async def _ask_all(records, plan, jobs: Jobs, llm, variants: int) -> None:
    jobs.client = LLMClient(llm)
    todo = [r for r in records if r.problem is None]
    bars = Bars(len(todo), scored=False)
    bars.questions.set_description("records")
    limit = asyncio.Semaphore(max(8, llm.concurrency * 4))

    async def one(record: _Record) -> None:
        async with limit:
            key, messages, lang = plan(record)
            await jobs.run(
                "augment",
                key,
                messages,
                "array",
                check_variants(len(record.turns), variants),
                lang,
                record=record.id,
            )
            bars.chunk_done()

    tasks = [asyncio.create_task(one(r)) for r in todo]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            raise_first_error(done)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bars.close()
        await jobs.client.aclose()


def _export(records, plan, store: Store, folder: Path, eval_ids, config: Config, report: Report):
    synth = config.synth
    writer = DatasetWriter(folder, synth.format, with_eval=bool(eval_ids), prefix="augment")
    seen = NearDuplicates(synth.dedupe_threshold)
    counts = report.counts
    for name in ("records", "variants", "duplicates", "failed"):
        counts[name] = 0
    tmp = folder / (FAILED_FILE + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as failed:
            for record in records:
                counts["records"] += 1
                provenance = {
                    "document": record.source,
                    "record": record.index,
                    "dataset": record.dataset,
                }
                is_eval = record.id in eval_ids
                if record.problem is not None:
                    counts["failed"] += 1
                    failed.write(
                        json.dumps(
                            {"stage": "read", "record": record.id, "error": record.problem},
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    continue
                pairs = []
                if synth.augment_keep_original:
                    pairs.append(Pair(record.turns, {**provenance, "variant": 0}, record.system))
                key, _, _ = plan(record)
                entry = store.get(key)
                if entry is None or not entry.ok:
                    counts["failed"] += 1
                    failed.write(
                        json.dumps(
                            {
                                "stage": "augment",
                                "record": record.id,
                                "error": entry.error
                                if entry
                                else "not asked (the run was stopped before)",
                                "raw": entry.raw if entry else None,
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                else:
                    for number, texts in enumerate(entry.value, start=1):
                        turns = list(zip(texts[::2], texts[1::2]))
                        pairs.append(Pair(turns, {**provenance, "variant": number}, record.system))
                        counts["variants"] += 1
                for pair in pairs:
                    text = "\n".join(q for q, _ in pair.turns)
                    if seen.check(text) and pair.provenance["variant"] != 0:
                        counts["duplicates"] += 1
                        continue
                    writer.add(pair, eval=is_eval)
    except BaseException:
        writer.abandon()
        raise
    os.replace(tmp, folder / FAILED_FILE)
    exported = writer.close()
    counts["train_pairs"], counts["eval_pairs"] = exported.train, exported.eval
    report.files = exported.files + [FAILED_FILE]
    report.datasets = exported.dataset_names
    report.empty = [name for name, count in exported.records.items() if count == 0]
