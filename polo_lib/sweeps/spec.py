"""The sweep file: its schema (pydantic models), reading and validating it against params, the
objective it names, and its search space as Optuna distributions and suggestions.

    base: smoke
    set: {max_steps: 6}                       # fixed overrides for every trial
    space:
      learning_rate: {type: log_float, low: 1.0e-4, high: 1.0e-2}
      lora_r: {type: categorical, choices: [4, 8, 16]}
    objective: {metric: eval_loss}            # training.eval_loss_best, minimize
    n_trials: 8
    sampler: {type: tpe, seed: 3407}
    pruner: {type: median}

The whole file is validated (keys, every search-space field through params, every bound and
choice through params.load) before any trial starts: every problem is reported at once.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import params as params_lib
from .. import paths, registry, task_eval
from ..errors import ParamsError, bullet_list

SWEEPS_DIR = paths.SWEEPS_DIR

# Objective short names -> summary.json paths; "evaluation.tuned.<metric>" for every score.
TRAINING_FIGURES = {"eval_loss_best": False, "loss_last": False, "tokens_per_s": True, "train_seconds": False}
SHORT_OBJECTIVES = {"eval_loss": "training.eval_loss_best", "loss": "training.loss_last"}


# ------------------------------------------------------------------ the schema

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
    choices: list[bool | int | float | str] = Field(min_length=1)


Dimension = Annotated[FloatDim | IntDim | CategoricalDim, Field(discriminator="type")]


class Objective(_Strict):
    metric: str = "eval_loss"  # eval_loss, chrf, ... or a summary.json path (training.x, evaluation.tuned.x)
    direction: Literal["minimize", "maximize"] | None = None  # None: the metric's own (known ones)
    # What the pruner compares at each evaluation: eval_loss, or a task metric scored during training
    # (the base params need evaluation.during_training); its direction is the metric's own.
    prune_on: params_lib.StoppingMetric = "eval_loss"


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


class SweepFile(params_lib.Document):
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

    @property
    def prune_on(self) -> str:
        """The trainer's metric the pruner reads at each evaluation: eval_loss, eval_chrf, ..."""
        return task_eval.metric_key(self.spec.objective.prune_on)

    @property
    def sign(self) -> float:
        """Factor that turns a value of `prune_on` into the study's direction (pruners compare in
        it): -1 where one of them is higher-is-better and the other is not."""
        lower_is_better = not task_eval.greater_is_better(self.spec.objective.prune_on)
        return (1.0 if lower_is_better else -1.0) * (1.0 if self.direction == "minimize" else -1.0)


# ------------------------------------------------------------------ reading and validating

def resolve_file(sweep_file: str | Path) -> Path:
    """A name in params/sweeps/ ('smoke'), a file name or a path."""
    try:
        return paths.find_yaml(sweep_file, SWEEPS_DIR, "sweep file")
    except FileNotFoundError as e:
        raise ParamsError(str(e)) from None


