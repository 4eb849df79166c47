"""The task's rewards: each registered metric usable as one, scored by the metric's own code on one answer, and
the repetition and length terms; weighted sums; the reward functions TRL's GRPOTrainer calls.

Every reward is a number in 0-1, higher better: a metric's score over its best (chrF / 100), one minus that for
a metric where lower is better. A metric with nothing to score on an answer (glossary coverage where the
source holds no glossary term) gives 0, the same for every answer to that paragraph, so it moves nothing.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .. import registry
from ..metrics import length_ratio, longest_repeated_ngram, per_example
from ..metrics.style import NATURAL_REPEAT as FREE_REPEAT
from ..metrics.style import distinct_n


def repetition(source: str, answer: str, reference: str) -> float:
    """1 for an answer without a loop, towards 0 for one phrase over and over: its distinct-2 (the share of
    distinct morpheme bigrams) times 1 / (1 + excess / FREE_REPEAT), excess the longest repeated n-gram's tokens
    beyond FREE_REPEAT. An empty answer has no bigram: 0."""
    excess = max(0, longest_repeated_ngram(answer) - FREE_REPEAT)
    return distinct_n([answer], 2) / (1 + excess / FREE_REPEAT)


def length(source: str, answer: str, reference: str) -> float:
    """The answer's length against the reference's (characters, spaces not counted): 1 at the same length,
    r or 1/r otherwise (half as long or twice as long: 0.5), 0 for an empty answer."""
    r = length_ratio(answer, reference)
    return 0.0 if not r or math.isnan(r) else min(r, 1 / r)


def _term(name: str):
    from importlib import import_module

    module, _, fn = registry.REWARD_TERMS[name].partition(":")
    return getattr(import_module(module), fn)


def _unit(metric: registry.Metric, value: float) -> float:
    if value is None or math.isnan(value):
        return 0.0
    scaled = value / metric.best
    return scaled if metric.higher_is_better else 1.0 - min(scaled, 1.0)


def components(names: Sequence[str], sources: Sequence[str], answers: Sequence[str], references: Sequence[str],
               glossary: Sequence[Any] = ()) -> pd.DataFrame:
    """One row per answer, one 0-1 column per reward in `names`, each from the code that scores evaluations
    (metrics.per_example for the metrics)."""
    metrics = [registry.metric(n) for n in names if n in registry.METRICS]
    rows = per_example(metrics, registry.Texts(list(sources), list(answers), list(references), glossary)) \
        if metrics else [{} for _ in answers]
    out = pd.DataFrame(index=range(len(answers)))
    for name in names:
        if name in registry.METRICS:
            metric = registry.metric(name)
            out[name] = [_unit(metric, row[name]) for row in rows]
        else:
            term = _term(name)
            out[name] = [float(term(s, a, r)) for s, a, r in zip(sources, answers, references)]
    return out


def weighted(table: pd.DataFrame, weights: Mapping[str, float]) -> pd.Series:
    """The weighted reward of each answer: sum of weight x component over the weights' sum (so 0-1 too)."""
    total = sum(weights.values())
    return sum(table[name] * w for name, w in weights.items()) / total


def _content(completion) -> str:
    """A completion's text: TRL passes conversational ones as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def trl_functions(weights: Mapping[str, float], glossary: Sequence[Any] = ()) -> tuple[list, list[float]]:
    """GRPOTrainer's reward_funcs and reward_weights: one function per reward (named after it, so TRL logs
    rewards/<name>/mean), reading the paragraph's `original` and `simplified` columns; the weights over their sum,
    so TRL's logged reward is `weighted`'s 0-1 figure."""
    funcs = []
    for name in weights:
        def fn(prompts=None, completions=(), original=(), simplified=(), _name=name, **_):
            answers = [_content(c) for c in completions]
            return components([_name], original, answers, simplified, glossary)[_name].tolist()

        fn.__name__ = name
        funcs.append(fn)
    total = sum(weights.values())
    return funcs, [float(w) / total for w in weights.values()]
