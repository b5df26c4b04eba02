"""The board without a browser: forms from the schema, the job slot, address rules, path checks."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import pytest
import yaml

from lmforge.config import schema
from lmforge.errors import UserError
from lmforge.webui import form
from lmforge.webui.checks import check_paths
from lmforge.webui.i18n import _read, strings, t
from lmforge.webui.jobs import JobRefused, JobRunner, descendants, tail
from lmforge.webui.serve import AUTH_ENV, listen_settings

# -- forms --------------------------------------------------------------------------------------


def test_every_schema_key_of_a_section_has_a_field_with_its_help_and_default():
    specs = {s.name: s for s in form.form_fields(("model", "method", "data", "train"))}
    for section in ("model", "method", "data", "train"):
        for name in schema.SECTIONS[section].__dataclass_fields__:
            assert name in specs
    stage = specs["stage"]
    assert stage.kind == "choice" and stage.choices == schema.STAGES and stage.default == "sft"
    assert (
        specs["learning_rate"].kind == "float"
        and "Peak learning rate" in specs["learning_rate"].help
    )
    assert "Allowed: greater than 0" in specs["learning_rate"].help
    assert specs["max_steps"].kind == "int" and specs["max_steps"].default == -1
    assert specs["val_size"].kind == "text"  # a number or the word auto
    assert specs["enable_thinking"].kind == "optional_bool"
    assert specs["datasets"].kind == "mapping"
    assert specs["bf16"].kind == "bool"


def test_a_key_added_to_the_schema_appears_without_ui_code(monkeypatch):
    @dataclass
    class NewConfig:
        """Something new."""

        new_knob: int = schema.opt(3, "dpo: a brand-new knob.", bounds=schema.POSITIVE_INT)

    monkeypatch.setitem(schema.SECTIONS, "brand_new", NewConfig)
    (spec,) = form.form_fields(("brand_new",))
    assert (spec.name, spec.kind, spec.default, spec.stages) == ("new_knob", "int", 3, ("dpo",))
    assert spec.help.startswith("dpo: a brand-new knob.")


def test_stage_and_method_switch_visible_fields():
    specs = {s.name: s for s in form.form_fields(("method",))}
    assert specs["pref_beta"].visible("dpo", "lora") and not specs["pref_beta"].visible(
        "sft", "lora"
    )
    assert specs["reward_funcs"].visible("grpo", "full")
    assert specs["lora_rank"].visible("sft", "lora") and not specs["lora_rank"].visible(
        "sft", "full"
    )
    assert specs["freeze_trainable_layers"].visible("sft", "freeze")
    assert specs["stage"].visible("pt", "full")


def test_settings_keep_only_changed_keys_and_round_trip():
    specs = form.form_fields(("model", "method", "data", "train"))
    values = {s.name: form.widget_value(s, s.default) for s in specs}
    values.update(
        model_name_or_path="gemma-3-270m",
        dataset=["identity", "general"],
        max_steps=3.0,  # gr.Number gives floats
        learning_rate=2e-4,
        output_dir="saves/run",
        val_size="0.1",
        pref_beta=0.5,  # a dpo key: hidden for sft, not written
    )
    settings = form.to_settings(specs, [values[s.name] for s in specs])
    assert settings == {
        "model_name_or_path": "gemma-3-270m",
        "stage": "sft",
        "finetuning_type": "lora",
        "dataset": "identity,general",
        "val_size": 0.1,
        "output_dir": "saves/run",
        "learning_rate": 2e-4,
        "max_steps": 3,
    }
    assert isinstance(settings["max_steps"], int)
    back, unknown = form.from_settings(specs, yaml.safe_load(form.settings_yaml(settings)))
    assert form.to_settings(specs, back) == settings and unknown == []
    _, unknown = form.from_settings(specs, {"no_such_key": 1})
    assert unknown == ["no_such_key"]


def test_the_settings_load_as_a_config(tmp_path):
    from lmforge.config import load_config

    specs = form.form_fields(("model", "method", "data", "train"))
    values = [form.widget_value(s, s.default) for s in specs]
    by_name = {s.name: i for i, s in enumerate(specs)}
    values[by_name["model_name_or_path"]] = "gemma-3-270m"
    values[by_name["enable_thinking"]] = "null"
    values[by_name["lora_rank"]] = 4.0
    path = tmp_path / "x.yaml"
    path.write_text(form.settings_yaml(form.to_settings(specs, values)))
    config = load_config(str(path))
    assert config.method.lora_rank == 4 and config.data.enable_thinking is None


# -- jobs ---------------------------------------------------------------------------------------

SLEEPER = "import signal, sys, time; {handler}; print('started', flush=True); time.sleep(60)"


def start_python(runner: JobRunner, code: str, **kwargs):
    """A job running `python -c code` instead of lmforge (same wrapper, same group)."""
    import lmforge.webui.jobs as jobs

    original = jobs.lmforge_argv
    jobs.lmforge_argv = lambda: [sys.executable]
    try:
        return runner.start("-c", [code], **kwargs)
    finally:
        jobs.lmforge_argv = original


def wait_for(predicate, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_job_runs_records_its_exit_code_and_lands_in_history(tmp_path):
    runner = JobRunner(tmp_path)
    job = start_python(runner, "print('hello'); raise SystemExit(3)")
    done = runner.wait(20)
    assert done.id == job.id and done.exit_code == 3 and done.status() == "failed"
    assert "hello" in tail(done.log_path)
    assert [j.id for j in runner.history()] == [job.id]


def test_a_second_start_is_refused_while_one_runs(tmp_path):
    runner = JobRunner(tmp_path, grace=2)
    start_python(runner, SLEEPER.format(handler="pass"))
    with pytest.raises(JobRefused):
        start_python(runner, "pass")
    runner.stop(wait=True)
    assert runner.running() is None
    start_python(runner, "pass")  # free again
    runner.wait(20)


def test_stop_sends_sigint_to_the_group_and_the_job_exits_130(tmp_path):
    # Like `lmforge train`: SIGINT -> save, then exit 130. A grandchild dies with the group.
    code = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
        "time.sleep(60)\n"
    )
    runner = JobRunner(tmp_path, grace=5)
    job = start_python(runner, code)
    assert wait_for(lambda: "child" in tail(job.log_path))
    grandchild = int(tail(job.log_path).split()[-1])
    started = time.time()
    runner.stop(wait=True)
    done = runner.current()
    assert done.exit_code == 130 and done.status() == "stopped"
    assert time.time() - started < 5  # no escalation needed
    assert wait_for(lambda: not _alive(grandchild), 5)


def test_stop_escalates_to_kill_when_sigint_and_sigterm_are_ignored(tmp_path):
    handler = "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    runner = JobRunner(tmp_path, grace=0.5)
    job = start_python(runner, SLEEPER.format(handler=handler))
    assert wait_for(lambda: "started" in tail(job.log_path))
    tree = descendants(job.pid)
    runner.stop(wait=True)
    done = runner.current()
    assert done.exit_code is not None and done.exit_code != 0
    assert all(wait_for(lambda p=p: not _alive(p), 5) for p in [job.pid, *tree])


def test_a_new_runner_reattaches_to_a_running_job_from_the_state_file(tmp_path):
    first = JobRunner(tmp_path, grace=5)
    job = start_python(first, SLEEPER.format(handler="pass"))
    again = JobRunner(tmp_path, grace=5)  # a restarted board
    running = again.running()
    assert running is not None and running.id == job.id and running.pid == job.pid
    with pytest.raises(JobRefused):
        start_python(again, "pass")
    again.stop(wait=True)
    assert first.current().exit_code is not None


def test_a_stale_state_file_with_a_reused_pid_is_not_running(tmp_path):
    runner = JobRunner(tmp_path)
    job = start_python(runner, "pass")
    runner.wait(20)
    state = json.loads(runner.state_path.read_text())
    state.update(pid=os.getpid(), start_time="1", exit_code=None)  # a pid now used by another
    runner.state_path.write_text(json.dumps(state))
    assert runner.running() is None
    assert job.id == runner.current().id


def _alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- address and password -----------------------------------------------------------------------


def test_default_is_loopback_port_7860_without_password():
    listen = listen_settings(environ={})
    assert (listen.host, listen.port, listen.auth, listen.share) == ("127.0.0.1", 7860, None, False)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_another_address_needs_a_password(host):
    with pytest.raises(UserError, match="without a password"):
        listen_settings(host, environ={})
    assert listen_settings(host, auth="me:secret", environ={}).auth == ("me", "secret")
    assert listen_settings(host, environ={AUTH_ENV: "me:pw"}).auth == ("me", "pw")


def test_loopback_spellings_need_no_password():
    for host in ("localhost", "127.0.0.1", "::1", "[::1]", "127.0.0.2"):
        assert listen_settings(host, environ={}).auth is None


def test_share_needs_a_password_and_a_malformed_password_is_refused():
    with pytest.raises(UserError, match="--share"):
        listen_settings(share=True, environ={})
    with pytest.raises(UserError, match="user:password"):
        listen_settings("0.0.0.0", auth="nopassword", environ={})
    assert listen_settings(share=True, auth="a:b", environ={}).share


def test_the_cli_registers_webui_with_its_flags():
    from lmforge.cli import COMMANDS, build_parser

    args = build_parser().parse_args(["webui", "--host", "0.0.0.0", "--auth", "a:b", "--port", "1"])
    assert "webui" in COMMANDS and (args.host, args.auth, args.port, args.share) == (
        "0.0.0.0",
        "a:b",
        1,
        False,
    )


# -- paths --------------------------------------------------------------------------------------


def test_paths_are_checked_before_a_start(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    assert (
        check_paths({"model_name_or_path": str(model), "output_dir": str(tmp_path / "out")}) == []
    )
    assert check_paths({"model_name_or_path": "gemma-3-270m"}) == []  # a catalogue name
    assert check_paths({"model_name_or_path": "google/gemma-3-270m"}) == []  # a hub id
    [missing] = check_paths({"dataset_dir": str(tmp_path / "nope")})
    assert "does not exist" in missing
    [inside] = check_paths({"model_name_or_path": str(model), "output_dir": str(model / "run")})
    assert "model's folder" in inside
    [same] = check_paths({"model_name_or_path": str(model), "export_dir": str(model)})
    assert "model's folder" in same
    (tmp_path / "file").write_text("x")
    [under_file] = check_paths({"output_dir": str(tmp_path / "file" / "run")})
    assert "is a file" in under_file
    # relative paths are read from the board's working directory
    assert check_paths({"adapter_name_or_path": "model"}, base=tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_an_unreadable_input_is_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    secret.chmod(0)
    try:
        [problem] = check_paths({"dataset_dir": str(secret)})
        assert "not readable" in problem
    finally:
        secret.chmod(0o755)


# -- strings ------------------------------------------------------------------------------------


def test_every_english_string_has_a_chinese_one():
    assert set(_read("en")) == set(_read("zh"))
    assert strings("zh")["title"] != strings("en")["title"]
    assert t("tab_train", "zh") == "训练" and t("saved_to", "en", path="x") == "Saved to x"
