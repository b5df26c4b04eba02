"""Generated answers for a dataset, scored against its answers (LLaMA-Factory's do_predict).

The samples come from lmforge's data pipeline (eval_dataset, else dataset; max_samples
applies); each sample's last assistant message is the label and the conversation before it
the prompt, encoded with the chat template's generation prompt. Answers are generated in
batches (per_device_eval_batch_size, left padding), greedily unless the config sets
do_sample, with the generate section's settings. Two files go to output_dir (or save_dir):
generated_predictions.jsonl (prompt, predict, label per sample, as LLaMA-Factory writes it)
and predict_results.json (predict_bleu-4, predict_rouge-1/2/l, runtime), both written
atomically.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.schema import Config
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


@dataclass
class PromptItem:
    ids: list[int]
    label: str


@dataclass
class PredictOutcome:
    folder: Path
    count: int
    metrics: dict[str, float]
    truncated: int


def write_text_atomic(path: Path, text: str) -> Path:
    """A temporary file beside `path`, then a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def prediction_folder(config: Config) -> Path:
    folder = config.train.output_dir or config.eval.save_dir
    if not folder:
        raise UserError(
            "`output_dir` is not set, so there is nowhere to write generated_predictions.jsonl "
            "and predict_results.json",
            where=config.source,
            fix="add `output_dir: saves/predict` (or output_dir=...)",
        )
    return Path(folder)


def prediction_samples(config: Config) -> list:
    """The samples to answer: eval_dataset, else dataset, read and checked as training reads
    them (an invalid record stops, unless skip_invalid)."""
    from lmforge.data.problems import invalid_records_error
    from lmforge.data.sources.load import eval_dataset_names, read_dataset, resolve_specs

    data = config.data
    names = eval_dataset_names(data) or None  # None: the training datasets
    specs = resolve_specs(data, names, stage="sft")
    samples, problems, records = [], [], 0
    for spec in specs:
        read = read_dataset(spec, data, "sft", config.train.seed)
        if read.error is not None:
            raise read.error
        samples += read.samples
        problems += read.problems
        records += read.records
    if problems and not data.skip_invalid:
        raise invalid_records_error(problems, records)
    if problems:
        logger.warning("skipped %d invalid records; first: %s", len(problems), problems[0])
    return samples


def encode_samples(samples: list, tokenizer, template, cutoff_len: int) -> tuple[list, int]:
    """(PromptItems, how many prompts were cut to their last cutoff_len tokens)."""
    items, truncated = [], 0
    for sample in samples:
        messages = list(sample.messages)
        label = ""
        if messages and messages[-1].get("role") == "assistant":
            label = str(messages[-1].get("content") or "")
            messages = messages[:-1]
        if not messages:
            continue
        ids = template.encode_prompt(tokenizer, messages, sample.system, sample.tools)
        if len(ids) > cutoff_len:
            ids, truncated = ids[-cutoff_len:], truncated + 1
        items.append(PromptItem(ids, label))
    return items, truncated


def generation_settings(config: Config, tokenizer, template) -> dict:
    """transformers generate() arguments: greedy unless the config sets do_sample."""
    gen = config.generate
    sample = gen.do_sample if "do_sample" in config.given else False
    settings = {
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": sample and gen.temperature > 0,
        "repetition_penalty": gen.repetition_penalty,
        "eos_token_id": template.stop_token_ids(tokenizer) or None,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if settings["do_sample"]:
        settings.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    else:  # no sampling settings, so transformers does not warn that they are unused
        settings.update(temperature=None, top_p=None, top_k=None)
    if gen.num_beams > 1:  # LLaMA-Factory's num_beams and length_penalty
        settings.update(num_beams=gen.num_beams, length_penalty=gen.length_penalty)
    return settings


def generate_token_ids(
    model, tokenizer, items: list[PromptItem], batch_size: int, settings: dict
) -> list[list[int]]:
    """Each prompt's answer tokens, in order: batches formed longest first and left-padded with
    an attention mask; each row ends before its first stop id (settings' eos_token_id), so the
    stop token and the padding after it are not part of the answer."""
    import torch
    from tqdm import tqdm

    stops = settings.get("eos_token_id")
    stops = set([stops] if isinstance(stops, int) else stops or [])
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    answers: list[list[int]] = [[] for _ in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(items), desc="Generating", unit="sample") as bar:
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = [items[i].ids for i in chosen]
            longest = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (longest - len(p)) + p for p in batch], device=device)
            mask = torch.tensor(
                [[0] * (longest - len(p)) + [1] * len(p) for p in batch], device=device
            )
            out = model.generate(input_ids=ids, attention_mask=mask, **settings)
            for i, row in zip(chosen, out[:, longest:].tolist()):
                end = next((k for k, token in enumerate(row) if token in stops), len(row))
                answers[i] = row[:end]
            bar.update(len(batch))
    return answers


