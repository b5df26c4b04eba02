"""Parameter counts and layer shapes of a model, from its config.json alone.

The model is built on the meta device (no memory, no weights read) and the run's fine-tuning
method is applied to it with the same code training uses (`model.adapters.apply_finetuning`),
so the trainable count is the one the training plan will print. The shapes the activation and
FLOP formulas need (hidden size, heads, norms per layer, gated MLP, ...) are read from the built
modules, not from config.json's key names, which differ between model families.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from lmforge.config.schema import trains_adapter
from lmforge.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """What memory and time depend on, for one model and fine-tuning method."""

    model_type: str
    total_params: int  # unique parameters (tied embeddings counted once)
    trainable_params: int
    linear_params: int  # nn.Linear weights inside the decoder layers (what QLoRA quantizes)
    head_params: int  # the output head, when it is not tied to the embeddings
    largest_layer_params: int  # one decoder layer (ZeRO-3 gathers one at a time)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    windows: tuple[int | None, ...]  # per layer: sliding window, or None (full attention)
    norms_per_layer: int  # RMSNorm/LayerNorm on the hidden size inside one decoder layer
    qk_norm: bool  # a norm on queries and keys (Gemma 3, Qwen3)
    gated_mlp: bool  # gate_proj, up_proj, down_proj (LLaMA-style)
    lora_linears_per_layer: int  # adapted linear layers in one decoder layer
    lora_rank: int
    first_trained_layer: int | None  # layers before it keep no activations (nothing to train)
    trained_layers: int  # decoder layers whose own weights train (full/freeze)
    head_adapted: bool  # the output head is LoRA-wrapped or trained as a copy (no chunked loss)
    final_logit_softcapping: float | None
    lora_input_width: int = 0  # sum of the input widths of one layer's LoRA-adapted linears
    # The tensors those linears read, each once (q, k and v read one normed hidden state, gate
    # and up another), without the attention's output, which attention keeps anyway
    lora_shared_input_width: int = 0
    lora_reads_attention_output: bool = False  # the attention's output projection is adapted
    # The RMSNorm returns its input's dtype whatever its weight's (Gemma's); else its product
    # with an fp32 weight is fp32 (LLaMA's, for bf16 inputs in a layer whose weights train)
    norm_keeps_input_dtype: bool = False
    # Bytes of a weight in the checkpoint files (config.json's dtype); 0 when it says none
    checkpoint_param_bytes: int = 0

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim


def read_model_config(path: str | Path) -> dict:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise UserError(
            f"{path} has no config.json, so its size cannot be estimated",
            fix="point model_name_or_path at a Hugging Face model folder (or a catalogue name "
            "from `lmforge models list`)",
        )
    try:
        return json.loads(file.read_text())
    except ValueError as exc:
        raise UserError(
            f"{file} is not valid JSON ({exc})", fix="restore the model's config.json"
        ) from None


def model_shape(path: str | Path, method, lora_alpha: int, *, trust_remote_code: bool = False):
    """The ModelShape of the model in `path` with `method` (a MethodConfig) applied."""
    key = (
        str(path),
        method.finetuning_type,
        method.lora_rank,
        method.lora_target,
        method.freeze_trainable_layers,
        method.freeze_trainable_modules,
        method.freeze_extra_modules,
        method.additional_target,
        method.use_dora,
        trust_remote_code,
    )
    return _cached_shape(key, method, lora_alpha)


_CACHE: dict[tuple, ModelShape] = {}  # advice asks for the same model several times


def _cached_shape(key: tuple, method, lora_alpha: int) -> ModelShape:
    if key not in _CACHE:
        _CACHE[key] = _build_shape(key[0], method, lora_alpha, trust_remote_code=key[-1])
    return _CACHE[key]


def meta_model(path: str | Path, *, trust_remote_code: bool = False):
    """The causal LM of config.json on the meta device: shapes and no memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    read_model_config(path)  # a clear error before transformers' own
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(
            f"transformers cannot build the model of {path}/config.json: "
            f"{' '.join(str(exc).split())}",
            fix="check config.json's model_type (and set trust_remote_code: true for a model "
            "with its own code)",
        ) from None


