#!/usr/bin/env bash
# GPU check: the training comparison (polo_lib vs bare Unsloth + TRL vs transformers + PEFT +
# bitsandbytes 4-bit) and batched vs one-at-a-time generation, with the default 3B recipe
# (params/default.yaml: 4-bit NF4, LoRA r16 on q/k/v/o, batch 1 x 4, max length 1024).
#
#   POLO_GPU_MODEL=/models/Llama-3.2-3B-Instruct-bnb-4bit bash benchmarks/gpu_check.sh /path/to/gpu-env/bin/python
#   (or PYTHON=/path/to/gpu-env/bin/python; default: the `python` on PATH)
#
# The model comes from a local folder (no hub): download it once where the internet is reachable,
# e.g. `huggingface-cli download unsloth/Llama-3.2-3B-Instruct-bnb-4bit --local-dir /models/...`.
# Needs the Python of a GPU environment: CUDA torch + the pinned GPU stack (requirements/gpu.txt:
# environment.yml, the Dockerfile, or on Colab `pip install --no-deps -r requirements/gpu.txt` then
# `pip install -e .`). Not .venv: `make setup` installs unsloth there --no-deps for the CPU, without
# bitsandbytes, so the 4-bit load would fail; this script refuses such an environment up front.
# Writes benchmarks/results/<date>-<host>.json and .md with the GPU's name and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-python}}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check.sh: no Python '$PY': pass the GPU environment's Python as the argument or PYTHON=." >&2
    exit 2
fi
: "${POLO_GPU_MODEL:?set POLO_GPU_MODEL to a local folder holding the 3B model (see the top of this script)}"
if [ ! -f "$POLO_GPU_MODEL/config.json" ]; then
    echo "POLO_GPU_MODEL=$POLO_GPU_MODEL has no config.json: point it at a downloaded model folder." >&2
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check.sh: $PY has no CUDA torch (or no GPU is visible): this check needs a GPU and a CUDA" \
         "install of torch; then 'pip install -r requirements/gpu.txt' (see its header) in that environment." >&2
    exit 3
fi
if ! "$PY" -c "import bitsandbytes" >/dev/null 2>&1; then
    echo "gpu_check.sh: $PY cannot import bitsandbytes, which the 4-bit recipe needs:" \
         "run '$PY -m pip install -r requirements/gpu.txt' (pinned GPU stack) in that environment." >&2
    exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m benchmarks training generation --params default --set "model.model_name=$POLO_GPU_MODEL" \
    --repeats "${REPEATS:-3}" --warmup-steps 3 --steps "${STEPS:-10}" \
    --examples 6 --max-new-tokens 256 --batch-size 6
