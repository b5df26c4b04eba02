"""report.md: what one `lmforge train` run did, written into output_dir when it ends.

The plan lines, final and best losses (train and eval), the loss plot (training_loss.png, by a
relative link), the over-fitting verdict (monitor.py's rule), the best checkpoint, and up to
COMPARE_PROMPTS held-out prompts answered by the base and by the trained model (greedy, short),
with evaluate/compare.py's prompt reading and evaluate/predict.py's generation. For LoRA the base
is the same model with its adapters disabled (peft's `disable_adapter()`), so no second copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lmforge.config.schema import trains_adapter
from lmforge.errors import UserError
from lmforge.train.monitor import best_checkpoint, eval_history, overfitting

logger = logging.getLogger(__name__)

REPORT = "report.md"
COMPARE_PROMPTS = 5
COMPARE_TOKENS = 64
CELL_CHARS = 300


def loss_summary(log_history: list[dict]) -> dict:
    """final/best train and eval losses, each (value, step) or None."""
    train = [(h["loss"], h.get("step", 0)) for h in log_history if "loss" in h]
    evals = [(h["eval_loss"], h.get("step", 0)) for h in log_history if "eval_loss" in h]
    return {
        "train_final": train[-1] if train else None,
        "train_best": min(train) if train else None,
        "eval_final": evals[-1] if evals else None,
        "eval_best": min(evals) if evals else None,
    }


def overfit_verdict(log_history: list[dict], args, state) -> tuple[str, str]:
    """(one sentence on over-fitting, the best checkpoint line)."""
    history = eval_history(log_history)
    if not history:
        return (
            "No held-out data was evaluated, so over-fitting cannot be judged (set val_size or "
            "eval_dataset).",
            "none tracked (no evaluation)",
        )
    best_step, best_loss, _ = min(history, key=lambda h: h[1])
    where = best_checkpoint(args, state, best_step)
    if len(history) < 3:
        return (
            f"Too few evaluations ({len(history)}) to judge over-fitting; eval loss ended at "
            f"{history[-1][1]:.4f} (set eval_steps to evaluate during training).",
            where,
        )
    if overfitting(history):
        return (
            f"Over-fitting: eval loss rose over the last evaluations while train loss fell; the "
            f"best eval loss was {best_loss:.4f} at step {best_step}.",
            where,
        )
    return (
        f"No sign of over-fitting: the best eval loss was {best_loss:.4f} at step {best_step}, "
        f"and it ended at {history[-1][1]:.4f}.",
        where,
    )


def compare_rows(config, setup, model, *, generate=None) -> tuple[list[dict], str | None]:
    """(rows of prompt, reference, base and trained answers; or [] and why there are none).

    The prompts are answered in one batch (evaluate/predict.py's generate_answers: left padding
    and an attention mask), greedily, each answer ending at the template's stop ids or after
    COMPARE_TOKENS tokens; first by the trained model, then by the same model inside peft's
    disable_adapter() (the base), so no second copy is loaded."""
    from lmforge.evaluate.compare import read_entries
    from lmforge.evaluate.predict import encode_samples, generate_answers, generation_settings
    from lmforge.train.launch import is_launched

    if config.method.stage != "sft":
        return (
            [],
            f"the before/after table is written for stage sft (this run: {config.method.stage})",
        )
    if is_launched():
        return (
            [],
            "the before/after table is not written for distributed runs (use lmforge compare)",
        )
    disable = getattr(model, "disable_adapter", None)
    if not trains_adapter(config.method) or disable is None:
        return [], (
            f"finetuning_type {config.method.finetuning_type} keeps no base weights in memory; "
            "`lmforge compare` answers with base and trained model"
        )
    try:
        entries, _, _ = read_entries(config)
    except UserError:
        entries = []
    entries = [e for e in entries if e.source == "eval"][:COMPARE_PROMPTS]
    if not entries:
        return [], "there are no held-out prompts (val_size: 0, or too few records for auto)"
    tokenizer, template = setup.tokenizer, setup.template
    items, _ = encode_samples(
        [e.sample for e in entries], tokenizer, template, config.data.cutoff_len
    )
    settings = generation_settings(config, tokenizer, template)  # stops: template's stop ids
    settings.update(
        do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=COMPARE_TOKENS
    )
    generate = generate or generate_answers
    batch = len(items)  # all prompts in one left-padded batch
    was_training = model.training
    model.eval()
    try:
        trained = list(generate(model, tokenizer, items, batch, settings))
        with disable():  # the base: the same weights with the adapters switched off
            base = list(generate(model, tokenizer, items, batch, settings))
    finally:
        model.train(was_training)
    rows = [
        {"prompt": e.prompt, "reference": e.reference, "base": b, "trained": t}
        for e, b, t in zip(entries, base, trained)
    ]
    return rows, None


def _cell(text: str | None) -> str:
    from lmforge.evaluate.compare import _cell as cell

    if text is None:
        return "-"
    text = text.strip()
    if len(text) > CELL_CHARS:
        text = text[:CELL_CHARS] + "..."
    return cell(text) or " "


def _loss(value: tuple[float, int] | None, with_step: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value[0]:.4f}" + (f" (step {value[1]})" if with_step else "")


def format_report(
    *,
    plan_lines: list[str],
    log_history: list[dict],
    train_loss: float,
    eval_metrics: dict | None,
    verdict: str,
    best: str,
    plot: str | None,
    compare: tuple[list[dict], str | None] | None,
) -> str:
    losses = loss_summary(log_history)
    final_eval = (eval_metrics or {}).get("eval_loss")
    lines = [
        "# Training report",
        "",
        "## Plan",
        "",
        "```",
        *plan_lines,
        "```",
        "",
        "## Losses",
        "",
        "| | final | best |",
        "| --- | --- | --- |",
        f"| train loss (logged) | {_loss(losses['train_final'])} | "
        f"{_loss(losses['train_best'], True)} |",
        f"| eval loss | {f'{final_eval:.4f}' if final_eval is not None else _loss(losses['eval_final'])} | "
        f"{_loss(losses['eval_best'], True)} |",
        "",
        f"Whole-run average train loss: {train_loss:.4f}.",
        "",
        "## Loss plot",
        "",
        f"![training loss]({plot})" if plot else "No plot (set `plot_loss: true` to draw one).",
        "",
        "## Over-fitting",
        "",
        verdict,
        "",
        "## Best checkpoint",
        "",
        best,
        "",
    ]
    if compare is not None:
        rows, why = compare
        lines += ["## Before and after", ""]
        if rows:
            lines += [
                f"Up to {COMPARE_PROMPTS} held-out prompts, greedy, at most {COMPARE_TOKENS} new "
                "tokens; base: the model with its adapters disabled.",
                "",
                "| # | prompt | reference | base | trained |",
                "| --- | --- | --- | --- | --- |",
            ]
            for i, row in enumerate(rows, start=1):
                lines.append(
                    f"| {i} | {_cell(row['prompt'])} | {_cell(row['reference'])} | "
                    f"{_cell(row['base'])} | {_cell(row['trained'])} |"
                )
        else:
            lines.append(f"No table: {why}.")
        lines.append("")
    return "\n".join(lines)


def write_report(
    config,
    trainer,
    setup,
    model,
    *,
    plan_lines: list[str],
    train_loss: float,
    eval_metrics: dict | None,
    generate=None,
) -> Path:
    """report.md in output_dir, written atomically (call on the main process only)."""
    from lmforge.evaluate.predict import write_text_atomic

    output_dir = Path(config.train.output_dir)
    verdict, best = overfit_verdict(trainer.state.log_history, trainer.args, trainer.state)
    compare = None
    if config.train.report_compare:
        started = time.perf_counter()
        try:
            compare = compare_rows(config, setup, model, generate=generate)
            if compare[0]:
                logger.info(
                    "report.md: %d prompts answered by base and trained model in %.1f s",
                    len(compare[0]),
                    time.perf_counter() - started,
                )
        except Exception as exc:  # the run is trained and saved: the report says what failed
            logger.warning("report.md: the before/after answers failed: %s", exc)
            compare = ([], f"answering failed ({' '.join(str(exc).split())[:200]})")
    plot = "training_loss.png" if (output_dir / "training_loss.png").is_file() else None
    text = format_report(
        plan_lines=plan_lines,
        log_history=trainer.state.log_history,
        train_loss=train_loss,
        eval_metrics=eval_metrics,
        verdict=verdict,
        best=best,
        plot=plot,
        compare=compare,
    )
    path = write_text_atomic(output_dir / REPORT, text)
    logger.info("Report: %s", path)
    return path
