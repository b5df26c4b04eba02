"""Every config command takes a YAML file, flags alone, or both; a config of flags alone comes
from "command line", and errors name where each key came from."""

import json

import pytest
import yaml

from conftest import TOY_RECORDS, write_alpaca_dataset
from lmforge.cli import main
from lmforge.config import load_config
from lmforge.config.load import split_config_argument


def test_split_config_argument():
    assert split_config_argument(["t.yaml", "a=1", "--b", "2"]) == ("t.yaml", ["a=1", "--b", "2"])
    assert split_config_argument(["--stage", "sft", "--do_train", "True"]) == (
        None,
        ["--stage", "sft", "--do_train", "True"],
    )
    assert split_config_argument(["--stage", "sft", "t.yaml"]) == ("t.yaml", ["--stage", "sft"])
    assert split_config_argument(["--bf16", "--x=1", "a=b"]) == (None, ["--bf16", "--x=1", "a=b"])


def test_a_yaml_file_after_a_bare_flag_is_the_config(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("lora_rank: 4\n")
    assert split_config_argument(["--plot_loss", str(path)]) == (str(path), ["--plot_loss"])


@pytest.fixture
def captured(monkeypatch):
    """Replace what each command runs with a recorder of the config it was given."""
    seen = {}

    def record(name):
        def fake(config, *args, **kwargs):
            seen[name] = config

        return fake

    monkeypatch.setattr("lmforge.train.run.run_training", record("train"))
    monkeypatch.setattr("lmforge.infer.api.serve", record("api"))
    monkeypatch.setattr("lmforge.infer.webchat.serve", record("webchat"))

    class FakeEngine:
        def close(self):
            pass

    def fake_engine(config):
        seen["chat"] = config
        return FakeEngine()

    monkeypatch.setattr("lmforge.infer.engine.create_engine", fake_engine)
    monkeypatch.setattr("lmforge.infer.chat_cli.answer_once", lambda *a: None)
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    return seen


@pytest.mark.parametrize(
    "argv",
    [
        [
            "train",
            "--stage",
            "sft",
            "--do_train",
            "True",
            "--model_name_or_path",
            "m",
            "--dataset",
            "d",
            "--output_dir",
            "out",
            "--lora_rank",
            "4",
        ],
        [
            "chat",
            "--model_name_or_path",
            "m",
            "--adapter_name_or_path",
            "a",
            "--template",
            "gemma",
            "--prompt",
            "hi",
        ],
        [
            "api",
            "--model_name_or_path",
            "m",
            "--adapter_name_or_path",
            "a",
            "--template",
            "gemma",
            "--port",
            "8123",
        ],
        [
            "webchat",
            "--model_name_or_path",
            "m",
            "--adapter_name_or_path",
            "a",
            "--template",
            "gemma",
        ],
    ],
    ids=lambda argv: argv[0],
)
def test_flags_alone_are_a_config(argv, captured, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    config = captured[argv[0]]
    assert config.source == "command line" and config.path is None
    assert config.model.model_name_or_path == "m"
    assert set(config.origins.values()) == {"command line"}
    if argv[0] == "train":
        assert config.method.stage == "sft" and config.method.lora_rank == 4
        assert config.train.output_dir == str(tmp_path / "out")
    else:
        assert config.model.template == "gemma" and config.model.adapter_name_or_path == "a"


def test_file_and_flags_each_key_knows_where_it_came_from(tmp_path, captured):
    path = tmp_path / "train.yaml"
    path.write_text("model_name_or_path: m\ndataset: d\noutput_dir: /tmp/x\nlora_rank: 8\n")
    assert main(["train", str(path), "--lora_rank", "4", "learning_rate=1e-4"]) == 0
    config = captured["train"]
    assert config.source == str(path) == config.path
    assert config.method.lora_rank == 4 and config.train.learning_rate == 1e-4
    assert config.where("lora_rank") == config.where("learning_rate") == "command line"
    assert config.where("dataset") == str(path)
    assert config.where("cutoff_len") == str(path)  # a default: the config's source


def test_errors_name_the_command_line_or_the_file(tmp_path, capsys):
    assert main(["train", "--model_name_or_path", "m", "--learning_rate", "-1"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: `learning_rate: -1` is out of range: learning_rate must be "
        "greater than 0. Fix: set `learning_rate` to a value that is greater than 0 (the "
        "default is 5e-05).\n"
    )
    path = tmp_path / "train.yaml"
    path.write_text("cutoff_len: 0\n")
    assert main(["train", str(path), "--learning_rate", "1e-4"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: `cutoff_len: 0` is out of range")


def test_a_missing_setting_of_a_flags_only_config_names_the_command_line(capsys):
    assert main(["train", "--model_name_or_path", "m", "--dataset", "d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: command line: `output_dir` is not set")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command", [["train"], ["chat"], ["api"], ["webchat"], ["data", "inspect"]]
)
def test_no_file_and_no_flags_says_what_to_give(command, capsys):
    assert main(command) == 2
    name = " ".join(command)
    kind = "train" if command[0] in ("train", "data") else "infer"
    assert capsys.readouterr().err == (
        f"error: `lmforge {name}` needs a config: a YAML file, --key value flags, or both. Fix: "
        f"for example `lmforge {name} examples/quickstart/{kind}.yaml`, or `lmforge {name} "
        "--model_name_or_path gemma-3-270m --template gemma ...` (docs/config.md lists the "
        "keys).\n"
    )


def test_a_second_file_name_is_refused(tmp_path, capsys):
    assert main(["train", "a.yaml", "b.yaml"]) == 2
    assert "cannot read the argument 'b.yaml'" in capsys.readouterr().err


def test_debug_after_the_command_is_lmforge_s_flag(capsys):
    assert main(["train", "--model_name_or_path", "m", "--learning_rate", "-1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown key `debug`" not in err


def test_data_commands_take_flags_alone(tmp_path, tiny_model_dir, capsys):
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    flags = ["--dataset", "toy", "--dataset_dir", str(data)]
    assert main(["data", "validate", *flags]) == 0
    model = ["--model_name_or_path", str(tiny_model_dir), "--template", "gemma"]
    assert main(["data", "inspect", *flags, *model, "--num", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])


def test_training_from_flags_alone(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    data = write_alpaca_dataset(tmp_path / "data", TOY_RECORDS)
    out = tmp_path / "out"
    code = main(
        [
            "train",
            "--stage", "sft",
            "--do_train", "True",
            "--model_name_or_path", str(tiny_model_dir),
            "--template", "gemma",
            "--dataset", "toy",
            "--dataset_dir", str(data),
            "--output_dir", str(out),
            "--finetuning_type", "lora",
            "--max_steps", "2",
            "--logging_steps", "1",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["stage"] == "sft" and saved["max_steps"] == 2
    assert (out / "adapter_model.safetensors").is_file()
    assert load_config(None, ["--output_dir", str(out)]).train.output_dir == str(out)
