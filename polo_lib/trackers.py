"""Experiment trackers besides the run folder (`training.report_to`): TensorBoard (default, into
the run's logs/), MLflow, Trackio, Weights & Biases.

The trainer logs to them through TRL (`SFTConfig.report_to`); everything stays on this machine
unless the user points a tracker elsewhere (MLFLOW_TRACKING_URI, WANDB_MODE=online, ...):
- MLflow: a SQLite store in outputs/mlflow/mlflow.db (the file store is in maintenance mode in
  MLflow 3), experiment `polo` (MLFLOW_EXPERIMENT_NAME changes it), the run id as the run name.
  When a stage ends, the run's params, its summary figures and its latest evaluation's metrics are
  logged to that same MLflow run (`log_stage_end`), so the tracker shows what the run folder shows.
- Weights & Biases: offline mode, files in outputs/wandb (`wandb sync` uploads them later).
- Trackio: its local store.
A tracker whose package is missing is refused before anything loads, naming the extra to install.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
from typing import Any

from . import paths
from .errors import ParamsError

log = logging.getLogger(__name__)

# tracker -> (module, the pip extra of this project that installs it)
PACKAGES = {"mlflow": ("mlflow", "track"), "trackio": ("trackio", "trackio"), "wandb": ("wandb", "wandb")}
EXPERIMENT = "polo"


def missing(report_to) -> list[str]:
    """A problem per tracker in `report_to` whose package is not installed, naming the extra."""
    return [f"training.report_to names {name}, but the '{PACKAGES[name][0]}' package is not installed: "
            f"pip install -e '.[{PACKAGES[name][1]}]' (or remove {name} from training.report_to)"
            for name in report_to if name in PACKAGES and importlib.util.find_spec(PACKAGES[name][0]) is None]


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
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri())
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
    return mlflow


def trainer_report_to(report_to) -> list[str]:
    """What SFTConfig.report_to gets (TensorBoard is our own callback into the run's logs/), after
    pointing each tracker at its offline store. Refuses a tracker that is not installed."""
    check(report_to)
    chosen = [name for name in report_to if name != "tensorboard"]
    if "mlflow" in chosen:
        _mlflow()
    if "wandb" in chosen:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(paths.outputs_dir()))
    return chosen or ["none"]


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


def mlflow_run(mlflow, name: str):
    """The newest MLflow run named `name` in the current experiment, or None."""
    experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
    if experiment is None:
        return None
    found = mlflow.MlflowClient().search_runs([experiment.experiment_id], f"tags.mlflow.runName = '{name}'",
                                              order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def log_stage_end(run, cfg) -> dict[str, Any] | None:
    """Log the run's params (as `params.<section>.<key>`), summary figures (`summary.training.*`,
    `summary.evaluation.tuned.*`, ...) to the tracker run named after the run id; returns where
    (for the manifest), None when no tracker needs it. Never fails the stage: a tracker that cannot
    be reached costs a warning, not the run."""
    if "mlflow" not in cfg.training.report_to:
        return None
    try:
        mlflow = _mlflow()
        from mlflow.entities import Metric, Param

        client = mlflow.MlflowClient()
        found = mlflow_run(mlflow, run.id)
        if found is None:  # an evaluation of a run trained before MLflow was on: a run of its own
            experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT)
            found = client.create_run(experiment.experiment_id, run_name=run.id)
        run_id = found.info.run_id
        have = client.get_run(run_id).data.params
        params = [Param(f"params.{k}", v) for k, v in _flat_params(cfg).items() if f"params.{k}" not in have]
        summary = run.summary().model_dump(by_alias=True, exclude_none=True)
        summary.pop("evaluations", None)  # the list of every evaluation: the latest is `evaluation`
        figures = _numbers(summary, "summary")
        now = int(1000 * time.time())
        metrics = [Metric(k, v, now, 0) for k, v in figures.items()]
        client.log_batch(run_id, metrics=metrics, params=params[:100])
        for start in range(100, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100])
        client.set_tag(run_id, "polo.run_folder", str(run.path))
        if found.info.status == "RUNNING" and not mlflow.active_run():
            client.set_terminated(run_id)
        return {"mlflow": {"run_id": run_id, "tracking_uri": mlflow_uri(), "experiment": found.info.experiment_id}}
    except Exception as e:  # noqa: BLE001 - the run folder holds everything; a tracker problem is a warning
        log.warning("could not log run %s to MLflow (%s: %s); the run folder has it all", run.id, type(e).__name__, e)
        return None
