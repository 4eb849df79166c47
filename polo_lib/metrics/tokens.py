"""Korean and English tokens for the word-based metrics, and the small helpers every metric shares.

Korean has no useful whitespace tokens (particles and endings stick to words), so word-based
metrics run on Kiwi morphemes (kiwipiepy, bundled model, offline; sacrebleu 13a tokens where it is
not installed, see `korean_tokenizer`).
"""
from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Tokenizer = Callable[[str], list[str]]


def _check_lengths(**named: Sequence[Any]) -> int:
    """The common length of the named lists; ValueError naming them when they differ or are empty."""
    lengths = {name: len(items) for name, items in named.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one item per example is needed; got lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError(f"no examples: {', '.join(lengths)} are empty")
    return n


def _mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


@functools.lru_cache(maxsize=1)
def _kiwi():
    """The Kiwi analyzer, built once per process (about 1 s, plus about 1 s on the first call);
    None when kiwipiepy is not importable (said once, as a warning)."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        # The GPU machine of benchmarks/device_check.sh cannot carry kiwipiepy (its model is an
        # 84 MiB sdist, more than the whole 64 MiB carry), yet task metrics run there at step 0.
        warnings.warn("kiwipiepy is not installed: Korean text is split into sacrebleu 13a tokens "
                      "(words and punctuation, not morphemes), so BLEU, SARI and distinct-n here are not "
                      "comparable with Kiwi-tokenized scores. pip install kiwipiepy for morphemes.",
                      RuntimeWarning, stacklevel=3)
        return None
    return Kiwi()


def korean_tokenizer() -> str:
    """The tokenizer `korean_tokens` uses in this process: "kiwi" (morphemes), or "13a" when
    kiwipiepy is not importable. Record it beside scores: the two are not comparable."""
    return "kiwi" if _kiwi() is not None else "13a"


# Kiwi reads a Latin word followed by a period ("accepted.") as one odd token ("acc", "epted.");
# a space before that period makes it a word and a punctuation mark, as in the 13a tokenizer.
_LATIN_PERIOD = re.compile(r"(?<=[A-Za-z])\.(?=\s|$)")


@functools.lru_cache(maxsize=8192)
def _korean_tokens(text: str) -> tuple[str, ...]:
    kiwi = _kiwi()
    if kiwi is None:
        return tuple(_tokenizer_13a()(text).split())
    return tuple(t.form for t in kiwi.tokenize(_LATIN_PERIOD.sub(" .", text)))


def korean_tokens(text: str) -> list[str]:
    """Kiwi morphemes of `text` ("나눕니다" -> "나누", "ᆸ니다"); Latin words, numbers and
    punctuation come out as their own tokens, so mixed text ("YOLO는 IoU를") works too.
    Without kiwipiepy: sacrebleu's 13a tokens (not lowercased), with a warning once;
    `korean_tokenizer()` says which.

    The analyzer is created once, lazily, and results are cached per text: several metrics
    tokenize the same predictions.
    """
    return list(_korean_tokens(text))


def _kiwi_tokens(text: str) -> list[str]:
    """Kiwi morphemes, never the fallback: for a caller that asked for Kiwi by name."""
    if _kiwi() is None:
        raise ImportError("tokenize='kiwi' needs kiwipiepy (pip install kiwipiepy); tokenize='auto' "
                          "falls back to sacrebleu's 13a tokens without it")
    return korean_tokens(text)


@functools.lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def tokens_13a(text: str) -> list[str]:
    """Lowercased sacrebleu 13a tokens: the SARI normalization of HF `evaluate` (from EASSE)."""
    return _tokenizer_13a()(text.lower()).split()


HANGUL_RANGES = (
    (0xAC00, 0xD7A3),  # syllables
    (0x1100, 0x11FF),  # jamo
    (0x3130, 0x318F),  # compatibility jamo
    (0xA960, 0xA97F),  # jamo extended-A
    (0xD7B0, 0xD7FF),  # jamo extended-B
)


def _is_hangul(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in HANGUL_RANGES)


def _has_hangul(text: str) -> bool:
    return any(_is_hangul(ch) for ch in text)
