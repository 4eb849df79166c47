"""Compare runs: which to show, their curves, metrics, the best one, and what differs."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from . import plots, runs
from .errors import RunError


def select(run_ids: Sequence[str] | str | None = None, status: str = "finished") -> list[runs.Run]:
    """The given runs, or every run with `status` (oldest first).

    `papermill -p run_ids ...` passes a string: a YAML/JSON list or comma-separated ids work.
    """
    from .notebook import show_errors_briefly

    show_errors_briefly()
    if isinstance(run_ids, str):
        import yaml

        parsed = yaml.safe_load(run_ids)
        run_ids = parsed if isinstance(parsed, list) else [r.strip() for r in run_ids.split(",") if r.strip()]
    if run_ids:
        return [runs.lookup(r) for r in run_ids]
    reg = runs.registry(status)
    if reg.empty:
        raise RunError(f"no {status} runs in outputs/runs: run `make demo` or `polo run` first.")
    return [runs.lookup(r) for r in reg.index]


def logs(chosen: Sequence[runs.Run]) -> dict[str, pd.DataFrame]:
    from .train import read_train_log

    return {r.id: read_train_log(r.logs / "train_log.csv") for r in chosen}


def loss_overlay(chosen: Sequence[runs.Run]):
    return plots.loss_overlay(logs(chosen))


def metrics_table(chosen: Sequence[runs.Run]) -> pd.DataFrame:
    """One row per run: training figures and every tuned metric (chrf, bleu, ...)."""
    rows = []
    for r in chosen:
        s = r.summary()
        t = s.training
        row = {"run_id": r.id, **{k: getattr(t, k) if t else None
                                  for k in ("eval_loss_best", "loss_last", "steps", "train_seconds")}}
        row.update(s.evaluation.tuned if s.evaluation else {})
        rows.append(row)
    return pd.DataFrame(rows).set_index("run_id")


def best(table: pd.DataFrame, metric: str = "eval_loss_best", higher_is_better: bool | None = None) -> pd.Series:
    """The best run's row by `metric` (direction from metrics.HIGHER_IS_BETTER unless given)."""
    from .metrics import HIGHER_IS_BETTER

    if metric not in table:
        raise RunError(f"metric '{metric}' not in the table; choose one of {', '.join(table.columns)}")
    if higher_is_better is None:
        higher_is_better = HIGHER_IS_BETTER.get(metric, False) if metric != "eval_loss_best" else False
    values = table[metric].dropna()
    if values.empty:
        raise RunError(f"no run has a value for '{metric}' (evaluate the runs first)")
    return table.loc[values.idxmax() if higher_is_better else values.idxmin()]


def params_diff(chosen: Sequence[runs.Run]) -> pd.DataFrame:
    """Only the params that differ between the runs (rows: dotted key, columns: run id)."""
    flat = {}
    for r in chosen:
        d = r.params().to_dict()
        flat[r.id] = {f"{s}.{k}": str(v) for s, body in d.items() if isinstance(body, dict) for k, v in body.items()}
    table = pd.DataFrame(flat)
    return table[table.nunique(axis=1) > 1]
