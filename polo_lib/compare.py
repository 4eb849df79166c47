"""Compare runs: which to show, their curves, metrics (of each run's latest evaluation, or one
chosen), the best one, and what differs."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from . import plots, registry, runs, stats
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


def metrics_table(chosen: Sequence[runs.Run], evaluations: Mapping[str, str] | str | None = None) -> pd.DataFrame:
    """One row per run: training figures and every tuned metric (chrf, bleu, ...) of one of its
    evaluations: the latest, or the one `evaluations` names for that run ({run: evaluation id or
    prefix}; runs named as `select` takes them; a YAML/JSON string from papermill works)."""
    picks = {runs.lookup(ref, status=None).id: ev for ref, ev in _mapping(evaluations).items()}
    unknown = set(picks) - {r.id for r in chosen}
    if unknown:
        raise RunError(f"evaluations names run(s) not compared here: {', '.join(sorted(unknown))}")
    rows = []
    for r in chosen:
        t = r.summary().training
        evaluation = r.evaluation(picks.get(r.id))
        scores = evaluation.metrics().get("metrics", {}) if evaluation else {}
        rows.append({"run_id": r.id, **{k: getattr(t, k) if t else None
                                        for k in ("eval_loss_best", "loss_last", "steps", "train_seconds")},
                     "evaluation": evaluation.id if evaluation else None,
                     **{k: v.get("tuned") for k, v in scores.items()}})
    return pd.DataFrame(rows).set_index("run_id")


def _mapping(value: Mapping[str, str] | str | None) -> dict[str, str]:
    if isinstance(value, str):
        import yaml

        value = yaml.safe_load(value)
    if value is not None and not isinstance(value, Mapping):
        raise RunError(f"evaluations must map run ids to evaluation ids, e.g. {{'<run id>': '<evaluation id>'}}; "
                       f"got {value!r}")
    return {str(k): str(v) for k, v in (value or {}).items()}


def best(table: pd.DataFrame, metric: str = "eval_loss_best", higher_is_better: bool | None = None) -> pd.Series:
    """The best run's row by `metric` (direction from the registry's metric unless given; lower for the rest)."""
    if metric not in table:
        raise RunError(f"metric '{metric}' not in the table; choose one of {', '.join(table.columns)}")
    if higher_is_better is None:
        known = registry.METRICS.get(metric)
        higher_is_better = bool(known and known.higher_is_better)
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


def _scored(run: runs.Run, ref: str | None = None) -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """(evaluation, its per-example scores of the tuned model, its predictions) or a RunError saying
    what to do."""
    evaluation = run.evaluation(ref)
    if evaluation is None:
        raise RunError(f"run {run.id} has no finished evaluation: evaluate it first (polo run {run.id} "
                       "--stages evaluate, or notebooks/evaluate.ipynb).")
    path = evaluation.path / "scores.csv"
    if not path.is_file():
        raise RunError(f"run {run.id}, evaluation {evaluation.id} has no per-example scores (scores.csv): it was "
                       "evaluated before they were kept; evaluate it again to compare it.")
    predictions = pd.read_json(evaluation.path / "predictions.jsonl", lines=True, dtype={"id": str})
    scores = pd.read_csv(path, dtype={"id": str})
    return evaluation, scores[scores["model"] == "tuned"], predictions


def paired(chosen: Sequence[runs.Run], evaluations: Mapping[str, str] | str | None = None) -> pd.DataFrame:
    """Each run's tuned answers against the first run's, metric by metric, paired by example (stats:
    columns baseline* for the first run's means, other* for this run's, delta* for other - baseline;
    means with intervals, the paired difference's interval, p-value and verdict): rows (run, metric).
    The runs must have been evaluated on the same examples (ids and source texts), else a RunError
    names the difference. Statistics settings: the first run's evaluation params."""
    from . import evaluate

    if len(chosen) < 2:
        raise RunError("compare needs two runs or more: the first is the baseline the others are compared with.")
    picks = {runs.lookup(ref, status=None).id: ev for ref, ev in _mapping(evaluations).items()}
    scored = {r.id: _scored(r, picks.get(r.id)) for r in chosen}
    first = chosen[0]
    cfg = scored[first.id][0].params()
    tables = []
    for r in chosen[1:]:
        why = stats.same_examples(scored[first.id][2], scored[r.id][2])
        if why:
            raise RunError(f"runs {first.id} and {r.id} were evaluated on different examples ({why}): evaluate "
                           "them on the same split and limit to compare them pairwise.")
        both = pd.concat([scored[first.id][1].assign(model="first"), scored[r.id][1].assign(model="other")])
        table = evaluate.compare_scores(both, "first", "other", cfg)
        tables.append(table.rename(columns=lambda c: c.replace("base", "baseline").replace("tuned", "other"))
                      .assign(run=r.id, baseline_run=first.id).rename_axis("metric").reset_index())
    return pd.concat(tables).set_index(["run", "metric"])
