"""The align log: logs/align_log.csv (each reward component, the KL, the answers' length), the progress file and
the live chart, as the trainer logs; the first and last figures read from it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .. import plots, progress
from ..train.log import LiveLog

# TRL's log keys -> the log's columns (GRPO: rewards/<name>/mean -> reward_<name>)
KEYS = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm", "reward": "reward",
        "kl": "kl", "completions/mean_length": "completion_length", "completions/clipped_ratio": "clipped_ratio",
        "rewards/margins": "dpo_margin", "rewards/accuracies": "dpo_accuracy"}
COLUMNS = ["step", "loss", "reward", "kl", "completion_length", "clipped_ratio", "dpo_margin", "dpo_accuracy",
           "learning_rate", "grad_norm"]


def row_of(step: int, logs: dict[str, Any], rewards: list[str]) -> dict[str, Any] | None:
    """One log row from the trainer's logs at a step; None for logs that are not a training step's."""
    if "loss" not in logs:
        return None
    row = {"step": step, **{col: logs[key] for key, col in KEYS.items() if key in logs}}
    for name in rewards:
        if f"rewards/{name}/mean" in logs:
            row[f"reward_{name}"] = logs[f"rewards/{name}/mean"]
    return row


class AlignRecorder(LiveLog):
    """The align trainer's logs: align_log.csv, the progress file and, in a notebook, the live chart."""

    def __init__(self, csv_path: Path, rewards: list[str], total_steps: int, live: bool, keep_until_step: int = 0):
        super().__init__(csv_path, live, plots.align_curve, keep_until_step)
        self.rewards, self.total_steps = list(rewards), total_steps

    def on_log(self, step: int, logs: dict[str, Any]) -> None:
        row = row_of(step, logs, self.rewards)
        if row is None:
            return
        self.add(row)
        if "dpo_margin" in row:  # DPO: how far the chosen answers are preferred over the rejected ones
            progress.write(self.csv_path.parent, stage="align", done=step, total=self.total_steps,
                           margin=row["dpo_margin"], accuracy=row.get("dpo_accuracy"), loss=row.get("loss"))
            return
        progress.write(self.csv_path.parent, stage="align", done=step, total=self.total_steps,
                       reward=row.get("reward"), kl=row.get("kl"), completion_length=row.get("completion_length"),
                       rewards={n: row[f"reward_{n}"] for n in self.rewards if f"reward_{n}" in row})

    def frame(self) -> pd.DataFrame:
        parts = [f"reward_{n}" for n in self.rewards if any(f"reward_{n}" in r for r in self.rows)]
        return pd.DataFrame(self.rows, columns=COLUMNS[:3] + parts + COLUMNS[3:])


def first_last(log: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{column: {first, last}} of every figure the log holds (the mean of the first and of the last quarter
    of steps, at least one step each: one sampled step is noisy)."""
    out = {}
    n = max(1, len(log) // 4)
    for col in log.columns:
        if col == "step" or not log[col].notna().any():
            continue
        values = log[col].dropna()
        out[col] = {"first": float(f"{values.head(n).mean():.4g}"), "last": float(f"{values.tail(n).mean():.4g}")}
    return out
