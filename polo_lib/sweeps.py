"""Hyperparameter sweeps: an Optuna study over params fields, each trial a normal run folder.

A sweep file (sweeps/*.yaml) names a base params file, a search space over params fields, the
objective (a figure of summary.json) and its direction, the number of trials, the sampler and
the pruner:

    base: smoke
    set: {max_steps: 6}                       # fixed overrides for every trial
    space:
      learning_rate: {type: log_float, low: 1.0e-4, high: 1.0e-2}
      lora_r: {type: categorical, choices: [4, 8, 16]}
    objective: {metric: eval_loss}            # training.eval_loss_best, minimize
    n_trials: 8
    sampler: {type: tpe, seed: 3407}
    pruner: {type: median}

Engines: `optuna` runs the trials one after another in this process (library calls, no
notebooks); `ray` hands them to Ray Tune (OptunaSearch + ASHA), one trial per GPU or per N CPUs,
on a local Ray instance or an existing cluster. Both write the same folder:

    outputs/sweeps/<sweep_id>/  sweep.yaml (resolved), study.db (Optuna SQLite), results.csv,
                                report.md, plots/history.png, plots/importance.png
    outputs/runs/<run_id>/      one run folder per trial, named <sweep name>-t<number>

The whole file is validated (keys, every search-space field through params, every bound and
choice through params.load) before any trial starts.
"""
from __future__ import annotations

import difflib
import gc
import hashlib
import io
import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import params as params_lib
from . import paths, runs
from .atomic import atomic_write_text
from .errors import ParamsError, PoloError, RunError, bullet_list

SWEEPS_DIR = paths.PROJ_ROOT / "sweeps"
ENGINES = ("optuna", "ray")

# Objective short names -> summary.json paths; "evaluation.tuned.<metric>" for every score.
TRAINING_FIGURES = {"eval_loss_best": False, "loss_last": False, "tokens_per_s": True, "train_seconds": False}
SHORT_OBJECTIVES = {"eval_loss": "training.eval_loss_best", "loss": "training.loss_last"}


