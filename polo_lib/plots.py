"""Figures (matplotlib): returned to the notebook to show inline, saved by the caller's path."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

import matplotlib.pyplot as plt

from . import registry


def token_length_histogram(lengths: Mapping[str, Sequence[int]], max_seq_length: int):
    """Token lengths per split with the max_seq_length line: what would be truncated, at a glance."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, values in lengths.items():
        if values:
            ax.hist(values, bins=20, alpha=0.6, label=f"{split} ({len(values)})")
    ax.axvline(max_seq_length, color="red", linestyle="--", label=f"max_seq_length = {max_seq_length}")
    ax.set_xlabel("tokens per example (chat template applied)")
    ax.set_ylabel("examples")
    # beside the axes: never over the bars or the line, and no loc="best" search over every bar (matplotlib
    # warns that it "can be slow with large amounts of data")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    plt.close(fig)  # the notebook shows the returned figure once, not again at the end of the cell
    return fig


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def loss_curve(log: pd.DataFrame, title: str = "loss"):
    """Train loss per logging step and eval loss per evaluation, on one axis; beside it, when the
    log has them, the task metrics scored at each evaluation (loss and quality can part ways)."""
    task = [m for m in registry.during_training() if m.log_key in log and log[m.log_key].notna().any()]
    fig, axes = plt.subplots(1, 2 if task else 1, figsize=(12 if task else 7, 3.5), squeeze=False)
    ax = axes[0][0]
    train = log.dropna(subset=["loss"]) if "loss" in log else log.iloc[0:0]
    evals = log.dropna(subset=["eval_loss"]) if "eval_loss" in log else log.iloc[0:0]
    if len(train):
        ax.plot(train["step"], train["loss"], label="train loss", color="tab:blue")
    if len(evals):
        ax.plot(evals["step"], evals["eval_loss"], "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(train) or len(evals):
        ax.legend()
    ax.grid(alpha=0.3)
    if task:
        right = axes[0][1]
        for metric in task:  # each on the 0-100 scale: fractions as percentages
            points = log.dropna(subset=[metric.log_key])
            right.plot(points["step"], points[metric.log_key] * metric.chart_scale, "o-", label=metric.chart_label)
        right.set_xlabel("step")
        right.set_ylabel("0-100")
        right.set_title("task metrics on the validation sample")
        right.legend()
        right.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def align_curve(log: pd.DataFrame, title: str = "align"):
    """The align stage per step: the weighted reward and each component (0-1) on the left; the KL to the SFT
    model on the right, with the answers' mean length and the share cut at the limit (GRPO), or DPO's
    margin and accuracy."""
    parts = [c for c in log.columns if c.startswith("reward_") and log[c].notna().any()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
    for col in (["reward"] if "reward" in log and log["reward"].notna().any() else []) + parts:
        points = log.dropna(subset=[col])
        left.plot(points["step"], points[col], "-" if col == "reward" else "--",
                  label=col.removeprefix("reward_"), linewidth=2 if col == "reward" else 1)
    left.set_xlabel("step")
    left.set_ylabel("reward (0-1)")
    left.set_title(title)
    if left.lines:
        left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for col, label in (("kl", "KL to SFT"), ("clipped_ratio", "share cut at max length"),
                       ("dpo_margin", "DPO margin"), ("dpo_accuracy", "DPO accuracy")):
        if col in log and log[col].notna().any():
            points = log.dropna(subset=[col])
            right.plot(points["step"], points[col], "o-", label=label, markersize=3)
    right.set_xlabel("step")
    right.set_title("staying near the SFT model")
    if right.lines:
        right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def metrics_chart(table: pd.DataFrame, title: str = "base vs tuned",
                  intervals: Mapping[str, pd.DataFrame] | None = None):
    """One small bar pair per metric (rows of `table`, columns = models): each on its own scale;
    `intervals` {model: a frame of low / high per metric} draws each bar's interval as an error bar."""
    names = list(table.index)
    cols = 4
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    colors = ["tab:gray", "tab:green", "tab:blue", "tab:orange"]
    for ax, name in zip(axes.flat, names):
        values = table.loc[name]
        heights = [0 if v != v else v for v in values]
        errors = None
        if intervals:  # asymmetric: from the bar's top down to low, up to high
            lows = [intervals[m].loc[name, "low"] if m in intervals else v for m, v in zip(table.columns, heights)]
            highs = [intervals[m].loc[name, "high"] if m in intervals else v for m, v in zip(table.columns, heights)]
            errors = [[max(0.0, h - lo) if lo == lo else 0 for h, lo in zip(heights, lows)],
                      [max(0.0, hi - h) if hi == hi else 0 for h, hi in zip(heights, highs)]]
        ax.bar(range(len(values)), heights, yerr=errors, capsize=3 if errors else 0,
               color=colors[:len(values)], tick_label=list(table.columns))
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def loss_overlay(logs: Mapping[str, pd.DataFrame]):
    """Eval loss (markers) and train loss (thin lines) of several runs on one chart."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, log) in enumerate(logs.items()):
        color = f"C{i % 10}"
        train = log.dropna(subset=["loss"])
        evals = log.dropna(subset=["eval_loss"])
        ax.plot(train["step"], train["loss"], color=color, alpha=0.4, linewidth=1)
        ax.plot(evals["step"], evals["eval_loss"], "o-", color=color, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (lines: train, markers: eval)")
    if logs:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def bars(values: pd.Series, title: str):
    """One bar per run for a metric."""
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.4 * len(values)))
    ax.barh([str(i) for i in values.index], values.fillna(0).values, color="tab:green")
    ax.set_title(title)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig
