"""The checks prepare runs on the split paragraphs before anything is written, every problem at once:

  near-duplicates   two examples (within a paper or across papers) whose text, source and answer, is nearly the
                    same (RapidFuzz's normalized Indel similarity, 0-1; `checks.near_duplicate`)
  leakage           a validation or test example sharing more than `checks.leakage` of its word n-grams
                    (`checks.leakage_ngram` words, source and answer) with the training examples: it would be
                    scored on text the model trained on
  quality flags     per paper-format paragraph: a Korean answer with little Hangul, one far shorter or longer
                    than its source, one that drops the source's glossary terms; more flagged paragraphs than
                    `checks.max_flagged_share` of them stop prepare

What the checks found goes into stats.json (`checks`) whether they pass or not; the flagged paragraphs are named.
RapidFuzz (a maintained C++ string-matching library) scores every pair of paragraphs in one call; the n-gram
containment is set arithmetic on the words.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from ..metrics.overlap import _ngrams
from .formats import Paragraph

WORD = re.compile(r"\w+")
SHOWN = 20  # problems named in the error; all of them are in the report


def text_of(p: Paragraph) -> str:
    """What two examples are compared on: the source (a paper's English paragraph, a chat's question) and the
    answer, so templated questions with different answers are not duplicates."""
    return f"{p.original}\n{p.simplified}"


@dataclass
class CheckReport:
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)  # {a, b, similarity, splits}
    leaks: list[dict[str, Any]] = field(default_factory=list)            # {id, split, overlap, closest}
    flagged: list[dict[str, Any]] = field(default_factory=list)          # {id, flags, hangul_share, ...}
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {"paragraphs_checked": self.checked, "near_duplicates": self.near_duplicates, "leaks": self.leaks,
                "flagged": self.flagged, "flags": dict(Counter(f for r in self.flagged for f in r["flags"])),
                "problems": self.problems}


def near_duplicates(items: Sequence[tuple[str, str, str]], threshold: float) -> list[dict[str, Any]]:
    """Pairs of (id, split, text) items whose texts are at least `threshold` similar (0-1, case and punctuation
    ignored), most similar first. RapidFuzz scores all pairs in one call (88 paragraphs: milliseconds)."""
    import numpy as np
    from rapidfuzz import fuzz, process, utils

    if len(items) < 2:
        return []
    texts = [text for _, _, text in items]
    scores = process.cdist(texts, texts, scorer=fuzz.ratio, processor=utils.default_process,
                           score_cutoff=threshold * 100, workers=1)
    pairs = np.argwhere(np.triu(scores >= threshold * 100, k=1))  # each pair once, not an item with itself
    found = [{"a": items[i][0], "b": items[j][0], "similarity": round(float(scores[i, j]) / 100, 3),
              "splits": [items[i][1], items[j][1]]} for i, j in pairs]
    return sorted(found, key=lambda d: -d["similarity"])


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    return set(_ngrams(WORD.findall(text.lower()), n))


def leaks(splits: Mapping[str, Sequence[Paragraph]], n: int, threshold: float) -> list[dict[str, Any]]:
    """Validation and test examples whose text (source and answer, `text_of`) shares more than `threshold` of its
    word n-grams with the training examples', with the training example it shares most with."""
    owner: dict[tuple[str, ...], str] = {}
    for p in splits.get("train", []):
        for gram in ngrams(text_of(p), n):
            owner.setdefault(gram, p.id)
    found = []
    for split in ("validation", "test"):
        for p in splits.get(split, []):
            grams = ngrams(text_of(p), n)
            shared = [owner[g] for g in grams if g in owner]
            if grams and len(shared) / len(grams) > threshold:
                closest = Counter(shared).most_common(1)[0][0]
                found.append({"id": p.id, "split": split, "overlap": round(len(shared) / len(grams), 3),
                              "closest": closest})
    return found


def quality_flags(p: Paragraph, checks, glossary) -> dict[str, Any] | None:
    """The flags of one paper-format paragraph (None: none raised), with the figures behind them."""
    from ..metrics import hangul_share, length_ratio, term_coverage

    figures = {"hangul_share": round(hangul_share(p.simplified), 3),
               "length_ratio": round(length_ratio(p.simplified, p.original), 3)}
    coverage = term_coverage([p.original], [p.simplified], glossary)
    if coverage == coverage:  # not NaN: the source has glossary terms
        figures["term_coverage"] = round(coverage, 3)
    flags = []
    if figures["hangul_share"] < checks.min_hangul_share:
        flags.append("little Hangul")
    if not checks.min_length_ratio <= figures["length_ratio"] <= checks.max_length_ratio:
        flags.append("too short" if figures["length_ratio"] < checks.min_length_ratio else "too long")
    if figures.get("term_coverage", 1.0) < checks.min_term_coverage:
        flags.append("terms missing")
    return {"id": p.id, "flags": flags, **figures} if flags else None


