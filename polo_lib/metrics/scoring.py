"""The registered metrics (registry.METRICS) scored on one system's answers: each as a function of a
`registry.Texts`, and all of them, or those scored during training, at once."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..registry import METRICS, Metric, Texts
from ..registry import during_training as training_metrics
from . import glossary as _glossary
from . import meaning as _meaning
from . import overlap, style
from .tokens import _check_lengths, _mean


def chrf(t: Texts) -> float:
    return overlap.chrf(t.predictions, t.references)


def bleu(t: Texts) -> float:
    return overlap.bleu(t.predictions, t.references)


def rouge_l(t: Texts) -> float:
    return overlap.rouge_l(t.predictions, t.references)


def sari(t: Texts) -> float:
    return overlap.sari(t.sources, t.predictions, [[r] for r in t.references])


def _meaning_of(t: Texts) -> dict[str, float]:
    """The three meaning figures, from one embedding pass shared by the three metrics."""
    if "meaning" not in t.cache:
        t.cache["meaning"] = _meaning.meaning_preservation(t.sources, t.predictions, t.references)
    return t.cache["meaning"]


def meaning_src(t: Texts) -> float:
    return _meaning_of(t)["meaning_src"]


def meaning_ref(t: Texts) -> float:
    return _meaning_of(t)["meaning_ref"]


def meaning_ratio(t: Texts) -> float:
    return _meaning_of(t)["meaning_ratio"]


def hangul_share(t: Texts) -> float:
    return _mean(style.hangul_share(p) for p in t.predictions)


def length_ratio_src(t: Texts) -> float:
    return _mean(style.length_ratio(p, s) for p, s in zip(t.predictions, t.sources))


def length_ratio_ref(t: Texts) -> float:
    return _mean(style.length_ratio(p, r) for p, r in zip(t.predictions, t.references))


def filler_rate(t: Texts) -> float:
    return style.filler_rate(t.predictions, t.fillers)


def distinct_2(t: Texts) -> float:
    return style.distinct_n(t.predictions, 2)


def longest_repeat_mean(t: Texts) -> float:
    return _mean(float(style.longest_repeated_ngram(p)) for p in t.predictions)


def term_coverage(t: Texts) -> float:
    return _glossary.term_coverage(t.sources, t.predictions, t.glossary)


def score(metrics: Iterable[Metric], texts: Texts) -> dict[str, float]:
    """{name: score} for these metrics on these texts (NaN where a metric has nothing to score)."""
    _check_lengths(sources=texts.sources, predictions=texts.predictions, references=texts.references)
    out = {}
    for m in metrics:
        value = m(texts)
        out[m.name] = float(value) if value is not None else math.nan
    return out


def during_training(sources: Sequence[str], predictions: Sequence[str], references: Sequence[str],
                    glossary: Sequence[_glossary.GlossaryEntry]) -> dict[str, float]:
    """The metrics scored at each evaluation during training (registry: during_training=True): the cheap
    ones, no embedding model. Same scales and keys as score_all."""
    return score(training_metrics(), Texts(sources, predictions, references, glossary))


def score_all(sources: Sequence[str], predictions: Sequence[str], references: Sequence[str],
              filler_phrases: Iterable[str], glossary: Sequence[_glossary.GlossaryEntry]) -> dict[str, float]:
    """Every registered metric for one system's answers, as one flat dict in registry order. Per-text
    style metrics are means over examples."""
    return score(METRICS.values(), Texts(sources, predictions, references, glossary, list(filler_phrases)))


def per_example(metrics: Iterable[Metric], texts: Texts) -> list[dict[str, float]]:
    """{name: score} of each example alone (the unit of evaluate's intervals): a corpus metric on one
    example is its sentence-level score (chrF, BLEU), a pooled one its per-text value (distinct-2, glossary
    coverage: NaN where the example's source holds no glossary term). Embeddings are cached by text."""
    metrics = list(metrics)
    n = _check_lengths(sources=texts.sources, predictions=texts.predictions, references=texts.references)
    return [score(metrics, Texts([texts.sources[i]], [texts.predictions[i]], [texts.references[i]], texts.glossary,
                                 texts.fillers)) for i in range(n)]
