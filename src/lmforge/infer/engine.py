"""The inference engine: transformers generation with streaming, base model plus adapters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from lmforge.config.resolve import resolve_for_inference
from lmforge.config.schema import Config, GenerateConfig
from lmforge.data.template import Template
from lmforge.model.load import attach_adapters, inference_dtype, load_model, split_paths
from lmforge.model.setup import prepare_model_setup

logger = logging.getLogger(__name__)


class HFEngine:
    def __init__(
        self,
        model,
        tokenizer,
        template: Template,
        generate: GenerateConfig,
        default_system: str | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.defaults = generate
        self.default_system = default_system

    @classmethod
    def from_config(cls, config: Config) -> HFEngine:
        resolve_for_inference(config)
        setup = prepare_model_setup(config)
        model = load_model(
            setup.resolved.path,
            dtype=inference_dtype(config.model.infer_dtype),
            flash_attn=config.model.flash_attn,
            trust_remote_code=config.model.trust_remote_code,
        )
        model = attach_adapters(model, split_paths(config.model.adapter_name_or_path), merge=True)
        import torch

        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(
            model, setup.tokenizer, setup.template, config.generate, config.data.default_system
        )

    def generation_kwargs(self, **overrides: Any) -> dict[str, Any]:
        settings = {
            "max_new_tokens": self.defaults.max_new_tokens,
            "do_sample": self.defaults.do_sample,
            "temperature": self.defaults.temperature,
            "top_p": self.defaults.top_p,
            "top_k": self.defaults.top_k,
            "repetition_penalty": self.defaults.repetition_penalty,
        }
        settings.update({k: v for k, v in overrides.items() if v is not None})
        if not settings["do_sample"] or settings["temperature"] == 0:
            # Greedy decoding: sampling knobs would only raise warnings.
            settings["do_sample"] = False
            for key in ("temperature", "top_p", "top_k"):
                settings.pop(key)
        settings["eos_token_id"] = self.template.stop_token_ids(self.tokenizer)
        settings["pad_token_id"] = self.tokenizer.pad_token_id
        return settings

    def _inputs(self, messages: list[dict[str, str]], system: str | None):
        import torch

        system = system if system is not None else self.default_system
        ids = self.template.encode_prompt(self.tokenizer, messages, system)
        return torch.tensor([ids], device=self.model.device)

    def stream(
        self, messages: list[dict[str, str]], system: str | None = None, **overrides: Any
    ) -> Iterator[str]:
        """Yield the answer text piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        input_ids = self._inputs(messages, system)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self.generation_kwargs(**overrides)
        errors: list[BaseException] = []

        def work():
            try:
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=input_ids.new_ones(input_ids.shape),
                    streamer=streamer,
                    **kwargs,
                )
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    def generate(
        self, messages: list[dict[str, str]], system: str | None = None, **overrides: Any
    ) -> str:
        return "".join(self.stream(messages, system, **overrides))
