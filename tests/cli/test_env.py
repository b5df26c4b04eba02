"""`lmforge env`: one row per package with its installed version, the extras that change how
training runs only when installed, and the device."""

import importlib.metadata

from lmforge.cli import main
from lmforge.commands import env


def test_env_lists_versions_installed_extras_and_the_device(capsys, monkeypatch):
    installed = {"deepspeed": "0.19.8", "liger-kernel": "0.8.5"}
    real = env._version

    def version(name: str) -> str:
        if name in env.OPTIONAL_PACKAGES:
            return installed.get(name, "not installed")
        return real(name)

    monkeypatch.setattr(env, "_version", version)
    assert main(["env"]) == 0
    rows = dict(line[2:].split(": ", 1) for line in capsys.readouterr().out.splitlines())
    rows = {name.strip(): value for name, value in rows.items()}
    assert rows["torch"] == importlib.metadata.version("torch")
    assert rows["peft"] == importlib.metadata.version("peft")
    assert rows["deepspeed"] == "0.19.8" and rows["liger-kernel"] == "0.8.5"
    assert "bitsandbytes" not in rows and "vllm" not in rows and "flash-attn" not in rows
    assert rows["Device"].startswith(("CPU: ", "CUDA x", "Apple MPS"))
