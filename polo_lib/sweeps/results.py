"""What a sweep found, read from its Optuna study: the results table (one row per trial), the best
trial, the history and importance figures, and the sweep folder's results.csv, plots/ and
report.md; `trial_runs` opens the trials' run folders. The same for both engines: a Ray sweep's
trials are recorded in study.db too."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import paths, reports, runs
from .spec import Sweep

# Study user attr: numbers of the trials a killed sweep left running, failed when it resumed.
INTERRUPTED_TRIALS = "interrupted_trials"
INTERRUPTED_ERROR = "interrupted (the sweep stopped during this trial)"


def status(trial) -> str:
    """finished, pruned, failed, running or waiting: the words of run folders and reports."""
    from optuna.trial import TrialState

    return {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
            TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}[trial.state]


def interrupted_trials(study) -> set[int]:
    """Trials an interruption ended, which do not count toward n_trials: stopped by Ctrl-C (their
    own user attr), or left running by a killed sweep (the study's list, see INTERRUPTED_TRIALS)."""
    own = {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("interrupted")}
    return own | set(study.user_attrs.get(INTERRUPTED_TRIALS, []))


def results_table(study) -> pd.DataFrame:
    """One row per trial: number, run id, status, objective value, the trial's params, seconds."""
    interrupted = interrupted_trials(study)
    # intermediate values are the pruned-on metric (eval_loss unless objective.prune_on) times the
    # sweep's sign (into the study's direction): undo it
    prune_on = study.user_attrs.get("prune_on", "eval_loss")
    sign = study.user_attrs.get("prune_sign", -1.0 if study.direction.name == "MAXIMIZE" else 1.0)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "run_id": t.user_attrs.get("run_id"), "status": status(t),
                     "objective": t.value if t.state.name == "COMPLETE" else None,  # pruned: last report
                     **{f"params_{k}": v for k, v in t.params.items()},
                     f"last_{prune_on}": sign * t.intermediate_values[max(t.intermediate_values)]
                     if t.intermediate_values else None,
                     "seconds": t.user_attrs.get("seconds"),
                     "started": t.user_attrs.get("started") or (  # ray trials: recorded by the worker
                         t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None),
                     "error": t.user_attrs.get("error") or (INTERRUPTED_ERROR if t.number in interrupted else None)})
    return pd.DataFrame(rows, columns=None if rows else ["trial", "run_id", "status", "objective", "seconds"])


def best_trial(study) -> dict[str, Any] | None:
    """The best finished trial (number, run id, value, params); None when none finished."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    return {"trial": best.number, "run_id": best.user_attrs.get("run_id"), "value": best.value, "params": best.params}


def trial_runs(table: pd.DataFrame) -> list[runs.Run]:
    """The run folders of a results table's trials (a trial that failed before its folder has none)."""
    return [runs.lookup(r) for r in table["run_id"] if isinstance(r, str) and (paths.runs_dir() / r).is_dir()]


# ------------------------------------------------------------------ figures

def _figure(draw, study):
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" warnings of optuna's matplotlib backend
        ax = draw(study)
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7, 4)
    fig.tight_layout()
    plt.close(fig)  # the notebook shows the returned figure once
    return fig


def history_figure(study):
    """Objective per trial and the best so far (optuna.visualization.matplotlib)."""
    import optuna.visualization.matplotlib as ovm

    return _figure(ovm.plot_optimization_history, study)


def importance_figure(study):
    """How much of the objective each param explains (Optuna's default evaluator, PED-ANOVA);
    needs 2 finished trials whose params differ."""
    import optuna.visualization.matplotlib as ovm

    return _figure(ovm.plot_param_importances, study)


def save_plots(study, folder: Path) -> dict[str, str]:
    """plots/history.png and plots/importance.png; a plot that cannot be drawn is named with
    the reason instead (importance with fewer than 2 finished trials)."""
    from .. import plots

    made = {}
    for name, draw in (("history", history_figure), ("importance", importance_figure)):
        try:
            made[name] = str(plots.save(draw(study), folder / "plots" / f"{name}.png"))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            made[name] = f"not drawn: {e}"
    return made


# ------------------------------------------------------------------ the sweep folder's files

def write_results(study, sweep: Sweep, folder: Path, engine: str, wall_seconds: float | None = None) -> pd.DataFrame:
    """results.csv, plots/*.png and report.md from the study (the sweep folder alone suffices)."""
    table = results_table(study)
    reports.write_csv(folder / "results.csv", table)
    made = save_plots(study, folder)
    best = best_trial(study)
    best_lines = ["none: no trial finished"] if not best else [
        f"trial {best['trial']}, run `{best['run_id']}`: {sweep.metric} = {best['value']:.4g}", "",
        reports.md_table([{"param": k, "value": v} for k, v in best["params"].items()], ["param", "value"])]
    trials = [reports.md_table(table.to_dict("records"), list(table.columns)) if len(table) else "none"]
    plots = [f"![{name}](plots/{name}.png)" if where.endswith(".png") else f"- {name}: {where}"
             for name, where in made.items()]
    reports.write_page(folder / "report.md", f"Sweep {folder.name}", _overview(table, sweep, engine, wall_seconds),
                       [("Best trial", best_lines), ("Trials", trials), ("Plots", plots)])
    return table


def _overview(table: pd.DataFrame, sweep: Sweep, engine: str, wall_seconds: float | None) -> list[str]:
    """report.md's first lines: the file, objective, trials by status, sampler, pruner, times."""
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    spec = sweep.spec
    lines = [f"file: `{spec.source}`, base params `{spec.base}`, engine **{engine}**",
             f"objective: `{sweep.metric}` ({sweep.direction})",
             f"trials: {len(table)} of {spec.n_trials} "
             f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none yet'})",
             f"sampler {spec.sampler.type} (seed {spec.sampler.seed}), pruner {spec.pruner.type}"]
    if wall_seconds is not None:
        lines.append(f"wall time of this invocation: {wall_seconds:.0f} s")
    seconds = (pd.to_numeric(table.get("seconds"), errors="coerce").dropna() if len(table)
               else pd.Series([], dtype=float))
    if len(seconds):
        lines.append(f"seconds per trial: median {seconds.median():.1f}, total {seconds.sum():.0f}")
    return lines


@dataclass
class SweepResult:
    """What a sweep call returns: its id and folder, the results table and the best trial."""
    sweep_id: str
    folder: Path
    table: pd.DataFrame
    best: dict[str, Any] | None
    engine: str

    def _repr_html_(self) -> str:
        return f"<b>sweep</b> <code>{self.sweep_id}</code><br>" + self.table._repr_html_()
