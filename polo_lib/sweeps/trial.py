"""One trial: its params (base < set < the trial's values, named <sweep>-t<number>), the trainer
callback that hands each evaluation to the engine's pruner, and `run_trial`, which trains (aligns when
the params have an align section, and, for an evaluation objective, evaluates) the trial into its own
run folder through the pipeline's stages and says how it ended: finished with its objective value,
pruned, or failed.

Both engines call `run_trial`: the optuna engine in this process, the ray engine in a worker.
"""
from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import params as params_lib
from .. import pipeline, progress, reports, runs
from ..errors import ParamsError, PoloError, RunError
from .spec import Sweep

# What an engine does with an evaluation: (run, step, value of sweep.prune_on) -> True to stop the trial now.
Report = Callable[[runs.Run, int, float], bool]


@dataclass
class TrialOutcome:
    """What one trial did: its run folder, status (finished, pruned, failed), objective value."""
    status: str
    run_id: str | None = None
    value: float | None = None
    error: str | None = None
    seconds: float = 0.0
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, value of sweep.prune_on)


class TrialFailed(PoloError):
    """A trial's run failed (recorded in its run folder); the sweep goes on."""


def one_line(e: BaseException) -> str:
    """An error as one line of at most 500 characters: its type, then its message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]


def trial_params(sweep: Sweep, values: dict[str, Any], number: int) -> params_lib.Params:
    """The trial's params: base < set < the trial's values; named <sweep>-t<number> so its run
    folder is recognisable in `polo list`."""
    overrides = {**sweep.spec.set, **{sweep.dotted[k]: v for k, v in values.items()}}
    cfg = params_lib.load(sweep.spec.base, overrides=overrides)
    return cfg.model_copy(update={"name": f"{sweep.spec.name}-t{number:03d}"})


def pruning_callback(report: Callable[[int, float], bool], evaluations: list, key: str = "eval_loss"):
    """A TrainerCallback: each evaluation after step 0 goes to `report(step, metrics[key])` (key:
    eval_loss or a task metric, sweep.prune_on); True stops training (the pruner's verdict). Step 0
    is the base model's, the same for all."""
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not metrics or key not in metrics or state.global_step == 0:
                return
            evaluations.append((state.global_step, float(metrics[key])))
            if report(state.global_step, float(metrics[key])):
                self.pruned_at = state.global_step
                control.should_training_stop = True

    return PruningCallback()


def mark_pruned(run: runs.Run, tag: dict[str, Any], step: int | None, by: str | None = None) -> None:
    """A pruned trial's run folder says so: manifest status, and the summary's sweep section.
    `tag`: the sweep id and trial number; `by`: who stopped it when not the study's pruner."""
    run.update_manifest(status="pruned", pruned_at_step=step, **({"pruned_by": by} if by else {}))
    run.update_summary(sweep={**tag, "status": "pruned", "pruned_at_step": step, **({"by": by} if by else {})})


def run_trial(sweep: Sweep, values: dict[str, Any], sweep_id: str, number: int, report: Report,
              prepare: bool) -> TrialOutcome:
    """Train (and evaluate, for an evaluation objective) one trial into its own run folder.

    The pipeline's stages, in-process, as `polo run` makes them through its notebooks; `prepare`:
    this trial's values change the processed data, so it prepares its own first. Any error ends
    this trial only: its run folder (if it got one) is marked failed with the error and the sweep
    goes on. A pruned trial keeps its folder (adapter, loss curve) with status pruned.
    """
    try:
        cfg = trial_params(sweep, values, number)
    except ParamsError as e:
        return TrialOutcome(status="failed", error=one_line(e))
    start = time.perf_counter()
    out = TrialOutcome(status="failed")
    run = None
    try:
        run = runs.open_run(cfg, stage="train")
        out.run_id = run.id
        tag = {"sweep_id": sweep_id, "trial": number}
        run.update_manifest(sweep=tag)
        _train_and_score(sweep, cfg, run, tag, report, prepare, out)
    except KeyboardInterrupt:
        if run is not None:
            run.fail("KeyboardInterrupt: the sweep was interrupted", where=f"sweep {sweep_id} trial {number}")
        raise
    except Exception as e:  # noqa: BLE001 (one failing trial must not end the sweep)
        out.status, out.error = "failed", one_line(e)
        if run is not None:
            where = traceback.format_exc(limit=-1).strip().splitlines()[-3:]
            run.fail(out.error, where=" | ".join(s.strip() for s in where))
    finally:
        out.seconds = round(time.perf_counter() - start, 1)
        gc.collect()
    if run is not None:
        reports.conclude(run)  # again: report.md shows the sweep's verdict (pruned, failed)
    return out


def _train_and_score(sweep: Sweep, cfg, run: runs.Run, tag: dict[str, Any], report: Report, prepare: bool,
                     out: TrialOutcome) -> None:
    """train_stage with the pruning callback; then pruned, or (align_stage when the params have an align section,
    evaluate_stage for an evaluation objective, and) the objective."""
    if prepare:
        pipeline.prepare_stage(cfg)
    pruning = pruning_callback(lambda step, value: report(run, step, value), out.evaluations, sweep.prune_on)
    with progress.watch(run.logs):  # the trial's steps, loss and time left, as `polo run` shows them
        session = pipeline.train_stage(cfg, run, callbacks=[pruning], live=False)
    del session  # the model and trainer: freed before the next trial loads its own
    gc.collect()
    if pruning.pruned_at is not None:
        out.status = "pruned"
        mark_pruned(run, tag, pruning.pruned_at)
        return
    if cfg.align is not None:  # the trial's params have an align section (the base's, or align.* searched)
        run.start_stage("align")
        with progress.watch(run.logs):
            aligned = pipeline.align_stage(cfg, run, live=False)
        del aligned
        gc.collect()
    if sweep.needs_evaluation:
        run.start_stage("evaluate")
        with progress.watch(run.logs):
            pipeline.evaluate_stage(cfg, run)
    out.value = run.summary().figure(sweep.metric)
    if out.value is None:
        raise RunError(f"run {run.id}: summary.json has no '{sweep.metric}' (objective)")
    out.status = "finished"
    run.update_summary(sweep={**tag, "status": "finished", "objective": sweep.metric, "value": out.value})
