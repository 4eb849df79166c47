"""Replicate seeds: the same params trained N times, replicate i with training.seed = the params' seed
+ i, as one replicate group (each run's manifest: `replicates: {group, index, of, seed}`, written by
`runs.tag_replicate`), so a learning rate's effect can be told from the seed's.

A group is named by its id (`rep-<UTC time>-<params name>-<4 hex>`, or a unique prefix of it) wherever
`polo compare` and compare_runs take runs. Its figures, from each replicate's latest evaluation:

  summary          per metric, the mean of the tuned model across seeds and a Student-t interval over
                   the seeds' means (how much the figure moves when only the seed changes)
  compare_groups   each group against the first, pooled per example: the pairs are (seed index,
                   example id), replicate i of one group against replicate i of the other on the
                   same example (evaluate.compare_scores: paired bootstrap interval, p-value, verdict)
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from . import compare, evaluate, paths, pipeline, registry, runs, stats
from .errors import ParamsError, RunError

GROUP_PREFIX = "rep-"
SEED_KEY = "training.seed"


def new_group_id(name: str) -> str:
    return f"{GROUP_PREFIX}{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{name}-{uuid.uuid4().hex[:4]}"


def plan(base_seed: int, n: int, group: str) -> list[dict[str, Any]]:
    """The replicates of a group: replicate i (0-based) of n trains with seed base_seed + i."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ParamsError(f"seeds must be a whole number of replicates, 1 or more; got {n!r}")
    return [{"group": group, "index": i, "of": n, "seed": base_seed + i} for i in range(n)]


def overrides_for(overrides: dict[str, Any] | None, tag: dict[str, Any]) -> dict[str, Any]:
    """The params overrides of one replicate: the given ones, and its seed."""
    return {**(overrides or {}), SEED_KEY: tag["seed"]}


def run_replicates(params_file: str, n: int, overrides: dict[str, Any] | None = None,
                   stages: Sequence[str] | None = None, name: str | None = None, preflight: bool = True,
                   log: Callable[[str], None] = print, execute: Callable[..., runs.Run] | None = None,
                   queue: dict[str, Any] | None = None) -> tuple[str, list[runs.Run]]:
    """`polo run PARAMS --seeds N`: the pipeline N times, replicate i with seed (params' seed + i),
    each run tagged into one new group. Returns (group id, runs); a failing replicate stops the rest."""
    execute = execute or pipeline.run_pipeline
    cfg = pipeline.resolve(params_file, overrides, name)
    group = new_group_id(cfg.name)
    done = []
    for tag in plan(cfg.training.seed, n, group):
        log(f"=== replicate {tag['index'] + 1}/{n} of group {group}: {SEED_KEY} {tag['seed']}")
        done.append(execute(params_file, overrides=overrides_for(overrides, tag), stages=stages, name=name,
                            preflight=preflight, log=log, queue=queue, replicate=tag))
    log(f"replicate group {group}: {len(done)} runs; compare it with `polo compare {group} OTHER_GROUP`")
    return group, done


# ------------------------------------------------------------------ a group's figures

def is_group_ref(ref: str) -> bool:
    return str(ref).strip().startswith(GROUP_PREFIX)


def lookup_group(ref: str) -> tuple[str, list[runs.Run]]:
    """A group by its id or a unique prefix: (group id, its runs by replicate index)."""
    groups = runs.replicate_groups()
    ref = str(ref).strip()
    matches = [g for g in groups if g == ref] or [g for g in groups if g.startswith(ref)]
    if len(matches) == 1:
        return matches[0], groups[matches[0]]
    if matches:
        raise RunError(f"replicate group '{ref}' is ambiguous: {', '.join(sorted(matches)[:5])}. Give more of the id.")
    known = sorted(groups)[-5:]
    raise RunError(f"replicate group '{ref}' not found in {paths.runs_dir()}: no run's manifest names it. "
                   f"Known groups: {', '.join(known) or 'none (make one with polo run PARAMS --seeds N)'}.")


