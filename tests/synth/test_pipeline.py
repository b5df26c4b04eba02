"""`lmforge synth` against the scripted endpoint: files, provenance, eval split, dataset_info,
repairs, retries, failures, and training on the result."""

from __future__ import annotations

import json

from conftest import write_config


def test_documents_to_datasets(tmp_path, scripted_llm, helpers):
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url, eval_share=0.3, format="both")
        assert helpers.run_cli("synth", str(path)) == 0
    out = tmp_path / "out"
    train = helpers.read_json(out / "alpaca.json")
    sharegpt = helpers.read_json(out / "sharegpt.json")
    evals = helpers.read_json(out / "eval.json")
    info = helpers.read_json(out / "dataset_info.json")
    assert set(info) == {"synth_alpaca", "synth_sharegpt", "synth_eval"}
    assert info["synth_alpaca"]["formatting"] == "alpaca"
    assert len(train) == len(sharegpt) > 0 and evals
    chunks = [json.loads(line) for line in (out / "synth_chunks.jsonl").open()]
    texts = {c["id"]: c for c in chunks}
    # provenance: the chunk's exact span of the document
    for record in train + evals:
        chunk = texts[record["chunk_id"]]
        doc = (tmp_path / "docs" / record["document"].split("/")[-1]).read_text()
        assert doc[record["char_start"] : record["char_end"]] == chunk["text"]
        assert record["output"].startswith("It is explained")
    # whole chunks: no eval question shares a chunk with a training one
    assert not {r["chunk_id"] for r in train} & {r["chunk_id"] for r in evals}
    report = helpers.read_json(out / "synth_report.json")
    assert report["counts"]["chunks"] == len(chunks)
    assert report["counts"]["failed"] == 0
    assert report["validation"]["problems"] == 0
    stages = server.stages()
    assert stages["questions"] == len(chunks)
    assert stages["answer"] == report["counts"]["questions"]