def _build_shape(path: str, method, lora_alpha: int, *, trust_remote_code: bool) -> ModelShape:
    import torch

    from lmforge.config.plan import Evaluation, Precision, Resume, RunPlan
    from lmforge.model.adapters import apply_finetuning

    model = meta_model(path, trust_remote_code=trust_remote_code)
    text = model.config.get_text_config()
    layers_module = _decoder_layers(model)
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = head is not None and embed is not None and head.weight is embed.weight
    layer0 = layers_module[0]
    linear_params = sum(
        m.weight.numel()
        for layer in layers_module
        for m in layer.modules()
        if isinstance(m, torch.nn.Linear)
    )
    largest = max(sum(p.numel() for p in layer.parameters()) for layer in layers_module)
    hidden = text.hidden_size
    norms = [
        name
        for name, m in layer0.named_modules()
        if name.count(".") <= 0
        and name
        and "norm" in type(m).__name__.lower()
        and getattr(m, "weight", None) is not None
        and m.weight.shape[-1] == hidden
    ]
    attn = getattr(layer0, "self_attn", None)
    qk_norm = attn is not None and hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    mlp = getattr(layer0, "mlp", None)
    gated = mlp is not None and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kinds = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    window = getattr(text, "sliding_window", None)
    windows = tuple(window if "sliding" in str(k) else None for k in kinds)
    if getattr(text, "use_sliding_window", True) is False:
        windows = tuple(None for _ in kinds)

    plan = RunPlan(
        lora_alpha=lora_alpha, precision=Precision(), evaluation=Evaluation(), resume=Resume()
    )
    model = apply_finetuning(model, method, plan, [])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    layers_module = _decoder_layers(model)
    trained_flags = [any(p.requires_grad for p in layer.parameters()) for layer in layers_module]
    lora = trains_adapter(method)  # LoRA or OFT: the base stays frozen
    lora_linears = sum(1 for n, _ in layers_module[0].named_modules() if n.endswith("lora_A"))
    adapted = [
        (name, m)
        for name, m in layers_module[0].named_modules()
        if hasattr(m, "lora_A") and isinstance(getattr(m, "in_features", None), int)
    ]
    lora_width = sum(int(m.in_features) for _, m in adapted)
    shared_width, reads_attention_output = _lora_shared_inputs(adapted)
    embed_trains = any(p.requires_grad for p in model.get_input_embeddings().parameters())
    first = 0 if embed_trains else next((i for i, t in enumerate(trained_flags) if t), None)
    new_head = model.get_output_embeddings()
    head_adapted = not (type(new_head) is torch.nn.Linear and new_head.bias is None)
    return ModelShape(
        model_type=str(getattr(text, "model_type", "")),
        total_params=total,
        trainable_params=trainable,
        linear_params=linear_params,
        head_params=0 if tied or head is None else head.weight.numel(),
        largest_layer_params=largest,
        hidden=hidden,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=getattr(text, "intermediate_size", None) or 4 * hidden,
        vocab=text.vocab_size,
        windows=windows,
        norms_per_layer=len(norms),
        qk_norm=qk_norm,
        gated_mlp=gated,
        lora_linears_per_layer=lora_linears if lora else 0,
        lora_rank=method.lora_rank if lora else 0,
        first_trained_layer=first,
        trained_layers=0 if lora else sum(trained_flags),
        head_adapted=head_adapted,
        final_logit_softcapping=getattr(text, "final_logit_softcapping", None),
        lora_input_width=lora_width if lora else 0,
        lora_shared_input_width=shared_width if lora else 0,
        lora_reads_attention_output=reads_attention_output and lora,
        norm_keeps_input_dtype=_norm_keeps_input_dtype(layer0, norms, hidden),
        checkpoint_param_bytes=_dtype_bytes(getattr(model.config, "dtype", None)),
    )


def _dtype_bytes(dtype) -> int:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 0


# The attention's output projection under the names transformers' families give it: it reads
# the attention's output, which the attention keeps for its own backward pass.
ATTENTION_OUTPUT_NAMES = ("o_proj", "out_proj", "dense", "wo")


def _lora_shared_inputs(adapted: list[tuple[str, object]]) -> tuple[int, bool]:
    """(widths of the distinct tensors the adapted linears of one layer read, the attention's
    output left out; whether the attention's output projection is adapted). Linears under one
    parent module with the same input width read the same tensor (q/k/v, gate/up)."""
    groups: dict[tuple[str, int], None] = {}
    reads_attention_output = False
    for name, module in adapted:
        parent, _, leaf = name.rpartition(".")
        if leaf in ATTENTION_OUTPUT_NAMES and ("attn" in parent or "attention" in parent):
            reads_attention_output = True
            continue
        groups[(parent, int(module.in_features))] = None
    return sum(width for _, width in groups), reads_attention_output


def _norm_keeps_input_dtype(layer, norms: list[str], hidden: int) -> bool:
    """Whether the layer's first norm, with its fp32 weight, returns a bf16 input in bf16 (run
    on the meta device: no memory)."""
    import copy

    import torch

    if not norms:
        return False
    try:
        norm = copy.deepcopy(layer.get_submodule(norms[0])).to(device="meta", dtype=torch.float32)
        with torch.no_grad():
            x = torch.empty(1, hidden, dtype=torch.bfloat16, device="meta")
            return norm(x).dtype == torch.bfloat16
    except Exception:  # an unusual norm: taken as LLaMA's
        return False


def _decoder_layers(model):
    """The ModuleList of decoder layers (model.model.layers for most families)."""
    import torch

    best = None
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise UserError("the model has no list of decoder layers lmforge can read")
    return best
