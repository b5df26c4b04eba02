"""What an export does, decided and checked before any weights load: the model and adapters
(with the training run's prompt settings), the export folder, the dtype, the formats.

Every refusal is one UserError paragraph (exit 2) raised before anything is written: a missing
export_dir or adapter, an adapter folder that is no adapter, exporting into an input's folder,
an export_dir that is a file or holds other files, a quantized base (4/8-bit cannot take an
exact merge), adapters with finetuning_type full/freeze, and a GGUF the model cannot become.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config.schema import Config, trains_adapter
from lmforge.errors import UserError
from lmforge.model import pissa
from lmforge.model.load import split_paths
from lmforge.model.setup import ModelSetup, prepare_model_setup, training_run_settings
from lmforge.paths import nearest_existing

REPORT_FILE = "export_report.json"  # marks a folder as an lmforge export
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
_BYTES_PER_GB = 1000**3  # export_size counts GB as transformers' max_shard_size does


@dataclass(frozen=True)
class ExportJob:
    config: Config  # with the training run's template, thinking and default_system
    setup: ModelSetup  # the base's folder, the tokenizer, the chat template
    adapters: tuple[Path, ...]  # merged in this order
    export_dir: Path
    dtype: torch.dtype
    shard_bytes: int
    device: str
    run_folder: Path | None  # the training run the weights come from
    run_settings: dict  # its run_config.yaml + run_plan.yaml
    value_head: Path | None  # value_head.safetensors of a reward model, carried over

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def inputs(self) -> list[Path]:
        return [Path(self.setup.resolved.path), *self.adapters]


def plan_export(config: Config) -> ExportJob:
    """Check the config and its files; load only the tokenizer."""
    from lmforge.model.setup import with_training_settings

    where = config.source
    if not config.model.model_name_or_path:
        raise UserError(
            "`model_name_or_path` is not set",
            where=where,
            fix="add `model_name_or_path:` (the base model) and `adapter_name_or_path:` (the "
            "training output_dir), or the output_dir of a full/freeze run alone",
        )
    if not config.export.export_dir:
        raise UserError(
            "`export_dir` is not set", where=where, fix="add `export_dir: exports/my-model`"
        )
    adapters = tuple(Path(p) for p in split_paths(config.model.adapter_name_or_path))
    _check_adapters(config, adapters)
    _check_not_quantized_request(config)
    export_dir = Path(config.export.export_dir).expanduser().absolute()
    check_export_dir(export_dir, list(adapters), where)  # before a base is pulled
    config = with_training_settings(config)
    setup = prepare_model_setup(config)
    base = Path(setup.resolved.path)
    _check_base_not_quantized(base, where)
    check_export_dir(export_dir, [base, *adapters], where)
    found = training_run_settings(config)
    run_folder, settings = found if found else (None, {})
    weights = adapters[-1] if adapters else base
    return ExportJob(
        config=config,
        setup=setup,
        adapters=adapters,
        export_dir=export_dir,
        dtype=export_dtype(config, base),
        shard_bytes=max(1, int(config.export.export_size * _BYTES_PER_GB)),
        device=_device(config.export.export_device),
        run_folder=run_folder,
        run_settings=settings,
        value_head=_value_head(weights, run_folder, settings),
    )


def _check_adapters(config: Config, adapters: tuple[Path, ...]) -> None:
    where = config.source
    if adapters and not trains_adapter(config.method):
        raise UserError(
            f"adapter_name_or_path is set, but finetuning_type is {config.method.finetuning_type}: "
            "a full or freeze run saves the whole model, not an adapter",
            where=where,
            fix="for a full/freeze run set model_name_or_path to its output_dir and remove "
            "adapter_name_or_path; for LoRA adapters set finetuning_type: lora",
        )
    for adapter in adapters:
        if not adapter.exists():
            raise UserError(
                f"adapter_name_or_path {adapter} does not exist",
                where=where,
                fix="point it at the output_dir of a LoRA training run (or a checkpoint-N "
                "folder in it); a relative path is read from the working directory or the "
                "YAML file's folder",
            )
        if not (adapter / "adapter_config.json").is_file():
            full = (adapter / "config.json").is_file()
            raise UserError(
                f"{adapter} is not a LoRA adapter (it has no adapter_config.json"
                + (", but a whole model: a full or freeze run" if full else "")
                + ")",
                where=where,
                fix=(
                    f"set `model_name_or_path: {adapter}` and remove adapter_name_or_path"
                    if full
                    else "point adapter_name_or_path at the output_dir of a LoRA run"
                ),
            )
        pissa.check_reloadable(adapter)


def _check_not_quantized_request(config: Config) -> None:
    bits = config.method.quantization_bit
    if bits is None:
        return
    raise UserError(
        f"quantization_bit: {bits} asks to load the base in {bits}-bit, and a LoRA adapter "
        f"cannot be merged exactly into {bits}-bit weights (the merged weights would be "
        "rounded back to the quantization grid, losing most of what was trained)",
        where=config.where("quantization_bit"),
        fix="remove quantization_bit (or quantization_bit=null): the base then loads in full "
        "precision and the adapter trained with QLoRA merges into it exactly; choose the "
        "stored precision with export_dtype: bf16",
    )


def _check_base_not_quantized(base: Path, where: str | None) -> None:
    config_file = base / "config.json"
    if not config_file.is_file():
        return
    quantization = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
    if not quantization:
        return
    method = quantization.get("quant_method", "quantized")
    bits = quantization.get("bits") or (
        4 if quantization.get("load_in_4bit") else 8 if quantization.get("load_in_8bit") else None
    )
    what = f"{method} {bits}-bit" if bits else str(method)
    raise UserError(
        f"the base model {base} is stored quantized ({what}); a LoRA adapter cannot be merged "
        "exactly into quantized weights",
        where=where,
        fix="set model_name_or_path to the original full-precision model (the hub id or folder "
        "the quantized copy was made from); it loads in bf16 with export_dtype: bf16",
    )


def check_export_dir(export_dir: Path, inputs: list[Path], where: str | None) -> None:
    """Refuse an export_dir that is a file, cannot be created, is (inside or around) an input
    folder, or holds files that are not an earlier export (those would be deleted)."""
    if export_dir.is_file() or (export_dir.exists() and not export_dir.is_dir()):
        raise UserError(
            f"export_dir {export_dir} is a file",
            where=where,
            fix="choose a folder path that does not exist yet (e.g. exports/my-model)",
        )
    existing = nearest_existing(export_dir)
    if existing != export_dir and not existing.is_dir():
        raise UserError(
            f"export_dir {export_dir} cannot be created: {existing} is a file",
            where=where,
            fix="choose an export_dir whose parent folders are folders",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"export_dir {export_dir} cannot be written: {existing} is not writable",
            where=where,
            fix="choose an export_dir in a folder you can write to",
        )
    real = export_dir.resolve()
    for folder in inputs:
        source = Path(folder).resolve()
        if real == source or source in real.parents or real in source.parents:
            place = (
                "the folder of"
                if real == source
                else "inside"
                if source in real.parents
                else "a folder holding"
            )
            raise UserError(
                f"export_dir {export_dir} is {place} {source}, which the export reads: "
                "writing there would replace the weights being exported",
                where=where,
                fix="choose an export_dir outside the model and adapter folders (e.g. "
                "exports/my-model)",
            )
    if export_dir.is_dir() and any(export_dir.iterdir()):
        if not (export_dir / REPORT_FILE).is_file():
            raise UserError(
                f"export_dir {export_dir} already holds files that are not an lmforge export",
                where=where,
                fix="choose a new or empty folder; an earlier `lmforge export` there is "
                "replaced when the new one is complete",
            )


def export_dtype(config: Config, base: Path) -> torch.dtype:
    """export_dtype; else infer_dtype unless auto; else the dtype the base is stored in."""
    if config.export.export_dtype:
        return DTYPES[config.export.export_dtype]
    if config.model.infer_dtype != "auto":
        return DTYPES[config.model.infer_dtype]
    stored = {}
    if (base / "config.json").is_file():
        stored = json.loads((base / "config.json").read_text(encoding="utf-8"))
    name = stored.get("dtype") or stored.get("torch_dtype") or "float32"
    return DTYPES.get(str(name), torch.float32)


def _device(choice: str) -> str:
    return "cuda" if choice == "auto" and torch.cuda.is_available() else "cpu"


def _value_head(weights: Path, run_folder: Path | None, settings: dict) -> Path | None:
    """A reward model's value head: beside the weights (a checkpoint holds its own), else in
    the run folder."""
    from lmforge.train.trainers.value_head import VALUE_HEAD_FILE

    if settings.get("stage") != "rm":
        return None
    for folder in (weights, run_folder):
        if folder is not None and (folder / VALUE_HEAD_FILE).is_file():
            return folder / VALUE_HEAD_FILE
    return None
