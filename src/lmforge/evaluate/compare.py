"""`lmforge compare`: the same prompts answered by the base model and by each adapter, side by side.

The prompts are the eval split (eval_dataset, or the val_size records held out with the run's
seed, read by lmforge's data pipeline), a `prompts:` file, or both. The base model is loaded
once and answers first; each adapter (compare_adapters, else adapter_name_or_path) is then
attached with peft, answers, and is unloaded again, so each is compared on its own and one copy
of the base weights is in memory. Every model uses the same chat template and greedy decoding.

Per prompt: each model's answer, the reference when there is one, ROUGE-L against it
(evaluate/metrics.py, as `lmforge predict` scores it), and a memorisation flag when an answer
to a held-out prompt repeats one of the training answers (the config's `dataset`) verbatim.
Per model: the eval loss, the mean token loss on the reference answers with the template's
trained-span labels (data/encoding/encode.py, as training computes it). compare.md,
compare.html and compare.json go to save_dir (else output_dir), each written atomically.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from lmforge.config.schema import Config
from lmforge.data.sample import Sample
from lmforge.errors import UserError

logger = logging.getLogger(__name__)

FILES = ("compare.md", "compare.html", "compare.json")


@dataclass
class Entry:
    """One prompt to compare: the conversation up to the answer, and the reference (or None)."""

    sample: Sample  # messages end with the reference answer when there is one
    source: str  # "eval" or "prompts"
    prompt: str  # the last user message, as shown
    reference: str | None
    held_out: bool = True


@dataclass
class Compared:
    folder: Path
    report: dict
    files: list[Path] = field(default_factory=list)


# ---- prompts --------------------------------------------------------------------------------


def read_prompts_file(path: str | Path) -> list[tuple[str, str | None]]:
    """(prompt, reference or None) per entry of a JSON list or JSONL file of strings or
    {"prompt", "reference"} objects; anything else is one UserError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(
            f"cannot read the prompts file {path} ({exc.strerror or exc})",
            fix="set `prompts:` to a JSON or JSONL file of prompts",
        ) from None
    entries: list[tuple[int, object]] = []  # (line, value)
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise _broken(path, number, exc.colno, exc.msg) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _broken(path, exc.lineno, exc.colno, exc.msg) from None
        if not isinstance(data, list):
            raise UserError(
                f"{path}: the prompts file holds a JSON {type(data).__name__}, not a list",
                fix='write a list: ["first prompt", {"prompt": "...", "reference": "..."}]',
            )
        entries = [(_line_of(text, i), value) for i, value in enumerate(data)]
    prompts = []
    for line, value in entries:
        if isinstance(value, str):
            prompts.append((value, None))
            continue
        if isinstance(value, dict) and isinstance(value.get("prompt"), str):
            reference = value.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise _bad_entry(path, line, "`reference` is not a string")
            prompts.append((value["prompt"], reference))
            continue
        raise _bad_entry(path, line, "an entry is neither a string nor an object with `prompt`")
    if not prompts:
        raise UserError(f"{path}: the prompts file has no prompts", fix="add at least one")
    return prompts


def _broken(path: Path, line: int, column: int, message: str) -> UserError:
    return UserError(
        f"{path}:{line}: the prompts file is not valid JSON ({message}, line {line} "
        f"column {column})",
        fix='correct that line: a JSON list of strings or {"prompt", "reference"} objects '
        "(or, in a .jsonl file, one such value per line)",
    )


def _bad_entry(path: Path, line: int, why: str) -> UserError:
    return UserError(
        f"{path}:{line}: {why}",
        fix='write each prompt as a string or as {"prompt": "...", "reference": "..."}',
    )


