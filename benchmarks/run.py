"""One LoRA SFT job, run by lmforge, LLaMA-Factory and plain transformers, side by side.

    python benchmarks/run.py                      # the default job on this CPU, 2 rounds
    python benchmarks/run.py --device cuda        # on a GPU
    python benchmarks/run.py --rounds 3 --tools lmforge,llamafactory
    python benchmarks/run.py --device cuda --model-shape gemma-3-1b --sites SITES   # bare GPU box

The three tools alternate (A B C A B C ...) so that machine drift hits all of them. Every run
is a fresh process with the step probe (probe/sitecustomize.py) inside; the table reports the
median over rounds of: real (non-padding) tokens/s and s/step over the measured steps, peak
memory (RSS on CPU, peak allocated on GPU), the loss at the last step, and MFU (model FLOPs of
the measured steps, see flops.py, over the matmul peak of the same device and dtype, measured
by this script in the same run). LLaMA-Factory is installed from PyPI into its own virtual
environment (benchmarks/.venv-llamafactory) on first use, or, on a machine without internet
(`--sites`, see gpu/README.md), each tool runs on its own folder of pre-fetched wheels. A run
whose loss or gradient norm is not finite is reported as invalid and not ranked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flops import Shape, matmul_peak, step_flops  # noqa: E402
from jobdata import DATASET_NAME, gemma_counter, make_records, write_dataset  # noqa: E402

LLAMAFACTORY = "llamafactory==0.9.5"
TORCH_CPU = "torch==2.13.0"
VENV = HERE / ".venv-llamafactory"
TOOLS = ("lmforge", "llamafactory", "plain")
# Variants for the GPU tables: lmforge with liger-kernel (use_liger_kernel: its fused loss, norms
# and MLPs instead of lmforge's loss) and with padded batches (padding_free: false),
# LLaMA-Factory with its enable_liger_kernel.
VARIANTS = ("lmforge_liger", "lmforge_padded", "llamafactory_liger")


@dataclass(frozen=True)
class Job:
    model_dir: Path
    data_dir: Path
    device: str
    bf16: bool
    batch_size: int = 4
    cutoff: int = 512
    lora_rank: int = 8
    learning_rate: float = 1e-4
    warmup_steps: int = 2
    measured_steps: int = 8
    seed: int = 42
    profile: bool = False

    @property
    def max_steps(self) -> int:
        return self.warmup_steps + self.measured_steps


# ---------------------------------------------------------------- the three tools' commands


def shared_config(job: Job, out: Path) -> dict:
    """The job in LLaMA-Factory's YAML keys, which lmforge reads as they are."""
    return {
        "model_name_or_path": str(job.model_dir),
        "template": "gemma",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": job.lora_rank,
        "lora_alpha": 2 * job.lora_rank,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "dataset": DATASET_NAME,
        "dataset_dir": str(job.data_dir),
        "cutoff_len": job.cutoff,
        "output_dir": str(out),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "per_device_train_batch_size": job.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": job.learning_rate,
        "lr_scheduler_type": "constant",
        "max_steps": job.max_steps,
        "bf16": job.bf16,
        "seed": job.seed,
        "report_to": "none",
    }


def lmforge_command(job: Job, out: Path, **changes) -> list[str]:
    """lmforge with its defaults (padding-free batches, its own fused loss). No
    held-out split and no before/after answers at the end: LLaMA-Factory does neither."""
    config = shared_config(job, out)
    config.update(val_size=0, report_compare=False, **changes)
    path = _write_yaml(config, out / "lmforge.yaml")
    return [sys.executable, "-m", "lmforge", "train", str(path)]


def llamafactory_command(job: Job, out: Path, **changes) -> list[str]:
    config = shared_config(job, out)
    config.update(overwrite_cache=True, preprocessing_num_workers=1, **changes)
    if job.device == "cpu":
        config["use_cpu"] = True  # transformers refuses bf16 on a CPU without it
    path = _write_yaml(config, out / "llamafactory.yaml")
    if OFFLINE_SITES:  # its own wheels on PYTHONPATH (run_tool), no venv
        code = "import sys; from llamafactory.cli import main; sys.argv[0] = 'llamafactory-cli'; main()"
        return [sys.executable, "-c", code, "train", str(path)]
    return [str(VENV / "bin" / "llamafactory-cli"), "train", str(path)]


def plain_command(job: Job, out: Path) -> list[str]:
    command = [
        sys.executable, str(HERE / "plain_train.py"),
        "--model", str(job.model_dir),
        "--data", str(job.data_dir / "data.json"),
        "--output-dir", str(out),
        "--max-steps", str(job.max_steps),
        "--batch-size", str(job.batch_size),
        "--cutoff", str(job.cutoff),
        "--lora-rank", str(job.lora_rank),
        "--learning-rate", str(job.learning_rate),
        "--seed", str(job.seed),
    ]  # fmt: skip
    return command + (["--bf16"] if job.bf16 else [])


