"""Every named choice in one place: the metrics, experiment trackers, data formats and export formats.

Params validation, the CLI's choices, sweeps, the terminal line, the charts, the reports, the
evaluation tables and the task metrics during training all read these tables, so a metric is added
by one `Metric(...)` below (or `register(...)` at run time) and nowhere else. Device profiles are
`device.PROFILES`, the sweep engines `sweeps.engine.ENGINES`.

A metric's function is named as "module:function" (the entry-point convention), resolved when it is
first scored: this module stays in the lowest layer, importing nothing, while the functions live
with the rest of the metrics code (polo_lib/metrics/), which may import heavy libraries.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Texts:
    """What a metric scores: English sources, model answers and Korean references, one per example,
    with the glossary and filler phrases some metrics need. `cache` holds work metrics share (the
    three meaning figures come from one embedding pass)."""
    sources: Sequence[str]
    predictions: Sequence[str]
    references: Sequence[str]
    glossary: Sequence[Any] = ()
    fillers: Sequence[str] = ()
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """One task metric.

    higher_is_better: its direction (None: neither; such a metric cannot steer anything).
    percent: a 0-1 fraction, shown as a percentage on the 0-100 chart beside chrF and SARI.
    cost: "cheap" (milliseconds, no model) or "embedding" (needs the e5 embedding model).
    during_training: scored at each evaluation while training (evaluation.during_training), and so
      usable for early stopping and a sweep's pruner; must be cheap.
    per_paper: a column of the per-paper table of an evaluation.
    """
    name: str
    label: str  # short, for the terminal line and tables ("chrF")
    title: str  # what it measures, for charts and reports
    score: str | Callable[[Texts], float]  # "module:function" or the function; takes a Texts
    higher_is_better: bool | None = True
    percent: bool = False
    cost: Literal["cheap", "embedding"] = "cheap"
    during_training: bool = False
    per_paper: bool = False
    best: float = 1.0  # the best possible score (100 for the 0-100 overlap scores): a reward is scaled by it

    def __post_init__(self):
        if self.during_training and (self.cost != "cheap" or self.higher_is_better is None):
            raise ValueError(f"metric {self.name}: scoring during training needs a cheap metric with a direction")

    @property
    def log_key(self) -> str:
        """Its key in the trainer's logs, train_log.csv and the trackers."""
        return f"eval_{self.name}"

    @property
    def chart_label(self) -> str:
        return f"{self.title} %" if self.percent else self.title

    @property
    def chart_scale(self) -> float:
        return 100.0 if self.percent else 1.0

    @property
    def steers(self) -> bool:
        """Usable as a sweep objective (it has a direction)."""
        return self.higher_is_better is not None

    @property
    def as_reward(self) -> bool:
        """Usable as a reward while training (cheap, with a direction)."""
        return self.cost == "cheap" and self.higher_is_better is not None

    def __call__(self, texts: Texts) -> float:
        fn = self.score
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        return float(fn(texts))


_M = "polo_lib.metrics.scoring:"
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("chrf", "chrF", "chrF", _M + "chrf", during_training=True, best=100, per_paper=True),
    Metric("bleu", "BLEU", "BLEU", _M + "bleu", best=100, per_paper=True),
    Metric("rouge_l", "ROUGE-L", "ROUGE-L", _M + "rouge_l", best=100, per_paper=True),
    Metric("sari", "SARI", "SARI", _M + "sari", during_training=True, best=100, per_paper=True),
    Metric("meaning_src", "meaning/src", "meaning kept from the English (e5 cosine)", _M + "meaning_src",
           cost="embedding"),
    Metric("meaning_ref", "meaning/ref", "meaning shared with the reference (e5 cosine)", _M + "meaning_ref",
           cost="embedding"),
    # meaning_src over the references' own source similarity: on a fixed test set a constant multiple of
    # meaning_src, so it points the same way. Above 1: closer to the English than the reference is (a literal
    # translation, not an easy explanation); read the samples.
    Metric("meaning_ratio", "meaning ratio", "meaning_src over the references' own", _M + "meaning_ratio",
           cost="embedding"),
    Metric("hangul_share", "Hangul", "Hangul share", _M + "hangul_share", percent=True, during_training=True,
           per_paper=True),
    Metric("length_ratio_src", "length/src", "length over the English", _M + "length_ratio_src",
           higher_is_better=None),
    Metric("length_ratio_ref", "length/ref", "length over the reference", _M + "length_ratio_ref",
           higher_is_better=None),
    Metric("filler_rate", "fillers", "answers with a filler phrase", _M + "filler_rate", higher_is_better=False,
           percent=True),
    Metric("distinct_2", "distinct-2", "distinct bigrams", _M + "distinct_2", percent=True),
    Metric("longest_repeat_mean", "repeats", "longest repeated n-gram (tokens)", _M + "longest_repeat_mean",
           higher_is_better=False),
    Metric("term_coverage", "glossary", "glossary coverage", _M + "term_coverage", percent=True,
           during_training=True, per_paper=True),
)}


