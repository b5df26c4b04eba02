"""`lmforge export`: plan -> reference answers -> merged folder (+ GGUF) in a staging folder ->
parity -> Modelfile, model card, report -> rename into place -> push.

Nothing is written before every input check has passed (export/job.py). Whatever happens after
the staging folder exists, export_dir is either untouched or the complete, proven export: an
error or Ctrl-C removes the staging folder, a kill leaves it under its hidden temporary name,
and an export that fails its parity check is set aside as `EXPORT_DIR.parity-failed`.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge import __version__
from lmforge.config.schema import Config
from lmforge.export import folder as files
from lmforge.export.chat_format import export_jinja, turn_texts
from lmforge.export.gguf_file import GGUF_FILE, check_gguf_export, write_gguf
from lmforge.export.gguf_vocab import adds_special
from lmforge.export.job import ExportJob, plan_export
from lmforge.export.merge import load_reference, merged
from lmforge.export.modelfile import MODELFILE, modelfile_text
from lmforge.export.parity import (
    build_prompts,
    compare_folder,
    compare_gguf,
    failed_gguf,
    make_reference,
)
from lmforge.export.prompts import parity_conversations
from lmforge.export.report import CARD_SETTINGS, write_model_card, write_report
from lmforge.model.hf_config import text_config
from lmforge.model.load import model_config

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    folder: Path  # export_dir, or EXPORT_DIR.parity-failed
    report: dict
    passed: bool
    hub_url: str | None = None


@dataclass
class _Formats:
    """What the written files hold besides weights, settled before any weights load."""

    jinja: str | None  # the chat template written into the tokenizer and the GGUF
    stop_ids: list[int]
    model_config: object  # the base's (text) config
    vocab: object | None  # the GGUF vocabulary, with export_gguf


def run_export(config: Config) -> ExportResult:
    started = time.monotonic()
    job = plan_export(config)
    formats = _settle_formats(job)
    step = _Steps(5 if job.config.export.export_gguf else 4)

    step("Loading %s%s", job.setup.resolved.path, _adapters_text(job))
    model = load_reference(job)
    head = _load_head(job, model)
    conversations, source = parity_conversations(job.run_folder, job.run_settings)
    prompts = build_prompts(job.setup.template, job.setup.tokenizer, conversations)
    logger.info("Reference answers of base + adapters on %d prompts (%s)", len(prompts), source)
    reference = make_reference(
        model,
        [ids for _, ids in prompts],
        formats.stop_ids,
        device=job.device,
        head=head,
        source=source,
    )
    staging = files.staging_folder(job.export_dir)
    try:
        weights = _write(job, formats, merged(model), staging, step)
        del model
        gc.collect()
        step("Checking what was written against base + adapters")
        parity = _check(job, formats, staging, reference, prompts, head)
        passed = all(parity[key]["passed"] for key in ("folder", "gguf") if key in parity)
        step("Writing the Modelfile, model card and report")
        report = _describe(job, formats, staging, weights, parity, passed, started)
        if passed:
            final = files.finish(staging, job.export_dir)
        else:
            final = files.set_aside(staging, job.export_dir)
    except BaseException:
        files.discard(staging)
        raise
    seconds = time.monotonic() - started
    if passed:
        logger.info("Exported to %s in %.0f s", final, seconds)
    else:
        logger.warning("Parity check failed: set aside in %s (%.0f s)", final, seconds)
    result = ExportResult(final, report, passed)
    hub_id = job.config.export.export_hub_model_id
    if passed and hub_id:
        from lmforge.export.hub import push_folder

        result.hub_url = push_folder(final, hub_id)
    return result


def _settle_formats(job: ExportJob) -> _Formats:
    """The chat template and stop tokens as exported; refuses a GGUF or Modelfile the model
    cannot have, before any weights load."""
    template, tokenizer = job.setup.template, job.setup.tokenizer
    model_config = _model_config(job)
    gguf_kind = job.config.export.export_gguf
    vocab = check_gguf_export(model_config, tokenizer) if gguf_kind else None
    turn_texts(template, tokenizer)  # a template Ollama cannot take is refused now
    return _Formats(export_jinja(template), template.stop_token_ids(tokenizer), model_config, vocab)


def _write(job: ExportJob, formats: _Formats, model, staging: Path, step) -> list[str]:
    """Weights, configs, tokenizer, value head (and the GGUF) into the staging folder."""
    tokenizer = job.setup.tokenizer
    step("Merging and writing %s weights to %s", job.dtype_name, staging.name)
    weights = files.write_weights(
        model,
        staging,
        dtype=job.dtype,
        shard_bytes=job.shard_bytes,
        legacy=job.config.export.export_legacy_format,
    )
    files.write_generation_config(
        staging, job.setup.resolved.path, model.config, formats.stop_ids, tokenizer
    )
    files.write_tokenizer(tokenizer, staging, formats.jinja)
    files.copy_value_head(job.value_head, staging)
    kind = job.config.export.export_gguf
    if kind:
        step("Writing %s (%s)", GGUF_FILE, kind)
        end_of_turn = [i for i in formats.stop_ids if i != tokenizer.eos_token_id]
        write_gguf(
            staging / GGUF_FILE,
            model,
            tokenizer,
            formats.vocab,
            kind=kind,
            name=job.export_dir.name,
            chat_template=formats.jinja,
            eot_id=end_of_turn[0] if end_of_turn else None,
        )
    return weights


def _check(job, formats: _Formats, staging: Path, reference, prompts, head) -> dict:
    parity = {"prompts": len(prompts), "source": reference.source}
    tokenizer = job.setup.tokenizer
    parity["folder"] = _folder_parity(job, staging, reference, head, tokenizer).to_dict()
    kind = job.config.export.export_gguf
    if kind:
        result = _gguf_parity(job, staging, reference, prompts, kind, tokenizer, formats.jinja)
        parity["gguf"] = result.to_dict()
    return parity


def _describe(job, formats: _Formats, staging: Path, weights, parity, passed, started) -> dict:
    """The Modelfile, the model card and export_report.json; returns the report."""
    kind = job.config.export.export_gguf
    tokenizer = job.setup.tokenizer
    (staging / MODELFILE).write_text(
        modelfile_text(
            job.setup.template,
            tokenizer,
            source=f"./{GGUF_FILE}" if kind else ".",
            context_length=getattr(formats.model_config, "max_position_embeddings", None),
            adds_bos=adds_special(tokenizer)[0],
        ),
        encoding="utf-8",
    )
    report = _report(job, weights, kind, parity, passed, started)
    write_model_card(staging, report)
    write_report(staging, report)
    return report


class _Steps:
    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __call__(self, message: str, *args) -> None:
        self.done += 1
        logger.info(f"[{self.done}/{self.total}] {message}", *args)


def _adapters_text(job: ExportJob) -> str:
    if not job.adapters:
        return ""
    return " + " + ", ".join(str(a) for a in job.adapters)


def _model_config(job: ExportJob):
    config = model_config(
        job.setup.resolved.path,
        trust_remote_code=job.config.model.trust_remote_code,
        rope=job.setup.rope,
    )
    return text_config(config)


def _load_head(job: ExportJob, model):
    if job.value_head is None:
        if job.run_settings.get("stage") == "rm":
            logger.warning("this is a reward model run, but it has no value head file")
        return None
    from lmforge.train.trainers.value_head import ValueHead, load_value_head

    hidden = model.config.get_text_config().hidden_size
    head = ValueHead(hidden).to(job.device)
    return load_value_head(head, job.value_head.parent, job.value_head.name).eval()


def _folder_parity(job: ExportJob, staging: Path, reference, head, tokenizer):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        str(staging),
        dtype=torch.float32,
        trust_remote_code=job.config.model.trust_remote_code,
    ).to(job.device)
    try:
        return compare_folder(
            loaded.eval(),
            reference,
            job.dtype_name,
            device=job.device,
            decode=tokenizer.decode,
            head=head,
        )
    finally:
        del loaded
        gc.collect()


def _gguf_parity(job, staging: Path, reference, prompts, kind: str, tokenizer, jinja):
    """The GGUF alone (a folder holding only it, so nothing is read from the export's own
    config or tokenizer files), loaded through transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Loading %s back through transformers' GGUF loader (dequantizes: slow)", GGUF_FILE)
    with tempfile.TemporaryDirectory(prefix=".gguf-check-", dir=staging.parent) as alone:
        os.symlink(staging / GGUF_FILE, Path(alone) / GGUF_FILE)
        try:
            gguf_tokenizer = AutoTokenizer.from_pretrained(alone, gguf_file=GGUF_FILE)
            loaded = AutoModelForCausalLM.from_pretrained(
                alone, gguf_file=GGUF_FILE, dtype=torch.float32
            ).to(job.device)
        except Exception as exc:  # transformers cannot read back what we wrote: a failed check
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return failed_gguf(kind, reference, f"transformers could not load it: {reason}")
    same_ids = sum(
        gguf_tokenizer.encode(text, add_special_tokens=False) == ids for text, ids in prompts
    )
    try:
        return compare_gguf(
            loaded.eval(),
            reference,
            kind,
            device=job.device,
            decode=tokenizer.decode,
            tokenizer_ids=same_ids,
            template_ok=(gguf_tokenizer.chat_template or None) == (jinja or None),
        )
    finally:
        del loaded
        gc.collect()


def _report(job: ExportJob, weights, gguf_kind, parity: dict, passed: bool, started) -> dict:
    settings = job.run_settings
    training = {k: settings.get(k) for k in (*CARD_SETTINGS, "dataset", "eval_dataset")}
    return {
        "name": job.export_dir.name,
        "lmforge": __version__,
        "base_model": str(job.config.model.model_name_or_path),
        "base_folder": str(job.setup.resolved.path),
        "adapters": [str(a) for a in job.adapters],
        "training_run": str(job.run_folder) if job.run_folder else None,
        "training": training if settings else None,
        "template": job.setup.template.name,
        "dtype": job.dtype_name,
        "weights": weights,
        "gguf": GGUF_FILE if gguf_kind else None,
        "gguf_type": gguf_kind,
        "value_head": job.value_head.name if job.value_head else None,
        "parity": parity,
        "passed": passed,
        "seconds": round(time.monotonic() - started, 1),
    }
