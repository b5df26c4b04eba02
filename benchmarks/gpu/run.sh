#!/usr/bin/env bash
# On a GPU machine without internet, from the repository root, after benchmarks/gpu/prepare.sh
# ran where pip works and its carry/ folder travelled along:
#   bash benchmarks/gpu/run.sh PART...     (default: env tests paths bench)
# PARTS: env (versions), tests (tests/gpu), paths (DeepSpeed/FSDP/QLoRA/pure_bf16, 3 steps each),
# bench (gemma-3-1b shape, every tool), bench3b (llama-3.2-3b shape: lmforge, plain, LF), kernels
# (in-process timings of the fused loss and MLP choices), profile (torch.profiler of two steps of
# lmforge and plain, host and GPU time). Results go to $OUT (or /tmp/out).
# TIME_LIMIT (s, default 500) bounds each part; RUN_TIMEOUT (s, default 150) each tool's run in
# bench/bench3b (one that hangs is reported as not finished and the next tool runs).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DISABLE_VERSION_CHECK=1
R=$PWD; C=$R/benchmarks/gpu/carry; S=/tmp/sites; OUT=${OUT:-/tmp/out}; W=/tmp/work
mkdir -p "$OUT" $S $W
limit=${TIME_LIMIT:-500}
parts=${*:-env tests paths bench}
for d in $([ -n "${SKIP_WHEELS:-}" ] || echo "$C"/whl-*); do  # SKIP_WHEELS=1: a CPU dry run  # each wheel folder into its own site: site-lm, site-lf, ...
  [ -d "$d" ] && [ ! -d "$S/site-${d##*whl-}" ] && python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --target "$S/site-${d##*whl-}" "$d"/*.whl 2>&1 | grep -v WARNING | tail -2
done
mkdir -p /tmp/tok && cp "$C"/tok/*.json /tmp/tok/ && gunzip -c "$C"/tok/tokenizer.json.gz > /tmp/tok/tokenizer.json
# lmforge on the image's torch/transformers/peft/accelerate plus site-lm (and the extras)
LM=$R/src:$S/site-lm:$S/site-liger; [ -d $S/site-extra ] && LM=$LM:$S/site-extra
for part in $parts; do
  echo "=================== $part"
  case $part in
  env)
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      PYTHONPATH=$LM python3 -c "import torch, transformers, peft, accelerate, trl, datasets
print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, '| accelerate', accelerate.__version__, '| trl', trl.__version__, '| datasets', datasets.__version__)
from lmforge.model import varlen_kernels as k; print('torch varlen_attn:', k.torch_varlen_available(), '| flash-attn:', k.flash_attn_available())"
      for site in lf liger extra; do [ -d $S/site-$site ] && ls $S/site-$site | grep -i "dist-info" | tr '\n' ' '; echo; done
    } 2>&1 | tee "$OUT/env.txt" ;;
  tests)
    PYTHONPATH=$LM timeout $limit python3 -m pytest -q -p no:cacheprovider tests/gpu tests/train/test_varlen_kernels.py \
      2>&1 | tee "$OUT/tests.log" | tail -25 ;;
  paths)
    PYTHONPATH=$LM timeout $limit python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from model_shapes import build; from pathlib import Path; build('gemma-3-270m', Path('/tmp/tok'), Path('$W/models'))"
    PYTHONPATH=$LM timeout $limit python3 benchmarks/gpu/paths.py --model $W/models/gemma-3-270m-shape \
      --work $W/paths ${PATHS_LIST:+--paths $PATHS_LIST} 2>&1 | tee "$OUT/paths.log" | tail -20 ;;
  profile)  # torch.profiler (host and device) of two steps: is the step waiting on the GPU?
    timeout $limit python3 benchmarks/run.py --device cuda --precision bf16 --model-shape gemma-3-1b \
      --tokenizer /tmp/tok --sites $S --tools ${TOOLS_PROFILE:-lmforge,plain} --rounds 1 --records 96 \
      --min-tokens 128 --max-tokens 1536 --cutoff 2048 --batch-size 4 --warmup-steps 2 \
      --measured-steps 2 --profile --work $W/profile 2>&1 | tail -8
    for f in $W/profile/runs/*/profile.txt; do echo "===== $f"; cat $f; done > "$OUT/profile.txt" 2>/dev/null
    grep -h "^## step\|^wall" "$OUT/profile.txt" ;;
  kernels)
    PYTHONPATH=$LM timeout $limit python3 benchmarks/gpu/kernels.py --tokenizer /tmp/tok 2>&1 | tee "$OUT/kernels.log" | tail -20 ;;
  bench|bench3b)
    shape=gemma-3-1b; batch=8; tools=${TOOLS:-lmforge,lmforge_liger,lmforge_padded,plain,llamafactory,llamafactory_liger}
    [ $part = bench3b ] && shape=llama-3.2-3b && batch=4 && tools=${TOOLS3B:-lmforge,plain,llamafactory_liger}
    timeout $limit python3 benchmarks/run.py --device cuda --precision bf16 --model-shape $shape \
      --tokenizer /tmp/tok --sites $S --tools $tools --rounds 1 --records 384 --min-tokens 128 \
      --max-tokens 1536 --cutoff 2048 --batch-size $batch --warmup-steps 3 --measured-steps 10 \
      --run-timeout ${RUN_TIMEOUT:-150} --work $W/$part 2>&1 | tee "$OUT/$part.log" | grep -v "it/s\]\|s/it\]" | tail -30
    cp $W/$part/results.md "$OUT/$part.md" 2>/dev/null
    for d in $W/$part/runs/*/; do echo "===== $(basename $d)"; tail -c 3000 $d/output.log; done > "$OUT/$part-runs.log" 2>/dev/null ;;
  esac
done
cp $W/paths/paths.md "$OUT/" 2>/dev/null
ls "$OUT"
