"""The inference engine every consumer uses: chat CLI, API, webchat (and later eval, synth).

An engine serves one base model under its own name plus any named LoRA adapters as further
model names. `submit` queues one request and returns its stream of chunks; `chat` and `stream`
are the conveniences the terminal and browser chats use. The transformers engine generates
with the fair scheduler (infer/scheduler.py); the vLLM engine (infer/vllm_engine.py) hands the
same requests to vLLM.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.config.resolve import resolve_for_inference
from lmforge.config.schema import Config, GenerateConfig
from lmforge.errors import UserError
from lmforge.infer.answer import AnswerParser, Event
from lmforge.infer.prompt import ChatPrompt, build_chat_prompt
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.scheduler import GenerationStream, Scheduler

logger = logging.getLogger(__name__)

_PARAM_KEYS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
)


class BaseEngine:
    """What every backend shares: model names, prompts, sampling settings, chat helpers."""

    def __init__(
        self,
        tokenizer,
        template,
        generate: GenerateConfig,
        *,
        base_name: str = "model",
        adapter_names: list[str] | None = None,
        default_system: str | None = None,
        enable_thinking: bool | None = True,
        max_length: int = 1 << 30,
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.defaults = generate
        self.default_system = default_system
        self.enable_thinking = enable_thinking
        self.max_length = max_length
        self.base_name = base_name
        self.adapter_names = list(adapter_names or [])
        if base_name in self.adapter_names:
            raise UserError(
                f"adapter name `{base_name}` is also the base model's name",
                fix="rename the adapter in `adapters`, or set served_model_name",
            )

    # -- model names ----------------------------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return [self.base_name, *self.adapter_names]

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter serving `model` (None: the base). Unknown names raise LookupError."""
        if model is None or model == self.base_name:
            return None
        if model in self.adapter_names:
            return model
        raise LookupError(model)

    # -- prompts and settings -------------------------------------------------------------
    def encode_chat(
        self,
        messages: list[dict],
        *,
        system: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = "auto",
        enable_thinking: bool | None = None,
    ) -> ChatPrompt:
        has_system = any(m.get("role") == "system" for m in messages)
        if system is None and not has_system:
            system = self.default_system
        return build_chat_prompt(
            self.template,
            self.tokenizer,
            messages,
            system=system,
            tools=tools,
            tool_choice=tool_choice,
            enable_thinking=self.enable_thinking if enable_thinking is None else enable_thinking,
        )

    def answer_parser(self, prompt: ChatPrompt) -> AnswerParser:
        parser = AnswerParser(
            self.template.thinking_markers(), prompt.tools, reasoning_open=prompt.reasoning_open
        )
        if prompt.prefix:
            parser.feed(prompt.prefix)  # held inside the open marker; comes out with the rest
        return parser

    def sampling_params(self, **overrides: Any) -> SamplingParams:
        """The config's generation settings with a request's values (None = not given) on top."""
        d = self.defaults
        values: dict[str, Any] = {
            "max_tokens": d.max_new_tokens,
            "temperature": d.temperature if d.do_sample else 0.0,
            "top_p": d.top_p,
            "top_k": d.top_k,
            "repetition_penalty": d.repetition_penalty,
            "skip_special_tokens": d.skip_special_tokens,
        }
        if overrides.get("max_new_tokens") is not None:
            overrides.setdefault("max_tokens", overrides["max_new_tokens"])
        if overrides.get("do_sample") is False:
            overrides["temperature"] = 0.0
        values.update({k: overrides[k] for k in _PARAM_KEYS if overrides.get(k) is not None})
        stop = values.get("stop") or ()
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        values["stop_token_ids"] = tuple(self.template.stop_token_ids(self.tokenizer))
        return SamplingParams(**values)

    # -- generation -----------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        model: str | None = None,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> GenerationStream:
        raise NotImplementedError

    def chat(
        self,
        messages: list[dict],
        system: str | None = None,
        *,
        model: str | None = None,
        tools: list[dict] | None = None,
        enable_thinking: bool | None = None,
        **overrides: Any,
    ) -> Iterator[Event]:
        """("reasoning" | "content" | "tool_call", value) events of one answer, as generated."""
        prompt = self.encode_chat(
            messages, system=system, tools=tools, enable_thinking=enable_thinking
        )
        parser = self.answer_parser(prompt)
        stream = self.submit(prompt.ids, self.sampling_params(**overrides), model=model)
        for chunk in stream:
            yield from parser.feed(chunk.text)
        yield from parser.finish()

    def stream(
        self, messages: list[dict], system: str | None = None, **overrides: Any
    ) -> Iterator[str]:
        """The answer's text (reasoning included, as generated) piece by piece."""
        model = overrides.pop("model", None)
        prompt = self.encode_chat(messages, system=system)
        params = self.sampling_params(**overrides)
        for chunk in self.submit(prompt.ids, params, model=model):
            if chunk.text:
                yield chunk.text

    def generate(self, messages: list[dict], system: str | None = None, **overrides: Any) -> str:
        return "".join(self.stream(messages, system, **overrides))

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class HFEngine(BaseEngine):
    """transformers generation on any device, several requests at once (see scheduler.py)."""

    def __init__(
        self,
        model,
        tokenizer,
        template,
        generate: GenerateConfig,
        default_system: str | None = None,
        *,
        adapters=None,
        base_name: str = "model",
        enable_thinking: bool | None = True,
        max_concurrent: int = 8,
    ):
        from lmforge.infer.hf_runner import HFRunner

        self.runner = HFRunner(model, adapters)
        super().__init__(
            tokenizer,
            template,
            generate,
            base_name=base_name,
            adapter_names=adapters.names if adapters else [],
            default_system=default_system,
            enable_thinking=enable_thinking,
            max_length=self.runner.max_length,
        )
        self.model = self.runner.model
        self.scheduler = Scheduler(self.runner, tokenizer, max_active=max_concurrent)

    @classmethod
    def from_config(cls, config: Config) -> HFEngine:
        from lmforge.infer.adapters import check_adapter_folder, load_named_adapters
        from lmforge.model.load import (
            attach_adapters,
            is_quantized,
            load_for_inference,
            split_paths,
        )
        from lmforge.model.setup import prepare_model_setup, with_training_settings

        resolve_for_inference(config)
        if config.generate.num_beams > 1:
            raise UserError(
                f"num_beams: {config.generate.num_beams} asks for beam search, which lmforge "
                "predict runs; chat, API and webchat stream one sampled or greedy answer",
                where=config.where("num_beams"),
                fix="remove num_beams (do_sample: false decodes greedily), or use lmforge predict",
            )
        config = with_training_settings(config)  # the prompt format used in training
        for name, path in (config.infer.adapters or {}).items():
            check_adapter_folder(path, name)  # before the slow part
        setup = prepare_model_setup(config)
        model = load_for_inference(
            setup.resolved.path, config.model, config.method, setup.tokenizer, setup.rope
        )
        quantized = is_quantized(model)
        # adapter_name_or_path: merged into the base (LLaMA-Factory's meaning; kept apart on a
        # quantized base); `adapters`: kept apart and switched per request.
        adapters = split_paths(config.model.adapter_name_or_path)
        model = attach_adapters(model, adapters, merge=not quantized)
        switch = None
        if config.infer.adapters:
            model, switch = load_named_adapters(model, config.infer.adapters)
        return cls(
            model,
            setup.tokenizer,
            setup.template,  # bound to the data settings (thinking, tools) used in training
            config.generate,
            config.data.default_system,
            adapters=switch,
            base_name=base_model_name(config),
            enable_thinking=config.data.enable_thinking,
            max_concurrent=config.infer.max_concurrent,
        )

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        model: str | None = None,
        n: int = 1,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> GenerationStream:
        adapter = self.adapter_for(model)
        if len(prompt_ids) >= self.max_length:
            raise UserError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                f"{self.max_length}",
                fix="shorten the conversation (in a chat: `clear` it)",
            )
        return self.scheduler.submit(prompt_ids, params, adapter=adapter, n=n, loop=loop)

    def stats(self) -> dict[str, int]:
        return self.scheduler.stats()

    def close(self) -> None:
        self.scheduler.close()


def base_model_name(config: Config) -> str:
    """served_model_name; else the merged adapter's folder name; else the model's name."""
    if config.infer.served_model_name:
        return config.infer.served_model_name
    from lmforge.model.load import split_paths

    adapters = split_paths(config.model.adapter_name_or_path)
    if adapters:
        return Path(adapters[-1]).name
    name = config.model.model_name_or_path or "model"
    return Path(name).name if Path(name).exists() else name


def create_engine(config: Config) -> BaseEngine:
    """The engine `infer_backend` asks for."""
    if config.infer.infer_backend == "vllm":
        from lmforge.infer.vllm_engine import VLLMEngine

        return VLLMEngine.from_config(config)
    return HFEngine.from_config(config)