# The metric a table of many runs or evaluations shows when it has room for one (polo list, report.md's
# list of evaluations), and those an export's model card quotes.
PRIMARY_METRIC = "chrf"
MODEL_CARD_METRICS = ("chrf", "bleu", "rouge_l", "sari", "meaning_src", "hangul_share")


def register(metric: Metric) -> Metric:
    """Add a metric (e.g. from a notebook or a plugin); every table, chart and check sees it from now on."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered already")
    METRICS[metric.name] = metric
    return metric


def metric(name: str) -> Metric:
    """The registered metric of this name; KeyError naming the choices."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(METRICS)}")
    return METRICS[name]


def during_training() -> list[Metric]:
    """The metrics scored at each evaluation while training, in registry order."""
    return [m for m in METRICS.values() if m.during_training]


def early_stopping_choices() -> tuple[str, ...]:
    """What training.early_stopping_metric and a sweep's prune_on may name."""
    return ("eval_loss", *(m.name for m in during_training()))


def greater_is_better(name: str) -> bool:
    """Direction of eval_loss or of a metric scored during training (eval_ prefix allowed)."""
    name = name.removeprefix("eval_")
    return False if name == "loss" else bool(metric(name).higher_is_better)


# ---------------------------------------------------------------- rewards (the align stage)

# Rewards besides the metrics usable as one (Metric.as_reward): terms built from the evaluation's own measures,
# so an empty, one-line or looping answer cannot win on the metrics alone. "module:function" of
# (source, answer, reference) -> a number in 0-1, higher better.
_R = "polo_lib.align.rewards:"
REWARD_TERMS: dict[str, str] = {
    "repetition": _R + "repetition",  # distinct-2 and the longest repeated n-gram of the answer: 1 = no loop
    "length": _R + "length",  # characters against the reference's: 1 at the same length, 0 for an empty answer
}
# align.rewards when a params file names none: the weights (chrF first, the terms that stop loops and
# empty answers beside it)
DEFAULT_REWARDS: dict[str, float] = {"chrf": 1.0, "term_coverage": 0.5, "hangul_share": 0.25, "repetition": 0.5,
                                     "length": 0.5}


def reward_choices() -> tuple[str, ...]:
    """What align.rewards may weigh: every metric usable as a reward, then the reward terms."""
    return (*(m.name for m in METRICS.values() if m.as_reward), *REWARD_TERMS)


# ---------------------------------------------------------------- the other choices

@dataclass(frozen=True)
class Tracker:
    module: str  # the package that must import
    extra: str | None  # this project's pip extra that installs it; None: always installed


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboard", None),
    "mlflow": Tracker("mlflow", "mlflow"),
    "trackio": Tracker("trackio", "trackio"),
    "wandb": Tracker("wandb", "wandb"),
}

# data.format: what a raw data file holds (data/formats.py reads each)
DATA_FORMATS: dict[str, str] = {
    "paper": "papers as paragraphs with easy-Korean explanations (data/raw/*.json)",
    "messages": "chat examples as lists of {role, content} messages (JSONL)",
    "alpaca": "instruction / input / output records (JSONL)",
}

# polo export --format
EXPORT_FORMATS: dict[str, str] = {
    "adapter": "the LoRA adapter alone (small; loads on its base model)",
    "merged": "the adapter merged into a 16-bit copy of the base (transformers, vLLM)",
    "gguf": "a merged GGUF file for llama.cpp, Ollama, LM Studio",
}

# polo sweep --engine
SWEEP_ENGINES: dict[str, str] = {
    "optuna": "trials one after another in this process",
    "ray": "trials side by side under Ray Tune, one per GPU or per N CPUs, stopped early by ASHA",
}
