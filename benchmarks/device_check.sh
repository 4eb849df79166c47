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
# Budget (estimates for an H100/H200: no GPU was lent when this was written; check.py ESTIMATES
# holds the same numbers and a test keeps the two equal and within the budget). The clock starts
# at this script's first line; the parts must end by POLO_DEVICE_BUDGET_S (default 540 s), which
# leaves 60 s to the device tool's 600 s kill; every part's time box ends 15 s (check.py
# STOP_GRACE_S, the SIGTERM + SIGKILL wait) before that. The T4's precision (fp16) and the 4-bit
# path come first, the optional parts last:
#   setup           ~55 s   environment + venv ~5 s; install ~50 s (pyarrow is 32 MB of the ~45 MB of wheels)
#   imports         ~30 s   import unsloth on the GPU path, bitsandbytes' CUDA 13 library, NF4 round trip
#   models          ~60 s   random weights on the GPU: 3B in bf16 (6.4 GB written), SmolLM2-135M
#   training-fp16  ~165 s   3B shape in NF4 4-bit at fp16 (the T4's precision): 3 paths x (start + import
#                           ~20 s, load + NF4-quantize ~25 s, 2 + 4 steps of batch 1 x 4 at max length 1024 ~15 s)
#   smoke          ~120 s   tiny Llama: prepare, train 4-bit and 16-bit (6 steps each, task metrics at step 0
#                           on 13a tokens: kiwipiepy is not carried), evaluate base vs tuned (2 examples,
#                           16 tokens), export merged, one request to the server app
#   generation      ~60 s   3B shape bf16, 8 prompts x 64 new tokens, batched vs one at a time, 2 repeats
#   generation-135m ~30 s   the same at SmolLM2-135M's shape, 16-bit
#   = 520 s of the 525 s before the last box must end
#   training-bf16  ~165 s   the training comparison in bf16: only on the time left (its finished paths are
#                           kept); run it alone with POLO_DEVICE_PARTS=imports,models,training-bf16
# The boxes (check.py BOXES) hand a fast part's slack to the next; a part that would start with
# under 20 s left (60 s for training) is recorded as skipped, not run. Throughput and memory do not
# depend on weight values: the random models stand for the real ones there (and only there).
#
# Output: one JSON + one markdown table in $POLO_DEVICE_RESULTS, else $OUT (the device tool brings
# back only what is written there), else benchmarks/results/; named <date>-device-<gpu>, with the
# GPU, its memory, driver, versions, and per part its status, seconds, error and results, rewritten
# after every part and every training path; logs/<part>.log beside them (unbuffered, so a killed
# part's log ends where it was killed) and logs/parts/ the parts' own result files, each training
# path's figures written the moment it ends (neither meant to be committed).
# Environment: PYTHON (the GPU machine's Python, default python3), POLO_DEVICE_RESULTS, OUT,
# POLO_DEVICE_WHEELS, POLO_DEVICE_MODELS, POLO_DEVICE_WORK (scratch, default /dev/shm/polo-device when
# it has 20 GB free, else /tmp/polo-device), POLO_DEVICE_BUDGET_S (default 540), POLO_DEVICE_PARTS
# (a subset, e.g. imports,models,training-bf16), POLO_DEVICE_BOXES (time boxes in s replacing the
# defaults, e.g. smoke=5,training-fp32=60: the CPU rehearsal of a part killed at its box).
#
# CPU rehearsal of the device's limits (a fake $OUT, short boxes):
#   OUT=/tmp/out POLO_DEVICE_BOXES=training-fp32=40,smoke=5 bash benchmarks/device_check.sh --cpu
set -uo pipefail
# The clock starts first: everything below (torch's import, nvidia-smi, the install) counts.
START=$SECONDS
BUDGET="${POLO_DEVICE_BUDGET_S:-540}"
case "$BUDGET" in
    ''|*[!0-9]*) echo "device_check.sh: POLO_DEVICE_BUDGET_S must be whole seconds, got '$BUDGET'" >&2; exit 2 ;;
