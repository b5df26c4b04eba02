"""The board's page (Gradio): Train, Data, Chat, Evaluate, Export and Synth tabs.

Every form comes from the config schema (form.py); every job is `lmforge <command> saved.yaml`
in the one job slot (jobs.py), whose state lives in the work folder, so a page that is
reloaded, or a board that is restarted, shows the running job again; progress, log and losses
are read from the job's output folder (runs.py) once a second. Chat models run in a worker
process (worker.py). UI strings come from i18n_<lang>.yaml, switchable in the page.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.webui import form, runs
from lmforge.webui.checks import check_paths
from lmforge.webui.i18n import DEFAULT, LANGUAGES, t
from lmforge.webui.jobs import JobRefused, JobRunner, lmforge_argv, tail
from lmforge.webui.worker import BASE_NAME, ChatWorker, WorkerError

logger = logging.getLogger(__name__)

TRAIN_SECTIONS = ("model", "method", "data", "train", "track")
EVAL_SECTIONS = ("model", "eval", "generate", "data")
EXPORT_SECTIONS = ("model", "export")
SYNTH_SECTIONS = ("synth",)  # the synth command's own section, when the schema has one
QUICK_TIMEOUT = 600  # seconds for data inspect / validate / estimate
TICK = 1.0


def available_commands() -> set[str]:
    """The lmforge subcommands this installation has (estimate and synth arrive later)."""
    from lmforge.cli import COMMANDS

    return set(COMMANDS)


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio as gr
    except ImportError:
        from lmforge.errors import UserError

        raise UserError(
            "`lmforge webui` needs Gradio", fix="pip install 'lmforge[webui]'"
        ) from None
    return gr


def _name_ok(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", (name or "").strip()).strip("-.")
    return name or "board"


def dataset_names(dataset_dir: str, cwd: Path) -> list[str]:
    path = Path(dataset_dir or "data")
    path = path if path.is_absolute() else cwd / path
    try:
        return list(json.loads((path / "dataset_info.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return []


def dataset_preview(dataset_dir: str, names: list[str], cwd: Path, count: int = 3) -> list[dict]:
    """The first `count` records of each chosen local dataset (json or jsonl), for a glance."""
    folder = Path(dataset_dir or "data")
    folder = folder if folder.is_absolute() else cwd / folder
    try:
        info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    shown = []
    for name in names or []:
        entry = info.get(name) or {}
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not file_name or not (folder / file_name).is_file():
            continue
        text = (folder / file_name).read_text(encoding="utf-8")
        try:
            records = json.loads(text)
            records = records if isinstance(records, list) else [records]
        except ValueError:
            records = [json.loads(line) for line in text.splitlines()[:count] if line.strip()]
        shown += [{"dataset": name, "record": r} for r in records[:count]]
    return shown


def inspect_html(result: dict) -> str:
    """`data inspect --json` as HTML: each sample with its trained tokens highlighted."""
    parts = []
    for sample in result.get("samples", []):
        head = (
            f"sample {sample['index']} ({html.escape(sample['where'])}): "
            f"{sample['prompt_tokens']} prompt + {sample['target_tokens']} trained tokens"
        )
        body = "".join(
            f'<mark class="trained">{html.escape(s["text"])}</mark>'
            if s["trained"]
            else f"<span>{html.escape(s['text'])}</span>"
            for s in sample["segments"]
        )
        parts.append(
            f"<div class='sample'><b>{head}</b><pre style='white-space:pre-wrap'>{body}</pre></div>"
        )
    return (
        "<style>mark.trained{background:#b6f2b6;color:#000}</style>" + "".join(parts)
        if parts
        else "<p>(no sample)</p>"
    )


def estimate_markdown(data: dict, lang: str) -> str:
    def gib(value):
        if not isinstance(value, (int, float)):
            return str(value)
        for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= scale:
                return f"{value / scale:.2f} {unit}"
        return f"{value} B"

    fits = data.get("fits")
    verdict = t("fits", lang) if fits else t("does_not_fit", lang)
    lines = [
        f"**{t('estimate_result', lang)}**: {gib(data.get('total_bytes'))} in all, "
        f"{gib(data.get('device_bytes'))} on the device: **{verdict}**",
        "",
    ]
    terms = data.get("terms") or {}
    if isinstance(terms, dict) and terms:
        lines += ["| term | bytes |", "| --- | --- |"]
        lines += [f"| {k} | {gib(v)} |" for k, v in terms.items()]
    elif isinstance(terms, list):
        lines += ["| term | bytes |", "| --- | --- |"]
        for term in terms:
            if isinstance(term, dict):
                name = term.get("name") or term.get("term") or "?"
                lines.append(f"| {name} | {gib(term.get('bytes', term.get('value')))} |")
    return "\n".join(lines)


def run_quick(argv: list[str], cwd: Path, timeout: float = QUICK_TIMEOUT) -> tuple[int, str, str]:
    """A short lmforge command in a subprocess (no model weights in the board's process)."""
    try:
        done = subprocess.run(
            [*lmforge_argv(), *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout, done.stderr


@dataclass
class Board:
    """What the page works on: the work folder, the job slot, the chat worker."""

    workdir: Path
    cwd: Path = field(default_factory=Path.cwd)
    grace: float = 60.0
    runs_roots: tuple[str, ...] = ("saves",)

    def __post_init__(self):
        self.workdir = Path(self.workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.jobs = JobRunner(self.workdir, grace=self.grace)
        self.worker = ChatWorker(self.workdir)
        self.commands = available_commands()

    def last_train_output(self) -> str | None:
        """The output folder of the newest training job that finished."""
        for job in reversed(self.jobs.history()):
            if job.kind == "train" and job.exit_code == 0 and job.output_dir:
                return job.output_dir
        return None

    def run_settings(self, folder: str | None) -> dict:
        """The run_config.yaml of a run folder ({} if none)."""
        if not folder:
            return {}
        try:
            data = yaml.safe_load((Path(folder) / runs.RUN_CONFIG).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return {}
        return data if isinstance(data, dict) else {}

    def last_train_config(self) -> Path | None:
        """The training YAML saved last (a reloaded page shows it in the form again)."""
        found = [
            p
            for p in (self.workdir / "configs").glob("*.yaml")
            if not p.stem.endswith((".data", ".eval", ".export", ".synth"))
        ]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def save_yaml(self, name: str, settings: dict, suffix: str = "") -> Path:
        folder = self.workdir / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_name_ok(name)}{suffix}.yaml"
        path.write_text(form.settings_yaml(settings), encoding="utf-8")
        return path

    def command_line(self, command: str, path: Path) -> str:
        return f"lmforge {command} {shlex.quote(str(path))}"

    def start(self, command: str, name: str, settings: dict, lang: str, suffix="") -> str:
        """Start `lmforge <command>` on the saved settings; a message for the page."""
        if command.split()[0] not in self.commands:
            return t("not_available", lang, command=command)
        problems = check_paths(settings, self.cwd)
        if problems:
            return t("path_problems", lang) + "\n" + "\n".join(f"- {p}" for p in problems)
        path = self.save_yaml(name, settings, suffix)
        output = (
            settings.get("output_dir")
            or settings.get("export_dir")
            or settings.get("save_dir")
            or settings.get("synth_output_dir")
        )
        if output and not Path(output).is_absolute():
            output = str(self.cwd / output)
        try:
            job = self.jobs.start(command, [str(path)], output_dir=output, cwd=self.cwd)
        except JobRefused as exc:
            return t("refused_running", lang, command=str(exc))
        return f"{t('running', lang)}: `{job.command}`"


# -- the page -----------------------------------------------------------------------------------


class Texts:
    """Components whose label or value is a UI string, re-labelled on a language switch."""

    def __init__(self):
        self.items: list[tuple[Any, str, str]] = []  # (component, key, attribute)

    def add(self, component, key: str, attribute: str = "label"):
        self.items.append((component, key, attribute))
        return component

    def updates(self, gr, lang: str) -> list:
        return [gr.update(**{attr: t(key, lang)}) for _, key, attr in self.items]


def _job_panel(gr, texts: Texts, prefix: str, lang: str):
    status = gr.Markdown(t("idle", lang), elem_id=f"{prefix}-status")
    progress = gr.HTML("", elem_id=f"{prefix}-progress")
    log = texts.add(
        gr.Textbox(label=t("log_tail", lang), lines=10, max_lines=10, elem_id=f"{prefix}-log"),
        "log_tail",
    )
    return status, progress, log


def _job_controls(gr, texts: Texts, prefix: str, lang: str):
    """Start and stop, a message line, the job panel and the results of one job tab:
    (start, stop, message, status, progress, log, results)."""
    with gr.Row():
        start = texts.add(
            gr.Button(t("start", lang), variant="primary", elem_id=f"{prefix}-start"),
            "start",
            "value",
        )
        stop = texts.add(gr.Button(t("stop", lang), variant="stop"), "stop", "value")
    message = gr.Markdown("", elem_id=f"{prefix}-message")
    status, progress, log = _job_panel(gr, texts, prefix, lang)
    results = gr.Markdown("", elem_id=f"{prefix}-results")
    return start, stop, message, status, progress, log, results


def _progress_html(percent: float, line: str) -> str:
    percent = max(0.0, min(100.0, percent))
    return (
        f"<div><progress max='100' value='{percent:.0f}' style='width:100%'></progress>"
        f"<div class='progress-text'>{percent:.0f} % — {html.escape(line)}</div></div>"
    )


def build_app(board: Board, lang: str = DEFAULT):
    gr = _import_gradio()
    texts = Texts()
    catalogue = _catalogue_names()
    train_specs = form.form_fields(TRAIN_SECTIONS)
    eval_specs = form.form_fields(EVAL_SECTIONS)
    export_specs = form.form_fields(EXPORT_SECTIONS)
    synth_specs = form.form_fields(SYNTH_SECTIONS)
    if synth_specs:
        synth_specs = form.form_fields(("model", *SYNTH_SECTIONS))

    with gr.Blocks(title=t("title", lang)) as demo:
        lang_state = gr.State(lang)
        with gr.Row():
            heading = gr.Markdown(f"## {t('title', lang)}")
            language = gr.Radio(
                list(LANGUAGES), value=lang, label=t("language", lang), elem_id="language"
            )
            texts.add(language, "language")

        with gr.Tabs():
            # -- Train ----------------------------------------------------------------------
            with gr.Tab(t("tab_train", lang), id="train", elem_id="tab-train") as tab_train:
                texts.add(tab_train, "tab_train")
                name = texts.add(
                    gr.Textbox(value="train", label=t("config_name", lang), elem_id="config-name"),
                    "config_name",
                )
                pickers = {
                    "model_name_or_path": catalogue,
                    "dataset": dataset_names("data", board.cwd),
                }
                train_fields = form.build_components(gr, train_specs, pickers=pickers)
                preview_records = gr.JSON(
                    label=t("dataset_preview", lang), elem_id="dataset-preview"
                )
                texts.add(preview_records, "dataset_preview")
                with gr.Row():
                    b_preview = texts.add(
                        gr.Button(t("preview", lang), elem_id="preview"), "preview", "value"
                    )
                    b_save = texts.add(gr.Button(t("save", lang), elem_id="save"), "save", "value")
                    b_estimate = texts.add(
                        gr.Button(t("estimate", lang), elem_id="estimate"), "estimate", "value"
                    )
                    b_start = texts.add(
                        gr.Button(t("start", lang), variant="primary", elem_id="start"),
                        "start",
                        "value",
                    )
                    b_stop = texts.add(
                        gr.Button(t("stop", lang), variant="stop", elem_id="stop"), "stop", "value"
                    )
                with gr.Row():
                    load_path = texts.add(
                        gr.Textbox(label=t("load_path", lang), scale=4, elem_id="load-path"),
                        "load_path",
                    )
                    b_load = texts.add(
                        gr.Button(t("load", lang), scale=1, elem_id="load"), "load", "value"
                    )
                message = gr.Markdown("", elem_id="train-message")
                with gr.Row():
                    command = texts.add(
                        gr.Textbox(label=t("command", lang), elem_id="command", scale=1), "command"
                    )
                    yaml_view = gr.Code(label="YAML", language="yaml", elem_id="yaml")
                status, progress, log = _job_panel(gr, texts, "train", lang)
                loss_plot = gr.Plot(label=t("loss_curve", lang), elem_id="loss-plot")
                texts.add(loss_plot, "loss_curve")
                with gr.Accordion(t("runs", lang), open=True, elem_id="runs") as runs_box:
                    texts.add(runs_box, "runs")
                    runs_table = gr.Dataframe(
                        headers=["folder", "state", "steps", "final loss"],
                        interactive=False,
                        elem_id="runs-table",
                    )
                    with gr.Row():
                        run_pick = gr.Dropdown([], label="run", allow_custom_value=True, scale=4)
                        b_refresh = texts.add(
                            gr.Button(t("refresh", lang), scale=1, elem_id="runs-refresh"),
                            "refresh",
                            "value",
                        )
                        b_report = texts.add(
                            gr.Button(t("open_report", lang), scale=1, elem_id="open-report"),
                            "open_report",
                            "value",
                        )
                    report = gr.Markdown("", elem_id="report")

            # -- Data -----------------------------------------------------------------------
            with gr.Tab(t("tab_data", lang), id="data", elem_id="tab-data") as tab_data:
                texts.add(tab_data, "tab_data")
                texts.add(gr.Markdown(t("trained_legend", lang)), "trained_legend", "value")
                with gr.Row():
                    d_index = texts.add(
                        gr.Number(0, precision=0, label=t("sample_index", lang)), "sample_index"
                    )
                    d_num = texts.add(
                        gr.Number(3, precision=0, label=t("sample_num", lang)), "sample_num"
                    )
                    b_inspect = texts.add(
                        gr.Button(t("inspect", lang), elem_id="inspect"), "inspect", "value"
                    )
                    b_validate = texts.add(
                        gr.Button(t("validate", lang), elem_id="validate"), "validate", "value"
                    )
                samples_html = gr.HTML("", elem_id="samples")
                stats = texts.add(
                    gr.JSON(label=t("statistics", lang), elem_id="stats"), "statistics"
                )
                problems = texts.add(
                    gr.Textbox(label=t("problems", lang), lines=6, elem_id="problems"), "problems"
                )

            # -- Chat -----------------------------------------------------------------------
            with gr.Tab(t("tab_chat", lang), id="chat", elem_id="tab-chat") as tab_chat:
                texts.add(tab_chat, "tab_chat")
                with gr.Row():
                    c_model = texts.add(
                        gr.Dropdown(
                            catalogue,
                            value=None,
                            allow_custom_value=True,
                            label=t("chat_model", lang),
                            elem_id="chat-model",
                            scale=3,
                        ),
                        "chat_model",
                    )
                    c_adapters = texts.add(
                        gr.Textbox(
                            label=t("chat_adapters", lang), elem_id="chat-adapters", scale=3
                        ),
                        "chat_adapters",
                    )
                    c_template = texts.add(
                        gr.Textbox(
                            label=t("chat_template", lang), elem_id="chat-template", scale=1
                        ),
                        "chat_template",
                    )
                with gr.Row():
                    b_chat_load = texts.add(
                        gr.Button(t("chat_load", lang), variant="primary", elem_id="chat-load"),
                        "chat_load",
                        "value",
                    )
                    b_chat_from_run = texts.add(
                        gr.Button(t("from_run", lang), elem_id="chat-from-run"), "from_run", "value"
                    )
                    b_chat_unload = texts.add(
                        gr.Button(t("chat_unload", lang)), "chat_unload", "value"
                    )
                chat_status = gr.Markdown("", elem_id="chat-status")
                with gr.Row():
                    c_pick = texts.add(
                        gr.Dropdown([], label=t("chat_model_pick", lang), elem_id="chat-pick"),
                        "chat_model_pick",
                    )
                    c_side = texts.add(
                        gr.Checkbox(
                            False, label=t("chat_side_by_side", lang), elem_id="side-by-side"
                        ),
                        "chat_side_by_side",
                    )
                with gr.Accordion("Settings", open=False):
                    c_system = texts.add(
                        gr.Textbox(label=t("chat_system", lang), lines=2), "chat_system"
                    )
                    with gr.Row():
                        c_max = texts.add(
                            gr.Slider(1, 2048, 128, step=1, label=t("max_new_tokens", lang)),
                            "max_new_tokens",
                        )
                        c_temp = texts.add(
                            gr.Slider(0, 2, 0, step=0.01, label=t("temperature", lang)),
                            "temperature",
                        )
                        c_top_p = texts.add(
                            gr.Slider(0.01, 1, 1, step=0.01, label=t("top_p", lang)), "top_p"
                        )
                with gr.Row():
                    chat_a = gr.Chatbot(label="", height=360, elem_id="chat-a")
                    chat_b = gr.Chatbot(
                        label=BASE_NAME, height=360, elem_id="chat-b", visible=False
                    )
                with gr.Row():
                    c_box = texts.add(
                        gr.Textbox(label=t("chat_message", lang), scale=6, elem_id="chat-message"),
                        "chat_message",
                    )
                    b_send = texts.add(
                        gr.Button(
                            t("chat_send", lang), variant="primary", scale=1, elem_id="chat-send"
                        ),
                        "chat_send",
                        "value",
                    )
                    b_clear = texts.add(
                        gr.Button(t("chat_clear", lang), scale=1), "chat_clear", "value"
                    )
                history_a, history_b = gr.State([]), gr.State([])

            # -- Evaluate -------------------------------------------------------------------
            with gr.Tab(t("tab_eval", lang), id="eval", elem_id="tab-eval") as tab_eval:
                texts.add(tab_eval, "tab_eval")
                e_command = texts.add(
                    gr.Radio(
                        ["eval", "predict", "compare"], value="eval", label=t("eval_command", lang)
                    ),
                    "eval_command",
                )
                eval_fields = form.build_components(
                    gr,
                    eval_specs,
                    pickers={"model_name_or_path": catalogue},
                    prefix="eval-field",
                    open_sections=("model", "eval"),
                )
                (
                    b_eval,
                    b_eval_stop,
                    eval_message,
                    e_status,
                    e_progress,
                    e_log,
                    e_results,
                ) = _job_controls(gr, texts, "eval", lang)

            # -- Export ---------------------------------------------------------------------
            with gr.Tab(t("tab_export", lang), id="export", elem_id="tab-export") as tab_export:
                texts.add(tab_export, "tab_export")
                b_export_from_run = texts.add(
                    gr.Button(t("from_run", lang), elem_id="export-from-run"), "from_run", "value"
                )
                export_fields = form.build_components(
                    gr,
                    export_specs,
                    pickers={"model_name_or_path": catalogue},
                    prefix="export-field",
                    open_sections=EXPORT_SECTIONS,
                )
                (
                    b_export,
                    b_export_stop,
                    export_message,
                    x_status,
                    x_progress,
                    x_log,
                    x_results,
                ) = _job_controls(gr, texts, "export", lang)

            # -- Synth ----------------------------------------------------------------------
            with gr.Tab(t("tab_synth", lang), id="synth", elem_id="tab-synth") as tab_synth:
                texts.add(tab_synth, "tab_synth")
                gr.Markdown(
                    ""
                    if "synth" in board.commands and synth_specs
                    else t("not_available", lang, command="synth"),
                    elem_id="synth-note",
                )
                synth_fields = (
                    form.build_components(
                        gr,
                        synth_specs,
                        pickers={"model_name_or_path": catalogue},
                        prefix="synth-field",
                        open_sections=("model", "synth"),
                    )
                    if synth_specs
                    else {}
                )
                (
                    b_synth,
                    b_synth_stop,
                    synth_message,
                    s_status,
                    s_progress,
                    s_log,
                    s_results,
                ) = _job_controls(gr, texts, "synth", lang)

        timer = gr.Timer(TICK)

        # -- handlers ---------------------------------------------------------------------------
        train_inputs = list(train_fields.values())

        def train_settings(values) -> dict:
            return form.to_settings(train_specs, list(values))

        def on_preview(name_value, *values):
            settings = train_settings(values)
            path = board.workdir / "configs" / f"{_name_ok(name_value)}.yaml"
            return board.command_line("train", path), form.settings_yaml(settings)

        b_preview.click(on_preview, [name, *train_inputs], [command, yaml_view])

        def on_save(lang_value, name_value, *values):
            path = board.save_yaml(name_value, train_settings(values))
            return (
                t("saved_to", lang_value, path=path),
                board.command_line("train", path),
                path.read_text(),
            )

        b_save.click(on_save, [lang_state, name, *train_inputs], [message, command, yaml_view])

        def on_load(lang_value, path_value):
            path = Path(path_value or "")
            path = path if path.is_absolute() else board.cwd / path
            try:
                settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                return [f"{path}: {exc}", *[gr.skip()] * len(train_inputs)]
            values, unknown = form.from_settings(train_specs, settings)
            note = t("loaded_from", lang_value, path=path)
            if unknown:
                note += f" (not in this form, kept out: {', '.join(unknown)})"
            return [note, *values]

        b_load.click(on_load, [lang_state, load_path], [message, *train_inputs])

        def on_page_load():
            path = board.last_train_config()
            if path is None:
                return [gr.skip()] * (len(train_inputs) + 1)
            try:
                settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                return [gr.skip()] * (len(train_inputs) + 1)
            values, _ = form.from_settings(train_specs, settings)
            return [path.stem, *values]

        demo.load(on_page_load, None, [name, *train_inputs])

        def on_estimate(lang_value, name_value, *values):
            if "estimate" not in available_commands():
                return t("not_available", lang_value, command="estimate")
            path = board.save_yaml(name_value, train_settings(values))
            code, out, err = run_quick(["estimate", str(path), "--json"], board.cwd)
            if code != 0:
                if "invalid choice" in err:
                    return t("not_available", lang_value, command="estimate")
                return f"```\n{(err or out).strip()[-3000:]}\n```"
            try:
                return estimate_markdown(json.loads(out), lang_value)
            except ValueError:
                return f"```\n{out.strip()[-3000:]}\n```"

        b_estimate.click(on_estimate, [lang_state, name, *train_inputs], [message])

        def on_start(lang_value, name_value, *values):
            settings = train_settings(values)
            return board.start("train", name_value, settings, lang_value)

        b_start.click(on_start, [lang_state, name, *train_inputs], [message])

        def on_stop(lang_value):
            job = board.jobs.stop()
            return t("stopping", lang_value) if job else t("idle", lang_value)

        for button in (b_stop, b_eval_stop, b_export_stop, b_synth_stop):
            button.click(on_stop, [lang_state], [message])

        # stage and method switch the visible fields
        def on_switch(stage, method):
            return [
                gr.update(visible=spec.visible(stage or "sft", method or "lora"))
                for spec in train_specs
            ]

        switchers = [train_fields["stage"], train_fields["finetuning_type"]]
        for component in switchers:
            component.change(on_switch, switchers, train_inputs)
        demo.load(on_switch, switchers, train_inputs)

        def on_dataset_dir(folder, chosen):
            names = dataset_names(folder, board.cwd)
            return gr.update(choices=names, value=[c for c in (chosen or []) if c in names] or None)

        train_fields["dataset_dir"].change(
            on_dataset_dir,
            [train_fields["dataset_dir"], train_fields["dataset"]],
            [train_fields["dataset"]],
        )

        def on_dataset(folder, chosen):
            return dataset_preview(folder, chosen or [], board.cwd)

        train_fields["dataset"].change(
            on_dataset, [train_fields["dataset_dir"], train_fields["dataset"]], [preview_records]
        )

        def on_runs():
            found = runs.find_runs(
                [board.cwd / r for r in board.runs_roots],
                [j.output_dir for j in board.jobs.history() if j.kind == "train" and j.output_dir],
            )
            folders = [str(r.folder) for r in found]
            finished = [str(r.folder) for r in found if r.state == "finished"]
            chosen = (finished or folders or [None])[0]
            return [r.row() for r in found], gr.update(choices=folders, value=chosen)

        b_refresh.click(on_runs, None, [runs_table, run_pick])
        demo.load(on_runs, None, [runs_table, run_pick])
        b_report.click(
            lambda folder: runs.read_report(folder) if folder else "", [run_pick], [report]
        )

        # the job panels, once a second (and at once on load: a reloaded page re-attaches)
        panels = {
            "train": (status, progress, log, loss_plot),
            "eval": (e_status, e_progress, e_log, e_results),
            "export": (x_status, x_progress, x_log, x_results),
            "synth": (s_status, s_progress, s_log, s_results),
        }
        panel_outputs = [c for group in panels.values() for c in group]

        def on_tick(lang_value, last):
            job = board.jobs.current()
            out: list[Any] = []
            key = (
                None if job is None else (job.id, job.exit_code, _log_size(job), _log_size_out(job))
            )
            if key == last:  # nothing new since this page's last tick
                return [gr.skip()] * (len(panel_outputs) + 2) + [last]
            for tab in panels:
                mine = job is not None and _tab_of(job.kind) == tab
                if not mine:
                    idle = t("idle", lang_value)
                    out += [idle, gr.skip(), gr.skip(), gr.skip()]
                    continue
                out += _panel_values(gr, board, job, lang_value, tab)
            ended = job is not None and job.exit_code is not None and job.kind == "train"
            if ended and (last is None or last[:2] != key[:2]):  # a run ended: list it
                out += list(on_runs())
            else:
                out += [gr.skip(), gr.skip()]
            return [*out, key]

        tick_state = gr.State(None)
        tick_outputs = [*panel_outputs, runs_table, run_pick, tick_state]
        timer.tick(on_tick, [lang_state, tick_state], tick_outputs)
        demo.load(on_tick, [lang_state, tick_state], tick_outputs)

        # -- Data tab -------------------------------------------------------------------------
        def data_yaml(name_value, values) -> Path:
            return board.save_yaml(name_value, train_settings(values), ".data")

        def on_inspect(name_value, index, num, *values):
            path = data_yaml(name_value, values)
            argv = ["data", "inspect", str(path), "--json", "--num", str(int(num or 3))]
            argv += ["--index", str(int(index or 0))]
            code, out, err = run_quick(argv, board.cwd)
            if code != 0:
                return f"<pre>{html.escape((err or out).strip()[-4000:])}</pre>", None
            result = json.loads(out)
            return inspect_html(result), result.get("stats")

        b_inspect.click(on_inspect, [name, d_index, d_num, *train_inputs], [samples_html, stats])

        def on_validate(lang_value, name_value, *values):
            path = data_yaml(name_value, values)
            code, out, err = run_quick(["data", "validate", str(path)], board.cwd)
            text = (out + ("\n" + err if err.strip() else "")).strip()
            return text or t("no_problems", lang_value)

        b_validate.click(on_validate, [lang_state, name, *train_inputs], [problems])

        # -- Chat tab -------------------------------------------------------------------------
        def on_chat_load(lang_value, model, adapters, template):
            if not model:
                return t("chat_not_loaded", lang_value), gr.update()
            folders = [a.strip() for a in (adapters or "").split(",") if a.strip()]
            problems_found = check_paths(
                {"model_name_or_path": model, "adapter_name_or_path": ",".join(folders)}, board.cwd
            )
            if problems_found:
                return "\n".join(f"- {p}" for p in problems_found), gr.update()
            try:
                names = board.worker.load(model, folders, template or None, cwd=board.cwd)
            except WorkerError as exc:
                return t("chat_worker_failed", lang_value, reason=f"\n```\n{exc}\n```"), gr.update()
            pick = names[-1]
            return t("chat_loaded", lang_value, models=", ".join(names)), gr.update(
                choices=names, value=pick
            )

        b_chat_load.click(
            on_chat_load, [lang_state, c_model, c_adapters, c_template], [chat_status, c_pick]
        )
        b_chat_unload.click(
            lambda: (board.worker.unload(), "", gr.update(choices=[], value=None))[1:],
            None,
            [chat_status, c_pick],
        )
        c_side.change(lambda on: gr.update(visible=on), [c_side], [chat_b])

        def on_send(
            lang_value, message_text, picked, side, system, max_tokens, temperature, top_p, ha, hb
        ):
            if not message_text or not message_text.strip():
                yield ha, hb, ha, hb, message_text, gr.skip()
                return
            if not board.worker.alive():
                raise gr.Error(t("chat_not_loaded", lang_value))
            sampling = {
                "max_tokens": int(max_tokens),
                "temperature": float(temperature),
                "top_p": float(top_p),
            }
            user = {"role": "user", "content": message_text}
            targets = [(picked or BASE_NAME, list(ha))]
            if side:
                targets.append((BASE_NAME, list(hb)))
            shown = [h + [user, {"role": "assistant", "content": ""}] for _, h in targets]

            def current():
                a = shown[0]
                b = shown[1] if side else hb
                return a, b

            yield *current(), ha, hb, "", t("chat_answering", lang_value)
            try:
                for i, (model_name, history) in enumerate(targets):
                    text = ""
                    for kind, piece in board.worker.stream(
                        model_name, history + [user], system or None, **sampling
                    ):
                        if kind == "content":
                            text += piece
                            shown[i][-1] = {"role": "assistant", "content": text}
                            yield (
                                *current(),
                                ha,
                                hb,
                                gr.skip(),
                                gr.skip(),
                            )  # the box may hold the next message
            except WorkerError as exc:
                yield ha, hb, ha, hb, message_text, f"{t('failed', lang_value)}: {exc}"
                return
            new_a = shown[0]
            new_b = shown[1] if side else hb
            yield new_a, new_b, new_a, new_b, gr.skip(), t("chat_answered", lang_value)

        send_inputs = [
            lang_state,
            c_box,
            c_pick,
            c_side,
            c_system,
            c_max,
            c_temp,
            c_top_p,
            history_a,
            history_b,
        ]
        send_outputs = [chat_a, chat_b, history_a, history_b, c_box, chat_status]
        b_send.click(on_send, send_inputs, send_outputs)
        c_box.submit(on_send, send_inputs, send_outputs)
        b_clear.click(lambda: ([], [], [], []), None, [chat_a, chat_b, history_a, history_b])
        c_pick.change(lambda p: gr.update(label=p or ""), [c_pick], [chat_a])

        # -- Evaluate / Export / Synth -------------------------------------------------------
        def starter(command_of, specs, always, suffix, message_out):
            def start(lang_value, name_value, *args):
                command_value, values = command_of(args)
                settings = form.to_settings(specs, list(values), always)
                return board.start(command_value, name_value, settings, lang_value, suffix)

            return start

        b_eval.click(
            starter(
                lambda a: (a[0], a[1:]),
                eval_specs,
                ("model_name_or_path", "task"),
                ".eval",
                eval_message,
            ),
            [lang_state, name, e_command, *eval_fields.values()],
            [eval_message],
        )
        b_export.click(
            starter(
                lambda a: ("export", a),
                export_specs,
                ("model_name_or_path", "adapter_name_or_path", "export_dir"),
                ".export",
                export_message,
            ),
            [lang_state, name, *export_fields.values()],
            [export_message],
        )
        b_synth.click(
            starter(
                lambda a: ("synth", a),
                synth_specs,
                ("model_name_or_path",),
                ".synth",
                synth_message,
            ),
            [lang_state, name, *synth_fields.values()],
            [synth_message],
        )

        # -- "use the selected finished run" in Chat and Export ------------------------------
        def chosen_run(folder):
            return folder or board.last_train_output()

        def on_chat_from_run(folder):
            folder = chosen_run(folder)
            config = board.run_settings(folder)
            if not config:
                return gr.skip(), gr.skip(), gr.skip()
            return config.get("model_name_or_path"), folder, config.get("template") or ""

        b_chat_from_run.click(on_chat_from_run, [run_pick], [c_model, c_adapters, c_template])

        export_keys = ("model_name_or_path", "adapter_name_or_path", "template", "export_dir")

        def on_export_from_run(folder):
            folder = chosen_run(folder)
            config = board.run_settings(folder)
            if not config:
                return [gr.skip()] * len(export_keys)
            target = str(Path("exports") / Path(folder).name)
            found = {
                "model_name_or_path": config.get("model_name_or_path"),
                "adapter_name_or_path": folder,
                "template": config.get("template"),
                "export_dir": target,
            }
            return [found[k] or "" for k in export_keys]

        b_export_from_run.click(
            on_export_from_run, [run_pick], [export_fields[k] for k in export_keys]
        )

        # -- language -------------------------------------------------------------------------
        def on_language(lang_value):
            return [
                lang_value,
                gr.update(value=f"## {t('title', lang_value)}"),
                *texts.updates(gr, lang_value),
            ]

        language.change(
            on_language, [language], [lang_state, heading, *[c for c, _, _ in texts.items]]
        )

    demo.board = board
    return demo


def _catalogue_names() -> list[str]:
    try:
        from lmforge.model.catalogue import catalogue_names

        return catalogue_names()
    except Exception:  # a broken catalogue must not keep the board from starting
        return []


def _tab_of(kind: str) -> str:
    first = kind.split()[0]
    return {"predict": "eval", "compare": "eval"}.get(first, first)


def _log_size(job) -> int:
    try:
        return job.log_path.stat().st_size
    except OSError:
        return 0


def _log_size_out(job) -> int:
    if not job.output_dir:
        return 0
    try:
        return (Path(job.output_dir) / runs.LOG_NAME).stat().st_size
    except OSError:
        return 0


def _status_text(job, lang: str) -> str:
    state = job.status()
    text = t(state, lang) if state != "stopped" else t("stopped", lang)
    code = "" if job.exit_code is None else f" (exit {job.exit_code})"
    output = f" → {job.output_dir}" if job.output_dir else ""
    return f"**{t('status', lang)}:** {text}{code} — `{job.command}`{output}"


def _panel_values(gr, board: Board, job, lang: str, tab: str) -> list:
    status = _status_text(job, lang)
    log = tail(job.log_path, 30)
    if tab == "train":
        progress = runs.read_progress(job.output_dir)
        percent = progress.percentage
        if job.exit_code == 0:
            percent = 100.0
        return [status, _progress_html(percent, progress.line()), log, runs.loss_figure(progress)]
    percent = 100.0 if job.exit_code == 0 else (0.0 if job.exit_code is None else 0.0)
    line = t(job.status(), lang)
    results = _results_markdown(job) if job.exit_code is not None else ""
    return [status, _progress_html(percent, line), log, results]


def _results_markdown(job) -> str:
    """What a finished eval/predict/compare/export/synth job produced."""
    from lmforge.webui.results import job_results

    shown = job_results(job.kind, job.output_dir, tail(job.log_path, 40))
    if shown:
        return shown
    out = job.output_dir
    parts = []
    if out:
        for name in (
            "eval_results.json",
            "predict_results.json",
            "export_report.json",
            "synth_report.json",
            "report.json",
        ):
            data = runs.read_json(Path(out) / name)
            if data is not None:
                parts.append(
                    f"**{name}**\n\n```json\n{json.dumps(data, indent=1, ensure_ascii=False)[:6000]}\n```"
                )
    text = tail(job.log_path, 40)
    written = re.findall(r"^written: (.+)$", text, flags=re.M)
    for line in written:
        for item in line.split(", "):
            if item.endswith(".md") and Path(item).is_file():
                parts.append(Path(item).read_text(encoding="utf-8")[:20000])
    if not parts:
        parts.append(f"```\n{text}\n```")
    return "\n\n".join(parts)


def serve(
    host=None, port=None, auth=None, share=False, workdir="lmforge_board", lang=DEFAULT, block=True
):
    """`lmforge webui`: check the address rules, build the page, listen."""
    from lmforge.webui.serve import listen_settings

    listen = listen_settings(host, port, auth, share)
    from lmforge.infer.api import check_port_free

    check_port_free(listen.host, listen.port)
    board = Board(Path(workdir))
    demo = build_app(board, lang)
    demo.queue(default_concurrency_limit=8)
    print(
        f"lmforge board on http://{listen.host}:{listen.port} (work folder {board.workdir})",
        file=sys.stderr,
    )
    try:
        demo.launch(
            server_name=listen.host,
            server_port=listen.port,
            auth=listen.auth,
            share=listen.share,
            inbrowser=False,
            prevent_thread_lock=not block,
            quiet=not block,
        )
    finally:
        if block:
            board.worker.unload()
    return demo
