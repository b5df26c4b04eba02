"""Never losing work: kill -9 in the middle and rerun (nothing redone, nothing duplicated, the
same files as an uninterrupted run); a changed prompt or model redoes only what it changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

SCRIPT = "import sys; from lmforge.cli import main; sys.exit(main())"


def many_docs(count: int = 12) -> dict[str, str]:
    topics = "wind hydro geothermal biomass tidal nuclear coal gas solar wave hydrogen peat".split()
    return {
        f"doc{i:02d}.md": f"# {topic.title()} power\n\n"
        + " ".join(
            f"{topic.title()} plants convert energy source number {j} into electricity with "
            f"efficiency {20 + i + j} percent in region {chr(65 + j)}."
            for j in range(12)
        )
        for i, topic in enumerate(topics[:count])
    }


def outputs(folder) -> dict[str, str]:
    return {
        name: (folder / name).read_text(encoding="utf-8")
        for name in ("alpaca.json", "eval.json", "dataset_info.json")
    }


def test_kill_and_resume_matches_uninterrupted(tmp_path, scripted_llm, helpers):
    def respond(body):
        return helpers.Slow(0.03, helpers.smart(body))

    settings = dict(eval_share=0.2, chunk_max_chars=300, questions_per_chars=100)
    with scripted_llm(respond) as server:
        # the uninterrupted run
        helpers.write_docs(tmp_path / "a" / "docs", many_docs())
        path = helpers.write_synth_config(tmp_path / "a", server.url, **settings)
        assert helpers.run_cli("synth", str(path)) == 0
        total = len(server.requests)
        expected = outputs(tmp_path / "a" / "out")

        # killed with SIGKILL once a third of the requests were answered, then rerun
        server.requests.clear()
        helpers.write_docs(tmp_path / "b" / "docs", many_docs())
        path = helpers.write_synth_config(tmp_path / "b", server.url, **settings)
        config = yaml.safe_load(path.read_text())
        config["documents"] = str(tmp_path / "a" / "docs")  # same names in provenance
        path.write_text(yaml.safe_dump(config))
        process = subprocess.Popen([sys.executable, "-c", SCRIPT, "synth", str(path)])
        deadline = time.monotonic() + 120
        while len(server.requests) < total // 3 and time.monotonic() < deadline:
            assert process.poll() is None, "the run ended before it was killed"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        first = len(server.requests)
        store = tmp_path / "b" / "out" / "synth_store.jsonl"
        finished = sum(1 for line in store.open(encoding="utf-8") if line.endswith("\n"))
        assert 0 < finished < total
        assert not (tmp_path / "b" / "out" / "alpaca.json").exists()

        server.requests.clear()
        assert helpers.run_cli("synth", str(path)) == 0
        second = len(server.requests)

    # nothing that finished was asked again: only what had no stored result
    assert second == total - finished
    assert (
        first - finished <= 4 * 2
    )  # in flight when killed (concurrency 4, each retried once at most)
    # nothing duplicated: one stored result per key, and the same files as the uninterrupted run
    keys = [json.loads(line)["key"] for line in store.open(encoding="utf-8")]
    assert len(keys) == len(set(keys)) == total
    assert outputs(tmp_path / "b" / "out") == expected


def test_partial_last_line_is_cut(tmp_path, scripted_llm, helpers):
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert helpers.run_cli("synth", str(path)) == 0
        store = tmp_path / "out" / "synth_store.jsonl"
        lines = store.read_text(encoding="utf-8").splitlines(keepends=True)
        # a kill in the middle of writing the last result
        store.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
        server.requests.clear()
        assert helpers.run_cli("synth", str(path)) == 0
        assert len(server.requests) == 1  # only the cut result is asked again
    assert store.read_text(encoding="utf-8").count("\n") == len(lines)


def test_changed_prompt_redoes_only_its_stage(tmp_path, scripted_llm, helpers):
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert helpers.run_cli("synth", str(path)) == 0
        answers = server.stages()["answer"]

        server.requests.clear()
        assert helpers.run_cli("synth", str(path)) == 0
        assert server.requests == []  # all from the store

        prompt_dir = tmp_path / "prompts"
        prompt_dir.mkdir()
        (prompt_dir / "en.yaml").write_text(
            yaml.safe_dump(
                {
                    "answer": "Answer the question briefly from this text.\n"
                    '"""\n{text}\n"""\n{style}\nReply as JSON: {{"answer": "..."}}\n'
                    "Question: {question}"
                }
            )
        )
        config = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**config, "prompt_dir": str(prompt_dir)}))
        assert helpers.run_cli("synth", str(path)) == 0
        assert server.stages() == {"answer": answers}  # questions kept, every answer redone

        server.requests.clear()
        config["llm"]["model"] = "another"
        path.write_text(yaml.safe_dump({**config, "prompt_dir": str(prompt_dir)}))
        assert helpers.run_cli("synth", str(path)) == 0
        assert set(server.stages()) == {"questions", "answer"}  # a new model redoes all
    report = helpers.read_json(tmp_path / "out" / "synth_report.json")
    assert report["llm_calls"]["reused"] == 0


def test_failed_results_are_asked_again(tmp_path, scripted_llm, helpers):
    state = {"broken": True}

    def respond(body):
        if state["broken"] and helpers.stage_of(body) in ("answer", "strict"):
            return "no json at all"
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert helpers.run_cli("synth", str(path)) == 1
        questions = server.stages()["questions"]
        failed = helpers.read_json(tmp_path / "out" / "synth_report.json")["counts"]["failed"]
        state["broken"] = False
        server.requests.clear()
        assert helpers.run_cli("synth", str(path)) == 0
        assert server.stages() == {"answer": failed}  # only the failures, none of the questions
    assert questions > 0