COMMANDS = {
    "lmforge": lmforge_command,
    "llamafactory": llamafactory_command,
    "plain": plain_command,
    "lmforge_liger": lambda job, out: lmforge_command(job, out, use_liger_kernel=True),
    "lmforge_padded": lambda job, out: lmforge_command(job, out, padding_free=False),
    "llamafactory_liger": lambda job, out: llamafactory_command(job, out, enable_liger_kernel=True),
}

# --sites DIR: per-tool wheel folders prepared by gpu/prepare.sh (no internet on the machine).
OFFLINE_SITES: Path | None = None


def tool_pythonpath(tool: str) -> list[str]:
    """lmforge and plain on the lmforge stack (site-lm), LLaMA-Factory on the versions it pins
    (site-lf); liger-kernel (site-liger) where the tool would use it."""
    if OFFLINE_SITES is None:
        return [str(HERE.parent / "src")] if tool.startswith("lmforge") else []
    sites = {
        "lmforge": ["site-lm"],
        "lmforge_liger": ["site-lm", "site-liger"],
        "lmforge_padded": ["site-lm"],
        "llamafactory": ["site-lf"],
        "llamafactory_liger": ["site-lf", "site-liger"],
        "plain": ["site-lm"],
    }[tool]
    own = [str(HERE.parent / "src")] if tool.startswith("lmforge") else []
    return own + [str(OFFLINE_SITES / site) for site in sites]


def _write_yaml(config: dict, path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------- set-up


def ensure_llamafactory(device: str) -> None:
    """LLaMA-Factory in its own venv; torch pinned to the CPU build on the CPU."""
    cli = VENV / "bin" / "llamafactory-cli"
    if cli.exists():
        return
    print(f"installing {LLAMAFACTORY} into {VENV} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    torch = TORCH_CPU if device == "cpu" else "torch"
    subprocess.run([*pip, torch], check=True)
    # torch named again in the same resolve: else LLaMA-Factory's dependencies (torchvision)
    # upgrade it to the newest, CUDA, build.
    subprocess.run([*pip, LLAMAFACTORY, torch], check=True)
    if device == "cpu":
        _text_only_torch_extras(str(VENV / "bin" / "python"))


def _text_only_torch_extras(python: str) -> None:
    """The resolver picks torchvision/torchaudio built for another torch than the CPU 2.13
    wheel (none exists for it): transformers imports torchvision when present and fails
    ("torchvision::nms does not exist"), so it goes; LLaMA-Factory 0.9.5 imports torchaudio at
    start-up (its audio inputs only), so a broken one is replaced by an empty stand-in. Text
    fine-tuning uses neither."""
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
    if subprocess.run([python, "-c", "import torchaudio"], capture_output=True).returncode == 0:
        return
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "torchaudio"], check=True)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    stand_in = Path(site.stdout.strip()) / "torchaudio"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "__init__.py").write_text('"""Benchmark stand-in: no audio."""\n')


def prepare_job(args: argparse.Namespace, work: Path) -> Job:
    if args.model:
        model_dir = Path(args.model).resolve()
    elif args.model_shape:
        from model_shapes import build, embedded_model_dir

        tokenizer = Path(args.tokenizer) if args.tokenizer else embedded_model_dir()
        model_dir = build(args.model_shape, tokenizer, work / "models")
    else:
        from lmforge.model.pull import pull_model

        model_dir = pull_model("gemma-3-270m")  # the embedded model, converted once and cached
    records = make_records(
        gemma_counter(model_dir), n=args.records, min_tokens=args.min_tokens,
        max_tokens=args.max_tokens, seed=0,
    )  # fmt: skip
    data_dir = work / "data"
    write_dataset(records, data_dir)
    return Job(
        model_dir=model_dir,
        data_dir=data_dir,
        device=args.device,
        bf16=_use_bf16(args.precision, args.device),
        batch_size=args.batch_size,
        cutoff=args.cutoff,
        warmup_steps=args.warmup_steps,
        measured_steps=args.measured_steps,
        profile=args.profile,
    )


