#!/usr/bin/env bash
# Device check: prove the GPU path on one bare, offline GPU machine in under 10 minutes.
#
#   bash benchmarks/device_check.sh            # on the GPU machine (PYTHON=... to choose its Python)
#   bash benchmarks/device_check.sh --cpu      # here: the same parts on a CPU, tiny Llama shape, no install
#
# Carry (the folders to pass as `carry`, both git-ignored, filled by benchmarks/device_wheels.sh
# where PyPI is reachable; with the working tree they must stay under 64 MiB; device_wheels.sh
# prints the total and writes it to benchmarks/device_wheels/carry.json):
#   benchmarks/device_wheels    cp312 wheels + device-requirements.txt + device-nodeps.txt
#   benchmarks/device_models    config + tokenizer of SmolLM2-135M-Instruct and Llama-3.2-3B-Instruct
#
# The machine it is sized for: one NVIDIA GPU (H200), no network, Python 3.12 with torch 2.11
# (CUDA 13), transformers 5.17, peft, accelerate, tokenizers, pandas, matplotlib, tensorboard and
# sacrebleu preinstalled; ~15 minutes of machine time including its start.
#
# Steps:
#   1. environment: Python, CUDA torch, the two carried folders; a clear message and exit code
#      otherwise (2 usage, 3 no CUDA torch, 4 carry missing, 5 install failed)
#   2. install: a venv with --system-site-packages at $POLO_DEVICE_WORK/venv (plus a .pth naming
#      the base interpreter's site-packages, in case that interpreter is itself a venv or conda).
#      Not --user: the machine's own packages stay untouched and visible, pip only adds what is
#      missing (never a second torch), and deleting the folder undoes it. Not --target: pip then
#      ignores what is installed and would try to bring its own torch. Offline, from the carried
#      wheels: `pip install --no-index --find-links` of device-requirements.txt (with
#      dependencies, the preinstalled ones satisfy theirs), then unsloth + unsloth_zoo --no-deps
#      (requirements/gpu.txt). If the resolver refuses (a preinstalled version differs from what
#      device_wheels.sh assumed), every carried wheel is installed --no-deps and that is recorded.
#   3. python -m benchmarks.device.check: the parts below, each a process with a time box, the
#      JSON + markdown rewritten after each (benchmarks/device/check.py).
#
# Budget on an H200 (estimates: no GPU was lent when this was written; total <= 570 s):
#   environment + venv ~5 s; install ~50 s (pyarrow is 32 MB of the ~45 MB of wheels)
#   imports        ~30 s   import unsloth on the GPU path, bitsandbytes' CUDA 13 library, NF4 round trip
#   models         ~60 s   random weights on the GPU: 3B in bf16 (6.4 GB written), SmolLM2-135M
#   smoke         ~120 s   tiny Llama: prepare, train 4-bit and 16-bit (6 steps each), evaluate base vs
#                          tuned (2 examples, 16 tokens), export merged, one request to the server app
#   training-bf16 ~165 s   3 paths x (start + import ~20 s, load + NF4-quantize 3B ~25 s, 2 + 4 steps of
#                          batch 1 x 4 at max length 1024, ~15 s)
#   generation     ~60 s   3B shape bf16, 8 prompts x 64 new tokens, batched vs one at a time, 2 repeats
#   training-fp16 ~165 s   the same in fp16 (the T4's precision, measured on the H200)
#   generation-135m ~30 s  the same as generation at SmolLM2-135M's shape, 16-bit, only if time is left
# The boxes (check.py BOXES) hand a fast part's slack to the next; a part that would start with
# under 20 s left is recorded as skipped, not run. Throughput and memory do not depend on weight
# values: the random models stand for the real ones there (and only there).
#
# Output: one JSON + one markdown table in $POLO_DEVICE_RESULTS (default benchmarks/results/),
# named <date>-device-<gpu>, with the GPU, its memory, driver, versions, and per part its status,
# seconds, error and results; logs/ beside them (not meant to be committed).
# Environment: PYTHON (the GPU machine's Python, default python3), POLO_DEVICE_RESULTS,
# POLO_DEVICE_WHEELS, POLO_DEVICE_MODELS, POLO_DEVICE_WORK (scratch, default /dev/shm/polo-device when
# it has 20 GB free, else /tmp/polo-device), POLO_DEVICE_BUDGET_S (default 570).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
CPU=0
INSTALL=1
for arg in "$@"; do
    case "$arg" in
        --cpu) CPU=1; INSTALL=0 ;;
        --install) INSTALL=1 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//;/^set -uo/d'; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$arg' (use --cpu, --install or --help)" >&2; exit 2 ;;
    esac
done
PY="${PYTHON:-python3}"
WHEELS="${POLO_DEVICE_WHEELS:-benchmarks/device_wheels}"
MODELS="${POLO_DEVICE_MODELS:-benchmarks/device_models}"
RESULTS="${POLO_DEVICE_RESULTS:-benchmarks/results}"
BUDGET="${POLO_DEVICE_BUDGET_S:-570}"
if [ -z "${POLO_DEVICE_WORK:-}" ]; then
    if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 20000000 ]; then
        POLO_DEVICE_WORK=/dev/shm/polo-device
    else
        POLO_DEVICE_WORK=/tmp/polo-device
    fi
