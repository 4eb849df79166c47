"""Overlap with the references: chrF, BLEU and ROUGE-L (0-100, as sacrebleu reports them), and SARI.

rouge-score's own tokenizer keeps only [a-z0-9] and would score two identical Korean texts 0, so
ROUGE-L and BLEU run on Kiwi morphemes (tokens.korean_tokens).
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

from .tokens import Tokenizer, _check_lengths, _has_hangul, _kiwi_tokens, korean_tokenizer, korean_tokens, tokens_13a


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100.

    chrF compares characters, so Hangul needs no tokenizer and spacing differences cost little.
    """
    from sacrebleu.metrics import CHRF

    _check_lengths(predictions=predictions, references=references)
    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 4-grams) on Kiwi morphemes, 0-100.

    sacrebleu's own Korean tokenizer (ko-mecab) needs MeCab and its dictionary, which are not
    available offline; Kiwi morphemes joined by spaces with tokenize="none" play the same role.
    Character BLEU ("char") would reward shared syllables and particles that carry no meaning.
    """
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions=predictions, references=references)
    hyps = [" ".join(korean_tokens(p)) for p in predictions]
    refs = [" ".join(korean_tokens(r)) for r in references]
    return float(BLEU(tokenize="none").corpus_score(hyps, [refs]).score)


class _RougeTokenizer:
    """rouge-score's tokenizer interface on Kiwi morphemes: lowercased, punctuation-only tokens
    dropped (rouge-score's default tokenizer drops punctuation too, and all Hangul with it)."""

    def tokenize(self, text: str) -> list[str]:
        return [t.lower() for t in korean_tokens(text) if any(ch.isalnum() for ch in t)]


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer())


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over examples on Kiwi morphemes, 0-100 (like chrF and BLEU)."""
    _check_lengths(predictions=predictions, references=references)
    scorer = _rouge_scorer()
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * float(np.mean(scores))


# ---------------------------------------------------------------- SARI

def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _sari_ngram(src: list[tuple], pred: list[tuple], refs: list[list[tuple]]) -> tuple[float, float, float]:
    """(keep F1, delete precision, add F1) for one n-gram order, as in HF evaluate's SARIngram
    (tensor2tensor's version of Xu et al.: 0/0 counts as 1, and the keep-recall fix)."""
    from collections import Counter

    numref = len(refs)
    ref_counts = Counter(g for r in refs for g in r)
    src_rep = Counter({g: c * numref for g, c in Counter(src).items()})
    pred_rep = Counter({g: c * numref for g, c in Counter(pred).items()})

    kept = src_rep & pred_rep
    kept_good = kept & ref_counts
    keepable = src_rep & ref_counts
    keep_p = sum(kept_good[g] / kept[g] for g in kept_good) / len(kept) if kept else 1.0
    keep_r = sum(kept_good.values()) / sum(keepable.values()) if keepable else 1.0

    deleted = src_rep - pred_rep
    deleted_good = deleted - ref_counts
    del_p = sum(deleted_good[g] / deleted[g] for g in deleted_good) / len(deleted) if deleted else 1.0

    added = set(pred) - set(src)
    added_good = added & set(ref_counts)
    addable = set(ref_counts) - set(src)
    add_p = len(added_good) / len(added) if added else 1.0
    add_r = len(added_good) / len(addable) if addable else 1.0
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def _sari_sentence(src: list[str], pred: list[str], refs: list[list[str]]) -> float:
    parts = [_sari_ngram(_ngrams(src, n), _ngrams(pred, n), [_ngrams(r, n) for r in refs])
             for n in (1, 2, 3, 4)]
    keep, delete, add = (sum(p[i] for p in parts) / 4 for i in range(3))
    return (keep + delete + add) / 3


def _sari_tokenizer(tokenize: str | Tokenizer, texts: Iterable[str]) -> Tokenizer:
    if callable(tokenize):
        return tokenize
    if tokenize == "auto":
        tokenize = korean_tokenizer() if any(_has_hangul(t) for t in texts) else "13a"
    if tokenize == "13a":
        return tokens_13a
    if tokenize == "kiwi":
        return lambda text: _kiwi_tokens(text.lower())
    raise ValueError(f"tokenize must be 'auto', '13a', 'kiwi' or a callable, got {tokenize!r}")


def sari(sources: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]],
         tokenize: str | Tokenizer = "auto") -> float:
    """SARI (Xu et al. 2016), 0-100: n-grams 1-4 that the prediction keeps, deletes and adds
    relative to the source, judged against the references; (keep F1 + delete precision +
    add F1) / 3, per example, averaged over examples as HF `evaluate`'s sari does.

    tokenize: "13a" lowercases and applies sacrebleu's 13a tokenizer (HF evaluate's default,
    which reproduces its published values); "kiwi" lowercases and uses Kiwi morphemes
    (`korean_tokens`; ImportError without kiwipiepy); "auto" (default) uses Kiwi when any text
    contains Hangul, else 13a, so that all texts of a call share one tokenizer (13a for all when
    kiwipiepy is not importable: `korean_tokenizer()` says which); or a callable str -> list[str].

    Cross-lingual caveat: here the source is English and the prediction Korean, so almost no
    source n-gram can be kept (only numbers and terms left in English, such as "YOLO" or
    "IoU"). Keep F1 is then near 0 for every system, and delete precision near 1 for every
    system (it deletes everything, and so do the references). What still separates systems is
    the add F1, i.e. n-gram overlap with the Korean references. Hence a floor: an empty
    output scored about 43 on this dataset's paragraphs (deletes everything, as the references
    do; keep counts 0/0 as 1 where the references share no n-gram with the source). Compare
    SARI between systems on the same data, not with monolingual SARI values in the literature.
    """
    _check_lengths(sources=sources, predictions=predictions, references=references)
    bad = [i for i, refs in enumerate(references) if isinstance(refs, str) or len(refs) == 0]
    if bad:
        raise ValueError(f"references must be a list of reference strings per example; "
                         f"examples {bad[:10]} have a plain string or none")
    tok = _sari_tokenizer(tokenize, [*sources, *predictions, *(r for refs in references for r in refs)])
    total = sum(_sari_sentence(tok(s), tok(p), [tok(r) for r in refs])
                for s, p, refs in zip(sources, predictions, references))
    return 100.0 * total / len(predictions)