def load(sweep_file: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is reported at once, before any trial."""
    path = resolve_file(sweep_file)
    body = paths.read_yaml(path, ParamsError)
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
        problems += [p for _, p in params_lib.validation_problems(e)]
    _raise_if(problems, origin)
    return _check_against_params(spec, origin)


def _raise_if(problems: list[str], origin: str) -> None:
    if problems:
        raise ParamsError(f"{origin}: {len(problems)} problem(s):\n{bullet_list(problems)}")


def _check_against_params(spec: SweepFile, origin: str) -> Sweep:
    """Every space key is a params field of the right type; every bound and choice loads."""
    by_key, problems = _space_keys(spec)
    try:
        base = params_lib.load(spec.base, overrides=spec.set)
    except ParamsError as e:
        raise ParamsError(f"{origin}: base '{spec.base}' with 'set':\n{e}") from None
    problems += _value_problems(spec, by_key)
    if spec.sampler.type == "grid":
        continuous = [k for k, d in spec.space.items() if isinstance(d, FloatDim) and d.step is None]
        if continuous:
            problems.append(f"sampler grid needs a finite grid: give {', '.join(continuous)} a step, "
                            "or make them categorical")
    metric, direction, metric_problem = _resolve_objective(spec.objective)
    if metric_problem:
        problems.append(metric_problem)
    searched_align = sorted(k for k, d in by_key.items() if d.startswith("align."))
    if searched_align and not metric_problem and not metric.startswith("evaluation."):
        problems.append(f"space searches the align stage ({', '.join(searched_align)}), but objective.metric "
                        f"'{spec.objective.metric}' is a training figure, the same whatever align does: choose a "
                        "held-out one (objective: {metric: chrf}, or another evaluation metric)")
    if spec.objective.prune_on != "eval_loss" and not base.evaluation.during_training:
        problems.append(f"objective.prune_on is '{spec.objective.prune_on}', a task metric, but the base params "
                        "score none during training: set evaluation.during_training (e.g. 3) in 'set'")
    if spec.pruner.type != "none" and isinstance(base.training.eval_steps, int) and \
            base.training.eval_steps >= _max_steps_hint(base):
        problems.append(f"pruner {spec.pruner.type}: eval_steps ({base.training.eval_steps}) is not below "
                        f"the steps a trial trains ({_max_steps_hint(base)}), so no evaluation comes before "
                        "the end to prune on. Lower training.eval_steps (and save_steps) in 'set', or use "
                        "pruner: {type: none}.")
    _raise_if(problems, origin)
    data_keys = {d for d in by_key.values() if d.startswith("data.")} | \
        {d for d in by_key.values() if d in ("model.model_name", "model.max_seq_length")}
    return Sweep(spec, metric, direction, by_key, base, bool(data_keys))


def _space_keys(spec: SweepFile) -> tuple[dict[str, str], list[str]]:
    """(space key -> params dotted key, problems): unknown keys, and keys both set and searched."""
    problems: list[str] = []
    by_key: dict[str, str] = {}
    for key in spec.space:
        dotted, key_problems = params_lib.normalize_overrides({key: 0})
        problems += [f"space: {p}" for p in key_problems]
        if dotted:  # one entry: the key's dotted name (an unknown key is a problem instead)
            by_key[key] = next(iter(dotted))
    fixed, set_problems = params_lib.normalize_overrides(spec.set)
    problems += [f"set: {p}" for p in set_problems]
    both = sorted(set(by_key.values()) & set(fixed))
    if both:
        problems.append(f"{', '.join(both)}: both in 'set' and in 'space'; keep it in one of them")
    return by_key, problems


def _value_problems(spec: SweepFile, by_key: dict[str, str]) -> list[str]:
    """A float range over an integer field; a bound or choice that params refuses."""
    problems = []
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
    return problems


def _max_steps_hint(cfg) -> int:
    """Steps a trial trains when max_steps is set; a large number otherwise (epochs: unknown here)."""
    return cfg.training.max_steps if cfg.training.max_steps > 0 else 10 ** 9


def _resolve_objective(obj: Objective) -> tuple[str, str, str | None]:
    """(summary.json path, direction, problem or None)."""
    directions = {m.name: m.higher_is_better for m in registry.METRICS.values()}
    name = obj.metric
    if name in SHORT_OBJECTIVES:
        name = SHORT_OBJECTIVES[name]
    elif name in directions:
        name = f"evaluation.tuned.{name}"
    elif name in TRAINING_FIGURES:
        name = f"training.{name}"
    higher = None
    if name.startswith("training.") and name.split(".", 1)[1] in TRAINING_FIGURES:
        higher = TRAINING_FIGURES[name.split(".", 1)[1]]
    elif name.startswith("evaluation.tuned.") and name.rsplit(".", 1)[1] in directions:
        higher = directions[name.rsplit(".", 1)[1]]
    else:
        options = [*SHORT_OBJECTIVES, *TRAINING_FIGURES, *directions]
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


# ------------------------------------------------------------------ the space for Optuna

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
