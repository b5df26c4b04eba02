"""What an export says about itself: export_report.json (everything, for scripts) and README.md,
a short model card (base, adapters, data, training settings, parity)."""

from __future__ import annotations

import json
from pathlib import Path

# Training settings the model card lists, when the run set them.
CARD_SETTINGS = (
    "stage",
    "finetuning_type",
    "template",
    "lora_rank",
    "lora_alpha",
    "lora_target",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "cutoff_len",
    "lr_scheduler_type",
    "seed",
)


def write_report(folder: Path, report: dict) -> Path:
    from lmforge.export.job import REPORT_FILE

    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def parity_lines(report: dict) -> list[str]:
    """The parity results in words (model card, command output)."""
    lines = []
    folder = report.get("parity", {}).get("folder")
    if folder:
        lines.append(
            f"- merged folder: {folder['identical']}/{folder['prompts']} greedy answers "
            f"identical"
            + (
                f" and {folder['near_ties']} parting at a near tie"
                if folder.get("near_ties")
                else ""
            )
            + f", max |logit difference| {folder['max_abs_logit_diff']:.3g} (allowed "
            f"{folder['tolerance']:g}) -> {'passed' if folder['passed'] else 'FAILED'}"
        )
        if folder.get("value_head_max_diff") is not None:
            lines.append(
                f"- value head: max |score difference| {folder['value_head_max_diff']:.3g}"
            )
    gguf = report.get("parity", {}).get("gguf")
    if gguf and gguf.get("error"):
        lines.append(f"- GGUF {gguf['kind']}: {gguf['error']} -> FAILED")
    elif gguf:
        limits = gguf["thresholds"]
        lines.append(
            f"- GGUF {gguf['kind']}: mean KL {gguf['mean_kl']:.3g} per token (allowed "
            f"{limits['mean_kl']:g}), {gguf['identical']}/{gguf['prompts']} greedy answers "
            f"identical (at least {limits['identical_share']:.0%} required), tokenizer "
            f"{gguf['tokenizer_identical']}/{gguf['prompts']} prompts identical, chat template "
            f"{'identical' if gguf['chat_template_identical'] else 'DIFFERENT'} -> "
            f"{'passed' if gguf['passed'] else 'FAILED'}"
        )
    return lines


def model_card(report: dict) -> str:
    settings = report.get("training") or {}
    base = report["base_model"]
    front = ["---", f"base_model: {json.dumps(base)}", "library_name: transformers"]
    front += ["tags:", "- lmforge", "---", ""]
    lines = [f"# {report['name']}", ""]
    lines.append(
        f"Exported by lmforge {report['lmforge']} from `{base}`"
        + (
            " with the adapter(s) " + ", ".join(f"`{a}`" for a in report["adapters"]) + " merged in"
            if report["adapters"]
            else ""
        )
        + f", stored in {report['dtype']}."
    )
    lines.append("")
    datasets = settings.get("dataset")
    if datasets:
        lines += [
            f"Data: {datasets}"
            + (f" (eval: {settings['eval_dataset']})" if settings.get("eval_dataset") else ""),
            "",
        ]
    shown = [(k, settings[k]) for k in CARD_SETTINGS if settings.get(k) not in (None, "", -1)]
    if shown:
        lines += ["## Training", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in shown]
        lines.append("")
    lines += ["## Use", ""]
    lines.append(
        "Transformers: `AutoModelForCausalLM.from_pretrained(this_folder)`; the tokenizer's "
        "`apply_chat_template` writes the prompt format the model was trained with."
    )
    if report.get("gguf"):
        lines.append(f"llama.cpp: `{report['gguf']}`.")
    lines.append("Ollama: `ollama create NAME -f Modelfile` in this folder.")
    lines += ["", "## Parity", ""]
    lines.append(
        f"Checked on {report['parity']['prompts']} prompts ({report['parity']['source']}), "
        "against the model as trained (base + adapters, float32):"
    )
    lines += parity_lines(report)
    return "\n".join(front + lines) + "\n"


def write_model_card(folder: Path, report: dict) -> Path:
    path = folder / "README.md"
    path.write_text(model_card(report), encoding="utf-8")
    return path
