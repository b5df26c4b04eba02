"""PiSSA (pissa_init, pissa_iter, pissa_convert): LoRA started from the weights' principal
singular vectors, and the conversion of the trained adapter to a plain LoRA one.

PiSSA moves the top singular part of each adapted weight into the adapter: the base becomes
W_res = W - s B0 A0. An adapter saved as trained needs that residual base, which peft
re-creates at load by running the SVD again: exact for the full SVD (pissa_iter: -1), not for
the fast randomized one (LLaMA-Factory's default, 16 iterations), whose result depends on the
random numbers drawn. So the final adapter is written converted to plain LoRA (rank 2r):
dW = s (B A - B0 A0) = s' [B | -B0] [A ; A0], exact on the original base, on every loader,
merged or composed with other adapters. Converted when pissa_convert asks, and always after a
fast SVD. The initial A0/B0 are kept in output_dir/pissa_init (a resumed run reuses them);
checkpoints stay as trained, so a resume continues exactly.

peft's own conversion (save_pretrained's path_initial_model_for_weight_conversion) writes the
lora_A/lora_B tensors only and drops DoRA magnitudes, modules_to_save and trained token rows;
this one keeps every other tensor as it is (none of them depends on the base weights).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lmforge.errors import UserError

INITIAL_FOLDER = "pissa_init"
_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


def init_lora_weights(pissa_iter: int) -> str:
    """peft's init_lora_weights for PiSSA with `pissa_iter` fast-SVD iterations (-1: full SVD)."""
    return "pissa" if pissa_iter < 0 else f"pissa_niter_{pissa_iter}"


def converts_adapter(method) -> bool:
    """Whether the final adapter is written as plain LoRA (method: a MethodConfig)."""
    return method.pissa_init and (method.pissa_convert or method.pissa_iter >= 0)


def describe(method) -> str:
    svd = "full SVD" if method.pissa_iter < 0 else f"fast SVD, {method.pissa_iter} iterations"
    line = f"PiSSA init ({svd})"
    if converts_adapter(method):
        line += f"; saved converted to plain LoRA (rank {2 * method.lora_rank})"
        if not method.pissa_convert:
            line += ", since a fast-SVD PiSSA adapter cannot be re-created exactly at load"
    return line


def save_initial_adapter(peft_model, output_dir: Path, *, resuming: bool) -> Path:
    """output_dir/pissa_init: A0 and B0 as PiSSA set them, before the first step. A resumed run
    keeps its first start's (a resume's fresh init would be drawn again); a fresh start in a
    used folder replaces an earlier run's."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = output_dir / INITIAL_FOLDER
    if resuming and (folder / _WEIGHTS).is_file():
        return folder
    state = get_peft_model_state_dict(peft_model)
    initial = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if _lora_side(k)}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (_WEIGHTS + ".tmp")
    save_file(initial, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / _WEIGHTS)
    return folder


def convert_adapter(output_dir: Path) -> None:
    """Rewrite the PiSSA adapter in output_dir as plain LoRA of twice the rank (atomically:
    weights, then config; a reader sees one adapter or the other)."""
    import torch
    from safetensors.torch import load_file, save_file

    config = json.loads((output_dir / _CONFIG).read_text())
    if not str(config.get("init_lora_weights")).startswith("pissa"):
        return  # converted already
    trained = load_file(str(output_dir / _WEIGHTS))
    initial = load_file(str(output_dir / INITIAL_FOLDER / _WEIGHTS))
    converted = {}
    for name, tensor in trained.items():
        side = _lora_side(name)
        if side is None:
            converted[name] = tensor  # DoRA magnitudes, modules_to_save, token rows
            continue
        # An adapter PiSSA did not start (an embedding's) gets zeros: the same product.
        start = initial[name].to(tensor.dtype) if name in initial else torch.zeros_like(tensor)
        if side == "A":  # (r, in): [A ; A0]
            converted[name] = torch.cat([tensor, start], dim=0).contiguous()
        else:  # (out, r): [B | -B0]
            converted[name] = torch.cat([tensor, -start], dim=1).contiguous()
    rank = config["r"]
    config.update(
        init_lora_weights=True,
        r=2 * rank,
        # the same scale s = alpha / r (alpha / sqrt(r) with rsLoRA) at twice the rank
        lora_alpha=config["lora_alpha"] * (math.sqrt(2) if config.get("use_rslora") else 2),
    )
    tmp = output_dir / (_WEIGHTS + ".tmp")
    save_file(converted, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, output_dir / _WEIGHTS)
    tmp = output_dir / (_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, output_dir / _CONFIG)


def check_reloadable(adapter: str | Path) -> None:
    """A fast-SVD PiSSA adapter as trained (a checkpoint) cannot be loaded on the original base:
    the residual base would be drawn anew. Refused; the run's output_dir is converted."""
    file = Path(adapter) / _CONFIG
    if not file.is_file():
        return
    init = str(json.loads(file.read_text()).get("init_lora_weights"))
    if init.startswith("pissa_niter_"):
        raise UserError(
            f"adapter {adapter} is a PiSSA adapter initialised by fast SVD ({init}), saved as "
            "trained: loading it would draw a different residual base, so it cannot be used "
            "exactly outside its run",
            fix="use the run's output_dir (its final adapter is converted to plain LoRA), or "
            "resume the run from this checkpoint (resume_from_checkpoint) to finish it",
        )


def _lora_side(name: str) -> str | None:
    """ "A" or "B" for a LoRA matrix (a linear layer's or an embedding's), else None."""
    for side in ("A", "B"):
        if f".lora_{side}." in name or f".lora_embedding_{side}" in name:
            return side
    return None
