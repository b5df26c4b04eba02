"""The `lmforge` command: parse, call one function, print. UserError -> one paragraph, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings

from lmforge import __version__
from lmforge.errors import EXIT_USER_ERROR, UserError

OVERRIDES_HELP = "key=value or --key value overrides of the YAML (e.g. learning_rate=1e-4)"
CONFIG_HELP = (
    "The config is a YAML file, --key value flags (LLaMA-Factory's keys, e.g. --stage sft "
    "--model_name_or_path gemma-3-270m), or both: flags and key=value override the file. "
    "docs/config.md lists every key."
)


def _config_command(sub, name: str, what: str, config: str) -> argparse.ArgumentParser:
    """A command that reads a config: `lmforge NAME [CONFIG.yaml] [--key value ...]`. The
    file and the overrides are not argparse arguments: they arrive as the unparsed words and
    are split by `config.load.split_config_argument` (so `--stage sft` alone is a config)."""
    return sub.add_parser(
        name,
        help=what,
        allow_abbrev=False,  # `--pro` must stay an override, not become --prompt
        usage=f"%(prog)s [{config}] [--key value | key=value ...] [options]",
        description=f"{what[0].upper()}{what[1:]}. {CONFIG_HELP}",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Fine-tune, chat with and serve language models from one YAML file.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _config_command(sub, "train", "fine-tune a model as the config says", "TRAIN.yaml")

    chat = _config_command(
        sub, "chat", "chat with a model in the terminal (streaming)", "INFER.yaml"
    )
    chat.add_argument("--prompt", help="print one answer to this prompt and exit")
    chat.add_argument("--system", help="system prompt")

    for name, what, default in (
        ("api", "serve the model over an OpenAI-compatible HTTP API", "127.0.0.1:8000"),
        ("webchat", "chat with the model in the browser (Gradio)", "127.0.0.1:7860"),
    ):
        serve = _config_command(sub, name, what, "INFER.yaml")
        serve.add_argument("--host", help=f"address to listen on (default {default.split(':')[0]})")
        serve.add_argument("--port", type=int, help=f"port (default {default.split(':')[1]})")
        if name == "api":
            serve.add_argument(
                "--cors",
                metavar="ORIGINS",
                help="web page origins allowed to call the API, comma-separated, or * "
                "(default: none; requests with another Origin header get a 403)",
            )
            serve.add_argument(
                "--max-request-tokens",
                type=int,
                metavar="N",
                help="most tokens one request may process, prompts x n x (prompt + max_tokens) "
                "(default 65536, or the model's context if longer)",
            )

    _config_command(
        sub,
        "export",
        "merge adapters into one model folder (and a GGUF, an Ollama Modelfile), checked "
        "against what was trained",
        "EXPORT.yaml",
    )

    _config_command(
        sub,
        "eval",
        "score a model on a multiple-choice benchmark (MMLU, C-Eval, CMMLU)",
        "EVAL.yaml",
    )
    _config_command(
        sub, "predict", "generate answers for a dataset; write them with BLEU/ROUGE", "PREDICT.yaml"
    )
    _config_command(
        sub,
        "compare",
        "answer the same prompts with the base and each adapter, side by side",
        "COMPARE.yaml",
    )

    _config_command(
        sub,
        "synth",
        "write training data from documents through an OpenAI-compatible LLM (`synth augment "
        "CONFIG.yaml`: rewrite each record of a dataset into variants)",
        "[augment] SYNTH.yaml",
    )

    estimate = _config_command(
        sub,
        "estimate",
        "peak memory and time of a training run before it runs, with what to change if it "
        "does not fit",
        "TRAIN.yaml",
    )
    estimate.add_argument(
        "--gpu", metavar="NAME", help="estimate for this card (e.g. 4090, A100, H100)"
    )
    estimate.add_argument(
        "--gpus", type=int, default=1, metavar="N", help="GPUs (data parallel, ZeRO)"
    )
    estimate.add_argument(
        "--calibrate", action="store_true", help="time a few real steps here and extrapolate"
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")

    data = sub.add_parser("data", help="see how samples are tokenized and trained; check records")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = _config_command(
        data_sub,
        "inspect",
        "samples with their trained tokens marked, then statistics",
        "TRAIN.yaml",
    )
    inspect.add_argument("--num", type=int, default=3, help="samples to show (default 3)")
    inspect.add_argument("--index", type=int, help="first sample shown (0-based, training order)")
    inspect.add_argument("--json", action="store_true", help="print everything as JSON")
    _config_command(
        data_sub,
        "validate",
        "check every record; list problems as file:record:field: reason",
        "TRAIN.yaml",
    )

    webui = sub.add_parser(
        "webui", help="the board: train, inspect data, chat, evaluate and export in the browser"
    )
    webui.add_argument(
        "--host", help="address to listen on (default 127.0.0.1; another needs --auth)"
    )
    webui.add_argument("--port", type=int, help="port (default 7860)")
    webui.add_argument(
        "--auth",
        metavar="USER:PASS",
        help="require this login (or set LMFORGE_WEBUI_AUTH=user:pass); needed with --host "
        "other than 127.0.0.1 and with --share",
    )
    webui.add_argument(
        "--share", action="store_true", help="also publish a public gradio.live link (needs --auth)"
    )
    webui.add_argument(
        "--workdir",
        default="lmforge_board",
        help="the board's work folder: saved YAMLs, job logs, job state (default lmforge_board)",
    )
    webui.add_argument("--lang", choices=("en", "zh"), default="en", help="page language")

    models = sub.add_parser("models", help="the local model catalogue")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_sub.add_parser("list", help="catalogue models and which are already local")
    pull = models_sub.add_parser("pull", help="download or convert a catalogue model")
    pull.add_argument("name", help="catalogue name, e.g. gemma-3-270m")
    expand = models_sub.add_parser(
        "expand", help="LLaMA Pro: a copy of a model with more layers (train them: use_llama_pro)"
    )
    expand.add_argument("model", help="what model_name_or_path accepts: folder, name, hub id")
    expand.add_argument(
        "--num-expand", type=int, required=True, help="layers to add (divides the layer count)"
    )
    expand.add_argument("--output", required=True, help="folder for the expanded model")

    sub.add_parser("env", help="versions and device, to paste into a bug report")
    sub.add_parser("version", help="print the lmforge version")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    debug = args.debug or os.environ.get("LMFORGE_DEBUG") == "1"
    if args.command is None:
        parser.print_help()
        return 0
    if extra and args.command not in CONFIG_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if "--debug" in extra:  # `lmforge train x.yaml --debug`: meant for lmforge, not the config
        extra = [word for word in extra if word != "--debug"]
        debug = True
    _setup_logging()
    try:
        return COMMANDS[args.command](args, extra)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        if _reported_to_launcher(exc) or _printed_by_another_worker(exc):
            return EXIT_USER_ERROR  # printed once, not once per worker
        print(f"error: {exc.format()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a message is logged: a caller (a test, a notebook)
    may have replaced it since the handler was made, and the old stream may be closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _reported_to_launcher(exc: UserError) -> bool:
    """In a worker that `lmforge train` started under torchrun: hand the error to the
    launcher (train/launch.py), which prints it once instead of torch's ChildFailedError."""
    if not os.environ.get("LMFORGE_USER_ERROR_FILE"):
        return False
    from lmforge.train.launch import report_user_error

    return report_user_error(exc)