def generate_answers(
    model,
    tokenizer,
    items: list[PromptItem],
    batch_size: int,
    settings: dict,
    skip_special_tokens: bool = True,
):
    """Each prompt's answer text, in order (generate_token_ids, decoded)."""
    return [
        tokenizer.decode(row, skip_special_tokens=skip_special_tokens)
        for row in generate_token_ids(model, tokenizer, items, batch_size, settings)
    ]


def run_prediction(
    config: Config, *, model=None, setup=None, folder: str | Path | None = None
) -> PredictOutcome:
    """Answer the dataset and write the two files. `model`/`setup`: an already loaded model
    (after training) and its ModelSetup; else the config's model (and adapters) is loaded."""
    import torch

    from lmforge.evaluate.metrics import similarity

    out = Path(folder) if folder is not None else prediction_folder(config)
    samples = prediction_samples(config)  # data problems before the model loads
    if not samples:
        raise UserError(
            "the dataset has no samples to answer",
            where=config.source,
            fix="set eval_dataset (or dataset) to a dataset with records",
        )
    if model is None or setup is None:
        from lmforge.evaluate.loading import attach_checked, load_base
        from lmforge.model.load import split_paths

        config, setup, model = load_base(config)
        adapters = split_paths(config.model.adapter_name_or_path)
        model = attach_checked(model, adapters, str(config.model.model_name_or_path))
    tokenizer, template = setup.tokenizer, setup.template
    items, truncated = encode_samples(samples, tokenizer, template, config.data.cutoff_len)
    if truncated:
        logger.warning(
            "%d prompts were longer than cutoff_len (%d) and keep only their last %d tokens",
            truncated,
            config.data.cutoff_len,
            config.data.cutoff_len,
        )
    settings = generation_settings(config, tokenizer, template)
    if settings["do_sample"]:
        torch.manual_seed(config.train.seed)
    batch_size = config.train.per_device_eval_batch_size
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    answers = generate_answers(
        model, tokenizer, items, batch_size, settings, config.generate.skip_special_tokens
    )
    if was_training:
        model.train()
    runtime = time.perf_counter() - started
    labels = [item.label for item in items]
    scores = similarity(answers, labels)
    lines = [
        json.dumps(
            {
                "prompt": tokenizer.decode(item.ids, skip_special_tokens=False),
                "predict": answer,
                "label": item.label,
            },
            ensure_ascii=False,
        )
        for item, answer in zip(items, answers)
    ]
    write_text_atomic(out / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    steps = -(-len(items) // batch_size)
    metrics = {f"predict_{key}": value for key, value in scores.items()}
    metrics |= {
        "predict_samples": len(items),
        "predict_runtime": round(runtime, 4),
        "predict_samples_per_second": round(len(items) / runtime, 3) if runtime else None,
        "predict_steps_per_second": round(steps / runtime, 3) if runtime else None,
    }
    write_json_atomic(out / RESULTS_FILE, metrics)
    return PredictOutcome(out, len(items), metrics, truncated)


def check_predict_settings(config: Config) -> None:
    """do_predict in a training config, checked as LLaMA-Factory checks it, before training."""
    ev = config.eval
    if not ev.do_predict:
        return
    if config.method.stage != "sft":
        raise UserError(
            f"do_predict generates answers, which stage {config.method.stage} does not train",
            where=config.where("do_predict"),
            fix="use do_predict with stage: sft, or remove it",
        )
    if not ev.predict_with_generate:
        raise UserError(
            "do_predict needs predict_with_generate: true (as in LLaMA-Factory): predictions "
            "are generated answers",
            where=config.where("do_predict"),
            fix="add `predict_with_generate: true`",
        )
