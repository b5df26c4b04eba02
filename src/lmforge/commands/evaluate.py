"""`lmforge eval CONFIG.yaml`: a multiple-choice benchmark (MMLU, C-Eval, CMMLU or your own).

The benchmark is read and checked first (a folder in the wrong layout, a bad row: one
paragraph, before any model loads); then the model answers every question by the logits of
A-D. With adapter_name_or_path and compare_base: true the base is scored first, then the
adapters are merged in and the same prompts scored again. Accuracy per subject, per category
and on average goes to the terminal and, with save_dir, to save_dir/eval_results.json.
"""

from __future__ import annotations

from pathlib import Path

from lmforge.errors import UserError

RESULTS_FILE = "eval_results.json"


def evaluate(path: str | None, overrides: list[str]) -> str:
    from lmforge.config import load_config

    return run_benchmark(load_config(path, overrides))


def run_benchmark(config, *, model_loader=None) -> str:
    """Score the config's model on its task; the report's text. `model_loader`: a stand-in for
    evaluate.loading.load_base (tests)."""
    from tqdm import tqdm

    from lmforge.evaluate.benchmark import default_lang, load_benchmark, parse_task
    from lmforge.evaluate.loading import attach_checked, load_base
    from lmforge.evaluate.predict import write_json_atomic
    from lmforge.evaluate.scoring import (
        choice_token_ids,
        encode_benchmark,
        predict_letters,
        summarize,
    )
    from lmforge.model.load import split_paths

    ev = config.eval
    if not ev.task:
        raise UserError(
            "`task` is not set, so `lmforge eval` has no benchmark to run",
            where=config.source,
            fix="add `task: mmlu_test` (or ceval_validation, cmmlu_test, or your own folder's "
            "name) and `task_dir:` the folder that holds it",
        )
    name, split = parse_task(ev.task)
    lang = ev.lang or default_lang(name)
    benchmark = load_benchmark(ev.task, ev.task_dir, ev.n_shot, where=config.where("task_dir"))
    adapters = split_paths(config.model.adapter_name_or_path)
    if ev.compare_base and not adapters:
        raise UserError(
            "compare_base: true compares the base model with its adapters, and "
            "adapter_name_or_path is not set",
            where=config.where("compare_base"),
            fix="set adapter_name_or_path, or remove compare_base",
        )
    config, setup, model = (model_loader or load_base)(config)
    tokenizer, template = setup.tokenizer, setup.template
    prompts = encode_benchmark(benchmark, tokenizer, template, lang)
    choice_ids = choice_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    runs: list[tuple[str, object]] = []
    if not adapters or ev.compare_base:
        runs.append(("base", None))
    if adapters:
        runs.append(("adapter", adapters))
    results: dict[str, dict] = {}
    for label, with_adapters in runs:
        if with_adapters:
            model = attach_checked(model, with_adapters, str(config.model.model_name_or_path))
        with tqdm(total=len(prompts), desc=f"Scoring {name} ({label})", unit="q") as bar:
            letters = predict_letters(model, prompts, choice_ids, pad_id, ev.batch_size, bar.update)
        results[label] = summarize(benchmark, letters)

    report = {
        "task": name,
        "split": split,
        "lang": lang,
        "n_shot": ev.n_shot,
        "benchmark_folder": str(benchmark.folder),
        "layout": benchmark.layout,
        "model": config.model.model_name_or_path,
        "adapter_name_or_path": adapters or None,
        "template": template.name,
        "questions": benchmark.size,
        "results": results,
    }
    text = format_report(report)
    if ev.save_dir:
        written = write_json_atomic(Path(ev.save_dir) / RESULTS_FILE, report)
        text += f"\nresults written to {written}"
    return text


def format_report(report: dict) -> str:
    """Accuracy (%) table: average, categories, then subjects; one column per model run."""
    runs = list(report["results"])
    first = report["results"][runs[0]]
    rows: list[tuple[str, list]] = [
        ("Average", [report["results"][r]["average"]["accuracy"] for r in runs])
    ]
    for category in first["categories"]:
        rows.append(
            (category, [report["results"][r]["categories"][category]["accuracy"] for r in runs])
        )
    subject_rows = [
        (info["name"], [report["results"][r]["subjects"][key]["accuracy"] for r in runs])
        for key, info in first["subjects"].items()
    ]
    width = max(15, *(len(label) for label, _ in rows + subject_rows))
    header = " " * width + "".join(f"{r:>10}" for r in runs)
    lines = [
        f"{report['task']} ({report['split']}, {report['n_shot']}-shot, {report['lang']}): "
        f"{report['questions']} questions in {len(first['subjects'])} subjects, accuracy (%)",
        header,
    ]

    def line(label: str, values: list) -> str:
        cells = "".join(f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in values)
        return f"{label:>{width}}{cells}"

    lines += [line(label, values) for label, values in rows]
    lines.append("")
    lines += [line(label, values) for label, values in subject_rows]
    return "\n".join(lines)
