"""Filler phrases out of every answer, whitespace normalised; a table of what changed."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

import pandas as pd

from ..errors import DataError
from .formats import Paragraph, Record


def remove_fillers(text: str, phrases: Iterable[str]) -> tuple[str, list[str]]:
    """Drop filler phrases ("In simple terms, ", "쉽게 말해서, ") wherever they occur,
    case-insensitively, then normalize whitespace. Returns (clean text, phrases removed)."""
    removed: list[str] = []
    for phrase in phrases:
        core = phrase.strip()
        if not core:
            continue
        pattern = re.compile(re.escape(core) + r"\s*", re.IGNORECASE)
        text, n = pattern.subn("", text)
        removed += [core] * n
    return " ".join(text.split()), removed


def _strip_fillers(items: Sequence, phrases: Iterable[str], normalise_original: bool,
                   empty) -> tuple[list, pd.DataFrame]:
    """Fillers out of every `simplified` (whitespace normalised), and with `normalise_original` the
    whitespace of every `original` too; `empty(item, removed)` words the error for an answer that
    was only filler. The DataFrame lists what changed: id, phrase removed, text before and after."""
    phrases = list(phrases)
    cleaned, changes = [], []
    for item in items:
        answer, removed = remove_fillers(item.simplified, phrases)
        if not answer:
            raise DataError(empty(item, removed))
        changes += [{"id": item.id, "removed": phrase, "before": item.simplified, "after": answer}
                    for phrase in removed]
        fields = {"simplified": answer}
        if normalise_original:
            fields["original"] = " ".join(item.original.split())
        cleaned.append(dataclasses.replace(item, **fields))
    return cleaned, pd.DataFrame(changes, columns=["id", "removed", "before", "after"])


def clean_examples(examples: Sequence[Paragraph], phrases: Iterable[str]) -> tuple[list[Paragraph], pd.DataFrame]:
    """clean_records for chat examples: fillers out of each answer; the question is kept as written
    (an alpaca input's line breaks are part of it)."""
    return _strip_fillers(examples, phrases, False, lambda e, removed: (
        f"example {e.id}: the answer is empty after removing filler phrases {removed}; "
        "write the answer itself, not only the filler."))


def clean_records(records: Sequence[Record], phrases: Iterable[str]) -> tuple[list[Record], pd.DataFrame]:
    """Clean every `simplified` (fillers, whitespace) and `original` (whitespace).

    The DataFrame lists what changed: id, phrase removed, text before and after.
    """
    return _strip_fillers(records, phrases, True, lambda r, removed: (
        f"record id {r.id}: 'simplified' is empty after removing filler "
        f"phrases {removed}; write the explanation itself, not only the filler."))