def _use_bf16(precision: str, device: str) -> bool:
    """auto: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with
    AVX512-BF16 or AMX); elsewhere bf16 matmuls are emulated and far slower than fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    from lmforge.device import cpu_supports_bf16

    return cpu_supports_bf16()


# ---------------------------------------------------------------- one run


def run_tool(
    tool: str, job: Job, work: Path, round_index: int, timeout: float | None = None
) -> dict:
    out = work / "runs" / f"{tool}-{round_index}"
    out.mkdir(parents=True, exist_ok=True)
    step_log = out / "steps.json"
    step_log.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update(
        BENCH_STEP_LOG=str(step_log),
        BENCH_PAD_ID="0",  # Gemma's <pad>
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(HERE / "probe"), *tool_pythonpath(tool), env.get("PYTHONPATH")])
        ),
        HF_HUB_OFFLINE="1",
        DISABLE_VERSION_CHECK="1",  # LLaMA-Factory: accept this transformers
        TOKENIZERS_PARALLELISM="false",
    )
    if job.profile:
        env["BENCH_PROFILE"] = str(out / "profile.txt")
        (out / "profile.txt").unlink(missing_ok=True)
    if job.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = COMMANDS[tool](job, out)
    print(f"[round {round_index}] {tool}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(out / "output.log", "w") as log:
        # Its own process group: a run past --run-timeout is killed with whatever it started.
        process = subprocess.Popen(
            command, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            print(f"{tool} stopped after {timeout:.0f} s (--run-timeout)", flush=True)
            return {"failed": f"not finished within --run-timeout {timeout:.0f} s"}
    wall = time.perf_counter() - start
    if returncode != 0 or not step_log.exists():
        # Reported in the table (e.g. out of memory), and the other tools still run.
        tail = (out / "output.log").read_text(errors="replace").splitlines()[-25:]
        print(f"{tool} failed (exit {returncode}); end of {out / 'output.log'}:", flush=True)
        print("\n".join(tail), flush=True)
        reason = next(
            (line for line in reversed(tail) if "Error" in line), tail[-1] if tail else ""
        )
        return {"failed": f"exit {returncode}: {reason.strip()[:160]}"}
    measured = summarise(json.loads(step_log.read_text()), job)
    measured["wall_s"] = wall
    print(
        f"    {measured['tokens_per_s']:.1f} real tokens/s, {measured['s_per_step']:.2f} s/step, "
        f"peak {measured['peak_gib']:.2f} GiB, last loss {measured['last_loss']:.4f}"
        + (f"  INVALID: {measured['invalid']}" if measured["invalid"] else ""),
        flush=True,
    )
    return measured


def invalid_reason(steps: list[dict]) -> str | None:
    """A run whose loss or gradient norm is not finite (or whose loss is exactly 0, what a
    NaN-poisoned run logs in some tools) did not train: its speed means nothing."""
    for s in steps:
        for key in ("loss", "grad_norm"):
            value = s.get(key)
            if value is not None and not math.isfinite(value):
                return f"{key} {value} at step {s['step']}"
        if s.get("loss") == 0.0:
            return f"loss 0 at step {s['step']}"
    return None


def summarise(log: dict, job: Job) -> dict:
    """Speed over the measured steps: from the end of the last warm-up step to the end."""
    steps = sorted(log["steps"], key=lambda s: s["step"])
    if len(steps) < job.max_steps:
        raise SystemExit(f"the probe saw {len(steps)} steps, expected {job.max_steps}")
    warm, measured = steps[job.warmup_steps - 1], steps[job.warmup_steps : job.max_steps]
    elapsed = measured[-1]["t_end"] - warm["t_end"]
    real = sum(s["real"] for s in measured)
    shape = Shape.from_model_dir(job.model_dir, job.lora_rank)
    flops = sum(step_flops(shape, s["lengths"], s["trained"])["total"] for s in measured)
    info = log["info"]
    peak_bytes = info.get("cuda_peak_bytes") or info["maxrss_kib"] * 1024
    return {
        "tokens_per_s": real / elapsed,
        "s_per_step": elapsed / len(measured),
        "real_tokens": real,
        "computed_positions": sum(s["computed"] for s in measured),
        "peak_gib": peak_bytes / 2**30,
        "last_loss": measured[-1].get("loss", float("nan")),
        "flops_per_s": flops / elapsed,
        "invalid": invalid_reason(steps),
        "info": info,
    }


# ---------------------------------------------------------------- the table


def table(results: dict[str, list[dict]], peaks: dict[str, float], job: Job) -> str:
    lines = [
        "| tool | real tokens/s | s/step | peak memory (GiB) | loss at last step | MFU | padding computed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tool, runs in results.items():
        if not runs:
            continue
        failed = [r["failed"] for r in runs if r.get("failed")]
        if failed:
            lines.append(f"| {tool} | failed: {failed[0]} | | | | | |")
            continue
        bad = [r["invalid"] for r in runs if r.get("invalid")]
        if bad:
            lines.append(f"| {tool} | invalid: {bad[0]} | | | | | |")
            continue
        dtype = _matmul_dtype(runs[0]["info"])
        tps = [r["tokens_per_s"] for r in runs]
        mfu = statistics.median(r["flops_per_s"] for r in runs) / peaks[dtype]
        padding = 1 - sum(r["real_tokens"] for r in runs) / sum(
            r["computed_positions"] for r in runs
        )
        spread = f" ({min(tps):.1f}-{max(tps):.1f})" if len(tps) > 1 else ""
        lines.append(
            f"| {tool} ({dtype}) | {statistics.median(tps):.1f}{spread} "
            f"| {statistics.median(r['s_per_step'] for r in runs):.2f} "
            f"| {statistics.median(r['peak_gib'] for r in runs):.2f} "
            f"| {statistics.median(r['last_loss'] for r in runs):.4f} "
            f"| {100 * mfu:.1f} % | {100 * padding:.0f} % |"
        )
    peak_text = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    lines.append("")
    lines.append(
        f"Median of {max(len(r) for r in results.values())} rounds (range in brackets); "
        f"{job.measured_steps} measured steps after {job.warmup_steps} warm-up; batch "
        f"{job.batch_size}, cutoff {job.cutoff}, LoRA r={job.lora_rank} on all linear layers. "
        f"Matmul peak measured in this run on {job.device}: {peak_text}."
    )
    return "\n".join(lines)


def _matmul_dtype(info: dict) -> str:
    if info.get("bf16"):
        return "bfloat16"
    dtypes = info.get("param_dtypes", {})
    return (
        "bfloat16"
        if dtypes.get("torch.bfloat16", 0) > dtypes.get("torch.float32", 0)
        else "float32"
    )


def device_peak(dtype: str, device: str) -> float:
    """The matmul peak MFU divides by. On a GPU one 8192x8192x8192 product: small ones
    measure kernel-launch overhead, not the tensor cores."""
    if device == "cuda":
        return matmul_peak(dtype, device, seconds=1.0, shapes=[(8192, 8192, 8192)])
    return matmul_peak(dtype, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, in run order")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--run-timeout",
        type=float,
        help="seconds one tool's run may take; one past it is reported as not finished and "
        "the next tool runs (a GPU session's minutes are few)",
    )
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--model", help="a model folder (default: the embedded Gemma-3-270M)")
    parser.add_argument(
        "--model-shape",
        help="a random-weight model of a published shape (model_shapes.py: gemma-3-270m, "
        "gemma-3-1b, qwen3-1.7b, llama-3.2-3b) with the embedded tokenizer",
    )
    parser.add_argument("--tokenizer", help="--model-shape's tokenizer folder (default: embedded)")
    parser.add_argument(
        "--sites",
        type=Path,
        help="folder of per-tool wheel installs (site-lm, site-lf, site-liger) for a machine "
        "without internet, made by gpu/run.sh from gpu/prepare.sh's wheels",
    )
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--min-tokens", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cutoff", type=int, default=512)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--measured-steps", type=int, default=8)
    parser.add_argument(
        "--profile", action="store_true", help="torch.profiler tables in runs/*/profile.txt"
    )
    parser.add_argument("--work", type=Path, default=HERE / "work")
    args = parser.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(COMMANDS))
    if unknown:
        parser.error(f"unknown tool(s) {unknown}; choose from {', '.join(COMMANDS)}")
    global OFFLINE_SITES
    OFFLINE_SITES = args.sites.resolve() if args.sites else None
    if any(t.startswith("llamafactory") for t in tools) and OFFLINE_SITES is None:
        ensure_llamafactory(args.device)
    job = prepare_job(args, args.work)

    peaks = {d: device_peak(d, args.device) for d in ("float32", "bfloat16")}
    results: dict[str, list[dict]] = {t: [] for t in tools}
    for round_index in range(1, args.rounds + 1):
        for tool in tools:
            results[tool].append(run_tool(tool, job, args.work, round_index, args.run_timeout))
            write_results(args.work, results, peaks, job)  # kept if an outer limit stops the rest
    for dtype in peaks:  # the peak again at the end: the better of the two counts
        peaks[dtype] = max(peaks[dtype], device_peak(dtype, args.device))
    print("\n" + write_results(args.work, results, peaks, job))


def write_results(work: Path, results: dict[str, list[dict]], peaks: dict, job: Job) -> str:
    text = table(results, peaks, job)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(
        json.dumps({"job": str(job), "peaks": peaks, "results": results}, indent=1, default=str)
    )
    return text


if __name__ == "__main__":
    main()