fi
export POLO_DEVICE_WORK POLO_DEVICE_RESULTS="$RESULTS" POLO_DEVICE_MODELS="$MODELS"

# ------------------------------------------------------------------ 1. environment
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "device_check.sh: no Python '$PY': set PYTHON to the GPU machine's Python 3.12." >&2
    exit 2
fi
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    echo "device_check.sh: $PY has no torch: this check expects the machine's preinstalled CUDA torch" \
         "(it never installs torch). Set PYTHON to the Python that has it." >&2
    exit 3
fi
if [ "$CPU" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "device_check.sh: $PY has torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
         "but no CUDA device is visible (torch.cuda.is_available() is False). This check needs the GPU" \
         "machine; on a CPU, run 'bash benchmarks/device_check.sh --cpu' for the plumbing only." >&2
    exit 3
fi
missing=""
if [ "$INSTALL" = 1 ]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1 || [ ! -f "$WHEELS/device-requirements.txt" ]; then
        missing="$missing $WHEELS (wheels + device-requirements.txt)"
    fi
fi
for shape in smollm2-135m-instruct llama-3.2-3b-instruct; do
    [ -f "$MODELS/$shape/config.json" ] || missing="$missing $MODELS/$shape"
done
if [ -n "$missing" ]; then
    echo "device_check.sh: missing:$missing." >&2
    echo "  Run 'bash benchmarks/device_wheels.sh' where PyPI is reachable, and carry" \
         "benchmarks/device_wheels and benchmarks/device_models (see the top of this script)." >&2
    exit 4
fi
mkdir -p "$POLO_DEVICE_WORK" "$RESULTS"
echo "[device-check] python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'))"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# ------------------------------------------------------------------ 2. install
HEADER="$POLO_DEVICE_WORK/header.json"
if [ "$INSTALL" = 1 ]; then
    VENV="$POLO_DEVICE_WORK/venv"
    install_start=$SECONDS
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv --system-site-packages --without-pip "$VENV" || {
            echo "device_check.sh: '$PY -m venv' failed: cannot make the install folder." >&2; exit 5; }
        # the base interpreter's own site-packages (it may itself be a venv or a conda env)
        "$PY" -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' \
            > "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_device_base.pth"
    fi
    VPY="$VENV/bin/python"
    if ! "$VPY" -m pip --version >/dev/null 2>&1; then
        echo "device_check.sh: $PY has no pip to install the carried wheels with." >&2; exit 5
    fi
    mode="resolved"
    if ! timeout 240 "$VPY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS" \
            -r "$WHEELS/device-requirements.txt" > "$POLO_DEVICE_WORK/install.log" 2>&1; then
        echo "[device-check] pip's resolver refused the carried set (see $POLO_DEVICE_WORK/install.log);" \
             "installing every carried wheel --no-deps instead"
        mode="no-deps fallback"
        cp "$POLO_DEVICE_WORK/install.log" "$POLO_DEVICE_WORK/install-resolver.log"
        timeout 240 "$VPY" -m pip install --disable-pip-version-check -q --no-index --no-deps "$WHEELS"/*.whl \
            >> "$POLO_DEVICE_WORK/install.log" 2>&1 || { tail -20 "$POLO_DEVICE_WORK/install.log" >&2;
            echo "device_check.sh: installing the carried wheels failed." >&2; exit 5; }
    fi
    timeout 120 "$VPY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS" --no-deps \
        -r "$WHEELS/device-nodeps.txt" >> "$POLO_DEVICE_WORK/install.log" 2>&1 || {
        tail -20 "$POLO_DEVICE_WORK/install.log" >&2; echo "device_check.sh: installing unsloth failed." >&2; exit 5; }
    "$VPY" - "$mode" "$((SECONDS - install_start))" "$WHEELS" "$HEADER" "$POLO_DEVICE_WORK/install.log" <<'PY'
import json, sys
from pathlib import Path
mode, seconds, wheels, header, log = sys.argv[1:]
carry = Path(wheels, "carry.json")
out = {"install": {"mode": mode, "seconds": int(seconds), "log_tail": Path(log).read_text()[-1500:]},
       "carry": json.loads(carry.read_text()) if carry.is_file() else None}
Path(header).write_text(json.dumps(out))
PY
    echo "[device-check] installed the carried wheels ($mode) in $((SECONDS - install_start)) s"
else
    VPY="$PY"
    echo '{"install": {"mode": "none (--cpu: the running environment as it is)"}}' > "$HEADER"
fi

# ------------------------------------------------------------------ 3. the parts
left=$((BUDGET - (SECONDS - START)))
args=(--deadline-s "$left" --header "$HEADER")
[ "$CPU" = 1 ] && args+=(--cpu)
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$VPY" -m benchmarks.device.check "${args[@]}"
status=$?
echo "[device-check] done in $((SECONDS - START)) s (exit $status); results in $RESULTS"
exit $status
