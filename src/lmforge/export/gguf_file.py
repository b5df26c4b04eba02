"""Write model.gguf: the merged model's weights (f16 or q8_0; norms and other 1-D tensors in
f32, as llama.cpp keeps them), its hyperparameters, and the tokenizer with the training chat
template inside, with the `gguf` package."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lmforge.errors import UserError
from lmforge.export.gguf_arch import (
    extra_tensors,
    family_of,
    tensor_namer,
    transform,
    write_hyperparameters,
)
from lmforge.export.gguf_vocab import Vocab, read_vocab, write_vocab

logger = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
GGUF_TYPES = ("f16", "q8_0")
_Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values; other rows stay f16


def check_gguf_export(config: Any, tokenizer) -> Vocab:
    """Everything that can refuse a GGUF export, before any weights load: the package, the
    model family, the tokenizer. Returns the tokenizer's GGUF vocabulary."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError("export_gguf needs the `gguf` package", fix="pip install 'lmforge[gguf]'")
    family = family_of(config)
    return read_vocab(tokenizer, config.vocab_size, gemma=family.arch == "GEMMA3")


def write_gguf(
    path: Path,
    model,
    tokenizer,
    vocab: Vocab,
    *,
    kind: str,
    name: str,
    chat_template: str | None,
    eot_id: int | None,
) -> Path:
    """Write the GGUF file of `model` (merged, any dtype) to `path`."""
    import gguf

    config = model.config
    family = family_of(config)
    writer = gguf.GGUFWriter(
        str(path), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, family.arch)]
    )
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    write_hyperparameters(writer, config, family)
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if kind == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)
    if kind == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab, tokenizer, chat_template, eot_id)

    namer = tensor_namer(family, config)
    for hf_name, tensor in model.state_dict().items():
        gguf_name = namer(hf_name)
        if gguf_name is None:
            continue
        data = tensor.detach().float().cpu().numpy()
        data = transform(family, config, hf_name, data)
        _add_tensor(writer, gguf_name, data, kind)
    for gguf_name, data in extra_tensors(config).items():
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return path


def _add_tensor(writer, name: str, data: np.ndarray, kind: str) -> None:
    import gguf

    if data.ndim <= 1 or name.endswith("_norm.weight"):
        writer.add_tensor(name, data.astype(np.float32))
    elif kind == "q8_0" and data.shape[-1] % _Q8_BLOCK == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, data.astype(np.float16))
