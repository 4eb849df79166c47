"""The glossary (data/glossary.yaml): its file, where its English terms occur in a text, and term coverage."""
from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import DataError, bullet_list
from .tokens import _check_lengths


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
    path = Path(path) if path is not None else paths.DATA_DIR / "glossary.yaml"
    if not path.is_file():
        raise DataError(f"{path}: glossary file not found.")
    items = paths.read_yaml(path, DataError)
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