def _printed_by_another_worker(exc: UserError) -> bool:
    """Under an outside launcher (`accelerate launch`): the same error is printed once."""
    from lmforge.train.launch import printed_by_another_worker

    return printed_by_another_worker(exc)


def config_arguments(command: str, extra: list[str]) -> tuple[str | None, list[str]]:
    """The YAML file (or None) and the overrides of a config command; neither is an error."""
    from lmforge.config.load import split_config_argument

    path, overrides = split_config_argument(extra)
    if path is None and not overrides:
        kind = "train" if command.startswith(("train", "data", "estimate")) else "infer"
        kind = "export" if command == "export" else kind
        example = f"examples/quickstart/{kind}.yaml"
        flags = "--model_name_or_path gemma-3-270m --template gemma ..."
        if command.startswith("synth"):
            example = "examples/synth/synth.yaml"
            flags = "--documents DOCS/ --llm base_url=URL,model=NAME ..."
        raise UserError(
            f"`lmforge {command}` needs a config: a YAML file, --key value flags, or both",
            fix=f"for example `lmforge {command} {example}`, or `lmforge {command} {flags}` "
            "(docs/config.md lists the keys)",
        )
    return path, overrides


def _setup_logging() -> None:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("lmforge")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes' CPU backend warns when imported (peft imports it wherever it is installed)
    # that an optional kernel is missing, for a weight layout training does not use
    # (model/load.py keeps the loaded one).
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # Raised inside transformers/peft on every LoRA run; nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )


