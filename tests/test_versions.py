"""lmforge.compat picks the name the installed library has, for each API renamed inside the
range pyproject allows; the lower bounds in pyproject are the versions CI tests. Each shim is
checked against two small real classes (the old name, the new name) and the installed
transformers; .ci/lower-bounds runs this file again with the oldest versions."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_decoder
from lmforge.compat import (
    cache_keyword,
    checkpointing_arguments,
    enable_activation_checkpointing,
    is_activation_checkpointing,
    output_cache,
)
from lmforge.train.trainers.value_head import ModelWithValueHead, ValueHead

ROOT = Path(__file__).resolve().parents[1]


# -- TrainingArguments: activation_checkpointing (>= 5.23) or gradient_checkpointing ----------


@dataclasses.dataclass
class ArgumentsBefore:
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict | None = None


@dataclasses.dataclass
class ArgumentsAfter:  # the new names, and the old ones still there as deprecated aliases
    activation_checkpointing: bool = False
    activation_checkpointing_kwargs: dict | None = None
    gradient_checkpointing: bool | None = None
    gradient_checkpointing_kwargs: dict | None = None


@pytest.mark.parametrize(
    "arguments_type, name",
    [(ArgumentsBefore, "gradient_checkpointing"), (ArgumentsAfter, "activation_checkpointing")],
)
def test_checkpointing_arguments_use_the_fields_the_class_has(arguments_type, name):
    kwargs = checkpointing_arguments(True, {"use_reentrant": False}, arguments_type)
    assert kwargs == {name: True, f"{name}_kwargs": {"use_reentrant": False}}
    args = arguments_type(**kwargs)
    assert getattr(args, name) is True


def test_checkpointing_arguments_build_the_installed_training_arguments(tmp_path):
    from transformers import TrainingArguments

    kwargs = checkpointing_arguments(True, {"use_reentrant": False})
    (name,) = (k for k in kwargs if not k.endswith("_kwargs"))
    assert name in {f.name for f in dataclasses.fields(TrainingArguments)}
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kwargs)
    assert getattr(args, name) is True
    assert getattr(args, f"{name}_kwargs") == {"use_reentrant": False}


# -- models: activation_checkpointing_enable (>= 5.23) or gradient_checkpointing_enable --------


class ModelBefore:
    def __init__(self):
        self.is_gradient_checkpointing = False
        self.kwargs = "unset"

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.is_gradient_checkpointing, self.kwargs = True, gradient_checkpointing_kwargs


class ModelAfter(ModelBefore):  # keeps the old method as a deprecated alias
    def __init__(self):
        super().__init__()
        self.is_activation_checkpointing = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        raise AssertionError("the deprecated name was called")

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None):
        self.is_activation_checkpointing, self.kwargs = True, activation_checkpointing_kwargs


@pytest.mark.parametrize("model_type", [ModelBefore, ModelAfter])
def test_enable_activation_checkpointing_calls_the_method_the_model_has(model_type):
    model = model_type()
    assert not is_activation_checkpointing(model)
    enable_activation_checkpointing(model, {"use_reentrant": False})
    assert is_activation_checkpointing(model) and model.kwargs == {"use_reentrant": False}


def test_enable_activation_checkpointing_on_an_installed_model():
    model = build_tiny_decoder("llama", 64)
    assert not is_activation_checkpointing(model)
    enable_activation_checkpointing(model, {"use_reentrant": False})
    assert is_activation_checkpointing(model)


@pytest.mark.parametrize(
    "method", ["activation_checkpointing_enable", "gradient_checkpointing_enable"]
)
def test_value_head_model_answers_both_names_the_trainer_calls(method):
    """The Trainer calls one or the other name (by transformers version) on the model it trains;
    ModelWithValueHead (rm, ppo) passes either on to its body."""
    body = build_tiny_decoder("llama", 64)
    model = ModelWithValueHead(body, ValueHead(32))
    if not hasattr(body, method):  # activation_checkpointing_enable before transformers 5.23
        pytest.skip(f"this transformers has no {method}")
    assert not model.is_activation_checkpointing and not model.is_gradient_checkpointing
    getattr(model, method)(**{method.replace("_enable", "_kwargs"): {"use_reentrant": False}})
    assert model.is_activation_checkpointing and model.is_gradient_checkpointing
    assert is_activation_checkpointing(body)


# -- forward: cache (>= 5.24) or past_key_values ----------------------------------------------


class ForwardBefore(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        pass


class ForwardAfter(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        pass


class PeftLike(torch.nn.Module):
    """A wrapper whose forward takes **kwargs only, as peft's PeftModel."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, *args, **kwargs):
        pass

    def get_base_model(self):
        return self.base


@pytest.mark.parametrize(
    "model, name",
    [
        (ForwardBefore(), "past_key_values"),
        (ForwardAfter(), "cache"),
        (PeftLike(ForwardBefore()), "past_key_values"),
        (PeftLike(ForwardAfter()), "cache"),
    ],
)
def test_cache_keyword_is_the_one_forward_takes(model, name):
    assert cache_keyword(model) == name


def test_cache_keyword_of_a_kwargs_only_forward_follows_transformers_outputs():
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class KwargsOnly(torch.nn.Module):
        def forward(self, **kwargs):
            pass

    outputs_fields = {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
    expected = "cache" if "cache" in outputs_fields else "past_key_values"
    assert cache_keyword(KwargsOnly()) == expected


@dataclasses.dataclass
class OutputBefore:
    past_key_values: object = None


@dataclasses.dataclass
class OutputAfter:
    cache: object = None


@pytest.mark.parametrize("output_type", [OutputBefore, OutputAfter])
def test_output_cache_reads_either_name(output_type):
    marker = object()
    assert output_cache(output_type(marker)) is marker


def test_installed_model_takes_and_returns_its_cache_under_the_chosen_names():
    """Two decoding steps with the cache passed under cache_keyword and read with output_cache
    give the logits of one pass over the whole sequence."""
    from peft import LoraConfig, get_peft_model

    model = build_tiny_decoder("llama", 64).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    for wrapped in (model, get_peft_model(model, LoraConfig(target_modules=["q_proj"]))):
        keyword = cache_keyword(wrapped)
        with torch.no_grad():
            full = wrapped(input_ids=ids).logits[0, -1]
            first = wrapped(input_ids=ids[:, :3], use_cache=True)
            cache = output_cache(first)
            assert cache is not None
            step = wrapped(input_ids=ids[:, 3:], use_cache=True, **{keyword: cache})
        assert torch.allclose(step.logits[0, -1], full, atol=1e-5)


# -- the bounds --------------------------------------------------------------------------------


def test_pyproject_lower_bounds_are_the_versions_ci_tests():
    """Each lower bound in pyproject is the version pinned in .ci/lower-bounds.txt, which
    .ci/lower-bounds installs and tests; torch is pinned higher there (CI's CPU has 2.13 only)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = dict(
        re.findall(r"^([\w-]+)==(\S+)", (ROOT / ".ci" / "lower-bounds.txt").read_text(), re.M)
    )
    assert set(pins) == {
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "accelerate",
        "bitsandbytes",
    }
    for package, version in pins.items():
        (bound,) = re.findall(rf'^\s*"{package}>=([^",]+)"', pyproject, re.M)
        if package == "torch":
            assert tuple(map(int, bound.split("."))) <= tuple(map(int, version.split(".")))
        else:
            assert bound == version, package
