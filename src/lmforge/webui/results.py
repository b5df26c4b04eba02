"""A finished job's results as Markdown for the board (issue 17, item 5): one function per
kind, each reading the files its command writes — eval_results.json (an accuracy table),
compare.md (the comparison page), export_report.json (the parity verdict), synth_report.json
(the counts) and predict_results.json (BLEU-4 / ROUGE)."""

from __future__ import annotations

import json
import re
from pathlib import Path

EVAL_FILE = "eval_results.json"
PREDICT_FILE = "predict_results.json"
EXPORT_FILE = "export_report.json"
SYNTH_FILE = "synth_report.json"
COMPARE_FILE = "compare.md"
PARITY_FAILED = ".parity-failed"  # export/run.py sets a failed export aside under this suffix


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def eval_markdown(report: dict) -> str:
    """eval_results.json (commands/evaluate.py): accuracy (%) on average, per category and per
    subject, one column per model run (base, adapter)."""
    results = report.get("results") or {}
    runs = list(results)
    if not runs:
        return f"**{EVAL_FILE}**: no results."
    first = results[runs[0]]

    def accuracy(run: str, part: str, key: str | None = None):
        entry = results[run].get(part, {})
        entry = entry.get(key, {}) if key is not None else entry
        return entry.get("accuracy")

    header = ["", *runs, "questions"]
    rows = [["**Average**", *(accuracy(r, "average") for r in runs), first["average"]["total"]]]
    for category, tally in first.get("categories", {}).items():
        rows.append(
            [category, *(accuracy(r, "categories", category) for r in runs), tally["total"]]
        )
    subjects = [
        [info.get("name", key), *(accuracy(r, "subjects", key) for r in runs), info.get("total")]
        for key, info in first.get("subjects", {}).items()
    ]
    title = (
        f"**{report.get('task')}** ({report.get('split')}, {report.get('n_shot')}-shot, "
        f"{report.get('lang')}): {report.get('questions')} questions in "
        f"{len(first.get('subjects', {}))} subjects, accuracy (%)"
    )
    lines = [title, "", *_table(header, rows)]
    if subjects:
        lines += ["", "**Subjects**", "", *_table(header, subjects)]
    return "\n".join(lines)


def compare_markdown(path: Path) -> str:
    """compare.md (evaluate/compare.py) as written, then where compare.html is."""
    text = path.read_text(encoding="utf-8")[:20000]
    html = path.with_name("compare.html")
    if html.is_file():
        text += f"\n\nThe page with every answer side by side: `{html}`"
    return text


def export_markdown(report: dict, folder: Path) -> str:
    """export_report.json: the verdict, the parity lines (export/report.parity_lines) and the
    folder."""
    from lmforge.export.report import parity_lines

    passed = report.get("passed")
    verdict = "passed" if passed else "FAILED"
    lines = [f"**Export parity check: {verdict}**", "", f"Export folder: `{folder}`"]
    if not passed:
        lines.append("(set aside: export_dir was not changed)")
    parity = parity_lines(report)
    lines += ["", *(parity or ["- no parity check was run"])]
    return "\n".join(lines)


SYNTH_COUNTS = (
    ("documents", "documents"),
    ("unreadable_documents", "documents not read"),
    ("records", "records"),
    ("chunks", "chunks"),
    ("questions", "questions"),
    ("answers", "answers"),
    ("variants", "variants"),
    ("low_score", "dropped: low score"),
    ("duplicates", "dropped: near-duplicates"),
    ("failed", "failures"),
    ("train_pairs", "train pairs written"),
    ("eval_pairs", "eval pairs written"),
)
SYNTH_CALLS = (
    ("asked", "LLM results asked"),
    ("reused", "read from the store"),
    ("http_requests", "HTTP requests"),
    ("retries", "retries (429/5xx/timeouts)"),
    ("strict_retries", "stricter re-asks"),
    ("repairs", "replies repaired"),
    ("tokens_in", "tokens in"),
    ("tokens_out", "tokens out"),
)


def synth_markdown(report: dict) -> str:
    """synth_report.json (synth/report.py): the counts, the LLM calls and the wall time."""
    counts, calls = report.get("counts") or {}, report.get("llm_calls") or {}
    kind = "synth augment" if report.get("kind") == "augment" else "synth"
    rows = [[label, counts[key]] for key, label in SYNTH_COUNTS if key in counts]
    rows += [[label, calls[key]] for key, label in SYNTH_CALLS if key in calls]
    wall = report.get("wall_s")
    rows.append(["wall time (s)", f"{wall:.1f}" if isinstance(wall, (int, float)) else wall])
    lines = [f"**lmforge {kind}**: `{report.get('output_dir')}`", "", *_table(["", "count"], rows)]
    validation = report.get("validation") or {}
    if validation:
        lines += [
            "",
            f"validate: {validation.get('records', 0)} records read, "
            f"{validation.get('problems', 0)} problems",
        ]
        lines += [f"- {line}" for line in validation.get("lines", [])[:10]]
    if report.get("files"):
        lines.append("\nwritten: " + ", ".join(f"`{f}`" for f in report["files"]))
    lines += [f"\nnote: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


PREDICT_METRICS = (
    ("predict_bleu-4", "BLEU-4"),
    ("predict_rouge-1", "ROUGE-1"),
    ("predict_rouge-2", "ROUGE-2"),
    ("predict_rouge-l", "ROUGE-L"),
    ("predict_samples", "samples"),
    ("predict_runtime", "runtime (s)"),
    ("predict_samples_per_second", "samples/s"),
)


def predict_markdown(metrics: dict) -> str:
    """predict_results.json (evaluate/predict.py): BLEU-4 and ROUGE-1/2/L (%) and the run."""
    rows = [[label, metrics[key]] for key, label in PREDICT_METRICS if key in metrics]
    return "\n".join([f"**{PREDICT_FILE}**", "", *_table(["metric", "value"], rows)])


def _written(log_text: str, name: str) -> list[Path]:
    """Paths named `name` on the commands' `written: a, b, c` lines."""
    found = []
    for line in re.findall(r"^written: (.+)$", log_text, flags=re.M):
        found += [Path(item) for item in line.split(", ") if Path(item).name == name]
    return found


def job_results(kind: str, output_dir: str | None, log_text: str = "") -> str:
    """The Markdown for a finished job of `kind` (eval, predict, compare, export, synth ...);
    "" when its files are not there (the caller shows something generic)."""
    command = kind.split()[0] if kind else ""
    out = Path(output_dir) if output_dir else None
    if command == "compare":
        candidates = _written(log_text, COMPARE_FILE)
        if out:
            candidates.append(out / COMPARE_FILE)
        for path in candidates:
            if path.is_file():
                return compare_markdown(path)
        return ""
    if out is None:
        return ""
    if command == "eval" and (data := _read_json(out / EVAL_FILE)):
        return eval_markdown(data)
    if command == "export":
        # A failed check leaves export_dir as it was and sets the new export aside: the newer
        # of the two reports is this job's.
        found = [
            f / EXPORT_FILE
            for f in (out, out.with_name(out.name + PARITY_FAILED))
            if (f / EXPORT_FILE).is_file()
        ]
        for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
            if data := _read_json(path):
                return export_markdown(data, path.parent)
        return ""
    if command == "synth" and (data := _read_json(out / SYNTH_FILE)):
        return synth_markdown(data)
    if command in ("predict", "eval", "train") and (data := _read_json(out / PREDICT_FILE)):
        return predict_markdown(data)
    return ""
