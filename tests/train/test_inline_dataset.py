"""A dataset declared in the training YAML itself (no dataset_info.json), paths relative to it."""

import json

import yaml

from conftest import TOY_RECORDS
from lmforge.config import load_config
from lmforge.train.run import run_training


def test_inline_dataset_trains_without_dataset_info(tmp_path, tiny_model_dir):
    folder = tmp_path / "project"
    (folder / "files").mkdir(parents=True)
    conversations = [
        {
            "messages": [
                {"role": "user", "content": r["instruction"]},
                {"role": "assistant", "content": r["output"]},
            ]
        }
        for r in TOY_RECORDS
    ]
    (folder / "files" / "chats.jsonl").write_text("\n".join(json.dumps(c) for c in conversations))
    (folder / "train.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_dir),
                "template": "gemma",
                "datasets": {"chats": {"path": "files/chats.jsonl", "formatting": "openai"}},
                "output_dir": "out",
                "max_steps": 2,
                "logging_steps": 1,
            }
        )
    )
    config = load_config(folder / "train.yaml")
    assert config.data.datasets["chats"]["path"] == str(folder.resolve() / "files/chats.jsonl")
    run = run_training(config)
    assert run.output_dir == folder.resolve() / "out"
    assert (run.output_dir / "adapter_model.safetensors").is_file()