def _scored_group(ref: str) -> tuple[str, dict[int, tuple[runs.Run, Any, pd.DataFrame, pd.DataFrame]]]:
    """(group id, {replicate index: (run, evaluation, tuned per-example scores, predictions)}), every
    replicate evaluated on the same examples (else a RunError names the replicate and the difference)."""
    group, members = lookup_group(ref)
    scored = {}
    for run in members:
        index = int(run.manifest()["replicates"]["index"])
        scored[index] = (run, *compare._scored(run))
    first = scored[min(scored)]
    for run, _, _, predictions in scored.values():
        why = stats.same_examples(first[3], predictions)
        if why:
            raise RunError(f"group {group}: replicates {first[0].id} and {run.id} were evaluated on different "
                           f"examples ({why}): evaluate them on the same split and limit.")
    return group, scored


def _metric_names(scores: pd.DataFrame) -> list[str]:
    return [m for m in registry.METRICS if m in scores]


def summary(ref: str) -> pd.DataFrame:
    """One row per metric of a group's tuned model: `mean` across seeds (of each seed's mean over the
    examples), its t-interval over the seeds' means (`low`, `high`; confidence from the first
    replicate's evaluation params), the seeds' standard deviation, and each seed's mean."""
    group, scored = _scored_group(ref)
    confidence = next(iter(scored.values()))[1].params().evaluation.confidence
    first_scores = next(iter(scored.values()))[2]
    rows = {}
    for metric in _metric_names(first_scores):
        means = [float(s[metric].mean()) for _, _, s, _ in scored.values()]
        low, high = stats.t_interval(means, confidence)
        rows[metric] = {"group": group, "seeds": len(means), "examples": len(first_scores),
                        "mean": float(pd.Series(means).mean()), "low": low, "high": high,
                        "sd": float(pd.Series(means).std(ddof=1)) if len(means) > 1 else float("nan"),
                        "per_seed": means}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("metric")


def _pooled(scored: dict, model: str) -> pd.DataFrame:
    """A group's per-example scores as one model, each row's id (seed index, example id)."""
    return pd.concat([s.assign(id=[f"{index}:{i}" for i in s["id"]], model=model)
                      for index, (_, _, s, _) in sorted(scored.items())])


def compare_groups(refs: Sequence[str]) -> pd.DataFrame:
    """Each group against the first, pooled per example (pairs: (seed index, example id)): rows
    (group, metric); columns: baseline / other (pooled means, intervals), delta (other - baseline)
    with its interval, p_value, detectable, verdict, and `n`, the number of pairs. The groups need the same
    replicate indices and the same examples, else a RunError says what differs."""
    if len(refs) < 2:
        raise RunError("comparing groups needs two groups or more: the first is the baseline.")
    first_id, first = _scored_group(refs[0])
    cfg = next(iter(first.values()))[1].params()
    tables = []
    for ref in refs[1:]:
        group, other = _scored_group(ref)
        if set(other) != set(first):
            raise RunError(f"groups {first_id} and {group} have different replicates (seed indices "
                           f"{sorted(first)} vs {sorted(other)}): pooled pairs are (seed index, example), so both "
                           "need the same number of seeds.")
        why = stats.same_examples(first[min(first)][3], other[min(other)][3])
        if why:
            raise RunError(f"groups {first_id} and {group} were evaluated on different examples ({why}): evaluate "
                           "them on the same split and limit to compare them.")
        both = pd.concat([_pooled(first, "first"), _pooled(other, "other")])
        table = evaluate.compare_scores(both, "first", "other", cfg)
        tables.append(table.rename(columns=lambda c: c.replace("base", "baseline").replace("tuned", "other"))
                      .assign(group=group, baseline_group=first_id).rename_axis("metric").reset_index())
    return pd.concat(tables).set_index(["group", "metric"])


def summaries(refs: Sequence[str] | str | None) -> pd.DataFrame:
    """compare_runs: every named group's summary in one table (rows: group, metric); empty for none.
    papermill's string (a YAML list or comma-separated ids) works."""
    refs = _refs(refs)
    if not refs:
        return pd.DataFrame()
    return pd.concat([summary(r).reset_index() for r in refs]).set_index(["group", "metric"])


def compared(refs: Sequence[str] | str | None) -> pd.DataFrame:
    """compare_runs: compare_groups of the named groups; empty for fewer than two."""
    refs = _refs(refs)
    return compare_groups(refs) if len(refs) >= 2 else pd.DataFrame()


def _refs(refs: Sequence[str] | str | None) -> list[str]:
    if isinstance(refs, str):
        import yaml

        parsed = yaml.safe_load(refs)
        refs = parsed if isinstance(parsed, list) else [r.strip() for r in refs.split(",") if r.strip()]
    return [str(r) for r in refs or []]
