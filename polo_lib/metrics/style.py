"""Style and language of one answer or a set: Hangul share, length, fillers, distinct n-grams, repeats."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .overlap import _ngrams
from .tokens import Tokenizer, _is_hangul, korean_tokens

# A repeated phrase this long or shorter is natural Korean (endings: the references' longest repeat is 3 to 6
# tokens); longer is a loop. The repetition reward (align) and explain's loop count both read it.
NATURAL_REPEAT = 6


def hangul_share(text: str) -> float:
    """Share of letters that are Hangul (syllables or jamo) among all letters; 0 for no letters.

    Low values flag outputs that answer in English (or Chinese) instead of Korean; the
    references keep some terms in English (YOLO, IoU), so they sit a little below 1.
    """
    letters = [ch for ch in text if ch.isalpha()]
    return sum(_is_hangul(ch) for ch in letters) / len(letters) if letters else 0.0


def length_ratio(a: str, b: str) -> float:
    """Characters of `a` over characters of `b`, whitespace not counted; NaN when `b` has none.

    Korean needs fewer characters than English for the same content (the reference paragraphs
    are about 0.70 of their English source's length), so read it against the references'.
    """
    len_a = sum(not ch.isspace() for ch in a)
    len_b = sum(not ch.isspace() for ch in b)
    return len_a / len_b if len_b else math.nan


def filler_rate(texts: Sequence[str], phrases: Iterable[str]) -> float:
    """Share of texts containing any filler phrase ("In simple terms", "쉽게 말해서"),
    case-insensitively, each phrase stripped of surrounding whitespace as
    `data.remove_fillers` matches it ("In simple terms,"); NaN for no texts.

    The training data had such openers removed; a tuned model that still writes them learned
    them elsewhere (or from uncleaned data).
    """
    cores = [p.strip().lower() for p in phrases if p.strip()]
    if not texts:
        return math.nan
    return sum(any(c in t.lower() for c in cores) for t in texts) / len(texts)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams, pooled over the texts (Li et al. 2016), on Kiwi
    morphemes; n-grams do not cross text boundaries. 0 when there is no n-gram at all.

    Low values flag a model that repeats itself or answers every input alike.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for t in texts for g in _ngrams(korean_tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _repeats(tokens: Sequence[str], n: int) -> bool:
    seen: set[tuple[str, ...]] = set()
    for gram in _ngrams(tokens, n):
        if gram in seen:
            return True
        seen.add(gram)
    return False


def longest_repeated_ngram(text: str, tokenize: Tokenizer = korean_tokens) -> int:
    """Length in tokens of the longest n-gram occurring at least twice in `text` (occurrences
    may overlap); 0 when no token repeats.

    A degenerate-repetition detector: a model looping on one phrase k times scores about
    (k-1) x the phrase length, while natural Korean repeats only short stretches such as
    endings ("ᆸ니다 ."): the reference paragraphs score 3 to 6, 4.4 on average.
    """
    tokens = tokenize(text)
    lo, hi = 0, max(len(tokens) - 1, 0)  # lo repeats (0 trivially); a repeat is at most len-1 long
    while lo < hi:  # an n-gram repeating implies its (n-1)-prefix repeats: binary search works
        mid = (lo + hi + 1) // 2
        if _repeats(tokens, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
