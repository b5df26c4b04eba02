"""Which parameters learn: LoRA (peft), freeze (last/first n layers) or full."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import torch

from lmforge.config.plan import RunPlan
from lmforge.config.schema import MethodConfig, comma_separated, trains_adapter
from lmforge.errors import UserError
from lmforge.model import pissa
from lmforge.model.expand import expanded_layer_ids
from lmforge.model.new_tokens import trainable_token_indices

logger = logging.getLogger(__name__)


def apply_finetuning(
    model,
    method: MethodConfig,
    plan: RunPlan,
    adapter_paths: list[str] | None = None,
    new_token_ids: tuple[int, ...] = (),
):
    """new_token_ids: rows of tokens added to the vocabulary (and rows resize_vocab added),
    trained with a new LoRA adapter (full fine-tuning trains every row anyway)."""
    if trains_adapter(method):
        model = _apply_adapter(model, method, plan.lora_alpha, adapter_paths or [], new_token_ids)
    elif method.finetuning_type == "freeze":
        _apply_freeze(model, method)
    else:
        model.requires_grad_(True)
    if plan.precision.pure_bf16:
        return model  # everything stays bf16 by request: less memory, rounding accepted
    if method.use_badam:
        return model  # BAdam keeps the fp32 copy of the layer in training (train/badam.py)
    # Trainable weights stay fp32 so optimizer updates are not lost to rounding.
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def _apply_adapter(
    model,
    method: MethodConfig,
    lora_alpha: int,
    adapter_paths: list[str],
    new_token_ids: tuple[int, ...] = (),
):
    """A new LoRA or OFT adapter (peft), or the last of adapter_paths trained further."""
    from peft import PeftModel, get_peft_model

    # Earlier adapters are merged into the base; the last one is trained further, unless
    # create_new_adapter asks for a fresh adapter on top of all of them.
    for path in adapter_paths:
        if not (Path(path) / "adapter_config.json").is_file():
            raise UserError(
                f"adapter folder {path} has no adapter_config.json",
                fix=f"point adapter_name_or_path at the output_dir of a {method.finetuning_type} "
                "run (train that first), or remove adapter_name_or_path",
            )
        pissa.check_reloadable(path)
    keep_training = adapter_paths[-1:] if adapter_paths and not method.create_new_adapter else []
    for path in adapter_paths[: len(adapter_paths) - len(keep_training)]:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    if keep_training:
        return _saves_rows_only(
            PeftModel.from_pretrained(model, keep_training[0], is_trainable=True)
        )
    if method.finetuning_type == "oft":
        return get_peft_model(model, _oft_config(model, method))
    return _saves_rows_only(
        get_peft_model(model, _lora_config(model, method, lora_alpha, new_token_ids))
    )


def _lora_config(model, method: MethodConfig, lora_alpha: int, new_token_ids: tuple[int, ...]):
    from peft import LoraConfig

    modules_to_save = comma_separated(method.additional_target)
    tokens = trainable_token_indices(model, list(new_token_ids)) if new_token_ids else {}
    # a module additional_target names trains whole already
    tokens = {name: ids for name, ids in tokens.items() if name not in modules_to_save}
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=method.lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=_target_modules(
            model, method.lora_target, "lora_target", method.use_llama_pro
        ),
        modules_to_save=modules_to_save or None,
        trainable_token_indices=tokens or None,
        use_rslora=method.use_rslora,
        use_dora=method.use_dora,
        init_lora_weights=pissa.init_lora_weights(method.pissa_iter) if method.pissa_init else True,
        # LLaMA Pro: only the layers `lmforge models expand` added
        layers_to_transform=_llama_pro_layers(model, method) if method.use_llama_pro else None,
    )


def _oft_config(model, method: MethodConfig):
    """OFT (Qiu et al., 2023; peft's OFTConfig, LLaMA-Factory's keys): each adapted linear
    layer's weight rotated by a learned block-diagonal orthogonal matrix."""
    from peft import OFTConfig

    return OFTConfig(
        task_type="CAUSAL_LM",
        r=method.oft_rank,
        oft_block_size=method.oft_block_size,
        module_dropout=method.module_dropout,
        target_modules=_target_modules(
            model, method.oft_target, "oft_target", method.use_llama_pro
        ),
        modules_to_save=comma_separated(method.additional_target) or None,
        layers_to_transform=_llama_pro_layers(model, method) if method.use_llama_pro else None,
    )


def _saves_rows_only(peft_model):
    """An adapter that trains the rows of added tokens holds them; peft would also copy the
    whole resized embedding (and the head: the same tensor again when tied) into every save,
    because the vocabulary grew: 2 x 335 MB a checkpoint for Gemma-3-270M. Every row the
    resize added is one the adapter trains (run.py), and loading resizes the base first."""
    if any(c.trainable_token_indices for c in peft_model.peft_config.values()):
        peft_model.save_pretrained = functools.partial(
            peft_model.save_pretrained, save_embedding_layers=False
        )
    return peft_model