esac
DEADLINE=$(( $(date +%s) + BUDGET ))  # epoch seconds, handed to check.py
cd "$(dirname "$0")/.."
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
RESULTS="${POLO_DEVICE_RESULTS:-${OUT:-benchmarks/results}}"
if [ -z "${POLO_DEVICE_WORK:-}" ]; then
    if [ -d /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 20000000 ]; then
        POLO_DEVICE_WORK=/dev/shm/polo-device
    else
        POLO_DEVICE_WORK=/tmp/polo-device
    fi
fi
export POLO_DEVICE_WORK POLO_DEVICE_RESULTS="$RESULTS" POLO_DEVICE_MODELS="$MODELS" PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - (SECONDS - START) )); }

# ------------------------------------------------------------------ 1. environment
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "device_check.sh: no Python '$PY': set PYTHON to the GPU machine's Python 3.12." >&2
    exit 2
fi
# one interpreter start for all of torch's answers (each import of a CUDA torch costs seconds)
TORCH="$("$PY" -c 'import sys, torch; print(torch.__version__, torch.version.cuda, int(torch.cuda.is_available()), sys.version.split()[0])' 2>/dev/null)"
if [ -z "$TORCH" ]; then
    echo "device_check.sh: $PY has no torch: this check expects the machine's preinstalled CUDA torch" \
         "(it never installs torch). Set PYTHON to the Python that has it." >&2
    exit 3
fi
read -r TORCH_VERSION TORCH_CUDA TORCH_HAS_CUDA PY_VERSION <<< "$TORCH"
if [ "$CPU" = 0 ] && [ "$TORCH_HAS_CUDA" != 1 ]; then
    echo "device_check.sh: $PY has torch $TORCH_VERSION but no CUDA device is visible" \
         "(torch.cuda.is_available() is False). This check needs the GPU machine; on a CPU, run" \
         "'bash benchmarks/device_check.sh --cpu' for the plumbing only." >&2
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
echo "[device-check] python: $PY ($PY_VERSION torch $TORCH_VERSION cuda $TORCH_CUDA); budget $BUDGET s," \
     "$(left) s left; results in $RESULTS"
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
    cap() { local l; l=$(left); [ "$l" -lt 1 ] && l=1; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }  # never past the budget
    if ! "$VPY" -m pip --version >/dev/null 2>&1; then
        echo "device_check.sh: $PY has no pip to install the carried wheels with." >&2; exit 5
    fi
    mode="resolved"
    if ! timeout "$(cap 240)" "$VPY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS" \
            -r "$WHEELS/device-requirements.txt" > "$POLO_DEVICE_WORK/install.log" 2>&1; then
        echo "[device-check] pip's resolver refused the carried set (see $POLO_DEVICE_WORK/install.log);" \
             "installing every carried wheel --no-deps instead"
        mode="no-deps fallback"
        cp "$POLO_DEVICE_WORK/install.log" "$POLO_DEVICE_WORK/install-resolver.log"
        timeout "$(cap 240)" "$VPY" -m pip install --disable-pip-version-check -q --no-index --no-deps "$WHEELS"/*.whl \
            >> "$POLO_DEVICE_WORK/install.log" 2>&1 || { tail -20 "$POLO_DEVICE_WORK/install.log" >&2;
            echo "device_check.sh: installing the carried wheels failed." >&2; exit 5; }
    fi
    timeout "$(cap 120)" "$VPY" -m pip install --disable-pip-version-check -q --no-index --find-links "$WHEELS" --no-deps \
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
args=(--deadline-at "$DEADLINE" --header "$HEADER" --results "$RESULTS")
[ "$CPU" = 1 ] && args+=(--cpu)
[ -n "${POLO_DEVICE_PARTS:-}" ] && args+=(--parts "$POLO_DEVICE_PARTS")
[ -n "${POLO_DEVICE_BOXES:-}" ] && args+=(--boxes "$POLO_DEVICE_BOXES")
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$VPY" -u -m benchmarks.device.check "${args[@]}"
status=$?
echo "[device-check] done in $((SECONDS - START)) s (exit $status); results in $RESULTS"
exit $status
