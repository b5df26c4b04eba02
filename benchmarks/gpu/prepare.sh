#!/usr/bin/env bash
# Where pip works: gather what benchmarks/gpu/run.sh needs on a GPU machine without internet,
# under benchmarks/gpu/carry/ (ignored by git; name it in the device call's `carry`):
#   tok/        the embedded model's tokenizer and config (the model shapes use its vocabulary)
#   whl-lm/     what lmforge needs beyond a CUDA image with torch + transformers + peft +
#               accelerate (trl, datasets, pydantic, ...); the plain script uses the same
#   whl-lf/     LLaMA-Factory 0.9.5 with the versions it pins (its own folder on PYTHONPATH)
#   whl-liger/  liger-kernel
#   whl-extra/  deepspeed (built here as a pure-Python wheel) and bitsandbytes: the
#               memory-saving paths (optional: PARTS="lm lf liger extra")
# Usage: bash benchmarks/gpu/prepare.sh [PARTS]   (default: all)
set -euo pipefail
cd "$(dirname "$0")"
parts=${1:-"tok lm lf liger extra"}
C=carry
mkdir -p $C
dl() {  # wheels for the GPU machine's Python 3.12, x86-64, no dependencies resolved
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" "$@"
}
for part in $parts; do
  case $part in
  tok)
    m=${MODEL_DIR:-$HOME/.cache/lmforge/models/gemma-3-270m}
    rm -rf $C/tok && mkdir -p $C/tok
    cp "$m/config.json" "$m/tokenizer_config.json" "$m/generation_config.json" $C/tok/
    gzip -c "$m/tokenizer.json" > $C/tok/tokenizer.json.gz ;;
  lm)
    rm -rf $C/whl-lm
    # the versions of this project's own venv (fsspec too: datasets caps it)
    dl $C/whl-lm "trl==1.16.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" \
      "fsspec==2026.9.0" "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.7.0" \
      "typing-inspection==0.4.5" ;;
  lf)
    rm -rf $C/whl-lf
    dl $C/whl-lf "llamafactory==0.9.5" "transformers==5.6.0" "tokenizers==0.22.2" \
      "peft==0.18.1" "trl==0.24.0" "datasets==4.0.0" "dill==0.3.8" "multiprocess==0.70.16" \
      "fsspec==2025.3.0" "accelerate==1.11.0" "omegaconf==2.3.0" \
      "pydantic==2.12.5" "pydantic-core==2.41.5" \
      "annotated-types==0.7.0" "typing-inspection==0.4.2" "tyro==0.8.14" \
      "docstring-parser==0.17.0" "shtab==1.7.2" "fire==0.7.1" "termcolor==3.2.0"
    # omegaconf's parser runtime is published as source only: a pure-Python wheel built here
    python3 -m pip wheel -q --no-deps -w $C/whl-lf "antlr4-python3-runtime==4.9.3" ;;
  liger)
    rm -rf $C/whl-liger
    dl $C/whl-liger "liger-kernel==0.8.5" ;;
  extra)
    rm -rf $C/whl-extra && mkdir -p $C/whl-extra
    dl $C/whl-extra "bitsandbytes==0.50.2" "hjson==3.1.0"
    # bitsandbytes ships a library per CUDA/ROCm version (129 MB unpacked): keep CUDA 13's, what
    # the GPU image has, so the carry stays small (BNB_KEEP_ALL=1 keeps them all)
    [ -n "${BNB_KEEP_ALL:-}" ] || zip -q -d $C/whl-extra/bitsandbytes-*.whl \
      'bitsandbytes/libbitsandbytes_cuda11*' 'bitsandbytes/libbitsandbytes_cuda12*' \
      'bitsandbytes/libbitsandbytes_rocm*' >/dev/null
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w $C/whl-extra \
      "deepspeed==${DEEPSPEED_VERSION:-0.19.8}" ;;
  esac
done
du -sh $C/* 
