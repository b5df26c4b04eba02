"""Bad input stops `lmforge synth` before any request, with one paragraph and exit code 2."""

from __future__ import annotations

import pytest
import yaml


def run(helpers, capsys, path) -> str:
    assert helpers.run_cli("synth", str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one paragraph
    return err


def test_missing_documents(tmp_path, helpers, capsys):
    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1")
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "documents": "nowhere/*.md"}))
    err = run(helpers, capsys, path)
    assert "`documents: nowhere/*.md` matches no file" in err and "Fix:" in err


def test_documents_not_set(tmp_path, helpers, capsys):
    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1")
    config = yaml.safe_load(path.read_text())
    del config["documents"]
    path.write_text(yaml.safe_dump(config))
    assert "`documents` is not set" in run(helpers, capsys, path)


def test_unreadable_kind_of_file(tmp_path, helpers, capsys):
    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1")
    (tmp_path / "slides.pptx").write_bytes(b"x")
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "documents": str(tmp_path / "slides.pptx")}))
    assert "does not read" in run(helpers, capsys, path)


@pytest.mark.parametrize(
    "llm, expected",
    [
        ({"base_url": "localhost:8000"}, "is not an http(s) URL"),
        ({"model": ""}, "`llm` has no `model`"),
        ({"concurency": 4}, "did you mean `concurrency`?"),
        ({"concurrency": 0}, "`llm.concurrency: 0` is out of range"),
        ({"temperature": "hot"}, "`llm.temperature: hot` is not a number"),
        (
            {"api_key_env": "LMFORGE_TEST_NO_SUCH_KEY"},
            "names an environment variable that is not set",
        ),
    ],
)
def test_bad_llm_settings(tmp_path, helpers, capsys, llm, expected):
    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1", llm=llm)
    assert expected in run(helpers, capsys, path)


def test_unreachable_endpoint(tmp_path, helpers, capsys, scripted_llm):
    with scripted_llm() as server:
        url = server.url
    path = helpers.write_synth_config(tmp_path, url)  # the port is closed now
    err = run(helpers, capsys, path)
    assert "cannot reach the LLM endpoint" in err and "continues where it stopped" in err


def test_wrong_key_and_wrong_model(tmp_path, helpers, capsys, scripted_llm, monkeypatch):
    monkeypatch.setenv("LMFORGE_TEST_KEY", "sk-wrong")
    with scripted_llm(lambda body: (401, {"error": {"message": "invalid api key"}})) as server:
        path = helpers.write_synth_config(
            tmp_path, server.url, llm={"api_key_env": "LMFORGE_TEST_KEY"}
        )
        err = run(helpers, capsys, path)
        assert "refused the key" in err and "LMFORGE_TEST_KEY" in err
        # not retried: only the requests already in flight (concurrency 4), each once
        bodies = [str(body) for body in server.requests]
        assert len(bodies) <= 4 and len(set(bodies)) == len(bodies)
    with scripted_llm(lambda body: (404, {"error": {"message": "model not found"}})) as server:
        path = helpers.write_synth_config(tmp_path, server.url)
        assert "model not found" in run(helpers, capsys, path)


def test_bad_prompt_override(tmp_path, helpers, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "en.yaml").write_text("answer: 'Answer {question} using {context}'\n")
    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1", prompt_dir=str(prompts))
    err = run(helpers, capsys, path)
    assert "uses {context}" in err and "{question}" in err


def test_no_config(helpers, capsys):
    assert helpers.run_cli("synth") == 2
    assert "examples/synth/synth.yaml" in capsys.readouterr().err


def test_output_dir_in_use(tmp_path, helpers, capsys):
    from lmforge.synth.store import Store

    path = helpers.write_synth_config(tmp_path, "http://127.0.0.1:9/v1")
    with Store(tmp_path / "out"):
        assert "another `lmforge synth` is writing" in run(helpers, capsys, path)