def _line_of(text: str, index: int) -> int:
    """The line where the index-th element of a top-level JSON list starts (1-based)."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    for i in range(index + 1):
        while text[position] in " \t\r\n,":
            position += 1
        if i == index:
            return text.count("\n", 0, position) + 1
        _, position = decoder.raw_decode(text, position)
    return 1


def _last_user(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return str(messages[-1].get("content") or "") if messages else ""


def _split_answer(sample: Sample) -> tuple[list[dict], str | None]:
    messages = list(sample.messages)
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content") or "")
    return messages, None


def read_entries(config: Config) -> tuple[list[Entry], list[Sample], bool]:
    """(the prompts to compare, the training samples, whether the training answers are known):
    the eval split first, then the prompts file. Data problems stop here, before any model."""
    from lmforge.data.encoding.loader import DataReport
    from lmforge.data.sources.load import dataset_names, load_samples, load_splits
    from lmforge.data.sources.mixing import holds_out
    from lmforge.evaluate.predict import prediction_samples

    data = config.data
    try:
        has_train = bool(dataset_names(data))
    except UserError:
        has_train = False
    report, seed = DataReport(), config.train.seed
    train: list[Sample] = []
    held: list[Sample] = []
    if data.eval_dataset and not has_train:
        held = prediction_samples(config)
    elif data.eval_dataset or holds_out(data.val_size):
        train_part, held = load_splits(data, report, seed=seed, stage="sft")
        train = list(train_part)
    elif has_train:
        train = load_samples(data, report, stage="sft", seed=seed)
    entries = []
    for sample in held:
        messages, reference = _split_answer(sample)
        if messages:
            entries.append(Entry(sample, "eval", _last_user(messages), reference))
    if config.eval.prompts:
        for prompt, reference in read_prompts_file(config.eval.prompts):
            messages = [{"role": "user", "content": prompt}]
            if reference is not None:
                messages.append({"role": "assistant", "content": reference})
            entries.append(
                Entry(
                    Sample(messages, source_file=str(config.eval.prompts)),
                    "prompts",
                    prompt,
                    reference,
                )
            )
    if not entries:
        raise UserError(
            "there are no prompts to compare: no eval split (eval_dataset or val_size) and no "
            "prompts file",
            where=config.source,
            fix="set `val_size: 0.1` or `eval_dataset: NAME`, or `prompts: prompts.jsonl` "
            '(a JSON list of strings or {"prompt", "reference"} objects)',
        )
    trained_prompts = {_last_user(_split_answer(s)[0]).strip() for s in train}
    for entry in entries:
        entry.held_out = entry.prompt.strip() not in trained_prompts
    return entries, train, has_train


def training_answers(samples: list[Sample]) -> set[str]:
    """Every assistant message of the training samples, stripped: the targets the model learned."""
    answers = set()
    for sample in samples:
        for message in sample.messages:
            if message.get("role") == "assistant":
                text = str(message.get("content") or "").strip()
                if text:
                    answers.add(text)
    return answers


# ---- models ---------------------------------------------------------------------------------


def adapter_list(config: Config) -> list[str]:
    from lmforge.model.load import split_paths

    listed = split_paths(config.eval.compare_adapters)
    merged = split_paths(config.model.adapter_name_or_path)
    if listed and merged:
        raise UserError(
            "both compare_adapters and adapter_name_or_path are set; `lmforge compare` answers "
            "with the base and with each adapter on its own",
            where=config.where("compare_adapters"),
            fix="list every adapter or checkpoint under one of the two keys",
        )
    return listed or merged


def labels_for(adapters: list[str]) -> list[str]:
    """Short, distinct column names: the folder name (run/checkpoint-N for a checkpoint)."""
    labels: list[str] = []
    for adapter in adapters:
        path = Path(adapter)
        label = (
            f"{path.parent.name}/{path.name}" if path.name.startswith("checkpoint-") else path.name
        )
        base, n = label or adapter, 2
        label = base
        while label in labels or label == "base":
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def attach_one(model, adapter: str, base_name: str):
    """The PeftModel of `model` with `adapter` (not merged, so it can be unloaded again)."""
    from lmforge.evaluate.loading import adapter_mismatch
    from lmforge.model.load import attach_adapters

    try:
        return attach_adapters(model, [adapter], merge=False).eval()
    except UserError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise adapter_mismatch(adapter, base_name, exc) from None


def eval_loss(model, encoded: list) -> tuple[float | None, int]:
    """(mean loss per trained token, trained tokens) over `encoded` (data.encoding Encoded):
    the loss training reports, on the reference answers. Logits only at trained positions."""
    import torch
    import torch.nn.functional as F

    from lmforge.data.encoding.encode import IGNORE_INDEX

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for item in encoded:
            targets = item.labels[1:]
            positions = [i for i, label in enumerate(targets) if label != IGNORE_INDEX]
            if not positions:
                continue
            ids = torch.tensor([item.input_ids], device=device)
            keep = torch.tensor(positions, device=device)
            try:
                logits = model(input_ids=ids, logits_to_keep=keep).logits[0].float()
            except TypeError:  # a model without logits_to_keep (remote code): all positions
                logits = model(input_ids=ids).logits[0, keep].float()
            wanted = torch.tensor([targets[i] for i in positions], device=device)
            total += float(F.cross_entropy(logits, wanted, reduction="sum"))
            count += len(positions)
    return (total / count if count else None), count


# ---- the comparison -------------------------------------------------------------------------


def output_folder(config: Config) -> Path:
    folder = config.eval.save_dir or config.train.output_dir
    if not folder:
        raise UserError(
            "neither `save_dir` nor `output_dir` is set, so there is nowhere to write "
            "compare.md, compare.html and compare.json",
            where=config.source,
            fix="add `save_dir: saves/compare`",
        )
    return Path(folder)


def run_comparison(config: Config, *, model_loader=None, generate=None) -> Compared:
    """Answer every prompt with the base and each adapter; write the three files.
    `model_loader`: a stand-in for evaluate.loading.load_base; `generate`: for
    evaluate.predict.generate_answers (tests)."""
    from lmforge.data.encoding.encode import encode_sample
    from lmforge.evaluate.loading import load_base
    from lmforge.evaluate.metrics import _libraries, answer_scores
    from lmforge.evaluate.predict import (
        encode_samples,
        generate_answers,
        generation_settings,
        write_json_atomic,
        write_text_atomic,
    )
    from lmforge.infer.adapters import check_adapter_folder

    folder = output_folder(config)
    adapters = adapter_list(config)
    for adapter in adapters:
        check_adapter_folder(adapter)
    entries, train, has_train = read_entries(config)
    references = [e for e in entries if e.reference is not None]
    if references:
        _libraries()  # the metrics extra, before the slow part
    known = training_answers(train)

    # The template the adapters were trained with (the last one's run), as eval and chat use.
    loading = replace(
        config, model=replace(config.model, adapter_name_or_path=",".join(adapters) or None)
    )
    loaded, setup, model = (model_loader or load_base)(loading)
    tokenizer, template = setup.tokenizer, setup.template
    cutoff = loaded.data.cutoff_len
    items, truncated = encode_samples([e.sample for e in entries], tokenizer, template, cutoff)
    if truncated:
        logger.warning(
            "%d prompts were longer than cutoff_len (%d): their last tokens are kept",
            truncated,
            cutoff,
        )
    scored = [encode_sample(e.sample, template, tokenizer, cutoff) for e in references]
    settings = generation_settings(loaded, tokenizer, template)
    settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)  # greedy
    settings.pop("num_beams", None)  # one greedy answer per model, as documented
    settings.pop("length_penalty", None)
    batch = loaded.train.per_device_eval_batch_size
    generate = generate or generate_answers
    base_name = str(loaded.model.model_name_or_path)

    runs = [("base", None)] + list(zip(labels_for(adapters), adapters))
    models, answers = [], {}
    for label, adapter in runs:
        current = attach_one(model, adapter, base_name) if adapter else model
        current.eval()
        logger.info("answering %d prompts with %s", len(items), label)
        answers[label] = list(generate(current, tokenizer, items, batch, settings))
        loss, tokens = eval_loss(current, scored)
        models.append({"name": label, "adapter": adapter, "eval_loss": loss, "eval_tokens": tokens})
        if adapter:
            model = current.unload()  # the base again, without the adapter's layers

    rows = []
    for index, entry in enumerate(entries):
        row = {
            "index": index + 1,
            "source": entry.source,
            "prompt": entry.prompt,
            "reference": entry.reference,
            "held_out": entry.held_out,
            "answers": {},
        }
        for run in models:
            text = answers[run["name"]][index]
            rouge = None
            if entry.reference is not None:
                rouge = answer_scores(text, entry.reference)["rouge-l"]
            memorised = bool(entry.held_out and text.strip() and text.strip() in known)
            row["answers"][run["name"]] = {"answer": text, "rouge_l": rouge, "memorised": memorised}
        rows.append(row)
    for run in models:
        values = [r["answers"][run["name"]]["rouge_l"] for r in rows]
        values = [v for v in values if v is not None]
        run["rouge_l"] = sum(values) / len(values) if values else None
        run["memorised"] = sum(r["answers"][run["name"]]["memorised"] for r in rows)

    report = {
        "model": base_name,
        "template": template.name,
        "decoding": {"greedy": True, "max_new_tokens": settings["max_new_tokens"]},
        "prompts_file": config.eval.prompts,
        "counts": {
            "prompts": len(rows),
            "eval": sum(e.source == "eval" for e in entries),
            "prompts_file": sum(e.source == "prompts" for e in entries),
            "with_reference": len(references),
        },
        "memorisation_checked": has_train,
        "training_answers": len(known),
        "models": models,
        "prompts": rows,
    }
    files = [
        write_text_atomic(folder / FILES[0], format_markdown(report)),
        write_text_atomic(folder / FILES[1], format_html(report)),
        write_json_atomic(folder / FILES[2], report),
    ]
    return Compared(folder, report, files)


# ---- formats --------------------------------------------------------------------------------


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The short terminal table: one line per model."""
    names = [m["name"] for m in report["models"]]
    width = max(8, *(len(n) for n in names))
    total = report["counts"]["prompts"]
    lines = [f"{'model':<{width}}  {'eval loss':>9}  {'ROUGE-L':>7}  memorised"]
    for m in report["models"]:
        lines.append(
            f"{m['name']:<{width}}  {_number(m['eval_loss'], 4):>9}  "
            f"{_number(m['rouge_l'], 2):>7}  {m['memorised']}/{total}"
        )
    return "\n".join(lines)


