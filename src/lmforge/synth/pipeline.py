"""`lmforge synth`: documents -> chunks -> questions -> answers -> (scores) -> deduplicated
alpaca/sharegpt files, as a replay over the store.

1. Read and chunk every document into output_dir/synth_chunks.jsonl (the chunks of this run;
   documents are read once).
2. Ask: per chunk, its questions; per question, its answer (and score): asked concurrently,
   each result stored as it arrives. What the store holds is not asked again.
3. Replay: chunk by chunk from the store, in order: drop low scores and near-duplicates, and
   write the pairs (eval chunks to eval.json). Same store, same files: a resumed run writes
   exactly what an uninterrupted one does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.config.schema import Config
from lmforge.synth import settings as synth_settings
from lmforge.synth.chunking import Chunk, split_chunks
from lmforge.synth.dedupe import NearDuplicates
from lmforge.synth.documents import find_documents, read_documents
from lmforge.synth.export import DatasetWriter, Pair
from lmforge.synth.jobs import Jobs
from lmforge.synth.llm_client import LLMClient
from lmforge.synth.progress import Bars
from lmforge.synth.prompts import detect_language, load_prompts
from lmforge.synth.report import Report, finish_report
from lmforge.synth.store import Store, result_key

logger = logging.getLogger(__name__)

CHUNKS_FILE = "synth_chunks.jsonl"
FAILED_FILE = "failed.jsonl"


def run_synth(config: Config) -> Report:
    started = time.monotonic()
    llm = synth_settings.llm_settings(config)
    synth_settings.check_chunking(config)
    folder = Path(synth_settings.output_folder(config))
    files = find_documents(config.synth.documents, config.path, config.where("documents"))
    prompts = load_prompts(config.synth.prompt_dir, config.where("prompt_dir"))
    folder.mkdir(parents=True, exist_ok=True)
    with Store(folder) as store:
        documents, chunk_ids, unreadable = _write_chunks(config, files, folder)
        plan = _Plan(config, llm.model, prompts)
        jobs = Jobs(store, None, {lang: p["strict"] for lang, p in prompts.items()})
        asyncio.run(_ask_all(plan, jobs, llm, folder, len(chunk_ids)))
        eval_ids = eval_chunks(chunk_ids, config.synth.eval_share, config.train.seed)
        report = Report(kind="synth", output_dir=str(folder), llm=synth_settings.redacted(llm))
        report.counts["documents"] = documents
        report.counts["chunks"] = len(chunk_ids)
        _replay(plan, store, folder, eval_ids, report)
        if unreadable:
            report.counts["failed"] += len(unreadable)
            report.counts["unreadable_documents"] = len(unreadable)
            report.notes += [f"not read: {error}" for error in unreadable[:20]]
    return finish_report(report, jobs, config, folder, started)


# ---- 1. documents -> chunks -----------------------------------------------------------------


def _write_chunks(config: Config, files, folder: Path) -> tuple[int, list[str], list[str]]:
    """(documents read, chunk ids, why each unreadable document was not read): one damaged
    file among thousands is reported, not a reason to stop."""
    synth = config.synth
    path = folder / CHUNKS_FILE
    tmp = path.with_name(CHUNKS_FILE + ".tmp")
    ids: list[str] = []
    unreadable: list[str] = []
    documents = 0
    with open(tmp, "w", encoding="utf-8") as out:
        for document in read_documents(files, unreadable):
            documents += 1
            for chunk in split_chunks(
                document.name,
                document.text,
                min_chars=synth.chunk_min_chars,
                max_chars=synth.chunk_max_chars,
                overlap=synth.chunk_overlap,
            ):
                ids.append(chunk.id)
                record = {
                    "id": chunk.id,
                    "document": chunk.document,
                    "index": chunk.index,
                    "start": chunk.start,
                    "end": chunk.end,
                    "text": chunk.text,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return documents, ids, unreadable


def _chunks(folder: Path) -> Iterator[Chunk]:
    with open(folder / CHUNKS_FILE, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            yield Chunk(r["document"], r["index"], r["start"], r["end"], r["text"])


def eval_chunks(chunk_ids: list[str], share: float, seed: int) -> set[str]:
    """The chunks whose pairs go to eval.json: a fixed pseudo-random share of whole chunks
    (at least one when share > 0 and there are two chunks, never all of them)."""
    if share <= 0 or len(chunk_ids) < 2:
        return set()
    count = min(len(chunk_ids) - 1, max(1, round(len(chunk_ids) * share)))
    order = sorted(chunk_ids, key=lambda c: hashlib.sha256(f"{seed}\0{c}".encode()).hexdigest())
    return set(order[:count])


# ---- 2. ask ---------------------------------------------------------------------------------


class _Plan:
    """The prompts and keys of each stage for this config."""

    def __init__(self, config: Config, model: str, prompts: dict[str, dict[str, str]]):
        self.synth = config.synth
        self.model = model
        self.prompts = prompts

    def language(self, chunk: Chunk) -> str:
        lang = self.synth.language
        return detect_language(chunk.text) if lang == "auto" else lang

    def _messages(self, language: str, user: str) -> list[dict]:
        return [
            {"role": "system", "content": self.prompts[language]["system"]},
            {"role": "user", "content": user},
        ]

    def question_count(self, chunk: Chunk) -> int:
        return max(1, round(len(chunk.text) / self.synth.questions_per_chars))

    def questions(self, chunk: Chunk) -> tuple[str, list[dict], str]:
        lang = self.language(chunk)
        p = self.prompts[lang]
        count = self.question_count(chunk)
        key = result_key("questions", chunk.text, count, p["system"], p["questions"], self.model)
        return key, self._messages(lang, p["questions"].format(count=count, text=chunk.text)), lang

    def answer(self, chunk: Chunk, question: str) -> tuple[str, list[dict], str]:
        lang = self.language(chunk)
        p = self.prompts[lang]
        template = p["answer_cot" if self.synth.cot else "answer"]
        style = p[f"style_{self.synth.answer_style}"]
        key = result_key("answer", chunk.text, question, p["system"], template, style, self.model)
        user = template.format(text=chunk.text, question=question, style=style)
        return key, self._messages(lang, user), lang

    def score(self, chunk: Chunk, question: str, answer: str) -> tuple[str, list[dict], str]:
        lang = self.language(chunk)
        p = self.prompts[lang]
        key = result_key("score", chunk.text, question, answer, p["system"], p["score"], self.model)
        user = p["score"].format(text=chunk.text, question=question, answer=answer)
        return key, self._messages(lang, user), lang

    def answer_text(self, value: dict) -> str:
        if self.synth.cot and value.get("reasoning"):
            return f"<think>\n{value['reasoning'].strip()}\n</think>\n\n{value['answer'].strip()}"
        return value["answer"].strip()


def check_questions(count: int):
    def check(value: Any) -> list[str]:
        questions = []
        for item in value:
            if isinstance(item, dict):  # [{"question": "..."}]
                item = item.get("question")
            if isinstance(item, str) and item.strip():
                questions.append(item.strip())
        if not questions:
            raise ValueError("no question in the reply")
        return questions[: max(count, 1) * 2]

    return check


def check_answer(cot: bool):
    def check(value: Any) -> dict:
        answer = value.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError('the reply has no "answer" text')
        result = {"answer": answer.strip()}
        reasoning = value.get("reasoning")
        if cot:
            if not isinstance(reasoning, str) or not reasoning.strip():
                raise ValueError('the reply has no "reasoning" text (cot: true)')
            result["reasoning"] = reasoning.strip()
        return result

    return check


def check_score(value: Any) -> dict:
    score = value.get("score")
    try:
        number = float(score)
    except (TypeError, ValueError):
        raise ValueError('the reply has no numeric "score"') from None
    if not 0 <= number <= 10:
        raise ValueError(f"score {number} is not from 1 to 10")
    return {"score": number, "reason": str(value.get("reason") or "")}


async def _ask_all(plan: _Plan, jobs: Jobs, llm, folder: Path, total: int) -> None:
    jobs.client = LLMClient(llm)
    bars = Bars(total, scored=plan.synth.quality_threshold is not None)
    in_flight: set[asyncio.Task] = set()
    limit = max(8, llm.concurrency * 4)  # chunks at once (their answers run in parallel)
    try:
        for chunk in _chunks(folder):
            while len(in_flight) >= limit:
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                in_flight -= done
                raise_first_error(done)  # a UserError (wrong key, endpoint gone) stops the run
            in_flight.add(asyncio.create_task(_ask_chunk(plan, jobs, chunk, bars)))
        while in_flight:
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight -= done
            raise_first_error(done)
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)
        bars.close()
        await jobs.client.aclose()


def raise_first_error(done: set[asyncio.Task]) -> None:
    """Every finished task's exception is retrieved (none is left for asyncio to report); the
    first is raised."""
    errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
    if errors:
        raise errors[0]


async def _ask_chunk(plan: _Plan, jobs: Jobs, chunk: Chunk, bars: Bars) -> None:
    key, messages, lang = plan.questions(chunk)
    entry = await jobs.run(
        "questions",
        key,
        messages,
        "array",
        check_questions(plan.question_count(chunk)),
        lang,
        chunk=chunk.id,
    )
    bars.chunk_done()
    if not entry.ok:
        return
    bars.add_questions(len(entry.value))
    await asyncio.gather(*(_ask_pair(plan, jobs, chunk, q, bars) for q in entry.value))


async def _ask_pair(plan: _Plan, jobs: Jobs, chunk: Chunk, question: str, bars: Bars) -> None:
    key, messages, lang = plan.answer(chunk, question)
    entry = await jobs.run(
        "answer", key, messages, "object", check_answer(plan.synth.cot), lang, chunk=chunk.id
    )
    bars.answer_done()
    if not entry.ok or plan.synth.quality_threshold is None:
        return
    key, messages, lang = plan.score(chunk, question, plan.answer_text(entry.value))
    await jobs.run("score", key, messages, "object", check_score, lang, chunk=chunk.id)
    bars.score_done()


# ---- 3. replay ------------------------------------------------------------------------------


def _replay(plan: _Plan, store: Store, folder: Path, eval_ids: set[str], report: Report) -> None:
    synth = plan.synth
    writer = DatasetWriter(folder, synth.format, with_eval=bool(eval_ids))
    seen = NearDuplicates(synth.dedupe_threshold)
    counts = report.counts
    for name in ("questions", "answers", "low_score", "duplicates", "failed"):
        counts.setdefault(name, 0)
    failed_path = folder / FAILED_FILE
    with open(failed_path.with_name(FAILED_FILE + ".tmp"), "w", encoding="utf-8") as failed:

        def fail(stage: str, entry, chunk: Chunk, **more) -> None:
            counts["failed"] += 1
            record = {"stage": stage, "chunk_id": chunk.id, "document": chunk.document, **more}
            if entry is None:
                record["error"] = "not asked (the run was stopped before)"
            else:
                record.update(key=entry.key, error=entry.error, raw=entry.raw)
            failed.write(json.dumps(record, ensure_ascii=False) + "\n")

        try:
            for chunk in _chunks(folder):
                key, _, _ = plan.questions(chunk)
                entry = store.get(key)
                if entry is None or not entry.ok:
                    fail("questions", entry, chunk)
                    continue
                provenance = {
                    "document": chunk.document,
                    "chunk_id": chunk.id,
                    "char_start": chunk.start,
                    "char_end": chunk.end,
                }
                for question in entry.value:
                    counts["questions"] += 1
                    key, _, _ = plan.answer(chunk, question)
                    answer = store.get(key)
                    if answer is None or not answer.ok:
                        fail("answer", answer, chunk, question=question)
                        continue
                    counts["answers"] += 1
                    text = plan.answer_text(answer.value)
                    if synth.quality_threshold is not None:
                        key, _, _ = plan.score(chunk, question, text)
                        score = store.get(key)
                        if score is None or not score.ok:
                            fail("score", score, chunk, question=question)
                            continue
                        if score.value["score"] < synth.quality_threshold:
                            counts["low_score"] += 1
                            continue
                    if seen.check(question):
                        counts["duplicates"] += 1
                        continue
                    writer.add(Pair([(question, text)], provenance), eval=chunk.id in eval_ids)
        except BaseException:
            writer.abandon()
            raise
    os.replace(failed_path.with_name(FAILED_FILE + ".tmp"), failed_path)
    exported = writer.close()
    report.counts["train_pairs"] = exported.train
    report.counts["eval_pairs"] = exported.eval
    report.files = exported.files + [FAILED_FILE]
    report.datasets = exported.dataset_names
    report.empty = [name for name, count in exported.records.items() if count == 0]
