#!/usr/bin/env bash
# One prepared GPU check for a session that has a device machine (see bench/RESULTS.md,
# sft_throughput). Two steps:
#
#   here:    bash bench/gpu_session.sh fetch     # wheels the device lacks, into .whl/ (git-ignored)
#   device:  bash bench/gpu_session.sh run       # carry [".whl"]; ~8 minutes on an H200 (timeout_s 600)
#   device:  bash bench/gpu_session.sh kd        # carry [".whl"]; KD vs SFT step cost (bench/kd_step_cost.py), ~6 min
#
# `run` installs the wheels into /tmp/site, then runs bench/sft_throughput.py on the
# Qwen2.5-0.5B shape: plain TRL vs sft's default (padded batches of 8, as TRL's), and the
# candidates: gradient checkpointing (as TRL), padded batch 32, length-grouped batch 8 and 32, FlexAttention with BFD packing
# at batch 8/16/32; then the GPU-marked tests (FlexAttention packing, the KD loss on bf16).
# Everything it prints ends up in the run's output; $OUT/sft_throughput.log keeps a copy.
set -euo pipefail
cd "$(dirname "$0")/.."

# On the device: the carried wheels into /tmp/site (pyarrow only where the device's is older
# than datasets needs), the environment for an offline run, and the card's name.
on_device() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    if ! python3 -c "import sys, pyarrow; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)"; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/extra/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
        HF_DATASETS_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

case "${1:-}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl trl==1.16.0 datasets==5.2.0 multiprocess==0.70.19 dill==0.4.1
    # datasets 5.2 needs pyarrow >= 24; installed there only if the device's is older (55 MB).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl/extra pyarrow==26.0.1
    ls -la .whl .whl/extra
    ;;
run)
    on_device
    python3 -c "import torch, transformers, trl, peft; import pyarrow, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
    out=${OUT:-/tmp}
    timeout 420 python3 bench/sft_throughput.py --shape qwen05b --steps 30 --batch 8 \
        --variant "ckpt:gradient_checkpointing=true" --variant "padded32:batch_size=32" \
        --variant "grouped8:group_by_length=true" \
        --variant "grouped32:group_by_length=true,batch_size=32" \
        --variant "flex8:attn_implementation=flex_attention" \
        --variant "flex16:attn_implementation=flex_attention,batch_size=16" \
        --variant "flex32:attn_implementation=flex_attention,batch_size=32" 2>&1 | grep -v "it/s\]" | tee "$out/sft_throughput.log" || true
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/sft 2>&1 | tail -15 || true  # ~150 s on an H200
    ;;
kd)  # issue 30: a KD step vs an SFT step at Qwen2.5's vocabulary (~4 min), then the gpu-marked tests
    on_device
    out=${OUT:-/tmp}
    timeout 400 python3 bench/kd_step_cost.py --shape qwen05b --steps 30 --batch 8 --k 20 2>&1 | grep -v "it/s\]" | tee "$out/kd_step_cost.log" || true
    timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/sft 2>&1 | tail -15 || true
    ;;
*)
    echo "usage: bash bench/gpu_session.sh fetch|run|kd" >&2
    exit 2
    ;;
esac