# ------------------------------------------------------------------ the sweep file

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatDim(_Strict):
    type: Literal["float", "log_float"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)  # float only: a grid of low, low+step, ...

    @model_validator(mode="after")
    def _check(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "log_float" and self.low <= 0:
            raise ValueError(f"log_float needs low > 0, got {self.low}")
        if self.type == "log_float" and self.step is not None:
            raise ValueError("log_float takes no step")
        return self


class IntDim(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class CategoricalDim(_Strict):
    type: Literal["categorical"]
    choices: list[Union[bool, int, float, str]] = Field(min_length=1)


Dimension = Annotated[Union[FloatDim, IntDim, CategoricalDim], Field(discriminator="type")]


class Objective(_Strict):
    metric: str = "eval_loss"  # eval_loss, chrf, ... or a summary.json path (training.x, evaluation.tuned.x)
    direction: Literal["minimize", "maximize"] | None = None  # None: the metric's own (known ones)


class Sampler(_Strict):
    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(3407, ge=0)
    n_startup_trials: int = Field(4, ge=0)  # tpe: random trials before the model kicks in


class Pruner(_Strict):
    type: Literal["median", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(1, ge=0)  # median: trials finished before any pruning
    n_warmup_steps: int = Field(0, ge=0)    # median: training steps before a trial may be pruned
    min_resource: int | Literal["auto"] = "auto"  # successive halving: evaluations before the first rung
    reduction_factor: int = Field(3, ge=2)


class RayOptions(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float | None = Field(None, ge=0)  # None: 1 when the machine has a GPU, else 0
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the resources allow
    grace_period: int = Field(1, ge=1)      # ASHA: evaluations before a trial may be stopped
    reduction_factor: int = Field(2, ge=2)  # ASHA


class SweepFile(_Strict):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9._-]+$")
    source: str | None = None
    base: str = Field(min_length=1)  # a params file: name in params/ or a path
    set: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Dimension] = Field(min_length=1)
    objective: Objective = Objective()
    n_trials: int = Field(ge=1, le=10000)
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    ray: RayOptions = RayOptions()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def short_hash(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k not in ("name", "source")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


TOP_KEYS = tuple(SweepFile.model_fields)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file, with what validation derived from it."""
    spec: SweepFile
    metric: str                   # a summary.json path, e.g. training.eval_loss_best
    direction: str                # minimize or maximize
    dotted: dict[str, str]        # space key -> params dotted key
    base_params: params_lib.Params
    data_varies: bool             # a space key changes the processed data: prepare per trial

    @property
    def needs_evaluation(self) -> bool:
        return self.metric.startswith("evaluation.")


def resolve_file(sweep_file: str | Path) -> Path:
    """A name in sweeps/ ('smoke'), a file name or a path."""
    p = Path(sweep_file)
    candidates = [p, paths.resolve_project_path(p), SWEEPS_DIR / f"{sweep_file}.yaml", SWEEPS_DIR / str(sweep_file)]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    available = sorted(f.stem for f in SWEEPS_DIR.glob("*.yaml")) if SWEEPS_DIR.is_dir() else []
    match = difflib.get_close_matches(str(sweep_file), available, n=1)
    raise ParamsError(f"sweep file '{sweep_file}' not found." + (f" Did you mean '{match[0]}'?" if match else "")
                      + f" Use a name in sweeps/ ({', '.join(available) or 'none'}) or a path to a .yaml file.")


def load(sweep_file: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is reported at once, before any trial."""
    path = resolve_file(sweep_file)
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not valid YAML ({e}). Fix the syntax.") from None
    if not isinstance(body, dict):
        raise ParamsError(f"{path}: expected a mapping with base, space, objective and n_trials.")
    body.setdefault("name", path.stem)
    body["source"] = str(path)
    return validate(body, origin=str(path))


def validate(body: dict[str, Any], origin: str = "sweep") -> Sweep:
    """A Sweep from a parsed mapping (a sweep file, or a sweep folder's resolved sweep.yaml)."""
    problems = []
    for key in body:
        if key not in TOP_KEYS:
            match = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            problems.append(f"unknown key '{key}'." + (f" Did you mean '{match[0]}'?" if match else "")
                            + f" Keys: {', '.join(k for k in TOP_KEYS if k != 'source')}.")
    try:
        spec = SweepFile.model_validate({k: v for k, v in body.items() if k in TOP_KEYS})
    except ValidationError as e:
        problems += [p for _, p in params_lib._format_validation_error(e)]
        raise ParamsError(f"{origin}: {len(problems)} problem(s):\n{bullet_list(problems)}") from None
    if problems:
        raise ParamsError(f"{origin}: {len(problems)} problem(s):\n{bullet_list(problems)}")
    return _check_against_params(spec, origin)


def _check_against_params(spec: SweepFile, origin: str) -> Sweep:
    """Every space key is a params field of the right type; every bound and choice loads."""
    problems: list[str] = []
    by_key: dict[str, str] = {}
    for key in spec.space:
        dotted, key_problems = params_lib.normalize_overrides({key: 0})
        problems += [f"space: {p}" for p in key_problems]
        by_key.update({key: d for d in dotted})
    fixed, set_problems = params_lib.normalize_overrides(spec.set)
    problems += [f"set: {p}" for p in set_problems]
    both = sorted(set(by_key.values()) & set(fixed))
    if both:
        problems.append(f"{', '.join(both)}: both in 'set' and in 'space'; keep it in one of them")
    try:
        base = params_lib.load(spec.base, overrides=spec.set)
    except ParamsError as e:
        raise ParamsError(f"{origin}: base '{spec.base}' with 'set':\n{e}") from None
    for key, dot in by_key.items():
        dim = spec.space[key]
        section, name = dot.split(".", 1)
        annotation = str(params_lib.SECTIONS[section].model_fields[name].annotation)
        if isinstance(dim, FloatDim) and annotation.startswith("<class 'int'>"):
            problems.append(f"space.{key}: {dot} is an integer field; use type: int or categorical")
            continue
        values = dim.choices if isinstance(dim, CategoricalDim) else [dim.low, dim.high]
        for value in values:
            try:
                params_lib.load(spec.base, overrides={**spec.set, dot: value})
            except ParamsError as e:
                detail = " ".join(str(e).splitlines()[1:]).strip()
                problems.append(f"space.{key} = {value!r}: {detail}")
    if spec.sampler.type == "grid":
        continuous = [k for k, d in spec.space.items() if isinstance(d, FloatDim) and d.step is None]
        if continuous:
            problems.append(f"sampler grid needs a finite grid: give {', '.join(continuous)} a step, "
                            "or make them categorical")
    metric, direction, metric_problem = _resolve_objective(spec.objective)
    if metric_problem:
        problems.append(metric_problem)
    if spec.pruner.type != "none" and isinstance(base.training.eval_steps, int) and \
            base.training.eval_steps >= _max_steps_hint(base):
        problems.append(f"pruner {spec.pruner.type}: eval_steps ({base.training.eval_steps}) is not below "
                        f"the steps a trial trains ({_max_steps_hint(base)}), so no evaluation comes before "
                        "the end to prune on. Lower training.eval_steps (and save_steps) in 'set', or use "
                        "pruner: {type: none}.")
    if problems:
        raise ParamsError(f"{origin}: {len(problems)} problem(s):\n{bullet_list(problems)}")
    data_keys = {d for d in by_key.values() if d.startswith("data.")} | \
        {d for d in by_key.values() if d in ("model.model_name", "model.max_seq_length")}
    return Sweep(spec, metric, direction, by_key, base, bool(data_keys))


def _max_steps_hint(cfg) -> int:
    """Steps a trial trains when max_steps is set; a large number otherwise (epochs: unknown here)."""
    return cfg.training.max_steps if cfg.training.max_steps > 0 else 10 ** 9


def _resolve_objective(obj: Objective) -> tuple[str, str, str | None]:
    """(summary.json path, direction, problem or None)."""
    from .metrics import HIGHER_IS_BETTER

    name = obj.metric
    if name in SHORT_OBJECTIVES:
        name = SHORT_OBJECTIVES[name]
    elif name in HIGHER_IS_BETTER:
        name = f"evaluation.tuned.{name}"
    elif name in TRAINING_FIGURES:
        name = f"training.{name}"
    higher = None
    if name.startswith("training.") and name.split(".", 1)[1] in TRAINING_FIGURES:
        higher = TRAINING_FIGURES[name.split(".", 1)[1]]
    elif name.startswith("evaluation.tuned.") and name.rsplit(".", 1)[1] in HIGHER_IS_BETTER:
        higher = HIGHER_IS_BETTER[name.rsplit(".", 1)[1]]
    else:
        options = [*SHORT_OBJECTIVES, *TRAINING_FIGURES, *HIGHER_IS_BETTER]
        match = difflib.get_close_matches(obj.metric, options, n=1)
        return name, "minimize", (f"objective.metric '{obj.metric}' is not a figure of summary.json."
                                  + (f" Did you mean '{match[0]}'?" if match else "")
                                  + f" Choose from {', '.join(options)}.")
    known = None if higher is None else ("maximize" if higher else "minimize")
    if obj.direction is None and known is None:
        return name, "minimize", f"objective.metric '{obj.metric}' has no better direction: set objective.direction"
    if obj.direction and known and obj.direction != known:
        return name, known, (f"objective.direction {obj.direction} for '{obj.metric}', but higher is "
                             f"{'better' if known == 'maximize' else 'worse'} for it: use {known}")
    return name, obj.direction or known, None


# ------------------------------------------------------------------ optuna pieces

def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna distributions of the search space (the names are the sweep file's keys)."""
    import optuna.distributions as d

    out = {}
    for key, dim in space.items():
        if isinstance(dim, CategoricalDim):
            out[key] = d.CategoricalDistribution(dim.choices)
        elif isinstance(dim, IntDim):
            out[key] = d.IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            out[key] = d.FloatDistribution(dim.low, dim.high, log=dim.type == "log_float", step=dim.step)
    return out


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's values, one per space key (define-by-run: the same call for both engines)."""
    out = {}
    for key, dim in space.items():
        if isinstance(dim, CategoricalDim):
            out[key] = trial.suggest_categorical(key, dim.choices)
        elif isinstance(dim, IntDim):
            out[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
        else:
            out[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.type == "log_float")
    return out


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


def storage_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


# ------------------------------------------------------------------ one trial

@dataclass
class TrialOutcome:
    """What one trial did: its run folder, status (finished, pruned, failed), objective value."""
    status: str
    run_id: str | None = None
    value: float | None = None
    error: str | None = None
    seconds: float = 0.0
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, eval_loss)


def trial_params(sweep: Sweep, values: dict[str, Any], number: int) -> params_lib.Params:
    """The trial's params: base < set < the trial's values; named <sweep>-t<number> so its run
    folder is recognisable in `polo list`."""
    overrides = {**sweep.spec.set, **{sweep.dotted[k]: v for k, v in values.items()}}
    cfg = params_lib.load(sweep.spec.base, overrides=overrides)
    return cfg.model_copy(update={"name": f"{sweep.spec.name}-t{number:03d}"})


def _pruning_callback(report: Callable[[int, float], bool], evaluations: list):
    """A TrainerCallback: each evaluation after step 0 goes to `report(step, eval_loss)`; True
    stops training (the pruner's verdict). Step 0 is the base model's loss, the same for all."""
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        pruned_at: int | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not metrics or "eval_loss" not in metrics or state.global_step == 0:
                return
            evaluations.append((state.global_step, float(metrics["eval_loss"])))
            if report(state.global_step, float(metrics["eval_loss"])):
                self.pruned_at = state.global_step
                control.should_training_stop = True

    return PruningCallback()


def prepare_data(cfg) -> Path:
    """The processed dataset for these params (one per sweep when the data does not vary)."""
    from . import data, model

    tokenizer = model.load_tokenizer(cfg.model)
    return data.save(data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length), cfg.data)


def run_trial(sweep: Sweep, cfg, sweep_id: str, number: int, report: Callable[[Any, int, float], bool],
              prepare: bool) -> TrialOutcome:
    """Train (and evaluate, for an evaluation objective) one trial into its own run folder.

    In-process library calls, as `polo run` makes through its notebooks. Any error ends this
    trial only: its run folder is marked failed with the error and the sweep goes on. A pruned
    trial keeps its folder (adapter, loss curve) with status pruned.
    """
    from . import data, evaluate, model, train

    start = time.perf_counter()
    out = TrialOutcome(status="failed")
    run = None
    try:
        run = runs.open_run(cfg, stage="train")
        out.run_id = run.id
        run.update_manifest(sweep={"sweep_id": sweep_id, "trial": number})
        if prepare:
            prepare_data(cfg)
        lm = model.load(cfg)
        if lm.notes:
            run.update_manifest(model_notes=lm.notes)
        pruning = _pruning_callback(lambda step, loss: report(run, step, loss), out.evaluations)
        session = train.build(lm, data.load_processed(cfg.data), cfg, run, live=False, callbacks=[pruning])
        train.fit(session)
        train.finish(session)
        run.finish_stage("train")
        del session, lm
        gc.collect()
        if pruning.pruned_at is not None:
            out.status = "pruned"
            run.update_manifest(status="pruned", pruned_at_step=pruning.pruned_at)
            run.update_summary(sweep={"sweep_id": sweep_id, "trial": number, "status": "pruned",
                                      "pruned_at_step": pruning.pruned_at})
        else:
            if sweep.needs_evaluation:
                run.start_stage("evaluate")
                predictions = evaluate.predict(run, cfg, data.load_processed(cfg.data))
                evaluate.score(predictions, cfg, run)
                run.finish_stage("evaluate")
            out.value = summary_figure(run.summary(), sweep.metric)
            if out.value is None:
                raise RunError(f"run {run.id}: summary.json has no '{sweep.metric}' (objective)")
            out.status = "finished"
            run.update_summary(sweep={"sweep_id": sweep_id, "trial": number, "status": "finished",
                                      "objective": sweep.metric, "value": out.value})
    except KeyboardInterrupt:
        if run is not None:
            run.fail("KeyboardInterrupt: the sweep was interrupted", where=f"sweep {sweep_id} trial {number}")
        raise
    except Exception as e:  # noqa: BLE001: one failing trial must not end the sweep
        out.status = "failed"
        out.error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]
        if run is not None:
            where = traceback.format_exc(limit=-1).strip().splitlines()[-3:]
            run.fail(out.error, where=" | ".join(s.strip() for s in where))
    finally:
        out.seconds = round(time.perf_counter() - start, 1)
        gc.collect()
    if run is not None:
        runs.write_report(run)
    return out


def summary_figure(summary: dict[str, Any], dotted: str) -> float | None:
    node: Any = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


# ------------------------------------------------------------------ the sweep folder

def sweeps_dir() -> Path:
    return paths.outputs_dir() / "sweeps"


def new_sweep_id(spec: SweepFile) -> str:
    """UTC time + sweep name + hash of the resolved sweep, like run ids."""
    base = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{spec.name}-{spec.short_hash()}"
    sweep_id, n = base, 1
    while (sweeps_dir() / sweep_id).exists():
        n += 1
        sweep_id = f"{base}-{n}"
    return sweep_id


def get_sweep(sweep_id: str) -> tuple[Sweep, Path]:
    """A sweep's validated file and folder, from its resolved sweep.yaml."""
    from .notebook import show_errors_briefly

    show_errors_briefly()
    folder = sweeps_dir() / sweep_id
    if not (folder / "sweep.yaml").is_file():
        known = sorted(p.name for p in sweeps_dir().glob("*") if p.is_dir())[-5:] if sweeps_dir().exists() else []
        raise RunError(f"sweep '{sweep_id}' not found in {sweeps_dir()}. Latest sweeps: {', '.join(known) or 'none'}.")
    body = yaml.safe_load((folder / "sweep.yaml").read_text(encoding="utf-8"))
    return validate(body, origin=str(folder / "sweep.yaml")), folder


def _status(trial) -> str:
    import optuna

    return {optuna.trial.TrialState.COMPLETE: "finished", optuna.trial.TrialState.PRUNED: "pruned",
            optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
            optuna.trial.TrialState.WAITING: "waiting"}[trial.state]


def results_table(study) -> pd.DataFrame:
    """One row per trial: number, run id, status, objective value, the trial's params, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "run_id": t.user_attrs.get("run_id"), "status": _status(t),
                     "objective": t.value if t.state.name == "COMPLETE" else None,  # pruned: last report
                     **{f"params_{k}": v for k, v in t.params.items()},
                     "last_eval_loss": t.intermediate_values[max(t.intermediate_values)]
                     if t.intermediate_values else None,
                     "seconds": t.user_attrs.get("seconds"),
                     "started": t.user_attrs.get("started") or (  # ray trials: recorded by the worker
                         t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None),
                     "error": t.user_attrs.get("error")})
    return pd.DataFrame(rows, columns=None if rows else ["trial", "run_id", "status", "objective", "seconds"])


def best_trial(study) -> dict[str, Any] | None:
    """The best finished trial (number, run id, value, params); None when none finished."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    if not done:
        return None
    best = study.best_trial
    return {"trial": best.number, "run_id": best.user_attrs.get("run_id"), "value": best.value, "params": best.params}


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
    from . import plots

    made = {}
    for name, draw in (("history", history_figure), ("importance", importance_figure)):
        try:
            made[name] = str(plots.save(draw(study), folder / "plots" / f"{name}.png"))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            made[name] = f"not drawn: {e}"
    return made


def trial_runs(table: pd.DataFrame) -> list[runs.Run]:
    """The run folders of a results table's trials (a trial that failed before its folder has none)."""
    return [runs.lookup(r) for r in table["run_id"] if isinstance(r, str) and (paths.runs_dir() / r).is_dir()]


def write_results(study, sweep: Sweep, folder: Path, engine: str, wall_seconds: float | None = None) -> pd.DataFrame:
    """results.csv, plots/*.png and report.md from the study (the sweep folder alone suffices)."""
    table = results_table(study)
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(folder / "results.csv", buf.getvalue())
    made = save_plots(study, folder)
    best = best_trial(study)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    spec = sweep.spec
    lines = [f"# Sweep {folder.name}", "",
             f"- file: `{spec.source}`, base params `{spec.base}`, engine **{engine}**",
             f"- objective: `{sweep.metric}` ({sweep.direction})",
             f"- trials: {len(table)} of {spec.n_trials} "
             f"({', '.join(f'{v} {k}' for k, v in sorted(counts.items())) or 'none yet'})",
             f"- sampler {spec.sampler.type} (seed {spec.sampler.seed}), pruner {spec.pruner.type}"]
    if wall_seconds is not None:
        lines.append(f"- wall time of this invocation: {wall_seconds:.0f} s")
    seconds = pd.to_numeric(table.get("seconds"), errors="coerce").dropna() if len(table) else pd.Series([], dtype=float)
    if len(seconds):
        lines.append(f"- seconds per trial: median {seconds.median():.1f}, total {seconds.sum():.0f}")
    lines.append("")
    if best:
        lines += ["## Best trial", "", f"trial {best['trial']}, run `{best['run_id']}`: "
                  f"{sweep.metric} = {best['value']:.4g}", "",
                  runs._md_table([{"param": k, "value": v} for k, v in best["params"].items()], ["param", "value"]), ""]
    else:
        lines += ["## Best trial", "", "none: no trial finished", ""]
    lines += ["## Trials", "", runs._md_table(table.to_dict("records"), list(table.columns)) if len(table) else "none", ""]
    lines += ["## Plots", ""]
    for name, where in made.items():
        lines.append(f"![{name}](plots/{name}.png)" if where.endswith(".png") else f"- {name}: {where}")
    atomic_write_text(folder / "report.md", "\n".join(lines) + "\n")
    return table


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


def _open_folder(sweep: Sweep, engine: str) -> tuple[str, Path]:
    runs.check_writable(sweeps_dir())
    sweep_id = new_sweep_id(sweep.spec)
    folder = sweeps_dir() / sweep_id
    folder.mkdir(parents=True)
    body = {**sweep.spec.to_dict(), "source": sweep.spec.source}
    atomic_write_text(folder / "sweep.yaml", f"# engine: {engine}; objective resolved to {sweep.metric} "
                      f"({sweep.direction})\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True))
    return sweep_id, folder


def _study(sweep: Sweep, sweep_id: str, folder: Path, resume: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=sweep_id, storage=storage_url(folder), direction=sweep.direction,
                               sampler=make_sampler(sweep.spec), pruner=make_pruner(sweep.spec),
                               load_if_exists=resume)


def _close_interrupted(study) -> int:
    """Trials left running by a killed sweep: failed (interrupted), their run folders too.
    They do not count toward n_trials, so a resumed sweep runs them again."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the sweep stopped during this trial)")
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        run_id = t.user_attrs.get("run_id")
        if run_id and (paths.runs_dir() / run_id).is_dir():
            run = runs.lookup(run_id)
            if run.manifest().get("status") == "running":
                run.fail("interrupted: the sweep stopped during this trial", where="polo sweep")
        n += 1
    return n


def counted_trials(study) -> int:
    """Trials that count toward n_trials: finished, pruned, failed (not interrupted ones)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if _status(t) in ("finished", "pruned", "failed") and not t.user_attrs.get("interrupted"))


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
        raise ParamsError("give exactly one of: a sweep file (polo sweep cpu_lr), or --resume SWEEP_ID to continue a sweep")
    if resume:
        sweep, folder = get_sweep(resume)
        sweep_id = resume
        if n_trials is not None:
            raise ParamsError("--n-trials applies to a new sweep; a resumed sweep keeps its own")
        if engine != "optuna":
            raise ParamsError("--resume runs with the optuna engine; a Ray sweep is started again instead")
    else:
        sweep = load(sweep_file)
        if n_trials is not None:
            if n_trials < 1:
                raise ParamsError(f"--n-trials {n_trials}: give at least 1")
            sweep = replace(sweep, spec=sweep.spec.model_copy(update={"n_trials": n_trials}))
        if engine == "ray" and sweep.data_varies:
            raise ParamsError(f"{sweep.spec.source}: the space changes the processed data "
                              f"({', '.join(d for d in sweep.dotted.values() if d.startswith(('data.', 'model.')))}); "
                              "Ray trials run at once and would overwrite each other's data. Use --engine optuna.")
        sweep_id, folder = _open_folder(sweep, engine)
    log(f"sweep {sweep_id}\n  folder: {folder}")
    from .model import import_unsloth

    import_unsloth()
    start = time.perf_counter()
    if not sweep.data_varies:
        prepare_data(sweep.base_params)  # once per sweep: every trial trains on the same data
    if engine == "ray":
        study = run_ray(sweep, sweep_id, folder, address, log)
    else:
        study = _run_optuna(sweep, sweep_id, folder, callbacks, log)
    table = write_results(study, sweep, folder, engine, time.perf_counter() - start)
    best = best_trial(study)
    log(f"results: {folder / 'results.csv'}\nreport:  {folder / 'report.md'}")
    return SweepResult(sweep_id, folder, table, best, engine)


def _run_optuna(sweep: Sweep, sweep_id: str, folder: Path, callbacks: list | None, log):
    import optuna

    study = _study(sweep, sweep_id, folder, resume=(folder / "study.db").exists())
    if _close_interrupted(study):
        log("  trials interrupted by the previous invocation were marked failed (interrupted)")
    remaining = sweep.spec.n_trials - counted_trials(study)
    if remaining <= 0:
        log(f"  all {sweep.spec.n_trials} trials already ran")
        return study
    log(f"  {remaining} trial(s) to run of {sweep.spec.n_trials}")
    sign = 1.0 if sweep.direction == "minimize" else -1.0  # pruners compare in the study's direction

    def objective(trial):
        values = suggest(trial, sweep.spec.space)
        trial.set_user_attr("seconds", None)

        def report(run, step, eval_loss):
            trial.report(sign * eval_loss, step)
            return trial.should_prune()

        try:
            cfg = trial_params(sweep, values, trial.number)
        except ParamsError as e:
            outcome = TrialOutcome(status="failed", error=f"ParamsError: {' '.join(str(e).split())}"[:500])
        else:
            try:
                outcome = run_trial(sweep, cfg, sweep_id, trial.number, report, prepare=sweep.data_varies)
            except KeyboardInterrupt:
                trial.set_user_attr("interrupted", True)
                raise
        trial.set_user_attr("run_id", outcome.run_id)
        trial.set_user_attr("seconds", outcome.seconds)
        trial.set_user_attr("error", outcome.error)
        log(f"  trial {trial.number}: {outcome.status}" + (f" {outcome.value:.4g}" if outcome.value is not None else "")
            + (f" ({outcome.error})" if outcome.error else "") + f" in {outcome.seconds:.0f} s, run {outcome.run_id}")
        if outcome.status == "pruned":
            raise optuna.TrialPruned()
        if outcome.status == "failed":
            raise TrialFailed(outcome.error)
        return outcome.value

    def checkpoint(study, trial):  # a crash later keeps the table of what ran
        write_results(study, sweep, folder, "optuna")

    try:
        study.optimize(objective, n_trials=remaining, catch=(TrialFailed,), show_progress_bar=True,
                       callbacks=[checkpoint, *(callbacks or [])])
    except KeyboardInterrupt:
        write_results(study, sweep, folder, "optuna")
        raise RunError(f"sweep {sweep_id} interrupted after {counted_trials(study)} trial(s); "
                       f"continue it with `polo sweep --resume {sweep_id}`") from None
    return study


class TrialFailed(PoloError):
    """A trial's run failed (recorded in its run folder); the sweep goes on."""


# ------------------------------------------------------------------ ray

def _env_for_workers() -> dict[str, str]:
    """Where Ray workers write: the same outputs, processed data and model cache as the driver."""
    env = {"POLO_OUTPUTS": str(paths.outputs_dir()), "POLO_PROCESSED_DIR": str(paths.processed_dir()),
           "POLO_MODEL_CACHE": str(paths.model_cache_dir()),
           "UNSLOTH_COMPILE_LOCATION": str(paths.unsloth_compile_dir()), "TOKENIZERS_PARALLELISM": "false"}
    for var in ("HF_HUB_OFFLINE", "HF_HOME"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def _ray_trainable(config: dict[str, Any], sweep_body: dict[str, Any], sweep_id: str, folder: str):
    """One Ray Tune trial, in a Ray worker: Unsloth first, then the same run_trial as optuna.

    The trial's outcome goes to <sweep folder>/ray_trials/<number>.json at every evaluation and at
    the end: a trial that ASHA stops is ended by Ray mid-training, and its last file says so.
    """
    from .model import import_unsloth

    import_unsloth()
    from ray import tune

    sweep = validate(sweep_body, origin="sweep.yaml")
    number = _ray_trial_number(tune.get_context())
    record = Path(folder) / "ray_trials" / f"{number}.json"
    sign = 1.0 if sweep.direction == "minimize" else -1.0
    values = {k: config[k] for k in sweep.spec.space}
    evaluations: list[tuple[int, float]] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def save(outcome: TrialOutcome) -> None:
        from .atomic import atomic_write_json
        atomic_write_json(record, {"number": number, "params": values, "started": started, **outcome.__dict__})

    def report(run, step, eval_loss):  # ASHA decides: a stopped trial's worker is ended by Ray
        evaluations.append((step, eval_loss))
        save(TrialOutcome(status="running", run_id=run.id, evaluations=evaluations))
        # objective: the searcher records intermediate values in the study's direction
        tune.report({"eval_loss": eval_loss, "objective": sign * eval_loss, "step": step})
        return False

    try:
        cfg = trial_params(sweep, values, number)
    except ParamsError as e:
        outcome = TrialOutcome(status="failed", error=f"ParamsError: {' '.join(str(e).split())}"[:500])
    else:
        outcome = run_trial(sweep, cfg, sweep_id, number, report, prepare=False)
    save(outcome)
    if outcome.status != "finished":
        raise TrialFailed(f"trial {number}: {outcome.error}")
    tune.report({"eval_loss": outcome.evaluations[-1][1] if outcome.evaluations else float("nan"),
                 "objective": outcome.value, "step": outcome.evaluations[-1][0] if outcome.evaluations else 0})


def _ray_trial_number(context) -> int:
    """0-based creation order of a Ray trial: Tune names its folder <trainable>_<id>_<counter>_<config>."""
    import re

    trial_id, name = context.get_trial_id(), Path(context.get_trial_dir()).name
    found = re.search(rf"_{re.escape(trial_id)}_(\d+)", name)
    if not found:
        raise RunError(f"cannot read the trial number from Ray's trial folder name {name!r}")
    return int(found.group(1)) - 1


def ray_resources(spec: SweepFile) -> dict[str, float]:
    """One trial per GPU on a GPU machine, per `cpus_per_trial` CPUs otherwise."""
    gpus = spec.ray.gpus_per_trial
    if gpus is None:
        import torch
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    return {"cpu": spec.ray.cpus_per_trial, "gpu": gpus}


def run_ray(sweep: Sweep, sweep_id: str, folder: Path, address: str | None, log):
    """Ray Tune: OptunaSearch (the sweep's sampler) + ASHA on eval_loss. Every trial lands in
    the same study.db afterwards, so the table, plots and report are the optuna engine's."""
    import functools

    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = sweep.spec
    started_here = not ray.is_initialized()
    if started_here:
        # No dashboard: a sweep needs none, and it costs memory and a port on a shared machine.
        init = dict(include_dashboard=False, runtime_env={"env_vars": _env_for_workers()},
                    log_to_driver=False, configure_logging=True, logging_level="warning")
        try:
            ray.init(address=address, **init) if address else ray.init(**init)
        except (ConnectionError, RuntimeError, OSError, ValueError) as e:
            raise RunError(f"Ray could not start ({type(e).__name__}: {e}). "
                           + ("Check that the cluster at --address is up (`ray status` on its head node)."
                              if address else "Use --engine optuna on this machine.")) from None
    log(f"  ray: {'cluster ' + address if address else 'local instance'}, resources {ray.cluster_resources()}")
    searcher = OptunaSearch(space=functools.partial(_define_space, space=spec.space), metric="objective",
                            mode="min" if sweep.direction == "minimize" else "max", sampler=make_sampler(spec))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="eval_loss", mode="min",
                              grace_period=spec.ray.grace_period, reduction_factor=spec.ray.reduction_factor,
                              max_t=10 ** 6) if spec.pruner.type != "none" else None
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trainable, sweep_body=spec.to_dict(), sweep_id=sweep_id, folder=str(folder)), ray_resources(spec))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.n_trials,
                                    max_concurrent_trials=spec.ray.max_concurrent_trials),
        run_config=tune.RunConfig(name="tune", storage_path=str(folder / "ray"), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    try:
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    study = _study(sweep, sweep_id, folder, resume=False)
    dists = distributions(spec.space)
    records = {int(p.stem): {**json.loads(p.read_text(encoding="utf-8")), "updated": p.stat().st_mtime}
               for p in (folder / "ray_trials").glob("*.json")}
    for result in grid:  # a trial that died before its first record (e.g. the worker crashed)
        if result.error is not None and not any(r.get("params") == {k: (result.config or {}).get(k) for k in spec.space}
                                                for r in records.values()):
            n = max(records, default=-1) + 1
            records[n] = {"number": n, "status": "failed", "params": {k: (result.config or {}).get(k) for k in spec.space},
                          "error": f"{type(result.error).__name__}: {result.error}"[:500]}
    for n in sorted(records):
        _add_ray_trial(study, records[n], dists, sweep)
    return study


def _define_space(trial, space):
    suggest(trial, space)
    return None


def _add_ray_trial(study, record: dict[str, Any], dists, sweep: Sweep) -> None:
    """Record one Ray trial (its ray_trials/<n>.json) in study.db as an Optuna trial."""
    import optuna
    from optuna.trial import TrialState

    status, run_id = record.get("status"), record.get("run_id")
    seconds = record.get("seconds")
    if status == "running":  # ASHA stopped it: Ray ended the worker between two evaluations
        status = "pruned"
        if record.get("started") and record.get("updated"):  # until its last evaluation was recorded
            seconds = round(record["updated"] - datetime.fromisoformat(record["started"]).timestamp(), 1)
        if run_id and (paths.runs_dir() / run_id / "params.yaml").is_file():
            run = runs.lookup(run_id)
            step = record["evaluations"][-1][0] if record.get("evaluations") else None
            run.update_manifest(status="pruned", pruned_at_step=step, pruned_by="ASHA")
            run.update_summary(sweep={"sweep_id": study.study_name, "trial": record["number"], "status": "pruned",
                                      "pruned_at_step": step, "by": "ASHA"})
    state = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(status, TrialState.FAIL)
    sign = 1.0 if sweep.direction == "minimize" else -1.0
    params = {k: v for k, v in (record.get("params") or {}).items() if k in dists}
    trial = optuna.trial.create_trial(
        params=params, distributions={k: dists[k] for k in params}, state=state,
        value=record.get("value") if state == TrialState.COMPLETE else None,
        intermediate_values={int(step): sign * float(loss) for step, loss in record.get("evaluations") or []},
        user_attrs={"run_id": run_id, "seconds": seconds, "engine": "ray", "started": record.get("started"),
                    "error": record.get("error") if state == TrialState.FAIL else None})
    study.add_trial(trial)


def load_study(sweep_id: str):
    """The Optuna study of a sweep (for a notebook: tables, plots)."""
    import optuna

    _, folder = get_sweep(sweep_id)
    return optuna.load_study(study_name=sweep_id, storage=storage_url(folder))


def latest_sweep() -> str:
    found = sorted(p.name for p in sweeps_dir().glob("*") if (p / "study.db").is_file()) if sweeps_dir().exists() else []
    if not found:
        raise RunError(f"no sweep in {sweeps_dir()}: run one first (`polo sweep sweeps/smoke.yaml`).")
    return found[-1]