def test_output_trains(tmp_path, scripted_llm, helpers, tiny_model_dir):
    """The written folder is a dataset_dir `lmforge train` reads as it is: two steps."""
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url, eval_share=0.25)
        assert helpers.run_cli("synth", str(path)) == 0
    out = tmp_path / "out"
    train_yaml = write_config(
        tmp_path / "train",
        tiny_model_dir,
        records=None,
        dataset="synth_alpaca",
        eval_dataset="synth_eval",
        dataset_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        cutoff_len=256,
        save_steps=100,
        report_to="none",
    )
    assert helpers.run_cli("train", str(train_yaml)) == 0
    log = (tmp_path / "train" / "out" / "trainer_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["current_steps"] == 2


def test_repairs_and_strict_retry(tmp_path, scripted_llm, helpers):
    """Fences, trailing commas, single quotes, think blocks and cut-off arrays are read; a reply
    with no single reading is asked again with the stricter instruction; one still unreadable
    is recorded as failed with its raw text."""
    broken = {"n": 0}

    def respond(body):
        stage = helpers.stage_of(body)
        good = helpers.smart(body)
        if stage == "questions":
            broken["n"] += 1
            questions = json.loads(good)
            variants = [
                "```json\n" + good + "\n```",
                "<think>Let me see [1, 2]</think>\n" + good,
                json.dumps(questions)[:-1] + ",]",
                str(questions),  # single quotes (python repr)
                json.dumps(questions + ["cut off here"])[:-8],  # truncated array
            ]
            return variants[broken["n"] % len(variants)]
        if stage == "answer":
            question = helpers.prompt_of(body).rsplit("Question:", 1)[-1]
            if "0)?" in question:
                return "I cannot answer in JSON, sorry."  # unreadable, also when asked again
            return "Here you go: " + good + " Hope this helps."
        if stage == "strict":
            first = body["messages"][1]["content"]
            question = first.rsplit("Question:", 1)[-1]
            if "0)?" in question and "(" in question:
                return "still no json"
            return helpers.smart({"messages": body["messages"][:2]})
        return good

    with scripted_llm(respond) as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert helpers.run_cli("synth", str(path)) == 1  # some failed
    out = tmp_path / "out"
    report = helpers.read_json(out / "synth_report.json")
    chunks = report["counts"]["chunks"]
    calls = report["llm_calls"]
    assert calls["failed_by_stage"].get("questions", 0) == 0
    assert calls["repairs"] >= chunks  # every questions reply needed a repair
    assert calls["strict_retries"] == report["counts"]["failed"]
    failed = [json.loads(line) for line in (out / "failed.jsonl").open()]
    assert len(failed) == report["counts"]["failed"] == chunks  # one question per chunk
    assert all(f["raw"] == "still no json" and f["stage"] == "answer" for f in failed)
    stored = [json.loads(line) for line in (out / "synth_store.jsonl").open()]
    assert any(s["repairs"] and s["raw"] for s in stored)  # a repaired reply keeps its raw text


def test_http_errors_are_retried(tmp_path, scripted_llm, helpers):
    """429 (with Retry-After), 500s, a dropped connection and a slow answer past the timeout
    are retried with backoff; the run then completes with nothing lost."""
    seen: dict[str, int] = {}

    def respond(body):
        key = json.dumps(body["messages"])
        seen[key] = seen.get(key, 0) + 1
        attempt = seen[key]
        if attempt == 1:
            return (429, {"error": {"message": "slow down"}})
        if attempt == 2:
            return (503, {"error": {"message": "overloaded"}})
        if attempt == 3 and len(seen) % 3 == 0:
            return helpers.DROP
        if attempt == 3 and len(seen) % 3 == 1:
            return helpers.Slow(1.5, helpers.smart(body))  # past the 0.5 s timeout
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        path = helpers.write_synth_config(tmp_path, server.url, llm={"timeout": 0.5})
        assert helpers.run_cli("synth", str(path)) == 0
    report = helpers.read_json(tmp_path / "out" / "synth_report.json")
    assert report["counts"]["failed"] == 0
    assert report["llm_calls"]["retries"] >= 2 * len(seen)
    assert report["llm_calls"]["http_requests"] == len(server.requests)


def test_gives_up_after_max_retries(tmp_path, scripted_llm, helpers):
    with scripted_llm(lambda body: (500, {"error": {"message": "broken"}})) as server:
        path = helpers.write_synth_config(tmp_path, server.url, llm={"max_retries": 2})
        assert helpers.run_cli("synth", str(path)) == 1
    out = tmp_path / "out"
    report = helpers.read_json(out / "synth_report.json")
    chunks = report["counts"]["chunks"]
    assert len(server.requests) == 3 * chunks
    failed = [json.loads(line) for line in (out / "failed.jsonl").open()]
    assert len(failed) == chunks and "HTTP 500" in failed[0]["error"]


def test_quality_threshold_and_duplicates(tmp_path, scripted_llm, helpers):
    def respond(body):
        stage = helpers.stage_of(body)
        if stage == "questions":
            return json.dumps(
                [
                    "What is the lifetime of a panel?",
                    "What is the lifetime of a panel ?",
                    "Which inverter lasts longest?",
                ]
            )
        if stage == "score":
            low = "inverter" in helpers.prompt_of(body).lower().rsplit("question:", 1)[-1]
            return json.dumps({"score": 3 if low else 9})
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        path = helpers.write_synth_config(
            tmp_path, server.url, quality_threshold=5, dedupe_threshold=0.8, questions_per_chars=50
        )
        assert helpers.run_cli("synth", str(path)) == 0
    report = helpers.read_json(tmp_path / "out" / "synth_report.json")
    chunks = report["counts"]["chunks"]
    # every chunk: two near-identical questions and a low-scored one; one pair survives in all
    assert report["counts"]["questions"] == 3 * chunks
    assert report["counts"]["low_score"] == chunks
    assert report["counts"]["duplicates"] == 2 * chunks - 1
    assert report["counts"]["train_pairs"] == 1
    assert server.stages()["score"] == report["counts"]["questions"]


def test_requests_per_minute(tmp_path, scripted_llm, helpers):
    import time

    times = []

    def respond(body):
        times.append(time.monotonic())
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        path = helpers.write_synth_config(tmp_path, server.url, llm={"requests_per_minute": 600})
        assert helpers.run_cli("synth", str(path)) == 0
    times.sort()
    # one request every 0.1 s at most (arrivals jitter; the span cannot be shorter)
    assert len(times) > 5 and times[-1] - times[0] >= 0.1 * (len(times) - 1) - 0.05


def test_languages_and_sharegpt_only(tmp_path, scripted_llm, helpers):
    docs = {
        "zh.md": "# 储能\n\n家用储能电池把白天多发的电储存起来，留到晚上使用。磷酸铁锂电池寿命长。",
        "en.md": "# Storage\n\nHome batteries store surplus solar power for the night.",
    }
    helpers.write_docs(tmp_path / "docs", docs)
    with scripted_llm() as server:
        path = helpers.write_synth_config(
            tmp_path, server.url, format="sharegpt", chunk_min_chars=10
        )
        assert helpers.run_cli("synth", str(path)) == 0
        asked = [helpers.prompt_of(body) for body in server.requests]
    assert any("阅读下面的文本" in p for p in asked) and any(
        "Read the text below" in p for p in asked
    )
    out = tmp_path / "out"
    assert not (out / "alpaca.json").exists()
    records = helpers.read_json(out / "sharegpt.json")
    assert records and records[0]["conversations"][0]["from"] == "human"
    assert set(helpers.read_json(out / "dataset_info.json")) == {"synth_sharegpt"}


def test_cot_writes_think_blocks(tmp_path, scripted_llm, helpers):
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url, cot=True, template="gemma")
        assert helpers.run_cli("synth", str(path)) == 0
    out = tmp_path / "out"
    record = helpers.read_json(out / "alpaca.json")[0]
    assert record["output"].startswith("<think>\nFirst consider the facts.\n</think>\n\n")
    report = helpers.read_json(out / "synth_report.json")
    assert report["validation"]["problems"] == 0
    assert any("template `gemma` has no reasoning markers" in note for note in report["notes"])


