"""The model families a GGUF can be written for: llama.cpp's architecture name, the metadata it
reads, and how a tensor changes on the way (as llama.cpp's convert_hf_to_gguf.py does it).

- llama (Llama, Mistral): q/k weights are permuted from Hugging Face's rotary layout (halves)
  to GGML's (interleaved pairs); `rope.dimension_count` is the head size.
- qwen2 (Qwen2, Qwen2.5), qwen3: tensors as they are (NeoX rotary); Qwen3's q/k norms map.
- gemma3: every `*norm.weight` is stored plus one (Gemma3RMSNorm scales by 1 + weight); the
  tied output head is not written. llama.cpp fixes what the GGUF does not say (every 6th layer
  global, local rotary base 10000, attention scale 1/sqrt(head_dim)): a config that differs is
  refused, since the file would silently run another model.

Names map with the gguf package's TensorNameMap; a tensor without a GGUF name is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.errors import UserError

SUPPORTED = "Gemma 3 (text), Llama, Mistral, Qwen2/Qwen2.5 and Qwen3"


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False
    norm_shift: float = 0.0
    rope_dims: bool = False  # write rope.dimension_count and vocab_size (llama)


FAMILIES = {
    "llama": Family("LLAMA", permute_qk=True, rope_dims=True),
    "mistral": Family("LLAMA", permute_qk=True, rope_dims=True),
    "qwen2": Family("QWEN2"),
    "qwen3": Family("QWEN3"),
    "gemma3_text": Family("GEMMA3", norm_shift=1.0),
}


def family_of(config: Any) -> Family:
    """The family of a transformers config, or a UserError naming the ones we can write."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise UserError(
            f"export_gguf cannot convert a `{model_type}` model; it writes {SUPPORTED}",
            fix="remove export_gguf (the merged folder is still written), or convert the folder "
            "with llama.cpp's convert_hf_to_gguf.py",
        )
    if model_type == "gemma3_text":
        _check_gemma3(config)
    scaling = _rope(config).get("rope_type", "default")
    if scaling not in ("default", "linear", "llama3", "yarn"):
        raise UserError(
            f"export_gguf cannot write rotary scaling `{scaling}` of this model",
            fix="remove export_gguf, or convert the folder with llama.cpp's convert_hf_to_gguf.py",
        )
    return family


def _check_gemma3(config: Any) -> None:
    layers = config.num_hidden_layers
    fixed = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)]
    rope = getattr(config, "rope_parameters", None) or {}
    local = (rope.get("sliding_attention") or {}).get("rope_theta", 10000.0)
    scale_ok = config.query_pre_attn_scalar == config.head_dim or (
        layers == 62
        and config.query_pre_attn_scalar == config.hidden_size // config.num_attention_heads
    )
    problems = []
    if list(getattr(config, "layer_types", fixed) or fixed) != fixed:
        problems.append("its global attention layers are not every 6th layer")
    if local != 10000.0:
        problems.append(f"its local rotary base is {local:g}, not 10000")
    if not scale_ok:
        problems.append(
            f"query_pre_attn_scalar {config.query_pre_attn_scalar} is not the head size {config.head_dim}"
        )
    if problems:
        raise UserError(
            f"this Gemma 3 model cannot be written as a GGUF: {'; '.join(problems)} (llama.cpp's "
            "gemma3 assumes the released models' values)",
            fix="remove export_gguf; the merged folder is still written",
        )


def _rope(config: Any) -> dict:
    """The rotary settings of the global layers (transformers 5: rope_parameters)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in params:
        params = dict(params["full_attention"])
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    return params


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_hyperparameters(writer: Any, config: Any, family: Family) -> None:
    """The `{arch}.*` metadata llama.cpp reads for this family."""
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    size = head_dim(config)
    if family.rope_dims:
        writer.add_rope_dimension_count(size)
        writer.add_vocab_size(config.vocab_size)
    if family.arch == "GEMMA3" or size != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(size)
        writer.add_value_length(size)
    if family.arch == "GEMMA3":
        writer.add_sliding_window(config.sliding_window)
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
    kind = rope.get("rope_type", "default")
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(
            gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN
        )
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if kind == "yarn" and rope.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))


def extra_tensors(config: Any) -> dict[str, np.ndarray]:
    """Tensors llama.cpp needs that the model has none of: Llama 3.1's rotary frequency
    factors (`rope_freqs`), computed from its `llama3` rope settings."""
    rope = _rope(config)
    if rope.get("rope_type") != "llama3":
        return {}
    base = float(rope.get("rope_theta", 10000.0))
    dim = head_dim(config)
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return {"rope_freqs.weight": np.asarray(factors, dtype=np.float32)}


def tensor_namer(family: Family, config: Any) -> Callable[[str], str | None]:
    """Hugging Face parameter name -> GGUF tensor name (None: not written)."""
    import gguf

    arch = getattr(gguf.MODEL_ARCH, family.arch)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))

    def name(hf_name: str) -> str | None:
        if hf_name == "lm_head.weight" and tied:
            return None
        base, dot, suffix = hf_name.rpartition(".")
        mapped = names.get_name(base)
        if mapped is None:
            raise UserError(
                f"export_gguf does not know where the tensor `{hf_name}` goes in a "
                f"{family.arch.lower()} GGUF",
                fix="remove export_gguf, or convert the folder with llama.cpp's "
                "convert_hf_to_gguf.py",
            )
        return f"{mapped}{dot}{suffix}"

    return name


def transform(family: Family, config: Any, hf_name: str, data: np.ndarray) -> np.ndarray:
    """A tensor as llama.cpp stores it for this family."""
    if family.norm_shift and hf_name.endswith("norm.weight"):
        data = data + np.float32(family.norm_shift)
    if family.permute_qk and hf_name.endswith(
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight")
    ):
        heads = config.num_attention_heads
        if hf_name.endswith("k_proj.weight"):
            heads = config.num_key_value_heads
        data = _permute(data, heads)
    return data


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Rotary halves -> interleaved pairs, per head (llama.cpp's LlamaModel.permute)."""
    shape = weights.shape
    return (
        weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
    )
