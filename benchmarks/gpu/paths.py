"""The multi-GPU and memory-saving paths on one GPU: 3 steps each, launched as a tutorial does,
the loss of each step against the plain path's.

    python benchmarks/gpu/paths.py --model DIR --work DIR [--paths plain,zero3,...]

Every run is `lmforge train` on the same YAML plus one change (a `deepspeed:` file from
examples/deepspeed with FORCE_TORCHRUN=1, accelerate's FSDP config from examples/accelerate,
`quantization_bit: 4`, `pure_bf16: true`; DPO with full tuning, whose reference is a frozen
copy), with the benchmark's step probe inside for the losses and the peak GPU memory. QLoRA
computes with a quantized base, so its losses are compared with plain LoRA on that base
dequantized (`qlora_reference`); DPO with ref_model under ZeRO-3 with DPO alone; the others
with `plain`.
Prints a markdown table and writes it to WORK/paths.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LMFORGE = [sys.executable, "-m", "lmforge", "train"]
FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
        "--config_file", str(ROOT / "examples/accelerate/fsdp_config.yaml"), "-m", "lmforge",
        "train"]  # fmt: skip
TORCHRUN = {"FORCE_TORCHRUN": "1"}
DPO_FULL = {"stage": "dpo", "dataset": "dpo_demo", "finetuning_type": "full", "learning_rate": 1e-6}
THE_MODEL = "<the run's model>"  # replaced by --model's folder

# name -> (config changes, command, environment)
PATHS: dict[str, tuple[dict, list[str], dict]] = {  # quick ones first: DeepSpeed starts slowly
    "plain": ({}, LMFORGE, {}),
    "pure_bf16": ({"pure_bf16": True}, LMFORGE, {}),
    "qlora_reference": ({}, LMFORGE, {}),  # plain LoRA on the dequantized 4-bit base
    "qlora_4bit": ({"quantization_bit": 4}, LMFORGE, {}),
    "fsdp": ({}, FSDP, {}),
    "zero2": ({"deepspeed": "examples/deepspeed/ds_z2_config.json"}, LMFORGE, TORCHRUN),
    "zero3": ({"deepspeed": "examples/deepspeed/ds_z3_config.json"}, LMFORGE, TORCHRUN),
    "zero2_offload": (
        {"deepspeed": "examples/deepspeed/ds_z2_offload_config.json"},
        LMFORGE,
        TORCHRUN,
    ),
    "zero3_offload": (
        {"deepspeed": "examples/deepspeed/ds_z3_offload_config.json"},
        LMFORGE,
        TORCHRUN,
    ),
    # QLoRA sharded: its 4-bit weights stored as bf16 (model/load.py), as LLaMA-Factory does
    "qlora_fsdp": ({"quantization_bit": 4}, FSDP, {}),
    "qlora_zero3": (
        {"quantization_bit": 4, "deepspeed": "examples/deepspeed/ds_z3_config.json"},
        LMFORGE,
        TORCHRUN,
    ),
    # A stage with a reference model, fully tuned: the frozen reference copy on the GPU; under
    # ZeRO-3 a copy of the sharded weights is refused, and ref_model (the same weights, loaded
    # and sharded on their own, run in a DeepSpeed engine) takes its place
    "dpo_full": (DPO_FULL, LMFORGE, {}),
    "dpo_ref_model_zero3": (
        {**DPO_FULL, "ref_model": THE_MODEL, "deepspeed": "examples/deepspeed/ds_z3_config.json"},
        LMFORGE,
        TORCHRUN,
    ),
}


def base_config(model: Path, out: Path) -> dict:
    return {
        "model_name_or_path": str(model),
        "template": "gemma",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_target": "all",
        "dataset": "identity,general",
        "dataset_dir": str(ROOT / "examples/data"),
        "cutoff_len": 512,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "logging_steps": 1,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "save_strategy": "no",
        "bf16": True,
        "seed": 42,
        "val_size": 0,
        "report_compare": False,
        "report_to": "none",
    }


# Which run each path's losses are compared with.
REFERENCE = {name: "qlora_reference" for name in ("qlora_4bit", "qlora_fsdp", "qlora_zero3")}
REFERENCE["dpo_ref_model_zero3"] = "dpo_full"
BASES = {"plain", *REFERENCE.values()}  # compared with nothing


def run_path(name: str, model: Path, work: Path, timeout: int) -> dict:
    changes, command, env_changes = PATHS[name]
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    if name == "qlora_reference":
        from lmforge.model.dequantize import save_dequantized
        from lmforge.model.load import Quantization

        model = save_dequantized(model, out / "dequantized-4bit", Quantization(bits=4))
    changes = {k: str(model) if v == THE_MODEL else v for k, v in changes.items()}
    config = {**base_config(model, out / "run"), **changes}
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    step_log = out / "steps.json"
    step_log.unlink(missing_ok=True)
    env = dict(os.environ, **env_changes, BENCH_STEP_LOG=str(step_log), BENCH_PAD_ID="0")
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT / "benchmarks/probe"), env.get("PYTHONPATH")])
    )
    start = time.perf_counter()
    with open(out / "output.log", "w") as log:
        try:
            rc = subprocess.run(
                [*command, str(path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    result = {"path": name, "rc": rc, "wall_s": time.perf_counter() - start, "losses": []}
    if step_log.exists():
        probe = json.loads(step_log.read_text())
        result["losses"] = [s.get("loss") for s in sorted(probe["steps"], key=lambda s: s["step"])]
        result["peak_gib"] = (probe["info"].get("cuda_peak_bytes") or 0) / 2**30
    if rc != 0:  # lmforge's one paragraph when there is one, else the log's last lines
        lines = (out / "output.log").read_text(errors="replace").splitlines()
        ours = [line for line in lines if line.startswith("error: ")]
        result["error"] = (ours[0] if ours else " | ".join(x.strip() for x in lines[-6:]))[-600:]
    return result


def table(results: list[dict]) -> str:
    losses_of = {r["path"]: r["losses"] for r in results}
    lines = [
        "| path | exit | losses (3 steps) | compared with | max rel. diff | peak GiB | wall s |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        losses = r["losses"]
        reference = REFERENCE.get(r["path"], "plain")
        diffs = [
            abs(a - b) / abs(b)
            for a, b in zip(losses, losses_of.get(reference, []))
            if a is not None and b is not None and math.isfinite(a)
        ]
        shown = ", ".join(f"{x:.4f}" if x is not None else "-" for x in losses) or "-"
        compared = "-" if r["path"] in BASES else reference
        diff = f"{max(diffs):.2e}" if diffs and compared != "-" else "-"
        lines.append(
            f"| {r['path']} | {r['rc']} | {shown} | {compared} | {diff} "
            f"| {r.get('peak_gib', 0):.2f} | {r['wall_s']:.0f} |"
        )
    for r in results:
        if r.get("error"):
            lines.append(f"\n{r['path']}: {r['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--timeout", type=int, default=240, help="seconds per run")
    args = parser.parse_args()
    results = []
    for name in [p.strip() for p in args.paths.split(",") if p.strip()]:
        result = run_path(name, args.model.resolve(), args.work.resolve(), args.timeout)
        print(
            f"{name}: exit {result['rc']}, losses {result['losses']}, {result['wall_s']:.0f} s",
            flush=True,
        )
        results.append(result)
        # after every path: what ran is kept when the part's time limit stops the rest
        (args.work / "paths.md").write_text(table(results) + "\n")
        (args.work / "paths.json").write_text(json.dumps(results, indent=1))
    print("\n" + table(results))


if __name__ == "__main__":
    main()
