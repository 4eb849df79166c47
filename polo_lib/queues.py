"""Many runs from one file: a queue of variants, or a pipeline of chained stages.

Queue (variants run in sequence; a failing variant is recorded and the queue goes on):

    base: cpu                      # a params file
    stages: [prepare, train, evaluate]
    set: {max_steps: 6}            # overrides for every variant
    variants:
      - {name: lr-5e-4, set: {learning_rate: 5.0e-4}}
      - {name: lr-1e-3, set: {learning_rate: 1.0e-3}, seeds: 3}

`seeds: N` (an item's, or the file's for every variant) trains the variant N times, replicate i
with training.seed = its seed + i, tagged as one replicate group (replicates; a row per replicate).

Pipeline (each step starts from the previous step's adapter: `run.init_adapter`):

    base: cpu
    pipeline:
      - {name: stage1, set: {learning_rate: 1.0e-3}}
      - {name: stage2, set: {learning_rate: 2.0e-4}}

Both end with one results table (results.csv, report.md) in outputs/queues/<id>/.
"""
from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from . import paths, pipeline, replicates, reports, runs
from .errors import ParamsError, PoloError

KEYS = {"base", "stages", "set", "variants", "pipeline", "seeds"}
ITEM_KEYS = {"name", "set", "seeds"}


@dataclass(frozen=True)
class Item:
    name: str
    overrides: dict[str, Any]
    seeds: int | None = None  # replicates (replicates.plan); None: one run, not a group


@dataclass(frozen=True)
class QueueFile:
    path: Path
    base: str
    stages: list[str] | None
    items: list[Item]
    chained: bool  # a pipeline: each item starts from the previous item's adapter
    common: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path) -> QueueFile:
    """Read and validate a queue/pipeline file; every problem reported at once."""
    try:
        path = paths.find_yaml(path, paths.QUEUES_DIR, "queue file")
    except FileNotFoundError as e:
        raise ParamsError(str(e)) from None
    body = paths.read_yaml(path, ParamsError) or {}
    if not isinstance(body, dict):
        raise ParamsError(f"{path}: expected a mapping with base and variants (or pipeline).")
    problems = []
    for key in body:
        if key not in KEYS:
            match = difflib.get_close_matches(str(key), sorted(KEYS), n=1)
            problems.append(f"unknown key '{key}'." + (f" Did you mean '{match[0]}'?" if match else ""))
    if "base" not in body:
        problems.append("'base' is missing: the params file every item starts from (e.g. cpu)")
    if ("variants" in body) == ("pipeline" in body):
        problems.append("give exactly one of 'variants' (independent runs) or 'pipeline' (chained runs)")
    raw_items = body.get("variants") or body.get("pipeline") or []
    if not isinstance(raw_items, list) or not raw_items:
        problems.append("'variants'/'pipeline' must be a non-empty list of {name, set}")
        raw_items = []
    items, seen = [], set()
    for i, raw in enumerate(raw_items):
        if not isinstance(raw, dict) or "name" not in raw:
            problems.append(f"item {i}: expected {{name: ..., set: {{...}}}}, got {raw!r}")
            continue
        extra = set(raw) - ITEM_KEYS
        if extra:
            problems.append(f"item '{raw['name']}': unknown key(s) {sorted(extra)} (allowed: name, set, seeds)")
        seeds = raw.get("seeds", body.get("seeds"))
        if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
            problems.append(f"item '{raw['name']}': seeds must be a whole number of replicates, 1 or more; "
                            f"got {seeds!r}")
            seeds = None
        if seeds is not None and "pipeline" in body:
            problems.append(f"item '{raw['name']}': seeds is for variants; a pipeline chains one run per step")
        if raw["name"] in seen:
            problems.append(f"item '{raw['name']}': duplicate name")
        seen.add(raw["name"])
        if not isinstance(raw.get("set", {}), dict):
            problems.append(f"item '{raw['name']}': 'set' must be a mapping of overrides")
            continue
        items.append(Item(str(raw["name"]), dict(raw.get("set") or {}), seeds))
    stages = body.get("stages")
    if stages is not None and (not isinstance(stages, list) or not all(isinstance(s, str) for s in stages)):
        problems.append("'stages' must be a list such as [prepare, train, evaluate]")
    if problems:
        raise ParamsError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return QueueFile(path, str(body["base"]), stages, items, "pipeline" in body, dict(body.get("set") or {}))


