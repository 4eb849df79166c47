"""summary.json's schema (RunSummary and its sections) and its one reader, read_summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import RunError


def _read_json(path: Path) -> dict[str, Any]:
    """A run file's content; {} before it is first written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


class _Section(BaseModel):
    # Known figures are typed; a figure added later (or by a user's callback) is kept, not refused.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TrainingSummary(_Section):
    """train.fit's headline figures (train.finish writes them)."""
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_pct: float | None = Field(None, alias="trainable_%")
    steps: int | None = None
    max_steps: int | None = None
    epochs: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    eval_loss_first: float | None = None
    eval_loss_best: float | None = None
    early_stopping_metric: str | None = None  # what early stopping and the best checkpoint followed
    best_metric: float | None = None          # its best value (the trainer's, after step 0)
    # evaluation.during_training: each task metric at the first evaluation (the base model, step 0),
    # the last, and the best: chrf_first, chrf_last, chrf_best, ...
    task_metrics: dict[str, float | None] = {}
    best_checkpoint: str | None = None
    early_stopped: bool = False
    early_stopped_at_step: int | None = None
    early_stopping_patience: int | None = None  # as trained: 0 where the file's gave way to a short run
    plan_notes: list[str] = []                # train.Plan.notes: what gave way to the run length asked for
    tokens_per_s: float | None = None
    train_seconds: float | None = None          # train.TIME_FIGURES says what each time figure measures
    baseline_eval_seconds: float | None = None  # older runs have train_runtime instead (kept as an extra)
    resumed_from: str | None = None


class EvaluationSummary(_Section):
    """One evaluation's metrics (evaluate.score), base and tuned, by metric name (chrf, bleu, ...)."""
    id: str | None = None  # its folder: eval/<id>/ (None: a run evaluated before evaluations had folders)
    split: str
    examples: int
    base: dict[str, float | None] = {}
    tuned: dict[str, float | None] = {}


class SweepSummary(_Section):
    """The trial this run was in a sweep: its status and objective value."""
    sweep_id: str
    trial: int
    status: str
    objective: str | None = None
    value: float | None = None
    pruned_at_step: int | None = None


class AlignSummary(_Section):
    """The align stage's figures: method, steps, seconds, and each logged figure's first and last values."""
    method: str | None = None
    steps: int | None = None
    seconds: float | None = None
    figures: dict[str, dict[str, float]] = {}


class RunSummary(_Section):
    """summary.json: a run's headline figures, machine-readable. Read with `read_summary`
    (Run.summary), written only by Run.update_summary."""
    run_id: str | None = None
    training: TrainingSummary | None = None
    evaluation: EvaluationSummary | None = None  # the latest finished evaluation
    evaluations: list[EvaluationSummary] = []  # every finished evaluation, oldest first
    stage_seconds: dict[str, float | None] = {}
    sweep: SweepSummary | None = None
    align: AlignSummary | None = None

    def figure(self, dotted: str) -> float | None:
        """A number by dotted path, e.g. training.eval_loss_best or evaluation.tuned.chrf; None when
        absent or not a number."""
        node: Any = self.model_dump(by_alias=True)
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def read_summary(path: Path, run_id: str | None = None) -> RunSummary:
    """The one reader of summary.json. Missing: an empty summary. Unreadable or not matching the
    schema: RunError naming the file and the problem."""
    try:
        return RunSummary.model_validate(_read_json(path) or {"run_id": run_id})
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise RunError(f"{path}: {where}: {first['msg']} ({len(e.errors())} problem(s))") from None
