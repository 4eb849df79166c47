"""`run_sweep`: checks the call, opens a new sweep folder (or reopens one to resume), prepares the
data once when no trial changes it, hands the trials to the chosen engine (optuna or ray), and
writes the results of its study."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .. import pipeline
from ..errors import ParamsError
from ..registry import SWEEP_ENGINES
from .folder import get_sweep, open_folder
from .optuna_engine import run_optuna
from .ray_engine import run_ray
from .results import SweepResult, best_trial, write_results
from .spec import Sweep, load

ENGINES = tuple(SWEEP_ENGINES)


def run_sweep(sweep_file: str | Path | None = None, resume: str | None = None, engine: str = "optuna",
              address: str | None = None, callbacks: list | None = None, n_trials: int | None = None,
              log=print) -> SweepResult:
    """Validate the sweep file (or reopen sweep `resume`), then run the trials still to run.

    `n_trials` replaces the file's (recorded in the sweep folder's sweep.yaml); `callbacks` are
    Optuna study callbacks (optuna engine), called after each trial.
    """
    if engine not in ENGINES:
        raise ParamsError(f"engine '{engine}': use one of {', '.join(ENGINES)}")
    if (sweep_file is None) == (resume is None):
        raise ParamsError("give exactly one of: a sweep file (polo sweep cpu_lr), "
                          "or --resume SWEEP_ID to continue a sweep")
    if resume:
        sweep, sweep_id, folder = _reopen(resume, engine, n_trials)
    else:
        sweep, sweep_id, folder = _start(sweep_file, engine, n_trials)
    log(f"sweep {sweep_id}\n  folder: {folder}")
    from ..model import import_unsloth

    import_unsloth()
    start = time.perf_counter()
    if not sweep.data_varies:
        pipeline.prepare_stage(sweep.base_params)  # once per sweep: every trial trains on the same data
    if engine == "ray":
        study = run_ray(sweep, sweep_id, folder, address, log)
    else:
        study = run_optuna(sweep, sweep_id, folder, callbacks, log)
    table = write_results(study, sweep, folder, engine, time.perf_counter() - start)
    log(f"results: {folder / 'results.csv'}\nreport:  {folder / 'report.md'}")
    return SweepResult(sweep_id, folder, table, best_trial(study), engine)


def _reopen(sweep_id: str, engine: str, n_trials: int | None) -> tuple[Sweep, str, Path]:
    """A sweep to resume: its own resolved file, the optuna engine, its own n_trials."""
    if n_trials is not None:
        raise ParamsError("--n-trials applies to a new sweep; a resumed sweep keeps its own")
    if engine != "optuna":
        raise ParamsError("--resume runs with the optuna engine; a Ray sweep is started again instead")
    sweep, folder = get_sweep(sweep_id)
    return sweep, sweep_id, folder


def _start(sweep_file: str | Path, engine: str, n_trials: int | None) -> tuple[Sweep, str, Path]:
    """A new sweep: the file validated (n_trials replaced), then its folder."""
    sweep = load(sweep_file)
    if n_trials is not None:
        if n_trials < 1:
            raise ParamsError(f"--n-trials {n_trials}: give at least 1")
        sweep = replace(sweep, spec=sweep.spec.model_copy(update={"n_trials": n_trials}))
    if engine == "ray" and sweep.data_varies:
        varying = ", ".join(d for d in sweep.dotted.values() if d.startswith(("data.", "model.")))
        raise ParamsError(f"{sweep.spec.source}: the space changes the processed data ({varying}); "
                          "Ray trials run at once and would overwrite each other's data. Use --engine optuna.")
    sweep_id, folder = open_folder(sweep, engine)
    return sweep, sweep_id, folder
