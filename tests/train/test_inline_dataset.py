"""A dataset declared in the training YAML itself (no dataset_info.json), paths relative to it."""

import json

from conftest import OMIT, TOY_RECORDS, write_config
from lmforge.config import load_config
from lmforge.train.run import run_training


def test_inline_dataset_trains_without_dataset_info(tmp_path, tiny_model_dir, monkeypatch):
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
    path = write_config(
        folder,
        tiny_model_dir,
        records=None,
        dataset=OMIT,
        dataset_dir=OMIT,
        datasets={"chats": {"path": "files/chats.jsonl", "formatting": "openai"}},
        output_dir="out",
        max_steps=2,
        logging_steps=1,
    )
    monkeypatch.chdir(folder)  # output_dir is relative to the working directory, as in LF
    config = load_config(path)
    assert config.data.datasets["chats"]["path"] == str(folder.resolve() / "files/chats.jsonl")
    run = run_training(config)
    assert run.output_dir == folder.resolve() / "out"
    assert (run.output_dir / "adapter_model.safetensors").is_file()
