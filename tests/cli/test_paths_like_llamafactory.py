"""Relative paths as LLaMA-Factory reads them: from the working directory (inputs found only
next to the YAML file are read from there), outputs under the working directory. So a training
run and the tutorial's inference YAML (`adapter_name_or_path: saves/...`) meet when both are
run from the same folder, wherever the YAML files are."""

import yaml

from conftest import TOY_RECORDS, write_alpaca_dataset
from lmforge.cli import main
from lmforge.config import load_config


def test_train_then_chat_from_the_same_folder_finds_the_adapter(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    configs = tmp_path / "examples" / "tiny"
    write_alpaca_dataset(configs / "data", TOY_RECORDS)  # next to the YAML files only
    train = {
        "model_name_or_path": str(tiny_model_dir),
        "template": "gemma",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "toy",
        "dataset_dir": "data",
        "output_dir": "saves/tiny/lora/sft",
        "max_steps": 2,
        "logging_steps": 1,
    }
    (configs / "train.yaml").write_text(yaml.safe_dump(train))
    infer = {
        "model_name_or_path": str(tiny_model_dir),
        "adapter_name_or_path": "saves/tiny/lora/sft",
        "template": "gemma",
        "finetuning_type": "lora",
        "do_sample": False,
        "max_new_tokens": 4,
    }
    (configs / "infer.yaml").write_text(yaml.safe_dump(infer))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    assert main(["train", "../examples/tiny/train.yaml"]) == 0, capsys.readouterr().err[-2000:]
    adapter = work / "saves/tiny/lora/sft"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (configs / "saves").exists()  # not next to the YAML file any more

    config = load_config("../examples/tiny/infer.yaml")
    assert config.model.adapter_name_or_path == str(adapter)
    assert str(config.paths["adapter_name_or_path"]) == f"{adapter} (working directory)"
    capsys.readouterr()
    # The engine loads the adapter (a missing one is an error, exit code 2).
    assert main(["chat", "../examples/tiny/infer.yaml", "--prompt", "Who are you?"]) == 0
    assert "error:" not in capsys.readouterr().err


def test_every_path_key_is_recorded_with_where_it_was_found(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    (folder / "ds").mkdir(parents=True)
    (folder / "ds_z3_config.json").write_text("{}")
    (folder / "files").mkdir()
    (folder / "files" / "chats.jsonl").write_text("")
    (folder / "train.yaml").write_text(
        yaml.safe_dump(
            {
                "dataset_dir": "ds",
                "deepspeed": "ds_z3_config.json",
                "output_dir": "saves/run",
                "logging_dir": "saves/run/tb",
                "adapter_name_or_path": "missing/adapter",
                "datasets": {"chats": {"path": "files/chats.jsonl", "formatting": "openai"}},
                "resume_from_checkpoint": "auto",
            }
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_config(folder / "train.yaml", ["swanlab_logdir=logs/swan"])
    shown = {key: str(value) for key, value in config.paths.items()}
    cfg = folder.resolve()
    assert shown == {
        "dataset_dir": f"{cfg / 'ds'} (YAML file's folder)",
        "deepspeed": f"{cfg / 'ds_z3_config.json'} (YAML file's folder)",
        "output_dir": f"{work / 'saves/run'} (working directory)",
        "logging_dir": f"{work / 'saves/run/tb'} (working directory)",
        "datasets.chats.path": f"{cfg / 'files/chats.jsonl'} (YAML file's folder)",
        "swanlab_logdir": f"{work / 'logs/swan'} (working directory)",
    }
    assert config.passthrough["deepspeed"] == str(cfg / "ds_z3_config.json")
    assert config.model.adapter_name_or_path == "missing/adapter"  # maybe a hub id: kept
    assert config.train.resume_from_checkpoint == "auto"


def test_command_line_paths_are_read_from_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    (folder / "data").mkdir(parents=True)
    (folder / "train.yaml").write_text("lora_rank: 4\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(folder / "train.yaml", ["dataset_dir=data"])
    assert config.data.dataset_dir == str(tmp_path / "data")
    assert str(config.paths["dataset_dir"]) == f"{tmp_path / 'data'} (working directory, not found)"
    config = load_config(folder / "train.yaml", ["dataset_dir=ONLINE"])
    assert config.data.dataset_dir == "ONLINE"
