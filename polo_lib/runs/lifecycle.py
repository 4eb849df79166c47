"""Making and continuing runs: open_run (new id, folder, manifest; same params to continue) and finish_stage."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import params as params_lib
from .. import paths, trackers
from ..atomic import atomic_write_json
from ..errors import RunError
from ..notebook import on_cell_error, say
from .catalog import lookup
from .folder import Run, _now, _unused_name
from .provenance import git_state, package_versions

SUBFOLDERS = ("notebooks", "checkpoints", "adapter", "logs", "eval", "plots")


def new_run_id(cfg) -> str:
    """UTC time + params name + hash of the resolved params; a suffix if that folder exists."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return _unused_name(paths.runs_dir(), f"{stamp}-{cfg.name}-{cfg.short_hash()}")


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write to {folder} ({e.strerror}). Point POLO_OUTPUTS at a writable "
                       "folder or fix the permissions.") from None


def open_run(cfg, run_id: str | None = None, stage: str | None = None,
             may_differ: tuple[str, ...] = (), create: bool = True) -> Run | None:
    """A new run folder (run_id None), or the existing run `run_id` with the same params;
    `stage`: that stage starts now (finish it with `finish_stage`).

    create=False: no run_id means no run (None), for a stage that may run alone outside any
    run, as prepare_data.ipynb does; with `polo run` it is a stage of that run.

    The resolved params are written before any work starts. Continuing a run with different
    params is refused: a run folder describes one experiment. Sections in `may_differ`
    (the evaluate stage's `evaluation`) may change; the values used are recorded per stage.
    """
    if run_id is None and not create:
        return None
    if run_id is None:
        from ..device import decide, describe

        device = describe()
        decisions = decide(device, cfg.model, cfg.lora, cfg.training)  # a GPU recipe on a CPU: refused, no folder made
        check_writable(paths.runs_dir())
        run_id = new_run_id(cfg)
        run = Run(run_id, paths.runs_dir() / run_id)
        run.path.mkdir(parents=True)
        for sub in SUBFOLDERS:
            (run.path / sub).mkdir()
        params_lib.save(cfg, run.params_path)
        atomic_write_json(run.manifest_path, _initial_manifest(run, cfg, device, decisions))
    else:
        run = lookup(run_id, status=None)
        check_writable(run.path)
        saved = run.params()
        differ = [d for d in _differences(saved.to_dict(), cfg.to_dict()) if d[0].split(".", 1)[0] not in may_differ]
        if differ and _only_the_micro_batch_split(differ, saved, cfg, run):
            _record_split_change(run, saved, cfg)
        elif differ:
            text = "; ".join(f"{key}: {a!r} in the run, {b!r} now" for key, a, b in differ[:8])
            raise RunError(f"run {run_id} was made with other params ({text}). Continue it with the same params "
                           "(only a new split of the same effective batch, per_device_train_batch_size x "
                           "gradient_accumulation_steps, may change in an unfinished training), or start a new run ("
                           + say("leave out --run-id", "run_id = None") + ").")
        if "align" in may_differ and saved.align != cfg.align:  # the run's model is aligned as said from now on
            params_lib.save(saved.model_copy(update={"align": cfg.align}), run.params_path)
    if stage:
        run.start_stage(stage)
        for section in may_differ:
            run.update_manifest(**{f"{stage}_params": {section: cfg.to_dict()[section]}})
        on_cell_error(run.fail)
    return run


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every param that differs."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in params_lib.META:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append((f"{prefix}{key}", va, vb))
    return out


MICRO_BATCH = "training.per_device_train_batch_size"
ACCUMULATION = "training.gradient_accumulation_steps"


def _split(training) -> tuple[int, int]:
    return training.per_device_train_batch_size, training.gradient_accumulation_steps


def _only_the_micro_batch_split(differ: list[tuple[str, Any, Any]], saved, cfg, run: Run) -> bool:
    """True when only the micro-batch and accumulation differ, their product (the effective batch,
    the samples per optimizer step) is the same, and the run's training has not finished: then the
    run may continue from its last checkpoint with the new split (the way out of running out of
    memory) and trains on the same samples per step."""
    if {key for key, _, _ in differ} - {MICRO_BATCH, ACCUMULATION}:
        return False
    (bs, ga), (new_bs, new_ga) = _split(saved.training), _split(cfg.training)
    finished = (run.manifest().get("training") or {}).get("status") == "finished"
    return bs * ga == new_bs * new_ga and not finished


def _record_split_change(run: Run, saved, cfg) -> None:
    """params.yaml (`saved`, as the run has it) takes the new split (the rest of the training uses
    it); the manifest keeps every change, so the record says which steps trained with which split."""
    names = ("per_device_train_batch_size", "gradient_accumulation_steps")
    before, after = dict(zip(names, _split(saved.training))), dict(zip(names, _split(cfg.training)))
    manifest = run.manifest()
    out_of_memory = (manifest.get("training") or {}).get("out_of_memory") or {}
    change = {"at": _now(), "out_of_memory_at_step": out_of_memory.get("step"), "from": before, "to": after,
              "effective_batch": after[names[0]] * after[names[1]]}
    params_lib.save(saved.model_copy(update={"training": saved.training.model_copy(update=after)}), run.params_path)
    run.update_manifest(batch_split_changes=[*(manifest.get("batch_split_changes") or []), change])


def _initial_manifest(run: Run, cfg, device, decisions) -> dict[str, Any]:
    return {
        "run_id": run.id, "params_name": cfg.name, "params_source": cfg.source, "params_chosen_by": cfg.chosen_by,
        "params_hash": cfg.short_hash(), "status": "created", "created": _now(), "updated": _now(),
        "seed": cfg.training.seed, "git": git_state(), "versions": package_versions(),
        "python": platform.python_version(), "platform": platform.platform(),
        "device": device.as_dict(), "stages": {}, "error": None,
        # what this device will run the params with: the same function model.load and training use
        "decisions": decisions.as_dict(),
    }




def finish_stage(run: Run | None, stage: str, **info: Any) -> Run | None:
    """The stage ended well: its time, status and `info` go into the manifest. None (a stage run
    outside any run, see open_run's create) is left as it is."""
    if run is not None:
        run.finish_stage(stage, **info)
        tracked = trackers.log_stage_end(run, run.params())
        if tracked:
            run.update_manifest(trackers=tracked)
    return run
