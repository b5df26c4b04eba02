"""The board's result views (issue 17, item 5): each kind's files, as its command writes them,
rendered as Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lmforge.evaluate.benchmark import Benchmark, Subject
from lmforge.evaluate.predict import write_json_atomic
from lmforge.evaluate.prompts import Question
from lmforge.evaluate.scoring import summarize
from lmforge.synth.report import REPORT_FILE as SYNTH_FILE
from lmforge.synth.report import Report
from lmforge.webui.results import job_results


def _question(answer: str) -> Question:
    return Question("q?", ("a", "b", "c", "d"), answer)


def _eval_report(results: dict) -> dict:
    # The layout commands/evaluate.run_benchmark writes.
    return {
        "task": "mmlu",
        "split": "test",
        "lang": "en",
        "n_shot": 0,
        "benchmark_folder": "/b",
        "layout": "MMLU",
        "model": "tiny",
        "adapter_name_or_path": ["saves/lora"],
        "template": "qwen",
        "questions": 6,
        "results": results,
    }


def test_eval_shows_accuracy_per_category_and_subject_base_and_adapter(tmp_path):
    algebra = Subject("abstract_algebra", "abstract algebra", "STEM", [], [], "a.csv")
    algebra.questions = [_question(x) for x in "ABCD"]
    law = Subject("law", "law", "Humanities", [_question("A"), _question("B")], [], "l.csv")
    bench = Benchmark("mmlu", "test", tmp_path, "MMLU", [algebra, law])
    base = summarize(bench, list("AAAA") + list("AA"))  # 1/4, 1/2 -> 2/6
    adapter = summarize(bench, list("ABCD") + list("AB"))  # 6/6
    write_json_atomic(
        tmp_path / "eval_results.json", _eval_report({"base": base, "adapter": adapter})
    )

    text = job_results("eval", str(tmp_path))
    assert "|  | base | adapter | questions |" in text
    assert "| **Average** | 33.33 | 100.00 | 6 |" in text
    assert "| STEM | 25.00 | 100.00 | 4 |" in text
    assert "| Humanities | 50.00 | 100.00 | 2 |" in text
    assert "| abstract algebra | 25.00 | 100.00 | 4 |" in text
    assert "mmlu** (test, 0-shot, en): 6 questions in 2 subjects" in text


def test_eval_with_one_run_has_one_column(tmp_path):
    law = Subject("law", "law", None, [_question("A"), _question("B")], [], "l.csv")
    bench = Benchmark("own", "test", tmp_path, "MMLU", [law])
    report = _eval_report({"adapter": summarize(bench, ["A", "C"])})
    write_json_atomic(tmp_path / "eval_results.json", report)
    text = job_results("eval", str(tmp_path))
    assert "|  | adapter | questions |" in text
    assert "| **Average** | 50.00 | 2 |" in text
    assert "base" not in text


def test_compare_shows_compare_md_and_names_the_html(tmp_path):
    (tmp_path / "compare.md").write_text(
        "# Compare\n\n| model | ROUGE-L |\n|---|---|\n| a | 12.5 |\n"
    )
    (tmp_path / "compare.html").write_text("<html></html>")
    # compare writes to save_dir, which the log's `written:` line names.
    log = f"written: {tmp_path / 'compare.md'}, {tmp_path / 'compare.html'}\n"
    text = job_results("compare", str(tmp_path / "elsewhere"), log)
    assert text.startswith("# Compare")
    assert "| a | 12.5 |" in text
    assert str(tmp_path / "compare.html") in text


def _export_report(passed: bool) -> dict:
    return {
        "name": "out",
        "base_model": "tiny",
        "passed": passed,
        "parity": {
            "folder": {
                "identical": 8 if passed else 5,
                "prompts": 8,
                "near_ties": 0,
                "max_abs_logit_diff": 0.00123,
                "tolerance": 0.01,
                "passed": passed,
            },
            "gguf": None,
        },
    }


def test_export_shows_the_parity_verdict_and_folder(tmp_path):
    from lmforge.export.report import write_report

    folder = tmp_path / "exported"
    folder.mkdir()
    write_report(folder, _export_report(True))
    text = job_results("export", str(folder))
    assert "Export parity check: passed" in text
    assert f"`{folder}`" in text
    assert "- merged folder: 8/8 greedy answers identical" in text
    assert "-> passed" in text


def test_a_failed_export_is_found_where_it_was_set_aside(tmp_path):
    from lmforge.export.report import write_report

    aside = tmp_path / "exported.parity-failed"
    aside.mkdir()
    write_report(aside, _export_report(False))
    text = job_results("export", str(tmp_path / "exported"))
    assert "Export parity check: FAILED" in text
    assert "5/8 greedy answers identical" in text
    assert str(aside) in text


def test_synth_shows_its_counts(tmp_path):
    report = Report(kind="synth", output_dir=str(tmp_path), llm={"model": "m"})
    report.counts = {"documents": 2, "chunks": 7, "questions": 21, "answers": 19, "failed": 2}
    report.counts |= {"train_pairs": 17, "eval_pairs": 2}
    report.llm_calls = {"asked": 47, "retries": 3, "repairs": 4, "tokens_in": 1234}
    report.llm_calls |= {"tokens_out": 567, "strict_retries": 1, "http_requests": 50}
    report.validation = {"records": 19, "problems": 0, "lines": []}
    report.wall_s = 12.345
    # As synth/report.finish_report writes it.
    (tmp_path / SYNTH_FILE).write_text(json.dumps(asdict(report), indent=1) + "\n")

    text = job_results("synth", str(tmp_path))
    for row in (
        "| chunks | 7 |",
        "| questions | 21 |",
        "| answers | 19 |",
        "| failures | 2 |",
        "| replies repaired | 4 |",
        "| retries (429/5xx/timeouts) | 3 |",
        "| tokens in | 1234 |",
        "| tokens out | 567 |",
        "| wall time (s) | 12.3 |",
    ):
        assert row in text
    assert "19 records read, 0 problems" in text


def test_predict_shows_bleu_and_rouge(tmp_path):
    # The layout evaluate/predict.py writes: predict_<metric> keys plus the run's figures.
    metrics = {"predict_bleu-4": 12.3456, "predict_rouge-1": 40.5, "predict_rouge-2": 20.25}
    metrics |= {"predict_rouge-l": 30.125, "predict_samples": 4, "predict_runtime": 1.5}
    write_json_atomic(Path(tmp_path) / "predict_results.json", metrics)
    text = job_results("predict", str(tmp_path))
    assert "| BLEU-4 | 12.35 |" in text
    assert "| ROUGE-1 | 40.50 |" in text
    assert "| ROUGE-2 | 20.25 |" in text
    assert "| ROUGE-L | 30.12 |" in text
    assert "| samples | 4 |" in text


def test_nothing_written_gives_nothing_so_the_board_shows_the_log(tmp_path):
    assert job_results("eval", str(tmp_path)) == ""
    assert job_results("compare", str(tmp_path), "no written line") == ""
    assert job_results("export", str(tmp_path / "missing")) == ""
    assert job_results("synth", None) == ""
