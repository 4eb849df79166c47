"""Experiment trackers besides the run folder (`training.report_to`): TensorBoard (default, into
the run's logs/), MLflow, Trackio, Weights & Biases.

The trainer logs to them through TRL (`SFTConfig.report_to`), each under the run id as the run's
name; everything stays on this machine unless the user points a tracker elsewhere:
- MLflow: a SQLite store in outputs/mlflow/mlflow.db (the file store is in maintenance mode in
  MLflow 3), experiment `polo`; MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME change them.
- Trackio: a local store in outputs/trackio (TRACKIO_DIR changes it; read when trackio is first
  imported in a process), project `polo`; no Space unless TRACKIO_SPACE_ID is set.
- Weights & Biases: offline mode (WANDB_MODE=online to upload), files in outputs/wandb/, project
  `polo` (WANDB_PROJECT), the run id as the W&B run id, so `wandb sync` merges every stage into one run.
When a stage ends, the run's params, its summary figures and its latest evaluation's metrics are
logged to that same tracker run (`log_stage_end`), so the tracker shows what the run folder shows
(Trackio: in the run's config, where they do not push the curves down the dashboard).
A tracker whose package is missing is refused before anything loads, naming the extra to install.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
import re
import time
from typing import Any

from . import paths
from .errors import ParamsError
from .registry import TRACKERS

log = logging.getLogger(__name__)

EXPERIMENT = PROJECT = "polo"  # MLflow's experiment, Trackio's and W&B's project


def missing(report_to) -> list[str]:
    """A problem per tracker in `report_to` whose package is not installed, naming the extra."""
    return [f"training.report_to names {name}, but the '{TRACKERS[name].module}' package is not installed: "
            f"pip install -e '.[{TRACKERS[name].extra}]' (or remove {name} from training.report_to)"
            for name in report_to if TRACKERS[name].extra and importlib.util.find_spec(TRACKERS[name].module) is None]


def check(report_to) -> None:
    problems = missing(report_to)
    if problems:
        raise ParamsError("; ".join(problems))


def mlflow_uri() -> str:
    """MLFLOW_TRACKING_URI when the user set one, else the local SQLite store in the outputs folder."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = paths.outputs_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def _mlflow():
    """mlflow pointed at this project's store and experiment (MLFLOW_EXPERIMENT_NAME or `polo`), and
    that experiment."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri())
    return mlflow, mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)


def _trackio_store() -> None:
    """Trackio's local store in the outputs folder unless TRACKIO_DIR says otherwise (read when
    trackio is first imported in a process)."""
    os.environ.setdefault("TRACKIO_DIR", str(paths.outputs_dir() / "trackio"))


def trainer_report_to(report_to, run) -> list[str]:
    """What SFTConfig.report_to gets (TensorBoard is our own callback into the run's logs/), after
    pointing each tracker at its offline store. Refuses a tracker that is not installed."""
    check(report_to)
    chosen = [name for name in report_to if name != "tensorboard"]
    if "mlflow" in chosen:
        _mlflow()
    if "trackio" in chosen:
        _trackio_store()
    if "wandb" in chosen:
        _wandb(run)  # the trainer's W&B callback logs into the run started here
    return chosen or ["none"]


def _wandb(run):
    """The W&B run of `run` (id and name: the run id), started offline unless WANDB_MODE says otherwise."""
    import wandb

    if wandb.run is not None and wandb.run.id != run.id:
        wandb.run.finish()
    if wandb.run is None:
        paths.outputs_dir().mkdir(parents=True, exist_ok=True)
        wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, name=run.id, id=run.id, resume="allow",
                   dir=str(paths.outputs_dir()), mode=os.environ.get("WANDB_MODE") or "offline")
    return wandb.run


def _numbers(node: Any, prefix: str) -> dict[str, float]:
    """Flat {dotted key: number} of a nested mapping; bools, NaN and text left out."""
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(_numbers(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
        out[_NAME.sub("_", prefix.replace("%", "pct"))] = float(node)  # trainable_% -> trainable_pct
    return out


_NAME = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow allows in a metric name


def _flat_params(cfg) -> dict[str, str]:
    return {f"{section}.{key}": str(value)[:500] for section, body in cfg.to_dict().items()
            if isinstance(body, dict) for key, value in body.items()}


def mlflow_run(mlflow, experiment, name: str):
    """The newest MLflow run named `name` in `experiment`, or None."""
    found = mlflow.MlflowClient().search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{name}'",
                                              order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def log_stage_end(run, cfg) -> dict[str, Any] | None:
    """Log the run's params (`params.<section>.<key>`), summary figures (`summary.training.*`,
    `summary.evaluation.tuned.*`, ...) to each tracker's run named after the run id; returns where
    (for the manifest), None when no tracker needs it. Never fails the stage: a tracker that cannot
    be reached costs a warning, not the run (the run folder holds everything)."""
    chosen = [t for t in cfg.training.report_to if TRACKERS[t].extra]
    if not chosen:
        return None
    summary = run.summary().model_dump(by_alias=True, exclude_none=True)
    summary.pop("evaluations", None)  # the list of every evaluation: the latest is `evaluation`
    figures, params = _numbers(summary, "summary"), {f"params.{k}": v for k, v in _flat_params(cfg).items()}
    where = {}
    for name in chosen:
        try:
            where[name] = {"mlflow": _mlflow_end, "trackio": _trackio_end, "wandb": _wandb_end}[name](
                run, params, figures)
        except Exception as e:  # noqa: BLE001 - the run folder holds everything; a tracker problem is a warning
            log.warning("could not log run %s to %s (%s: %s); the run folder has it all", run.id, name,
                        type(e).__name__, e)
    return where or None


def _mlflow_end(run, params: dict[str, str], figures: dict[str, float]) -> dict[str, Any]:
    mlflow, experiment = _mlflow()
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient()
    found = mlflow_run(mlflow, experiment, run.id)
    if found is None:  # an evaluation of a run trained before MLflow was on: a run of its own
        found = client.create_run(experiment.experiment_id, run_name=run.id)
    run_id = found.info.run_id
    have = client.get_run(run_id).data.params  # an MLflow param is written once
    new = [Param(k, v) for k, v in params.items() if k not in have]
    now = int(1000 * time.time())
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()], params=new[:100])
    for start in range(100, len(new), 100):
        client.log_batch(run_id, params=new[start:start + 100])
    client.set_tag(run_id, "polo.run_folder", str(run.path))
    if found.info.status == "RUNNING" and not mlflow.active_run():
        client.set_terminated(run_id)
    return {"run_id": run_id, "tracking_uri": mlflow_uri(), "experiment": found.info.experiment_id}


def _trackio_end(run, params: dict[str, str], figures: dict[str, float]) -> dict[str, Any]:
    _trackio_store()
    import trackio

    with contextlib.redirect_stdout(io.StringIO()):  # its banner, once per init, in every stage's output
        # The summary figures go into the run's config, beside its params, not into trackio.log: the dashboard
        # plots every logged key, and these single values, keys without a "/", would open it on a group of
        # one-bar charts above the loss curves. Trackio stores a config with the process's first log: hence
        # the empty one (a step without metrics, which no chart shows).
        trackio.init(project=PROJECT, name=run.id, resume="allow", config={**params, **figures})
        trackio.log({})
        trackio.finish()
    from trackio import utils
    return {"run": run.id, "project": PROJECT, "dir": str(utils.TRACKIO_DIR)}


def _wandb_end(run, params: dict[str, str], figures: dict[str, float]) -> dict[str, Any]:
    tracked = _wandb(run)
    tracked.config.update(params, allow_val_change=True)
    tracked.summary.update(figures)
    where = {"run_id": tracked.id, "project": tracked.project, "dir": str(tracked.dir)}
    tracked.finish()
    return where
