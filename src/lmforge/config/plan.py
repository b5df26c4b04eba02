"""The run plan: what lmforge derived from the user's config and this machine.

The config stays exactly as the user wrote it (it is saved as run_config.yaml); everything worked
out from it - precision the device can run, LoRA alpha's default, the evaluation schedule that
early stopping needs, the checkpoint to resume, the template chosen - lives here, frozen, and is
saved next to it as run_plan.yaml. Consumers read derived values from the plan only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


def keeps_frozen_weights_bf16(bf16: bool, finetuning_type: str, badam: bool = False) -> bool:
    """bf16 mixed precision with LoRA or freeze keeps the weights that do not train in bf16:
    half their memory and no fp32->bf16 cast of every weight in every step. Full fine-tuning
    keeps fp32 master weights, except under BAdam, which keeps the fp32 copy of the one layer
    in training itself; fp16 an fp32 residual stream (fp16 overflows where bf16 does not)."""
    return bf16 and (finetuning_type != "full" or badam)


def loads_untrained_models_bf16(bf16: bool, pure_bf16: bool) -> bool:
    """A model that never trains in the run (an explicit `ref_model`, the reward model) loads
    in bf16 under bf16 mixed or pure bf16, as LLaMA-Factory loads them (autocast computes with
    bf16 weights anyway; half the memory); in fp32 otherwise (fp16 mixed keeps fp32 weights: an
    fp16 residual stream can overflow)."""
    return bf16 or pure_bf16


@dataclass(frozen=True)
class Precision:
    """How weights are kept and computed."""

    bf16: bool = False  # bf16 mixed precision (autocast)
    fp16: bool = False  # fp16 mixed precision (CUDA only)
    pure_bf16: bool = False  # weights themselves in bf16
    # bf16 mixed with LoRA or freeze: the weights that do not train are kept in bf16 (autocast
    # computes with them in bf16 anyway); the trained ones stay fp32.
    frozen_bf16: bool = False
    # QLoRA: the frozen linear weights are stored in this many bits (bitsandbytes), the other
    # frozen weights (embeddings, norms, head) as frozen_bf16 says (bf16 under bf16 mixed).
    quantization_bit: int | None = None
    quantization_type: str = "nf4"  # 4-bit: nf4 or fp4

    @property
    def autocast_dtype(self):
        """The torch dtype autocast computes matmuls in, or None without mixed precision."""
        import torch  # here: the config package loads without torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    @property
    def compute_dtype(self):
        """What matmuls compute in: autocast's 16-bit dtype, bf16 under pure bf16, else fp32
        (QLoRA's quantized layers compute in it)."""
        import torch

        return self.autocast_dtype or (torch.bfloat16 if self.pure_bf16 else torch.float32)

    @property
    def frozen_model_dtype(self):
        """The dtype of a model that never trains in this run (loads_untrained_models_bf16)."""
        import torch

        bf16 = loads_untrained_models_bf16(self.bf16, self.pure_bf16)
        return torch.bfloat16 if bf16 else torch.float32

    def describe(self) -> str:
        if self.pure_bf16:
            return "pure bf16"
        if self.quantization_bit:
            bits = self.quantization_bit
            storage = f"4-bit {self.quantization_type.upper()}" if bits == 4 else "8-bit"
            mixed = "bf16 mixed" if self.bf16 else "fp16 mixed" if self.fp16 else "fp32"
            other = "bf16" if self.frozen_bf16 else "fp32"
            return (
                f"{mixed} (frozen linear weights {storage}, other frozen weights {other}, "
                "trained weights fp32)"
            )
        if self.frozen_bf16:
            return "bf16 mixed (frozen weights bf16, trained weights fp32)"
        return "bf16 mixed" if self.bf16 else "fp16 mixed" if self.fp16 else "fp32"


@dataclass(frozen=True)
class Evaluation:
    """When evaluation runs and what happens with its results."""

    strategy: str = "no"  # transformers' eval_strategy: no | steps | epoch
    load_best_model_at_end: bool = False


@dataclass(frozen=True)
class Resume:
    """Which checkpoint the run continues from."""

    checkpoint: str | None = None  # a checkpoint-N folder, or None for a fresh start
    auto: bool = False  # the user asked for `auto` (so a fresh start in a used folder is fine)
    model_only: bool = False  # weights only: no optimizer.pt/scheduler.pt (save_only_model)


@dataclass(frozen=True)
class Batching:
    """How samples are laid out in a batch."""

    padding_free: bool = False  # each batch's samples side by side in one row
    auto: bool = False  # chosen by lmforge (padding_free unset): padded rows if the model needs

    def describe(self) -> str:
        if not self.padding_free:
            return "padded rows"
        return "padding-free (each batch in one row)" + (", the default" if self.auto else "")


@dataclass(frozen=True)
class Checkpointing:
    """Gradient (activation) checkpointing: on, and whether lmforge may still turn it on."""

    on: bool = False
    # Neither gradient_checkpointing nor disable_gradient_checkpointing was given: the memory
    # check turns it on when the run would not fit without it (estimate/check.py).
    auto: bool = False

    def turned_on(self) -> Checkpointing:
        return replace(self, on=True)


@dataclass(frozen=True)
class RunPlan:
    """Derived settings of one training run; built by `config.resolve.resolve_for_training`."""

    lora_alpha: int
    precision: Precision
    evaluation: Evaluation
    resume: Resume
    batching: Batching = Batching()
    checkpointing: Checkpointing = Checkpointing()
    notes: tuple[str, ...] = ()  # what was changed from the config, and why
    template: str | None = None  # filled in once the tokenizer is loaded
    # With rope_scaling: the factor the model trains with (1: cutoff_len fits, not scaled);
    # filled in once the model's config is read. Inference loads the weights with it.
    rope_factor: float | None = None

    def with_template(self, name: str) -> RunPlan:
        return replace(self, template=name)

    def with_rope_factor(self, factor: float) -> RunPlan:
        return replace(self, rope_factor=factor)

    def with_note(self, note: str) -> RunPlan:
        return replace(self, notes=(*self.notes, note))

    def with_checkpointing(self, note: str) -> RunPlan:
        """Gradient checkpointing turned on by lmforge (the run would not fit without)."""
        return replace(self, checkpointing=self.checkpointing.turned_on()).with_note(note)

    def to_dict(self) -> dict:
        """The plan as written to run_plan.yaml (flat where the config has the same key)."""
        return {
            "template": self.template,
            "lora_alpha": self.lora_alpha,
            "bf16": self.precision.bf16,
            "fp16": self.precision.fp16,
            "pure_bf16": self.precision.pure_bf16,
            "precision": self.precision.describe(),
            "eval_strategy": self.evaluation.strategy,
            "load_best_model_at_end": self.evaluation.load_best_model_at_end,
            "resume_from_checkpoint": self.resume.checkpoint,
            "padding_free": self.batching.padding_free,
            "gradient_checkpointing": self.checkpointing.on,
            "rope_factor": self.rope_factor,
            "notes": list(self.notes),
        }