def cmd_train(args, extra: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.train import launch

    path, overrides = config_arguments("train", extra)
    config = load_config(path, overrides)  # a bad config fails once, before any launch
    if launch.should_relaunch():
        launch.preflight(config)  # user errors stop here, before any worker starts
        return launch.relaunch(["train", *([path] if path else []), *overrides])
    if not launch.is_main_process():
        logging.getLogger("lmforge").setLevel(logging.WARNING)  # one plan, not one per process
    from lmforge.train.run import run_training

    run_training(config)
    return 0


def cmd_chat(args, extra: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.infer.chat_cli import answer_once, chat_loop
    from lmforge.infer.engine import create_engine

    config = load_config(*config_arguments("chat", extra))
    engine = create_engine(config)
    try:
        if args.prompt is not None:
            answer_once(engine, args.prompt, args.system)
        else:
            chat_loop(engine, args.system)
    finally:
        engine.close()
    return 0


def cmd_api(args, extra: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.infer.api import serve

    serve(
        load_config(*config_arguments("api", extra)),
        args.host,
        args.port,
        cors=args.cors,
        max_request_tokens=args.max_request_tokens,
    )
    return 0


def cmd_webchat(args, extra: list[str]) -> int:
    from lmforge.config import load_config
    from lmforge.infer.webchat import serve

    serve(load_config(*config_arguments("webchat", extra)), args.host, args.port)
    return 0


def cmd_export(args, extra: list[str]) -> int:
    from lmforge.commands.export import export_model

    text, code = export_model(*config_arguments("export", extra))
    print(text)
    return code


def cmd_eval(args, extra: list[str]) -> int:
    from lmforge.commands.evaluate import evaluate

    print(evaluate(*config_arguments("eval", extra)))
    return 0


def cmd_predict(args, extra: list[str]) -> int:
    from lmforge.commands.predict import predict

    print(predict(*config_arguments("predict", extra)))
    return 0


def cmd_compare(args, extra: list[str]) -> int:
    from lmforge.commands.compare import compare

    print(compare(*config_arguments("compare", extra)))
    return 0


def cmd_estimate(args, extra: list[str]) -> int:
    from lmforge.commands.estimate import estimate_command

    text, code = estimate_command(
        *config_arguments("estimate", extra),
        gpu=args.gpu,
        gpus=args.gpus,
        calibrate=args.calibrate,
        as_json=args.json,
    )
    print(text)
    return code


def cmd_data(args, extra: list[str]) -> int:
    from lmforge.commands.data import data_inspect, data_validate

    path, overrides = config_arguments(f"data {args.data_command}", extra)
    if args.data_command == "validate":
        text, code = data_validate(path, overrides)
        print(text)
        return code
    print(
        data_inspect(
            path,
            overrides,
            num=args.num,
            index=args.index,
            as_json=args.json,
            color=sys.stdout.isatty(),
        )
    )
    return 0


def cmd_webui(args, extra: list[str]) -> int:
    from lmforge.webui.app import serve

    serve(args.host, args.port, args.auth, args.share, args.workdir, args.lang)
    return 0


def cmd_synth(args, extra: list[str]) -> int:
    from lmforge.commands.synth import synth

    augment = bool(extra) and extra[0] == "augment"
    words = extra[1:] if augment else extra
    path, overrides = config_arguments("synth augment" if augment else "synth", words)
    text, code = synth(path, overrides, augment=augment)
    print(text)
    return code


def cmd_models(args, extra: list[str]) -> int:
    from lmforge.commands.models import models_list, models_pull

    if args.models_command == "list":
        print(models_list())
    elif args.models_command == "expand":
        from pathlib import Path

        from lmforge.commands.models import models_expand

        print(models_expand(args.model, args.num_expand, Path(args.output)))
    else:
        print(models_pull(args.name))
    return 0


def cmd_env(args, extra: list[str]) -> int:
    from lmforge.commands.env import environment_report

    print(environment_report())
    return 0


def cmd_version(args, extra: list[str]) -> int:
    print(__version__)
    return 0


CONFIG_COMMANDS = (
    "train",
    "chat",
    "api",
    "webchat",
    "export",
    "eval",
    "predict",
    "compare",
    "data",
    "synth",
    "estimate",
)
COMMANDS = {
    "train": cmd_train,
    "chat": cmd_chat,
    "api": cmd_api,
    "webchat": cmd_webchat,
    "export": cmd_export,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "compare": cmd_compare,
    "data": cmd_data,
    "estimate": cmd_estimate,
    "synth": cmd_synth,
    "webui": cmd_webui,
    "models": cmd_models,
    "env": cmd_env,
    "version": cmd_version,
}
