"""Records -> Sample, for every LLaMA-Factory format and training stage.

alpaca: `instruction` + "\\n" + `input` is the user turn, `output` the answer, `history` earlier
[question, answer] pairs, `system` and `tools` optional. sharegpt / openai: see chat_formats.py.
Preference data (`ranking: true`): the conversation, then `chosen` and `rejected` answers
(alpaca: two text columns, or a `response` list [chosen, rejected]). KTO: a `kto_tag` column
with true/false for the final answer. Pre-training (stage pt): the alpaca prompt column is the
text (`columns: {prompt: text}`), as in LLaMA-Factory.

Every answer (alpaca `output` and history answers, chosen/rejected, KTO answers, and the
conversation formats' assistant messages) has its reasoning read by reasoning.py, the same way.
"""

from __future__ import annotations

from typing import Any

from lmforge.data.problems import RecordCheck
from lmforge.data.sample import Sample
from lmforge.data.sources.chat_formats import answer_message, conversation
from lmforge.data.sources.readers import MalformedLine
from lmforge.data.sources.reasoning import assistant_message
from lmforge.data.sources.record_fields import column_kto_label, column_text, column_tools
from lmforge.data.sources.registry import DatasetSpec
from lmforge.errors import UserError

PREFERENCE_STAGES = ("rm", "dpo")
PRETRAIN_STAGES = ("pt",)


def check_stage(spec: DatasetSpec, stage: str) -> None:
    """Dataset-level fit between a dataset and the training stage, before any record is read."""
    where = spec.declared_in or None
    if stage in PREFERENCE_STAGES and not spec.ranking:
        raise UserError(
            f"stage {stage} trains on preference pairs, but dataset `{spec.name}` has no "
            "`ranking: true`",
            where=where,
            fix="use a preference dataset (chosen/rejected answers, `ranking: true`), or "
            "stage: sft for this one",
        )
    if spec.ranking and stage not in PREFERENCE_STAGES:
        raise UserError(
            f"dataset `{spec.name}` is preference data (`ranking: true`), which stage {stage} "
            "cannot use",
            where=where,
            fix="train it with stage: dpo or rm, or choose an SFT dataset",
        )
    if stage == "kto" and not spec.kto:
        raise UserError(
            f"stage kto needs a `kto_tag` column, and dataset `{spec.name}` maps none",
            where=where,
            fix='add "columns": {"kto_tag": "label"} (the column holding true/false)',
        )
    if spec.kto and stage != "kto":
        raise UserError(
            f"dataset `{spec.name}` is KTO data (it maps `kto_tag`); stage {stage} would also "
            "train on its undesirable answers",
            where=where,
            fix="train it with stage: kto, or remove `kto_tag` from its columns",
        )
    if stage in PRETRAIN_STAGES and spec.formatting != "alpaca":
        raise UserError(
            f"pre-training reads plain text, but dataset `{spec.name}` is {spec.formatting} "
            "conversations",
            where=where,
            fix='describe the text as {"file_name": ..., "columns": {"prompt": "text"}}',
        )
    if spec.formatting == "alpaca" and stage not in PRETRAIN_STAGES:
        _check_alpaca_columns(spec, where)
    elif spec.ranking:
        _check_answer_columns(spec, where)


def _check_answer_columns(spec: DatasetSpec, where: str | None) -> None:
    """sharegpt/openai preference data reads its two answers from mapped columns (LLaMA-Factory
    has no default for them)."""
    missing = [key for key in ("chosen", "rejected") if key not in spec.columns]
    if missing:
        raise UserError(
            f"dataset `{spec.name}` is preference data (`ranking: true`), but maps no "
            f"{' or '.join(missing)} column",
            where=where,
            fix='add "chosen": "chosen", "rejected": "rejected" to its "columns" (the columns '
            "holding the better and the worse answer)",
        )


def _check_alpaca_columns(spec: DatasetSpec, where: str | None) -> None:
    columns = spec.columns
    if "prompt" not in columns and "query" not in columns:
        raise UserError(
            f"dataset `{spec.name}` maps no prompt column",
            where=where,
            fix='add "prompt": "instruction" (the column with the question) to its "columns"',
        )
    answers = ("chosen", "rejected") if spec.ranking and "response" not in columns else ()
    missing = [key for key in answers or ("response",) if key not in columns]
    if missing:
        raise UserError(
            f"dataset `{spec.name}` maps no {' or '.join(missing)} column (once `columns` is "
            "given, only the columns it lists are read)",
            where=where,
            fix=f'add "{missing[0]}": "..." to its "columns"; if this is pre-training text, '
            "train with stage: pt",
        )


def to_sample(
    spec: DatasetSpec, record: Any, check: RecordCheck, stage: str = "sft"
) -> Sample | None:
    """The record as a Sample, or None with its problems recorded in `check`."""
    if isinstance(record, MalformedLine):  # a line of the file that is not a record
        check.unreadable(record.line, record.reason, record.fix)
        return None
    if not isinstance(record, dict):
        check.problem(
            None,
            f"is a {type(record).__name__}, not an object",
            "each record must be a JSON object with the dataset's columns",
            "not an object",
        )
        return None
    if stage in PRETRAIN_STAGES:
        sample = _pretrain_sample(check, spec, record)
    elif spec.formatting == "alpaca":
        sample = _alpaca_sample(check, spec, record)
    else:
        sample = _chat_sample(check, spec, record)
    if sample is None or not check.ok:
        return None
    sample.source_file, sample.record_index = check.source, check.index
    return sample