def _llama_pro_layers(model, method: MethodConfig) -> list[int]:
    num_layers = model.config.get_text_config().num_hidden_layers
    n = method.freeze_trainable_layers
    if not 0 < n <= num_layers:
        raise UserError(
            f"use_llama_pro: freeze_trainable_layers {n} should be how many layers "
            "`lmforge models expand` added",
            fix="set freeze_trainable_layers to the --num-expand the model was expanded with",
        )
    return expanded_layer_ids(num_layers, n)


def _target_modules(model, target: str, key: str, by_name: bool = False) -> str | list[str]:
    """peft's target_modules for lora_target / oft_target (`key`); by_name: `all` as the names
    of the layers' linear modules (peft takes layers_to_transform only with names)."""
    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    if target.strip() == "all":
        if by_name:
            return sorted(
                {
                    name.rsplit(".", 1)[-1]
                    for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear) and ".layers." in name
                }
            )
        return "all-linear"  # every linear layer except the output head
    # An embedding adapts too when named (peft's LoRA for nn.Embedding; LoRA+ gives its B
    # matrix loraplus_lr_embedding), never through `all`, as in LLaMA-Factory.
    embedding_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Embedding)
    }
    names = [n.strip() for n in target.split(",") if n.strip()]
    known = linear_names | embedding_names
    missing = [n for n in names if n not in known]
    if missing:
        raise UserError(
            f"{key} names modules this model does not have: {', '.join(missing)}",
            fix=f"use `all` or some of: {', '.join(sorted(known))}",
        )
    embeddings = [n for n in names if n in embedding_names and n not in linear_names]
    if embeddings and _ties_embeddings(model):
        # Merging the adapter would change the output head too (it is the same weight), so
        # chat and export would not run the model that was trained.
        raise UserError(
            f"{key} names {', '.join(embeddings)}, which this model shares with its output "
            "head (tied embeddings): an adapter on it cannot be merged without changing the head",
            fix=f"remove {', '.join(embeddings)} from {key}; to train the embedding, name it "
            "in additional_target (trained whole, saved with the adapter)",
        )
    return names


def _ties_embeddings(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _apply_freeze(model, method: MethodConfig) -> None:
    num_layers = model.config.get_text_config().num_hidden_layers
    n = method.freeze_trainable_layers
    if n == 0 or abs(n) > num_layers:
        raise UserError(
            f"freeze_trainable_layers: {n} does not fit a model with {num_layers} layers",
            fix=f"use a number from 1 to {num_layers} (last layers) or -1 to -{num_layers} (first)",
        )
    layers = range(num_layers - n, num_layers) if n > 0 else range(-n)
    if method.use_llama_pro:  # the layers `lmforge models expand` added
        layers = expanded_layer_ids(num_layers, n)
    modules = [m.strip() for m in method.freeze_trainable_modules.split(",") if m.strip()]
    pattern = re.compile(r"\.layers\.(\d+)\.")
    trained_any = False
    for name, param in model.named_parameters():
        match = pattern.search(name)
        trainable = bool(match) and int(match.group(1)) in layers
        if trainable and modules != ["all"]:
            trainable = any(f".{m}." in name for m in modules)
        param.requires_grad_(trainable)
        trained_any |= trainable
    extra = comma_separated(method.freeze_extra_modules)
    outside = {n: p for n, p in model.named_parameters() if ".layers." not in n}
    for module in extra:
        matched = [p for n, p in outside.items() if module in n.split(".")]
        if not matched:
            parts = sorted({part for n in outside for part in n.split(".")[:-1]})
            raise UserError(
                f"freeze_extra_modules: no module `{module}` outside the layers",
                fix=f"use some of: {', '.join(parts)}",
            )
        for param in matched:
            param.requires_grad_(True)
        trained_any = True
    if not trained_any:
        raise UserError(
            f"freeze_trainable_modules `{method.freeze_trainable_modules}` matches no parameter "
            "in the trainable layers",
            fix="use `all`, or module names such as self_attn,mlp",
        )


def loraplus_param_groups(
    model, learning_rate: float, ratio: float, weight_decay: float, embedding_lr: float = 1e-6
):
    """LoRA+: the B matrices learn `ratio` times faster than A (Hayou et al., 2024). Grouped
    as LLaMA-Factory groups them: 1-D parameters (biases, DoRA magnitudes) with the B
    matrices, an embedding adapter's B matrix at `embedding_lr`."""
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_B" in name:
            lr = embedding_lr
        elif "lora_B" in name or param.ndim == 1:
            lr = learning_rate * ratio
        else:
            lr = learning_rate
        decay = 0.0 if param.ndim < 2 else weight_decay  # no decay on biases and norms
        groups.setdefault((lr, decay), []).append(param)
    return [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]


def parameter_counts(model) -> tuple[int, int]:
    trainable = sum(_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(_count(p) for p in model.parameters())
    return trainable, total


def _count(param) -> int:
    """How many weights a parameter holds: a bitsandbytes 4-bit weight packs two in a byte of
    its storage dtype (uint8, or a wider `bnb_4bit_quant_storage`)."""
    if type(param).__name__ == "Params4bit":
        return param.numel() * 2 * param.element_size()
    return param.numel()


def trainable_line(model) -> str:
    trainable, total = parameter_counts(model)
    return (
        f"trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
