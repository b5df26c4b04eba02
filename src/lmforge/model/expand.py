"""LLaMA Pro block expansion (Wu et al., 2024; LLaMA-Factory's scripts/llama_pro.py):
`lmforge models expand MODEL --num-expand N --output DIR` writes a copy of the model with N
more decoder layers, one after every num_layers / N original ones. Each new layer is a copy of
the layer before it with its attention output (o_proj) and MLP output (down_proj) zeroed, so
it adds nothing to the residual stream: the expanded model computes what the original does,
and training only the new layers (`use_llama_pro: true`) adds knowledge without overwriting.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch

from lmforge.errors import UserError

logger = logging.getLogger(__name__)

ZEROED = ("o_proj", "down_proj")  # the projections back into the residual stream
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def expanded_layer_ids(num_layers: int, trainable: int) -> list[int]:
    """Where the new layers of a model expanded to `num_layers` with `trainable` new ones are
    (LLaMA-Factory's find_expanded_modules): every (num_layers // trainable)-th layer."""
    stride = num_layers // trainable
    return list(range(stride - 1, num_layers, stride))


def expand_model(source: Path, output: Path, num_expand: int) -> list[int]:
    """Write the expanded model (weights in their own dtype, config, tokenizer) to `output`,
    through a temporary folder renamed at the end; the new layers' indices."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(source))
    text = config.get_text_config()
    layers = text.num_hidden_layers
    if num_expand < 1 or layers % num_expand:
        raise UserError(
            f"--num-expand {num_expand} does not divide the model's {layers} layers",
            fix="choose a divisor of the layer count, e.g. "
            + ", ".join(str(d) for d in range(1, layers + 1) if layers % d == 0),
        )
    if output.exists():
        raise UserError(f"{output} exists", fix="choose a new folder for the expanded model")
    split = layers // num_expand
    order = []  # (new index, source index, zeroed)
    for i in range(layers):
        order.append((len(order), i, False))
        if (i + 1) % split == 0:
            order.append((len(order), i, True))
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype="auto")
    state = model.state_dict()
    expanded: dict[str, torch.Tensor] = {}
    zeroed = {(new, kind): False for new, _, zero in order if zero for kind in ZEROED}
    for key, value in state.items():
        match = _LAYER.search(key)
        if match is None:
            expanded[key] = value
            continue
        source_layer = int(match.group(1))
        for new, i, zero in order:
            if i != source_layer:
                continue
            name = key[: match.start()] + f".layers.{new}." + key[match.end() :]
            kind = next((k for k in ZEROED if f".{k}." in key), None)
            if zero and kind:
                expanded[name] = torch.zeros_like(value)
                zeroed[new, kind] = True
            else:
                expanded[name] = value.clone() if zero else value
    missing = sorted({kind for (new, kind), done in zeroed.items() if not done})
    if missing:
        raise UserError(
            f"{config.model_type} layers have no {' or '.join(missing)} to zero, so a copied "
            "layer would change what the model computes",
            fix="expand a Llama-, Qwen-, Mistral- or Gemma-style model (attention o_proj and "
            "MLP down_proj)",
        )
    text.num_hidden_layers = layers + num_expand
    if isinstance(getattr(text, "layer_types", None), list):  # sliding / full per layer
        text.layer_types = [text.layer_types[i] for _, i, _ in order]
    temporary = output.with_name(f".{output.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    grown = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    grown.load_state_dict(expanded, strict=True)
    grown.save_pretrained(temporary)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(temporary)
    # which layers are new (expanded_layer_ids' rule), for people reading the folder
    new_layers = [new for new, _, zero in order if zero]
    note = {"original_layers": layers, "num_expand": num_expand, "new_layers": new_layers}
    (temporary / "llama_pro.json").write_text(json.dumps(note) + "\n")
    temporary.rename(output)
    logger.info("expanded %s: %d -> %d layers", source, layers, layers + num_expand)
    return new_layers
