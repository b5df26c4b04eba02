"""The model being exported, as training and inference build it: the base in float32, earlier
adapters merged in order, the last one attached (a PeftModel, so the reference answers come
from base + adapter exactly); `merged` folds it in before the weights are written.

Before an adapter loads, every tensor in it is checked against the base's modules, so an
adapter trained on another model is refused with the first mismatch named instead of peft's
size-mismatch traceback (or, for a missing module, silently ignored weights).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.model.load import attention_implementation, model_config
from lmforge.model.new_tokens import fit_vocabulary, grows_vocabulary

logger = logging.getLogger(__name__)

_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.*?)\.(lora_\w+?)(?:\.\w+)?\.weight$")
_MAGNITUDE = "lora_magnitude_vector"


def load_reference(job):
    """Base (float32, on job.device) + adapters: earlier ones merged, the last one attached."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(job.setup.resolved.path),
        # with the RoPE scaling the adapter trained with: the merged config.json keeps it
        config=model_config(
            job.setup.resolved.path,
            trust_remote_code=job.config.model.trust_remote_code,
            rope=job.setup.rope,
        ),
        dtype=torch.float32,
        attn_implementation=attention_implementation(job.config.model.flash_attn),
        trust_remote_code=job.config.model.trust_remote_code,
    ).to(job.device)
    if grows_vocabulary(job.config.model):  # rows for the tokens training added
        fit_vocabulary(model, job.setup.tokenizer)
    model.eval()
    for index, adapter in enumerate(job.adapters):
        check_adapter_fits(model, adapter, job.setup.resolved.path)
        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except RuntimeError as exc:  # a modules_to_save copy of another shape
            if "size mismatch" not in str(exc):
                raise
            raise _does_not_fit(adapter, job.setup.resolved.path, _first_line(exc)) from None
        if index < len(job.adapters) - 1:
            model = model.merge_and_unload()
    return model.eval()


def merged(model):
    """The plain transformers model with the attached adapter folded into its weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model


def check_adapter_fits(model, adapter: Path, base: Path) -> None:
    """Every LoRA tensor of `adapter` has a module of the right shape in `model`."""
    shapes = _adapter_shapes(adapter)
    modules = dict(model.named_modules())
    problems = []
    for key, shape in shapes.items():
        match = _LORA_KEY.match(key)
        if match is None:
            continue  # modules_to_save copies are checked by peft's own load
        path, kind = match.groups()
        module = modules.get(path) or modules.get(f"model.{path}")
        if module is None:
            problems.append(f"the base has no module `{path}`")
            continue
        expected = _expected(module, kind, shape)
        if expected is not None and tuple(shape) != expected:
            problems.append(
                f"`{path}.{kind}` has shape {list(shape)}, the base's {type(module).__name__} "
                f"needs {list(expected)}"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise _does_not_fit(adapter, base, problems[0] + more)


def _does_not_fit(adapter: Path, base: Path, problem: str) -> UserError:
    trained_on = _trained_on(adapter)
    return UserError(
        f"the adapter {adapter} does not fit the base model {base}: {problem}; it was trained "
        f"on {trained_on}",
        fix=f"set model_name_or_path to the model the adapter was trained on ({trained_on}), "
        "or adapter_name_or_path to an adapter trained on this base",
    )


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
    return lines[0] if lines else str(exc).splitlines()[0]


def _expected(module, kind: str, shape) -> tuple[int, ...] | None:
    rank = shape[0] if kind in ("lora_A", "lora_embedding_A") else shape[-1]
    if isinstance(module, torch.nn.Linear):
        return {
            "lora_A": (rank, module.in_features),
            "lora_B": (module.out_features, rank),
            _MAGNITUDE: (module.out_features,),
        }.get(kind)
    if isinstance(module, torch.nn.Embedding):
        return {
            "lora_embedding_A": (rank, module.num_embeddings),
            "lora_embedding_B": (module.embedding_dim, rank),
        }.get(kind)
    return None


def _adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    for name in _ADAPTER_WEIGHTS:
        path = adapter / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    raise UserError(
        f"the adapter folder {adapter} has adapter_config.json but no adapter weights "
        "(adapter_model.safetensors)",
        fix="point adapter_name_or_path at a finished training run's output_dir, or at one of "
        "its checkpoint-N folders",
    )


def _trained_on(adapter: Path) -> str:
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another model"
    return str(config.get("base_model_name_or_path") or "another model")