def to_samples(spec: DatasetSpec, records: list[Any], stage: str = "sft") -> list[Sample]:
    """All records as Samples; the first problem is raised (callers wanting every problem use
    to_sample with their own RecordCheck)."""
    samples = []
    for index, record in enumerate(records):
        check = RecordCheck(str(spec.path or spec.label), index)
        sample = to_sample(spec, record, check, stage)
        if sample is None:
            raise check.problems[0].to_error()
        samples.append(sample)
    return samples


def _pretrain_sample(check: RecordCheck, spec: DatasetSpec, record: dict) -> Sample | None:
    prompt = column_text(check, spec, record, "prompt", required=False)
    query = column_text(check, spec, record, "query", required=False)
    text = "\n".join(part for part in (prompt, query) if part)
    if not text and check.ok:
        column = spec.columns.get("prompt", "text")
        check.problem(
            column,
            f"missing or empty (columns present: {', '.join(map(str, record)) or 'none'})",
            f'give every record a `{column}` text, or map the text column with "columns": '
            '{"prompt": "..."}',
            "missing column",
        )
        return None
    return Sample(messages=[], text=text)


def _alpaca_sample(check: RecordCheck, spec: DatasetSpec, record: dict) -> Sample | None:
    messages = _history(check, spec, record)
    prompt = column_text(check, spec, record, "prompt", required=False)
    query = column_text(check, spec, record, "query", required=False)
    user = "\n".join(part for part in (prompt, query) if part)  # LLaMA-Factory: "prompt\nquery"
    if not user and check.ok:  # name the prompt column as missing
        key = "prompt" if "prompt" in spec.columns else "query"
        column_text(check, spec, record, key, required=True)
    messages.append({"role": "user", "content": user})
    sample = Sample(messages=messages)
    sample.system = column_text(check, spec, record, "system", required=False)
    sample.tools = column_tools(check, spec, record)
    if spec.ranking:
        sample.chosen, sample.rejected = _alpaca_pair(check, spec, record)
        return sample
    response = column_text(check, spec, record, "response", required=True)
    answer = assistant_message(check, spec.columns["response"], response) if response else None
    if answer is not None:
        messages.append(answer)
    if spec.kto:
        sample.kto_label = column_kto_label(check, spec, record)
    return sample


def _history(check: RecordCheck, spec: DatasetSpec, record: dict) -> list[dict]:
    column = spec.columns.get("history")
    history = record.get(column) if column else None
    if history in (None, "", []):
        return []
    fix = 'write history as [["question", "answer"], ...], oldest first'
    if not isinstance(history, list):
        reason = f"must be a list of pairs, not {type(history).__name__}"
        check.problem(column, reason, fix, "wrong type")
        return []
    messages = []
    for turn, pair in enumerate(history):
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2
        if not ok or not all(isinstance(text, str) for text in pair):
            reason = f"history turn {turn} must be a [question, answer] pair of texts"
            check.problem(column, reason, fix, "bad history")
            return []
        answer = assistant_message(check, column, pair[1], what=f"history turn {turn} answer")
        if answer is None:
            return []
        messages += [{"role": "user", "content": pair[0]}, answer]
    return messages


def _alpaca_pair(check: RecordCheck, spec: DatasetSpec, record: dict) -> tuple[Any, Any]:
    columns = spec.columns
    if "chosen" in spec.columns and "rejected" in spec.columns:
        chosen = column_text(check, spec, record, "chosen", required=True)
        rejected = column_text(check, spec, record, "rejected", required=True)
    else:  # older LLaMA-Factory data: `output` holds [chosen, rejected]
        column = spec.columns["response"]
        value = record.get(column)
        ok = isinstance(value, list) and len(value) >= 2
        if not ok or not all(isinstance(v, str) and v for v in value[:2]):
            check.problem(
                column,
                "a preference record needs a list [chosen, rejected] here",
                f'write "{column}": ["better answer", "worse answer"], or map "chosen" and '
                '"rejected" columns',
                "missing column",
            )
            return None, None
        chosen, rejected = value[0], value[1]
        columns = {"chosen": f"{column}[0]", "rejected": f"{column}[1]"}
    if chosen is None or rejected is None:
        return None, None
    return (
        assistant_message(check, columns["chosen"], chosen),
        assistant_message(check, columns["rejected"], rejected),
    )


def _chat_sample(check: RecordCheck, spec: DatasetSpec, record: dict) -> Sample | None:
    system, messages = conversation(check, spec, record, ends_with_answer=not spec.ranking)
    sample = Sample(messages=messages, system=system)
    sample.tools = column_tools(check, spec, record)
    if spec.ranking:
        sample.chosen = answer_message(check, spec, record, "chosen")
        sample.rejected = answer_message(check, spec, record, "rejected")
    if spec.kto:
        sample.kto_label = column_kto_label(check, spec, record)
    return sample
