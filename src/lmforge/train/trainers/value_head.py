"""A value head on a causal LM, as one module: the reward model of stage rm and PPO's critic.

The head lives inside the module that the Trainer trains, so DDP/DeepSpeed wrap head and body
together: the head's gradients are averaged across processes like the adapter's, its
parameters are in the optimizer with the rest, and checkpoints restore it. Saving writes the
body as before (the adapter, or the whole model) plus the head as one safetensors file beside
it: VALUE_HEAD_FILE for a reward model (what `reward_model:` loads), CRITIC_FILE for PPO's
critic (that folder is a policy, not a reward model).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from lmforge.compat import is_activation_checkpointing as checkpointing_on

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_FILE = "critic_head.safetensors"


class ValueHead(nn.Module):
    """hidden state -> one scalar."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden).squeeze(-1)


def save_value_head(head: nn.Module, folder, file_name: str = VALUE_HEAD_FILE) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, os.path.join(folder, file_name))


def load_value_head(head: nn.Module, folder, file_name: str = VALUE_HEAD_FILE) -> nn.Module:
    from safetensors.torch import load_file

    head.load_state_dict(load_file(os.path.join(folder, file_name)))
    return head


@dataclass
class ValueHeadOutput(ModelOutput):
    """The body's loss and logits, and the value head's outputs (generation goes through
    the body itself, so no cache)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    head_values: torch.Tensor | None = None


class ModelWithValueHead(nn.Module):
    """A causal LM (a PeftModel with LoRA) and a value head on its last hidden states. Sampling
    and the reference pass (adapters disabled) use the LM itself: body_of(model).

    forward takes the body's arguments and returns a ValueHeadOutput: the body's logits (and
    loss) and `head_values`, the head on the last hidden states at `values_at` (None:
    every position [N, L]; an int k: the last k positions [N, k], like logits_to_keep; a
    LongTensor [N]: one position per row [N]).
    """

    def __init__(self, model: nn.Module, head: ValueHead, head_file: str = VALUE_HEAD_FILE):
        super().__init__()
        self.pretrained_model = model
        self.value_head = head
        self.head_file = head_file

    @property
    def config(self):
        return self.pretrained_model.config

    def forward(self, *args, values_at: int | torch.Tensor | None = None, **kwargs):
        kwargs["output_hidden_states"] = True
        out = self.pretrained_model(*args, **kwargs)
        hidden = out.hidden_states[-1]
        if isinstance(values_at, torch.Tensor):
            hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), values_at]
        elif values_at:
            hidden = hidden[:, -values_at:]
        values = self.value_head(hidden.to(self.value_head.summary.weight.dtype))
        return ValueHeadOutput(
            loss=getattr(out, "loss", None), logits=getattr(out, "logits", None), head_values=values
        )

    # The Trainer calls activation_checkpointing_enable (transformers >= 5.23) or, before,
    # gradient_checkpointing_enable; each goes to the body's method of the same name.
    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.pretrained_model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    @property
    def is_activation_checkpointing(self) -> bool:  # read by the Trainer before wrapping in DDP
        return checkpointing_on(self.pretrained_model)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return checkpointing_on(self.pretrained_model)

    def save_head(self, folder) -> None:
        save_value_head(self.value_head, folder, self.head_file)

    def load_head(self, folder) -> None:
        load_value_head(self.value_head, folder, self.head_file)


def body_of(model: nn.Module) -> nn.Module:
    """The causal LM of a ModelWithValueHead (already unwrapped from DDP), else the model."""
    return model.pretrained_model if isinstance(model, ModelWithValueHead) else model


def last_token_scores(
    model: ModelWithValueHead, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The reward of each right-padded row: the value head at its last real token. The logits
    of one position only are computed: the scores need hidden states, not logits."""
    last = attention_mask.sum(-1) - 1
    return model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, values_at=last
    ).head_values


class ValueHeadTrainerMixin:
    """For a Trainer whose model is a ModelWithValueHead: the head trains without weight decay
    (also when an optimizer such as LoRA+'s was built from the body alone), and saving and
    resuming handle the body as the Trainer does for a plain model, plus the head's file."""

    def _head_model(self) -> ModelWithValueHead:
        return self.accelerator.unwrap_model(self.model)

    def get_decay_parameter_names(self, model) -> list[str]:
        names = super().get_decay_parameter_names(model)
        return [n for n in names if not n.startswith("value_head.")]

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        head = [p for p in self._head_model().value_head.parameters() if id(p) not in known]
        if head:
            optimizer.add_param_group({"params": head, "weight_decay": 0.0})
        return optimizer

    @contextmanager
    def _body_as_model(self):
        """The Trainer saves and loads `self.model` as a PreTrainedModel or PeftModel: let it
        see the body."""
        model = self.model
        self.model = body_of(self._head_model())
        try:
            yield
        finally:
            self.model = model

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir or self.args.output_dir
        head_state = None
        if state_dict is not None:  # DeepSpeed: the gathered state of the whole module
            body = "pretrained_model."
            head_state = {
                k[len("value_head.") :]: v
                for k, v in state_dict.items()
                if k.startswith("value_head.")
            }
            state_dict = {k[len(body) :]: v for k, v in state_dict.items() if k.startswith(body)}
        with self._body_as_model():
            super()._save(output_dir, state_dict)
        if not self.args.should_save:  # one process writes
            return
        model = self._head_model()
        if head_state:
            from safetensors.torch import save_file

            head_state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
            save_file(head_state, os.path.join(output_dir, model.head_file))
        else:
            model.save_head(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self._head_model() if model is None else model
        super()._load_from_checkpoint(resume_from_checkpoint, body_of(model))
        model.load_head(resume_from_checkpoint)

    def _load_best_model(self):
        with self._body_as_model():
            super()._load_best_model()
        if not self.is_deepspeed_enabled:  # DeepSpeed restored the whole module
            self._head_model().load_head(self.state.best_model_checkpoint)
