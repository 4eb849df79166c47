"""The training log: train_log.csv, the live chart and the progress file as the trainer logs; figures read from it."""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .. import plots, progress, registry, task_eval
from ..atomic import atomic_write_text

# tokens_seen: answer and prompt tokens (not padding) trained on so far, from the trainer's state
LOG_COLUMNS = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "tokens_seen"]


class LiveLog:
    """Rows a trainer logs: a CSV atomically rewritten at each row, and in a notebook one chart (`chart`, a figure
    of the frame) updated in place, not one figure per step. Resuming keeps the rows its checkpoint covers. The
    training and the align logs (align/log.py) both."""

    def __init__(self, csv_path: Path, live: bool, chart, keep_until_step: int = 0):
        self.csv_path, self.live, self.chart = csv_path, live, chart
        self.rows: list[dict[str, Any]] = []
        if keep_until_step and csv_path.exists():
            self.rows = [r for r in pd.read_csv(csv_path).to_dict("records") if r["step"] <= keep_until_step]
        self.handle = None

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def add(self, row: dict[str, Any]) -> None:
        """A new row: written at once, and drawn when live."""
        self.rows.append(row)
        buf = io.StringIO()
        self.frame().to_csv(buf, index=False)
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.live:
            from IPython.display import display

            fig = self.chart(self.frame())
            if self.handle is None:
                self.handle = display(fig, display_id=True)
            else:
                self.handle.update(fig)


class _LogRecorder(LiveLog):
    """train_log.csv: the training steps' loss, learning rate and tokens/s, the evaluations' eval loss and task
    metrics; the progress file with the latest of each."""

    def __init__(self, csv_path: Path, live: bool, keep_until_step: int = 0, total_steps: int = 0):
        super().__init__(csv_path, live, plots.loss_curve, keep_until_step)
        self.total_steps = total_steps  # the plan's: the trainer's max_steps is 0 at the step-0 evaluation
        self._last = None  # (time, tokens) at the previous training log
        self.latest: dict[str, Any] = {}  # last loss, eval_loss and tokens/s, for the progress file

    def on_log(self, state, logs: dict[str, Any]) -> None:
        now = time.perf_counter()
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            rate = None
            if self._last and now > self._last[0] and tokens > self._last[1]:
                rate = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
            row.update(loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                       grad_norm=logs.get("grad_norm"), tokens_per_s=rate and round(rate, 1), tokens_seen=tokens)
        elif "eval_loss" in logs:
            row.update(eval_loss=logs["eval_loss"], **{k: logs[k] for k in task_eval.log_keys() if k in logs})
        else:
            return
        self.latest.update({k: row[k] for k in ("loss", "tokens_per_s") if row.get(k) is not None})
        if row.get("eval_loss") is not None:
            self.latest.update(eval_loss=row["eval_loss"], eval_step=row["step"],
                               **{k: row[k] for k in task_eval.log_keys() if k in row})
        self.add(row)
        progress.write(self.csv_path.parent, stage="train", done=state.global_step,
                       total=state.max_steps or self.total_steps, epoch=row["epoch"], **self.latest)

    def frame(self) -> pd.DataFrame:
        """The log so far; the task metrics' columns when they were scored (evaluation.during_training)."""
        task = [k for k in task_eval.log_keys() if any(k in r for r in self.rows)]
        return pd.DataFrame(self.rows, columns=LOG_COLUMNS + task)


def read_train_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if Path(path).exists() else pd.DataFrame(columns=LOG_COLUMNS)


# What each time figure of a training measures: fit's table and report.md show these words beside them.
TIME_FIGURES = {
    "train_seconds": "wall seconds of the whole training: the step-0 evaluation of the base model, then every "
                     "step with its evaluations and checkpoints",
    "baseline_eval_seconds": "of train_seconds, the step-0 evaluation of the base model (eval_loss, and the task "
                             "metrics when evaluation.during_training is on); 0 when resumed",
    # a summary may hold train_runtime where it has no baseline_eval_seconds; shown as it is
    "train_runtime": "Trainer.train's own seconds: train_seconds without the step-0 evaluation (older runs)",
}


def figures_table(figures: dict[str, Any]) -> pd.DataFrame:
    """Headline figures as a table: value, and what a time figure measures (TIME_FIGURES)."""
    table = pd.DataFrame({"value": pd.Series(figures, dtype=object)})
    table["meaning"] = [TIME_FIGURES.get(k, "") for k in table.index]
    return table


def _best_eval_loss(log_df: pd.DataFrame) -> float | None:
    """The lowest eval_loss after training began (the step-0 baseline is the base model's), or the
    baseline when training never evaluated."""
    evals = log_df.dropna(subset=["eval_loss"])
    trained = evals[evals["step"] > 0]["eval_loss"]
    values = trained if len(trained) else evals["eval_loss"]
    return float(values.min()) if len(values) else None


def _task_figures(log_df: pd.DataFrame) -> dict[str, float]:
    """The task metrics scored during training: at the first evaluation (step 0: the base model),
    the last, and the best after step 0 (in each metric's own direction)."""
    out = {}
    for metric in registry.during_training():
        name, key = metric.name, metric.log_key
        if key not in log_df:
            continue
        values = log_df.dropna(subset=[key])
        if not len(values):
            continue
        trained = values[values["step"] > 0][key]
        out[f"{name}_first"], out[f"{name}_last"] = float(values[key].iloc[0]), float(values[key].iloc[-1])
        if len(trained):
            out[f"{name}_best"] = float(trained.max() if metric.higher_is_better else trained.min())
    return out
