"""What every training path measures, the same way: per-step loss and tokens, step end times,
peak memory. Imports nothing from polo_lib, so the bare scripts stay bare."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

try:  # the probe's own figure, and its callers'
    from .memory import peak_rss_bytes  # noqa: F401
except ImportError:  # imported as `probe` by the path scripts beside it (their folder on sys.path)
    from memory import peak_rss_bytes  # noqa: F401


class StepProbe(TrainerCallback):
    """Loss and non-padding tokens of every optimizer step, and when each step ended.

    Time is taken at `on_step_end`, before the trainer logs, evaluates or saves, so throughput
    after warm-up is (tokens of steps warmup+1..N) / (end of step N - end of step warmup).
    """

    def __init__(self):
        self.ends: list[float] = []
        self.tokens_seen: list[int] = []
        self.losses: dict[int, float] = {}
        self.began: float | None = None  # when training began: loading ends there

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = self.began or time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.tokens_seen.append(int(state.num_input_tokens_seen))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])


def settings() -> dict:
    """The settings JSON named on the command line (written by the harness)."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: python {sys.argv[0]} SETTINGS.json RESULT.json")
    return json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))


def precision(dtype: str = "auto") -> str:
    """The training dtype for this machine, the rule polo_lib applies: "float32" without CUDA;
    "bfloat16" only from compute capability 8.0 (Ampere) on, "float16" below (a T4 is 7.5).

    Never `torch.cuda.is_bf16_supported()`: torch 2.13 counts emulation and says True on a T4,
    which would train several times slower in emulated bf16 there while polo_lib uses fp16.
    `dtype` is the settings' "dtype" (the params' model.dtype as the harness resolved it).
    """
    import torch

    if not torch.cuda.is_available():
        return "float32"
    capability = torch.cuda.get_device_capability()
    if dtype in ("auto", None):
        return "bfloat16" if capability >= (8, 0) else "float16"
    if dtype == "bfloat16" and capability < (8, 0):
        raise SystemExit(f"dtype bfloat16 asked, but compute capability {capability[0]}.{capability[1]} has no "
                         "bf16 hardware (torch would emulate it). Use float16.")
    return dtype


def read_messages(path: str) -> list[list[dict[str, str]]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def peak_memory() -> dict:
    import torch

    out = {"peak_rss_mib": round(peak_rss_bytes() / 2 ** 20, 1)}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        out["cuda_max_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2 ** 20, 1)
    return out


def label_tokens(dataset) -> list[int] | None:
    """Tokens each training example trains on (labels other than -100), in dataset order, from the
    dataset the trainer holds after masking; None when it has no labels column (masked in the collator).

    Compared exactly across the paths: which tokens are trained is a fact of the data, not of
    precision, so this holds on a GPU in fp16 where the losses can only agree approximately."""
    if dataset is None or "labels" not in getattr(dataset, "column_names", ()):
        return None
    return [sum(1 for label in labels if label != -100) for labels in dataset["labels"]]


def measure(trainer, model, s: dict, started: float, fit=None) -> None:
    """Train with a StepProbe attached and write the result JSON named on the command line: the
    one measuring protocol of all three paths. `fit` replaces `trainer.train` (polo's train.fit)."""
    step_probe = StepProbe()
    trainer.add_callback(step_probe)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained_from = time.perf_counter()
    (fit or trainer.train)()
    finish(sys.argv[2], step_probe, s, started, trained_from, trainable, label_tokens(trainer.train_dataset))


def finish(path: str, probe: StepProbe, s: dict, started: float, trained_from: float, trainable: int,
           labels: list[int] | None = None) -> None:
    """Write the result JSON: throughput over the steps after warm-up, losses, memory."""
    warm = s["warmup_steps"]
    steps = len(probe.ends)
    if steps != s["max_steps"]:
        raise SystemExit(f"ran {steps} steps, expected {s['max_steps']}")
    per_step = [b - a for a, b in zip([0] + probe.tokens_seen[:-1], probe.tokens_seen)]
    seconds = probe.ends[-1] - probe.ends[warm - 1]
    tokens = probe.tokens_seen[-1] - probe.tokens_seen[warm - 1]
    result = {
        "tokens_per_s": round(tokens / seconds, 2), "measured_steps": steps - warm,
        "measured_seconds": round(seconds, 3), "measured_tokens": tokens,
        "tokens_per_step": per_step, "losses": [probe.losses.get(i + 1) for i in range(steps)],
        "label_tokens": labels,
        "trainable_params": trainable, "load_seconds": round(trained_from - started, 2),
        "wall_seconds": round(time.perf_counter() - started, 2), **peak_memory(),
    }
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
