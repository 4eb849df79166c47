"""The Ray Tune engine: OptunaSearch (the sweep's sampler) + ASHA on eval_loss (or objective.prune_on), one
trial per GPU or per N CPUs, on a local Ray instance or an existing cluster (--address).

Each trial runs `run_trial` in a Ray worker and keeps its own record, ray_trials/<number>.json
in the sweep folder, at every evaluation and at its end. When Tune is done, every record becomes
an Optuna trial of the sweep's study.db (`optuna.trial.create_trial` + `Study.add_trial`), so the
results table, plots and report are the optuna engine's.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import paths, runs
from ..atomic import atomic_write_json
from ..errors import RunError
from .optuna_engine import make_sampler, open_study
from .spec import Sweep, SweepFile, distributions, suggest, validate
from .trial import TrialFailed, TrialOutcome, mark_pruned, run_trial


def env_for_workers() -> dict[str, str]:
    """Where Ray workers write: the same outputs, processed data and model cache as the driver."""
    env = {"POLO_OUTPUTS": str(paths.outputs_dir()), "POLO_PROCESSED_DIR": str(paths.processed_dir()),
           "POLO_MODEL_CACHE": str(paths.model_cache_dir()),
           "UNSLOTH_COMPILE_LOCATION": str(paths.unsloth_compile_dir()), "TOKENIZERS_PARALLELISM": "false"}
    for var in ("HF_HUB_OFFLINE", "HF_HOME"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def ray_resources(spec: SweepFile) -> dict[str, float]:
    """One trial per GPU on a GPU machine, per `cpus_per_trial` CPUs otherwise."""
    gpus = spec.ray.gpus_per_trial
    if gpus is None:
        import torch
        gpus = 1.0 if torch.cuda.is_available() else 0.0
    return {"cpu": spec.ray.cpus_per_trial, "gpu": gpus}


# ------------------------------------------------------------------ in a worker

def ray_trainable(config: dict[str, Any], sweep_body: dict[str, Any], sweep_id: str, folder: str):
    """One Ray Tune trial, in a Ray worker: Unsloth first, then the same run_trial as optuna.

    The trial's outcome goes to <sweep folder>/ray_trials/<number>.json at every evaluation and at
    the end: a trial that ASHA stops is ended by Ray mid-training, and its last file says so.
    """
    from ..model import import_unsloth

    import_unsloth()
    from ray import tune

    sweep = validate(sweep_body, origin="sweep.yaml")
    number = ray_trial_number(tune.get_context())
    record = Path(folder) / "ray_trials" / f"{number}.json"
    values = {k: config[k] for k in sweep.spec.space}
    evaluations: list[tuple[int, float]] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def save(outcome: TrialOutcome) -> None:
        atomic_write_json(record, {"number": number, "params": values, "started": started, **outcome.__dict__})

    def report(run, step, value):  # ASHA decides: a stopped trial's worker is ended by Ray
        evaluations.append((step, value))
        save(TrialOutcome(status="running", run_id=run.id, evaluations=evaluations))
        # objective: the searcher records intermediate values in the study's direction; pruned_on: what ASHA
        # compares, in the study's direction too (mode below)
        tune.report({sweep.prune_on: value, "pruned_on": sweep.sign * value, "objective": sweep.sign * value,
                     "step": step})
        return False

    outcome = run_trial(sweep, values, sweep_id, number, report, prepare=False)
    save(outcome)
    if outcome.status != "finished":
        raise TrialFailed(f"trial {number}: {outcome.error}")
    last = outcome.evaluations[-1] if outcome.evaluations else (0, float("nan"))
    tune.report({sweep.prune_on: last[1], "pruned_on": sweep.sign * last[1], "objective": outcome.value,
                 "step": last[0]})


def ray_trial_number(context) -> int:
    """0-based creation order of a Ray trial: Tune names its folder <trainable>_<id>_<counter>_<config>."""
    trial_id, name = context.get_trial_id(), Path(context.get_trial_dir()).name
    found = re.search(rf"_{re.escape(trial_id)}_(\d+)", name)
    if not found:
        raise RunError(f"cannot read the trial number from Ray's trial folder name {name!r}")
    return int(found.group(1)) - 1


# ------------------------------------------------------------------ the driver

def run_ray(sweep: Sweep, sweep_id: str, folder: Path, address: str | None, log):
    """Ray Tune: OptunaSearch (the sweep's sampler) + ASHA on sweep.prune_on. Every trial lands in
    the same study.db afterwards, so the table, plots and report are the optuna engine's."""
    import ray

    started_here = _init_ray(address)
    log(f"  ray: {'cluster ' + address if address else 'local instance'}, resources {ray.cluster_resources()}")
    try:
        grid = _tuner(sweep, sweep_id, folder).fit()
    finally:
        if started_here:
            ray.shutdown()
    study = open_study(sweep, sweep_id, folder, resume=False)
    dists = distributions(sweep.spec.space)
    records = _records(folder, grid, sweep.spec)
    for n in sorted(records):
        add_ray_trial(study, records[n], dists, sweep)
    return study


def _init_ray(address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local instance; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    # No dashboard: a sweep needs none, and it costs memory and a port on a shared machine.
    init = dict(include_dashboard=False, runtime_env={"env_vars": env_for_workers()},
                log_to_driver=False, configure_logging=True, logging_level="warning")
    try:
        ray.init(address=address, **init) if address else ray.init(**init)
    except (ConnectionError, RuntimeError, OSError, ValueError) as e:
        raise RunError(f"Ray could not start ({type(e).__name__}: {e}). "
                       + ("Check that the cluster at --address is up (`ray status` on its head node)."
                          if address else "Use --engine optuna on this machine.")) from None
    return True


def _tuner(sweep: Sweep, sweep_id: str, folder: Path):
    """A Tuner of n_trials samples: OptunaSearch, ASHA (unless pruner none), one trial's resources."""
    import functools

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = sweep.spec
    searcher = OptunaSearch(space=functools.partial(_define_space, space=spec.space), metric="objective",
                            mode="min" if sweep.direction == "minimize" else "max", sampler=make_sampler(spec))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="pruned_on",
                              mode="min" if sweep.direction == "minimize" else "max",
                              grace_period=spec.ray.grace_period, reduction_factor=spec.ray.reduction_factor,
                              max_t=10 ** 6) if spec.pruner.type != "none" else None
    trainable = tune.with_resources(
        tune.with_parameters(ray_trainable, sweep_body=spec.to_dict(), sweep_id=sweep_id, folder=str(folder)),
        ray_resources(spec))
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.n_trials,
                                    max_concurrent_trials=spec.ray.max_concurrent_trials),
        run_config=tune.RunConfig(name="tune", storage_path=str(folder / "ray"), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _define_space(trial, space):
    suggest(trial, space)
    return None


def _records(folder: Path, grid, spec: SweepFile) -> dict[int, dict[str, Any]]:
    """Every trial's record by number: its ray_trials/<n>.json (with the file's time), or, for a
    trial that died before its first record (e.g. the worker crashed), one made from Tune's result."""
    records = {int(p.stem): {**json.loads(p.read_text(encoding="utf-8")), "updated": p.stat().st_mtime}
               for p in (folder / "ray_trials").glob("*.json")}
    for result in grid:
        params = {k: (result.config or {}).get(k) for k in spec.space}
        if result.error is not None and not any(r.get("params") == params for r in records.values()):
            n = max(records, default=-1) + 1
            records[n] = {"number": n, "status": "failed", "params": params,
                          "error": f"{type(result.error).__name__}: {result.error}"[:500]}
    return records


def add_ray_trial(study, record: dict[str, Any], dists, sweep: Sweep) -> None:
    """Record one Ray trial (its ray_trials/<n>.json) in study.db as an Optuna trial."""
    import optuna
    from optuna.trial import TrialState

    status, run_id, seconds = record.get("status"), record.get("run_id"), record.get("seconds")
    if status == "running":  # ASHA stopped it: Ray ended the worker between two evaluations
        status = "pruned"
        if record.get("started") and record.get("updated"):  # until its last evaluation was recorded
            seconds = round(record["updated"] - datetime.fromisoformat(record["started"]).timestamp(), 1)
        if run_id and (paths.runs_dir() / run_id / "params.yaml").is_file():
            step = record["evaluations"][-1][0] if record.get("evaluations") else None
            mark_pruned(runs.lookup(run_id), {"sweep_id": study.study_name, "trial": record["number"]}, step, by="ASHA")
    state = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(status, TrialState.FAIL)
    params = {k: v for k, v in (record.get("params") or {}).items() if k in dists}
    trial = optuna.trial.create_trial(
        params=params, distributions={k: dists[k] for k in params}, state=state,
        value=record.get("value") if state == TrialState.COMPLETE else None,
        intermediate_values={int(step): sweep.sign * float(loss) for step, loss in record.get("evaluations") or []},
        user_attrs={"run_id": run_id, "seconds": seconds, "engine": "ray", "started": record.get("started"),
                    "error": record.get("error") if state == TrialState.FAIL else None})
    study.add_trial(trial)