def queue_id(q: QueueFile) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{q.path.stem}"


def run_queue(path: str | Path, log: Callable[[str], None] = print,
              execute: Callable[..., runs.Run] | None = None) -> tuple[pd.DataFrame, Path]:
    """Run every item in order; a failure is a row, not the end (except in a pipeline, where
    the next step has nothing to start from). Returns the results table and its folder."""
    execute = execute or pipeline.run_pipeline
    q = load(path)
    folder = paths.outputs_dir() / "queues" / queue_id(q)
    folder.mkdir(parents=True, exist_ok=False)
    rows, previous = [], None
    steps = [(item, tag) for item in q.items for tag in _replicates(q, item)]
    for i, (item, tag) in enumerate(steps, 1):
        label = item.name if tag is None else f"{item.name} seed {tag['seed']} ({tag['index'] + 1}/{tag['of']})"
        log(f"=== [{i}/{len(steps)}] {label}")
        overrides = {**q.common, **item.overrides}
        if q.chained and previous is not None:
            overrides["run.init_adapter"] = previous
        if tag is not None:
            overrides = replicates.overrides_for(overrides, tag)
        start = time.perf_counter()
        row: dict[str, Any] = {"item": item.name, "run_id": None, "status": "failed", "error": None,
                               **({"group": tag["group"], "seed": tag["seed"]} if tag else {})}
        try:
            run = execute(q.base, overrides=overrides, stages=q.stages, name=f"{_stem(q.base)}-{item.name}", log=log,
                          queue={"queue_id": folder.name, "item": item.name}, **({"replicate": tag} if tag else {}))
            row.update(run_id=run.id, status=run.manifest().get("status", "finished"))
            previous = run.id
        except PoloError as e:
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"  # one line for the table
            log(f"  failed: {row['error']}")
            if q.chained:
                rows.append({**row, "seconds": round(time.perf_counter() - start, 1)})
                log("  pipeline stopped: the next step would have no adapter to start from")
                break
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        _write_results(folder, q, rows)  # after each item: a crash keeps what finished
    table = _write_results(folder, q, rows)
    return table, folder


def _replicates(q: QueueFile, item: Item) -> list[dict[str, Any] | None]:
    """An item's runs: [None] for one run, or its replicates' tags (one new group per item)."""
    if item.seeds is None:
        return [None]
    cfg = pipeline.resolve(q.base, {**q.common, **item.overrides}, f"{_stem(q.base)}-{item.name}")
    return replicates.plan(cfg.training.seed, item.seeds, replicates.new_group_id(cfg.name))


def _stem(base: str) -> str:
    return Path(base).stem


def _write_results(folder: Path, q: QueueFile, rows: list[dict[str, Any]]) -> pd.DataFrame:
    reg = runs.registry()
    table = pd.DataFrame(rows)
    for col in ("eval_loss_best", "loss_last", "chrf_base", "chrf_tuned", "train_seconds"):
        table[col] = [reg.loc[r, col] if isinstance(r, str) and r in reg.index else None for r in table["run_id"]]
    table = table[[c for c in table.columns if c != "error"] + ["error"]]  # the figures first, a long error last
    reports.write_csv(folder / "results.csv", table)
    kind = "Pipeline (chained)" if q.chained else "Queue"
    reports.write_page(folder / "report.md", f"{kind} {folder.name}",
                       [f"file: `{q.path}`", f"base params: `{q.base}`", f"stages: {', '.join(q.stages or ['all'])}"],
                       [("Runs", [reports.md_table(table.to_dict("records"), list(table.columns))])])
    return table
