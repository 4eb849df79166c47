"""Hyperparameter sweeps: an Optuna study over params fields, each trial a normal run folder.

A sweep file (sweeps/*.yaml) names a base params file, a search space over params fields, the
objective (a figure of summary.json) and its direction, the number of trials, the sampler and
the pruner (see spec.py for an example). The whole file is validated before any trial starts.

Engines: `optuna` runs the trials one after another in this process (library calls, no
notebooks); `ray` hands them to Ray Tune (OptunaSearch + ASHA), one trial per GPU or per N CPUs,
on a local Ray instance or an existing cluster. Both write the same folder:

    outputs/sweeps/<sweep_id>/  sweep.yaml (resolved), study.db (Optuna SQLite), results.csv,
                                report.md, plots/history.png, plots/importance.png
    outputs/runs/<run_id>/      one run folder per trial, named <sweep name>-t<number>

    spec.py           the sweep file: schema, load/validate, objective, distributions
    folder.py         the sweep folder: ids, resolved sweep.yaml, study.db, latest sweep
    trial.py          one trial: its params, the pruning callback, run_trial (pipeline stages)
    optuna_engine.py  study, sampler, pruner, objective, resume, interrupted trials
    ray_engine.py     Ray Tune: trainable in a worker, ray_trials/ records -> study.db
    results.py        results table, best trial, figures, results.csv, plots/, report.md
    engine.py         run_sweep: a new or resumed sweep, handed to one engine

Only the CLI (`polo sweep`) and notebooks import this package.
"""
from .engine import ENGINES, run_sweep
from .folder import get_sweep, latest_sweep, new_sweep_id, open_folder, storage_url, sweeps_dir
from .optuna_engine import close_interrupted, counted_trials, load_study, make_pruner, make_sampler, open_study
from .ray_engine import add_ray_trial, ray_resources
from .results import (
                      SweepResult,
                      best_trial,
                      history_figure,
                      importance_figure,
                      interrupted_trials,
                      results_table,
                      save_plots,
                      trial_runs,
                      write_results,
)
from .spec import (
                      SWEEPS_DIR,
                      CategoricalDim,
                      FloatDim,
                      IntDim,
                      Sweep,
                      SweepFile,
                      distributions,
                      load,
                      resolve_file,
                      suggest,
                      validate,
)
from .trial import TrialFailed, TrialOutcome, run_trial, trial_params

__all__ = [
    "ENGINES", "run_sweep",
    "get_sweep", "latest_sweep", "new_sweep_id", "open_folder", "storage_url", "sweeps_dir",
    "close_interrupted", "counted_trials", "load_study", "make_pruner", "make_sampler", "open_study",
    "add_ray_trial", "ray_resources",
    "SweepResult", "best_trial", "history_figure", "importance_figure", "interrupted_trials",
    "results_table", "save_plots", "trial_runs", "write_results",
    "SWEEPS_DIR", "CategoricalDim", "FloatDim", "IntDim", "Sweep", "SweepFile", "distributions", "load",
    "resolve_file", "suggest", "validate",
    "TrialFailed", "TrialOutcome", "run_trial", "trial_params",
]
