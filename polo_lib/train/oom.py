"""Out of memory in training: the ways out, from the params, and the error that says how to continue the run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import device as device_lib
from .. import model as model_lib
from ..errors import RunError
from .resume import _valid_checkpoint, checkpoints

if TYPE_CHECKING:
    from .session import Session


@dataclass(frozen=True)
class WayOut:
    """One way out of an out-of-memory failure: what to change and whether the run can continue
    with it (only a new split of the same effective batch can; other changes need a new run)."""
    what: str
    overrides: dict[str, Any]
    continues_run: bool


def smaller_micro_batch(batch: int) -> int:
    """The largest divisor of `batch` that is at most half of it (1 for 1, 2 or 3): the micro-batch
    that keeps the effective batch whole with more accumulation."""
    return max(d for d in range(1, batch // 2 + 1) if batch % d == 0) if batch > 1 else 1


def oom_ways_out(training, lora, max_seq_length: int, longest: int | None, four_bit: bool) -> list[WayOut]:
    """The ways out of running out of memory in training, best first, from the params and whether the
    base already loaded in 4-bit (`four_bit`: then a 4-bit base is no way out)."""
    bs, ga = training.per_device_train_batch_size, training.gradient_accumulation_steps
    out = []
    if bs > 1:
        new = smaller_micro_batch(bs)
        more = ga * bs // new
        out.append(WayOut(f"a smaller micro-batch, the same effective batch of {bs * ga}: "
                          f"per_device_train_batch_size {bs} -> {new}, gradient_accumulation_steps {ga} -> {more}",
                          {"training.per_device_train_batch_size": new, "training.gradient_accumulation_steps": more},
                          continues_run=True))
    if lora.use_gradient_checkpointing == "false":
        out.append(WayOut("recompute activations instead of keeping them: lora.use_gradient_checkpointing "
                          "'unsloth' on a GPU ('true' on a CPU)", {"lora.use_gradient_checkpointing": "unsloth"},
                          continues_run=False))
    if longest and longest < max_seq_length:
        out.append(WayOut(f"a shorter sequence limit: model.max_seq_length {max_seq_length} -> {longest} (the longest "
                          "training example; nothing is cut)", {"model.max_seq_length": longest}, continues_run=False))
    if bs == 1 and not four_bit:
        out.append(WayOut("the model itself does not fit at micro-batch 1: a 4-bit base (model.load_in_4bit: true; "
                          "NF4 weights take a quarter of 16-bit ones)", {"model.load_in_4bit": True},
                          continues_run=False))
    elif bs == 1:
        out.append(WayOut("the model does not fit at micro-batch 1 even on its 4-bit base: a smaller lora.r, fewer "
                          "lora.target_modules, or a smaller model", {}, continues_run=False))
    return out


def continue_command(run, overrides: dict[str, Any]) -> str:
    """The command line that continues `run` with `overrides` (its params.yaml, the changes as --set)."""
    return f"polo run {run.params_path} --run-id {run.id} " + " ".join(f"--set {k}={v}" for k, v in overrides.items())


def _out_of_memory(session: Session, error: BaseException) -> RunError:
    """The run's record and a RunError for an out-of-memory failure: the step, the memory figures,
    the ways out and the exact command that continues the run from its last checkpoint."""
    from ..data import load_stats
    from ..inference import free_memory

    cfg, run, state = session.cfg, session.run, session.trainer.state
    try:
        longest = load_stats(cfg.data)["token_lengths"]["train"]["max"]
    except (OSError, KeyError, ValueError):
        longest = None
    session.trainer.model.zero_grad(set_to_none=True)  # the gradients of the failed step
    free_memory()
    memory = device_lib.memory_in_use()
    ways = oom_ways_out(cfg.training, cfg.lora, cfg.model.max_seq_length, longest,
                        four_bit=model_lib.count_4bit_layers(session.lm.model) > 0)
    last = next((p.name for p in reversed(checkpoints(run)) if _valid_checkpoint(p)), None)
    follow = next((w for w in ways if w.continues_run), None)
    command = continue_command(run, follow.overrides) if follow else None
    record = {"step": state.global_step + 1, "error": f"{type(error).__name__}: {str(error)[:300]}",
              "memory": memory, "ways_out": [w.what for w in ways], "continue_from": last, "command": command}
    run.update_manifest(training={"status": "failed", "out_of_memory": record})
    figures = ", ".join(f"{k} {v}" for k, v in memory.items() if k != "device")
    lines = [f"out of memory ({memory['device']}) in training step {record['step']} of {state.max_steps} "
             f"({type(error).__name__}); memory in GiB: {figures}.", "Ways out:"]
    lines += [f"  - {w.what}" + (" (this run continues)" if w.continues_run else " (a new run)") for w in ways]
    if command:
        where = f"from {last}" if last else "from step 0 (no checkpoint was saved yet)"
        lines.append(f"Continue this run {where} with the first: {command}\n  (in a notebook: train.ipynb "
                     f"with run_id = '{run.id}' and overrides = {follow.overrides})")
    return RunError("\n".join(lines))
