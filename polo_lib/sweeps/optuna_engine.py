"""The Optuna engine: the study in the sweep folder's study.db (the sweep file's sampler and
pruner), the objective that runs one trial per call in this process, and resuming a sweep: the
trials a killed sweep left running are failed (interrupted) and run again.

Only Optuna's public API: `create_study` / `load_study`, `Study.optimize`, `Study.tell` (closing a
trial another process left running), `Study.set_user_attr` and `Trial.set_user_attr`.
"""
from __future__ import annotations

import math
from pathlib import Path

from .. import paths, runs
from ..errors import RunError
from .folder import get_sweep, storage_url
from .results import INTERRUPTED_TRIALS, interrupted_trials, status, write_results
from .spec import CategoricalDim, IntDim, Sweep, SweepFile, suggest
from .trial import TrialFailed, TrialOutcome, run_trial


def make_sampler(spec: SweepFile):
    import optuna

    s = spec.sampler
    if s.type == "grid":
        grid = {k: list(d.choices) if isinstance(d, CategoricalDim) else _grid_values(d) for k, d in spec.space.items()}
        return optuna.samplers.GridSampler(grid, seed=s.seed)
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def _grid_values(dim) -> list:
    n = int(math.floor((dim.high - dim.low) / dim.step + 1e-9)) + 1
    values = [dim.low + i * dim.step for i in range(n)]
    return [int(v) for v in values] if isinstance(dim, IntDim) else [round(v, 12) for v in values]


def make_pruner(spec: SweepFile):
    import optuna

    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, sweep_id: str, folder: Path, resume: bool):
    """The sweep's study in folder/study.db: new, or (resume) the one already there."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=sweep_id, storage=storage_url(folder), direction=sweep.direction,
                                sampler=make_sampler(sweep.spec), pruner=make_pruner(sweep.spec),
                                load_if_exists=resume)
    # what the intermediate values are, for the results table to show them as they were logged
    study.set_user_attr("prune_on", sweep.prune_on)
    study.set_user_attr("prune_sign", sweep.sign)
    return study


def load_study(sweep_id: str):
    """The Optuna study of a sweep (for a notebook: tables, plots)."""
    import optuna

    _, folder = get_sweep(sweep_id)
    return optuna.load_study(study_name=sweep_id, storage=storage_url(folder))


def close_interrupted(sweep_id: str, folder: Path) -> int:
    """Trials left running by a killed sweep: failed (interrupted), their run folders too.
    They do not count toward n_trials, so a resumed sweep runs them again.

    The study is listed first (its user attr INTERRUPTED_TRIALS: a finished trial's own attrs can
    no longer change), then each trial is told FAIL. Told through a study with a random sampler:
    the sweep's grid sampler would try to stop an optimize loop that is not running.
    """
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=sweep_id, storage=storage_url(folder),
                              sampler=optuna.samplers.RandomSampler())
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    study.set_user_attr(INTERRUPTED_TRIALS, sorted(set(study.user_attrs.get(INTERRUPTED_TRIALS, []))
                                                   | {t.number for t in running}))
    for t in running:
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        run_id = t.user_attrs.get("run_id")
        if run_id and (paths.runs_dir() / run_id).is_dir():
            run = runs.lookup(run_id)
            if run.manifest().get("status") == "running":
                run.fail("interrupted: the sweep stopped during this trial", where="polo sweep")
    return len(running)


def counted_trials(study) -> int:
    """Trials that count toward n_trials: finished, pruned, failed (not interrupted ones)."""
    interrupted = interrupted_trials(study)
    return sum(1 for t in study.get_trials(deepcopy=False)
               if status(t) in ("finished", "pruned", "failed") and t.number not in interrupted)


def run_optuna(sweep: Sweep, sweep_id: str, folder: Path, callbacks: list | None, log):
    """The trials still to run, one after another in this process; the study at the end.
    `callbacks`: Optuna study callbacks, called after each trial (after results.csv is written)."""
    resume = (folder / "study.db").exists()
    if resume and close_interrupted(sweep_id, folder):
        log("  trials interrupted by the previous invocation were marked failed (interrupted)")
    study = open_study(sweep, sweep_id, folder, resume=resume)
    remaining = sweep.spec.n_trials - counted_trials(study)
    if remaining <= 0:
        log(f"  all {sweep.spec.n_trials} trials already ran")
        return study
    log(f"  {remaining} trial(s) to run of {sweep.spec.n_trials}")

    def checkpoint(study, trial):  # a crash later keeps the table of what ran
        write_results(study, sweep, folder, "optuna")

    try:
        study.optimize(_objective(sweep, sweep_id, log), n_trials=remaining, catch=(TrialFailed,),
                       show_progress_bar=True, callbacks=[checkpoint, *(callbacks or [])])
    except KeyboardInterrupt:
        write_results(study, sweep, folder, "optuna")
        raise RunError(f"sweep {sweep_id} interrupted after {counted_trials(study)} trial(s); "
                       f"continue it with `polo sweep --resume {sweep_id}`") from None
    return study


def _objective(sweep: Sweep, sweep_id: str, log):
    """The Optuna objective: suggest, run the trial, record it; pruned and failed trials raise."""
    import optuna

    def objective(trial):
        values = suggest(trial, sweep.spec.space)
        trial.set_user_attr("seconds", None)

        def report(run, step, value):
            trial.report(sweep.sign * value, step)
            return trial.should_prune()

        try:
            outcome = run_trial(sweep, values, sweep_id, trial.number, report, prepare=sweep.data_varies)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        for key in ("run_id", "seconds", "error"):
            trial.set_user_attr(key, getattr(outcome, key))
        log(_trial_line(trial.number, outcome))
        if outcome.status == "pruned":
            raise optuna.TrialPruned()
        if outcome.status == "failed":
            raise TrialFailed(outcome.error)
        return outcome.value

    return objective


def _trial_line(number: int, outcome: TrialOutcome) -> str:
    return (f"  trial {number}: {outcome.status}" + (f" {outcome.value:.4g}" if outcome.value is not None else "")
            + (f" ({outcome.error})" if outcome.error else "")
            + f" in {outcome.seconds:.0f} s, run {outcome.run_id}")
