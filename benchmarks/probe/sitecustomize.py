"""Step probe for the benchmark: the same measuring code inside all three tools.

run.py puts this folder on PYTHONPATH and sets BENCH_STEP_LOG; Python then imports this file at
start-up (sitecustomize), in lmforge's, LLaMA-Factory's and the plain script's process alike.
When `transformers.trainer` is imported we wrap `Trainer.__init__` (to add one callback) and
`Trainer.training_step` (to count the tokens of each batch). Nothing else changes: the tools
run their own code and configs. At the end of training the probe writes BENCH_STEP_LOG (JSON):
per step the end time (perf_counter), real (non-padding) tokens, computed (padded) positions,
trained positions, each sample's length, and the logged loss; plus what the tool actually ran
(parameter dtypes, attention, gradient checkpointing, threads) and the process's peak RSS.
With BENCH_PROFILE set as well, two training steps after the warm-up run under torch.profiler
and their op tables are appended to that file. Without BENCH_STEP_LOG this file does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

LOG_PATH = os.environ.get("BENCH_STEP_LOG")
IGNORE_INDEX = -100


def _batch_counts(inputs: dict, pad_id: int) -> dict:
    """Tokens in one batch. Real tokens come from the 2D attention mask when there is one, else
    from input_ids != pad; samples are split where position ids restart (packed rows)."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    real = mask.bool() if mask is not None and mask.dim() == 2 else ids != pad_id
    positions = inputs.get("position_ids")
    lengths: list[int] = []
    for row in range(ids.shape[0]):
        n = int(real[row].sum())
        if positions is None or n == 0:
            lengths.append(n)
            continue
        row_pos = positions[row][real[row]]
        starts = (row_pos == 0).nonzero().flatten().tolist() or [0]
        lengths += [b - a for a, b in zip(starts, starts[1:] + [n])]
    labels = inputs.get("labels")
    trained = int((labels[:, 1:] != IGNORE_INDEX).sum()) if labels is not None else 0
    return {
        "real": int(real.sum()),
        "computed": int(ids.numel()),
        "trained": trained,
        "lengths": lengths,
    }


def _current_rss_kib() -> int:
    with open("/proc/self/status") as status:  # Linux; elsewhere the peak alone is reported
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _describe_model(model) -> dict:
    import torch

    dtypes: dict[str, int] = {}
    trainable = 0
    for p in model.parameters():
        dtypes[str(p.dtype)] = dtypes.get(str(p.dtype), 0) + p.numel()
        trainable += p.numel() if p.requires_grad else 0
    config = getattr(model, "config", None)
    return {
        "param_dtypes": dtypes,
        "trainable_params": trainable,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }


def _install(trainer_module) -> None:
    import json
    import resource
    import time

    from transformers import TrainerCallback

    pad_id = int(os.environ.get("BENCH_PAD_ID", "0"))
    trainer_cls = trainer_module.Trainer
    pending: list[dict] = []  # batches counted since the last optimizer step

    class StepProbe(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict] = []
            self.info: dict = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.info = _describe_model(model) if model is not None else {}
            self.info["bf16"], self.info["fp16"] = bool(args.bf16), bool(args.fp16)
            self.info["t_begin"] = time.perf_counter()
            # Memory before the first step: what loading took, apart from training itself.
            self.info["maxrss_kib_at_begin"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.info["rss_kib_at_begin"] = _current_rss_kib()

        def on_step_end(self, args, state, control, **kwargs):
            batches = list(pending)
            pending.clear()
            self.steps.append(
                {
                    "step": state.global_step,
                    "t_end": time.perf_counter(),
                    "real": sum(b["real"] for b in batches),
                    "computed": sum(b["computed"] for b in batches),
                    "trained": sum(b["trained"] for b in batches),
                    "lengths": [n for b in batches for n in b["lengths"]],
                }
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                for record in self.steps:
                    if record["step"] == state.global_step:
                        record["loss"] = float(logs["loss"])
                        if logs.get("grad_norm") is not None:
                            record["grad_norm"] = float(logs["grad_norm"])

        def on_train_end(self, args, state, control, **kwargs):
            self.info["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            import torch

            if torch.cuda.is_available():
                self.info["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
            with open(LOG_PATH, "w") as handle:
                json.dump({"info": self.info, "steps": self.steps}, handle)

    original_init = trainer_cls.__init__
    original_step = trainer_cls.training_step

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(StepProbe())

    profile_path = os.environ.get("BENCH_PROFILE")
    profiled: list[int] = []  # training steps profiled so far

    def training_step(self, model, inputs, *args, **kwargs):
        pending.append(_batch_counts(inputs, pad_id))
        if not profile_path or self.state.global_step < 2 or len(profiled) >= 2:
            return original_step(self, model, inputs, *args, **kwargs)
        # BENCH_PROFILE: two steps after the warm-up under torch.profiler, a table of ops. On a
        # GPU also the device's: kernel time against the step's wall time says whether the
        # step waits on the GPU or on the host (launches, Python).
        import time

        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        cuda = torch.cuda.is_available()
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        start = time.perf_counter()
        shapes = bool(os.environ.get("BENCH_PROFILE_SHAPES"))  # which tensors the time went to
        with torch.profiler.profile(activities=activities, record_shapes=shapes) as prof:
            result = original_step(self, model, inputs, *args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
        wall = time.perf_counter() - start
        profiled.append(self.state.global_step)
        events = prof.key_averages()
        text = f"## step {self.state.global_step + 1}: {pending[-1]}\n\nwall {wall * 1e3:.1f} ms"
        if cuda:
            kernels = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
            busy = sum(e.self_device_time_total for e in kernels) / 1e3
            launches = sum(e.count for e in kernels)
            text += f", GPU busy {busy:.1f} ms in {launches} kernel runs"
            text += "\n\n" + events.table(sort_by="self_device_time_total", row_limit=25)
        text += "\n\n" + events.table(sort_by="self_cpu_time_total", row_limit=30)
        if shapes:
            by_shape = prof.key_averages(group_by_input_shape=True)
            text += "\n\n" + by_shape.table(sort_by="self_cpu_time_total", row_limit=40)
        with open(profile_path, "a") as handle:
            handle.write(text + "\n")
        return result

    trainer_cls.__init__ = __init__
    trainer_cls.training_step = training_step


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs `_install` right after `transformers.trainer` has been executed."""

    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)  # find the real spec without coming back here
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _install(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if LOG_PATH:
    sys.meta_path.insert(0, _PatchOnImport())