def _fence(text: str) -> str:
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}\n{text}\n{ticks}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def format_markdown(report: dict) -> str:
    counts = report["counts"]
    lines = [
        "# lmforge compare",
        "",
        f"Model `{report['model']}`, template `{report['template']}`, greedy decoding "
        f"(max_new_tokens {report['decoding']['max_new_tokens']}); {counts['prompts']} prompts "
        f"({counts['eval']} from the eval split, {counts['prompts_file']} from the prompts file, "
        f"{counts['with_reference']} with a reference).",
        "",
        "| model | adapter | eval loss | ROUGE-L | memorised |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in report["models"]:
        lines.append(
            f"| {_cell(m['name'])} | {_cell(m['adapter'] or '-')} | {_number(m['eval_loss'], 4)} "
            f"| {_number(m['rouge_l'], 2)} | {m['memorised']}/{counts['prompts']} |"
        )
    if not report["memorisation_checked"]:
        lines += ["", "No training dataset is set, so answers were not checked for memorisation."]
    for row in report["prompts"]:
        held = "held out" if row["held_out"] else "also a training prompt"
        lines += [
            "",
            f"## {row['index']}. {row['source']}, {held}",
            "",
            "Prompt:",
            "",
            _fence(row["prompt"]),
        ]
        if row["reference"] is not None:
            lines += ["", "Reference:", "", _fence(row["reference"])]
        for name, answer in row["answers"].items():
            flag = (
                " **memorised: repeats a training answer verbatim**" if answer["memorised"] else ""
            )
            lines += [
                "",
                f"**{name}** (ROUGE-L {_number(answer['rouge_l'], 2)}){flag}:",
                "",
                _fence(answer["answer"]),
            ]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-family: ui-monospace, monospace; }