def run(splits: Mapping[str, Sequence[Paragraph]], checks, paper_format: bool) -> CheckReport:
    """Every check on the split paragraphs; the report's `problems` are what stops prepare (`enforce`)."""
    from ..metrics import load_glossary

    report = CheckReport()
    items = [(p.id, split, text_of(p)) for split, ps in splits.items() for p in ps]
    report.checked = len(items)
    if checks.near_duplicate is not None:
        report.near_duplicates = near_duplicates(items, checks.near_duplicate)
        for d in report.near_duplicates:
            report.problems.append(f"near-duplicate paragraphs {d['a']} ({d['splits'][0]}) and {d['b']} "
                                   f"({d['splits'][1]}): {d['similarity']:.0%} alike (checks.near_duplicate "
                                   f"{checks.near_duplicate}); remove one, or rewrite it")
    if checks.leakage is not None:
        report.leaks = leaks(splits, checks.leakage_ngram, checks.leakage)
        for leak in report.leaks:
            report.problems.append(f"{leak['split']} paragraph {leak['id']} shares {leak['overlap']:.0%} of its "
                                   f"{checks.leakage_ngram}-word n-grams with training paragraph {leak['closest']} "
                                   f"(checks.leakage {checks.leakage}): it would be scored on text the model "
                                   "trained on; remove or rewrite one of them")
    if paper_format:
        glossary = load_glossary()
        report.flagged = [f for split, ps in splits.items() for p in ps
                          if (f := quality_flags(p, checks, glossary)) is not None]
        share = len(report.flagged) / len(items) if items else 0.0
        if report.flagged and share > checks.max_flagged_share:
            named = ", ".join(f"{f['id']} ({', '.join(f['flags'])})" for f in report.flagged[:20])
            more = f" and {len(report.flagged) - 20} more" if len(report.flagged) > 20 else ""
            report.problems.append(f"{len(report.flagged)} of {len(items)} paragraphs flagged ({share:.0%}, above "
                                   f"checks.max_flagged_share {checks.max_flagged_share:.0%}): {named}{more}; "
                                   "fix their Korean, or relax checks.min_hangul_share / min_length_ratio / "
                                   "max_length_ratio / min_term_coverage")
    return report


def checks_table(stats: dict[str, Any]):
    """What prepare's checks found (stats.json's `checks`), one row per finding: near-duplicate pairs, leaks,
    flagged paragraphs; one row saying so when there is none."""
    import pandas as pd

    found = stats.get("checks") or {}
    rows = [{"check": "near-duplicate", "which": f"{d['a']} ~ {d['b']}", "figure": d["similarity"],
             "detail": " / ".join(d["splits"])} for d in found.get("near_duplicates", [])]
    rows += [{"check": "leakage", "which": f"{leak['id']} ({leak['split']})", "figure": leak["overlap"],
              "detail": f"n-grams shared with training, most with {leak['closest']}"}
             for leak in found.get("leaks", [])]
    rows += [{"check": "quality", "which": f["id"], "figure": f.get("hangul_share"),
              "detail": f"{', '.join(f['flags'])} (Hangul {f['hangul_share']}, length {f['length_ratio']} of the "
                        f"source, glossary terms kept {f.get('term_coverage', '-')})"}
             for f in found.get("flagged", [])]
    if not rows:
        rows = [{"check": "all", "which": f"{found.get('paragraphs_checked', 0)} paragraphs", "figure": None,
                 "detail": "no near-duplicate, no leak, nothing flagged"}]
    return pd.DataFrame(rows, columns=["check", "which", "figure", "detail"])


def enforce(report: CheckReport, source: str) -> None:
    """DataError naming every problem the checks found, before anything is written."""
    if report.problems:
        lines = "\n".join(f"  - {p}" for p in report.problems[:SHOWN])
        more = f"\n  ... and {len(report.problems) - SHOWN} more" if len(report.problems) > SHOWN else ""
        raise DataError(f"{source}: the data checks found {len(report.problems)} problem(s); nothing was written:\n"
                        f"{lines}{more}\n(thresholds: the params' checks section, e.g. --set checks.near_duplicate="
                        "0.95; null turns a check off)")
