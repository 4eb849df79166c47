"""Paper sentences grouped into paragraphs; examples split seeded and by example, each paper on its own.

Splits are by example (a paragraph, or one chat), so nothing leaks between train and test; each
paper is split on its own, so every split holds every paper and the evaluation can be broken down
per paper. Then each example becomes one chat row (to_examples).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..errors import DataError
from .formats import Paragraph, Record

SPLITS = ("train", "validation", "test")


def group_paragraphs(records: Sequence[Record], prefix: str = "") -> list[Paragraph]:
    """One paragraph per (section_major, section_minor) of one paper, sentences in id order; its id
    "major.minor" after `prefix` ("<paper>/" when several papers are read)."""
    groups: dict[tuple[int, int], list[Record]] = {}
    for r in sorted(records, key=lambda r: r.sort_key):
        groups.setdefault((r.section_major, r.section_minor), []).append(r)
    return [
        Paragraph(
            id=f"{prefix}{major}.{minor}", section_major=major, section_minor=minor,
            record_ids=tuple(r.id for r in rs),
            original=" ".join(r.original for r in rs),
            simplified=" ".join(r.simplified for r in rs),
            paper=rs[0].paper,
        )
        for (major, minor), rs in sorted(groups.items())
    ]


def split_paragraphs(paragraphs: Sequence[Paragraph], validation_fraction: float,
                     test_fraction: float, seed: int) -> dict[str, list[Paragraph]]:
    """Seeded, deterministic split by paragraph, each paper on its own (so every split holds every
    paper, in the fractions asked); each split keeps document order."""
    papers: dict[str, list[Paragraph]] = {}
    for p in paragraphs:
        papers.setdefault(p.paper, []).append(p)
    if len(papers) > 1:
        parts = {name: _split_one(ps, validation_fraction, test_fraction, seed, f"paper '{name}': ")
                 for name, ps in papers.items()}
        return {s: [p for name in papers for p in parts[name][s]] for s in SPLITS}
    return _split_one(paragraphs, validation_fraction, test_fraction, seed)


def _split_one(paragraphs: Sequence[Paragraph], validation_fraction: float, test_fraction: float, seed: int,
               label: str = "") -> dict[str, list[Paragraph]]:
    n = len(paragraphs)
    n_val = max(1, round(n * validation_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise DataError(f"{label}{n} paragraphs cannot be split into train/validation/test with "
                        f"validation_fraction={validation_fraction} and test_fraction={test_fraction}: "
                        "add data or lower the fractions.")
    order = sorted(range(n), key=lambda i: _key(paragraphs[i].id))
    random.Random(seed).shuffle(order)
    chosen = {"validation": set(order[:n_val]), "test": set(order[n_val:n_val + n_test])}
    chosen["train"] = set(order[n_val + n_test:])
    return {s: [paragraphs[i] for i in sorted(chosen[s], key=lambda i: _key(paragraphs[i].id))]
            for s in SPLITS}


def _key(pid: str) -> tuple:
    """Document order of example ids: "2.10" after "2.9"; "<paper>/..." grouped by paper."""
    paper, _, rest = pid.rpartition("/")
    return (paper, *(int(x) if x.isdigit() else x for x in rest.split(".")))


def to_examples(paragraphs: Sequence[Paragraph]) -> list[dict[str, Any]]:
    """Chat examples: (system,) user = original, assistant = simplified; `paper` names the file."""
    return [{"id": p.id, "paper": p.paper, "original": p.original, "simplified": p.simplified,
             "messages": p.messages} for p in paragraphs]


def paragraph_table(splits: dict[str, list[Paragraph]]) -> pd.DataFrame:
    rows = [{"id": p.id, "paper": p.paper, "split": s, "sentences": len(p.record_ids),
             "original_chars": len(p.original), "simplified_chars": len(p.simplified),
             "original": p.original, "simplified": p.simplified}
            for s, ps in splits.items() for p in ps]
    return pd.DataFrame(rows).sort_values("id", key=lambda c: c.map(_key)).reset_index(drop=True)