.memorised { background: #fde2e2; }
.flag { color: #b00020; font-weight: bold; }
.num { text-align: right; }
"""


def format_html(report: dict) -> str:
    """A self-contained page (no external assets); every text escaped."""
    e = html.escape
    counts = report["counts"]
    names = [m["name"] for m in report["models"]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>lmforge compare</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>lmforge compare</h1>",
        f"<p>Model <code>{e(report['model'])}</code>, template <code>{e(report['template'])}</code>, "
        f"greedy decoding (max_new_tokens {report['decoding']['max_new_tokens']}); "
        f"{counts['prompts']} prompts ({counts['eval']} from the eval split, "
        f"{counts['prompts_file']} from the prompts file, {counts['with_reference']} with a "
        "reference).</p>",
        '<table class="models"><tr><th>model</th><th>adapter</th><th>eval loss</th>'
        "<th>ROUGE-L</th><th>memorised</th></tr>",
    ]
    for m in report["models"]:
        parts.append(
            f"<tr><td>{e(m['name'])}</td><td>{e(m['adapter'] or '-')}</td>"
            f'<td class="num">{_number(m["eval_loss"], 4)}</td>'
            f'<td class="num">{_number(m["rouge_l"], 2)}</td>'
            f'<td class="num">{m["memorised"]}/{counts["prompts"]}</td></tr>'
        )
    parts.append("</table>")
    if not report["memorisation_checked"]:
        parts.append(
            "<p>No training dataset is set, so answers were not checked for memorisation.</p>"
        )
    header = "".join(f"<th>{e(n)}</th>" for n in names)
    for row in report["prompts"]:
        held = "held out" if row["held_out"] else "also a training prompt"
        parts.append(f"<h2>{row['index']}. {e(row['source'])}, {held}</h2>")
        parts.append(f'<table class="prompt"><tr><th>prompt</th><th>reference</th>{header}</tr>')
        reference = "-" if row["reference"] is None else row["reference"]
        cells = [f"<td><pre>{e(row['prompt'])}</pre></td>", f"<td><pre>{e(reference)}</pre></td>"]
        for name in names:
            answer = row["answers"][name]
            flag = (
                '<div class="flag">memorised: repeats a training answer verbatim</div>'
                if answer["memorised"]
                else ""
            )
            css = ' class="memorised"' if answer["memorised"] else ""
            cells.append(
                f"<td{css}><pre>{e(answer['answer'])}</pre>"
                f"<div>ROUGE-L {_number(answer['rouge_l'], 2)}</div>{flag}</td>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
