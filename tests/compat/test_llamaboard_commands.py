"""Tutorials 2-4: commands as LLaMA Board's "Preview command" prints them, run as
`lmforge train --flag value ...` (flags only, no YAML) with `--max_steps 2 --logging_steps 1`
added: LoRA SFT, LoRA SFT logged to SwanLab (local mode), DPO; then `lmforge webchat` with
flags only on the SFT run's adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compat.conftest import COMPAT, flag_value, lmforge_argv, not_used_lines, step_losses
from lmforge.cli import main

BOARD = COMPAT / "llamaboard"
TWO_STEPS = ("--max_steps", "2", "--logging_steps", "1")
MULTIMODAL = (
    "freeze_vision_tower",
    "freeze_multi_modal_projector",
    "image_max_pixels",
    "image_min_pixels",
    "video_max_pixels",
    "video_min_pixels",
)


def train(command: str, capsys) -> tuple[Path, str]:
    """Run llamaboard/COMMAND as `lmforge train ...` for two steps: its output_dir and stderr."""
    argv = lmforge_argv(BOARD / command, *TWO_STEPS)
    assert argv[:2] == ["train", "--stage"]  # flags only: no YAML file
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    out = Path(flag_value(argv, "output_dir")).resolve()
    assert out.is_relative_to(Path.cwd())  # saves/... under the working directory
    return out, err


def assert_trained_two_steps(out: Path, err: str) -> None:
    losses = step_losses(out)
    assert sorted(losses) == [1, 2], losses
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert (out / "training_loss.png").is_file()  # --plot_loss True
    assert yaml.safe_load((out / "run_config.yaml").read_text())["max_steps"] == 2
    # The multimodal keys LLaMA Board prints are accepted, and the plan says why they do nothing.
    not_used = not_used_lines(err)
    for key in MULTIMODAL:
        assert key in not_used, (key, err[-3000:])
        assert not_used[key].startswith("lmforge trains and serves text-only models")


def test_lora_sft_command_then_webchat_with_flags_only(llamafactory_dir, monkeypatch, capsys):
    out, err = train("lora_sft.sh", capsys)
    assert_trained_two_steps(out, err)

    # `llamafactory-cli webchat --model_name_or_path ... --adapter_name_or_path saves/...`:
    # the engine is built with the adapter; the Gradio server itself is not started.
    import lmforge.infer.webchat as webchat

    served = {}

    def no_server(engine, host, port, **kwargs):
        """In place of webchat.launch: build the page, answer once, start no server."""
        served.update(engine=engine, demo=webchat.build_demo(engine))
        served["answer"] = engine.generate([{"role": "user", "content": "你是谁？"}], max_tokens=4)

    monkeypatch.setattr(webchat, "launch", no_server)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "0")  # no fixed port to find free
    argv = lmforge_argv(BOARD / "webchat.sh")
    assert argv[0] == "webchat" and argv[1].startswith("--")
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    engine = served["engine"]
    assert engine.base_name == out.name  # named after the merged adapter's folder
    assert engine.template.name == "qwen"
    assert served["demo"] is not None and isinstance(served["answer"], str)


def test_lora_sft_command_with_swanlab_local(llamafactory_dir, capsys):
    pytest.importorskip("swanlab")
    out, err = train("lora_sft_swanlab.sh", capsys)
    assert_trained_two_steps(out, err)
    runs = list((llamafactory_dir / "swanlog").glob("run-*"))  # swanlab_mode local: offline
    assert len(runs) == 1 and any(runs[0].rglob("*.log")), list(llamafactory_dir.rglob("swanlog*"))


def test_dpo_command(llamafactory_dir, capsys):
    out, err = train("lora_dpo.sh", capsys)
    assert_trained_two_steps(out, err)
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["stage"] == "dpo" and saved["pref_loss"] == "sigmoid"
    assert saved["pref_beta"] == 0.1