def test_endpoint_gone_midway_stops_and_resumes(tmp_path, scripted_llm, helpers, capsys):
    """The server stops answering after three results: the run stops with exit 2 (instead of
    one failure per item left), and the same command continues once it is back."""
    state = {"answered": 0, "gone": True}

    def respond(body):
        if state["gone"] and state["answered"] >= 3:
            return helpers.DROP
        state["answered"] += 1
        return helpers.smart(body)

    with scripted_llm(respond) as server:
        llm = {"max_retries": 1, "concurrency": 1}  # stops after 2 items fail this way
        path = helpers.write_synth_config(tmp_path, server.url, llm=llm)
        assert helpers.run_cli("synth", str(path)) == 2
        assert "cannot reach the LLM endpoint" in capsys.readouterr().err
        store = tmp_path / "out" / "synth_store.jsonl"
        ok = [json.loads(line) for line in store.open() if json.loads(line)["ok"]]
        assert len(ok) == 3
        state["gone"] = False
        server.requests.clear()
        assert helpers.run_cli("synth", str(path)) == 0
        total = len(server.requests)
    report = helpers.read_json(tmp_path / "out" / "synth_report.json")
    assert report["llm_calls"]["reused"] == 3 and total == report["llm_calls"]["asked"]


def test_damaged_document_is_reported_not_fatal(tmp_path, scripted_llm, helpers):
    helpers.write_docs(tmp_path / "docs")
    (tmp_path / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (tmp_path / "docs" / "gbk.txt").write_bytes("中文文本".encode("gbk"))
    with scripted_llm() as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert helpers.run_cli("synth", str(path)) == 1
    report = helpers.read_json(tmp_path / "out" / "synth_report.json")
    assert report["counts"]["unreadable_documents"] == 2
    assert report["counts"]["train_pairs"] > 0  # the other documents were used
    notes = "\n".join(report["notes"])
    assert "broken.pdf" in notes and "gbk.txt is not UTF-8" in notes
