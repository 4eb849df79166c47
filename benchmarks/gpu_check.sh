#!/usr/bin/env bash
# GPU check: the training comparison (polo_lib vs bare Unsloth + TRL vs transformers + PEFT +
# bitsandbytes 4-bit) and batched vs one-at-a-time generation, with the default 3B recipe
# (params/default.yaml: 4-bit NF4, LoRA r16 on q/k/v/o, batch 1 x 4, max length 1024).
#
#   POLO_GPU_MODEL=/models/Llama-3.2-3B-Instruct-bnb-4bit bash benchmarks/gpu_check.sh
#
# The model comes from a local folder (no hub): download it once where the internet is reachable,
# e.g. `huggingface-cli download unsloth/Llama-3.2-3B-Instruct-bnb-4bit --local-dir /models/...`.
# Needs a CUDA install of this package (environment.yml, or `pip install -e .[gpu]` on Colab).
# Writes benchmarks/results/<date>-<host>.json and .md with the GPU's name and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
: "${POLO_GPU_MODEL:?set POLO_GPU_MODEL to a local folder holding the 3B model (see the top of this script)}"
if [ ! -f "$POLO_GPU_MODEL/config.json" ]; then
    echo "POLO_GPU_MODEL=$POLO_GPU_MODEL has no config.json: point it at a downloaded model folder." >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "$PY has no CUDA torch: this check needs a GPU and a CUDA install (environment.yml)." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export HF_HUB_OFFLINE=1
"$PY" -m benchmarks training generation --params default --set "model.model_name=$POLO_GPU_MODEL" \
    --repeats "${REPEATS:-3}" --warmup-steps 3 --steps "${STEPS:-10}" \
    --examples 6 --max-new-tokens 256 --batch-size 6
