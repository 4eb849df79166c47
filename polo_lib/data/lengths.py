"""Token lengths of the chats through the model's own template, and the over-length policy (fail or drop)."""
from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from typing import Any

from ..errors import DataError

log = logging.getLogger(__name__)


def token_length(messages: list[dict[str, str]], tokenizer) -> int:
    """Tokens of the full chat as the model sees it: its own chat template, then its tokenizer."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_lengths(examples: Sequence[dict[str, Any]], tokenizer) -> list[int]:
    return [token_length(e["messages"], tokenizer) for e in examples]


def apply_length_policy(split: str, examples: list[dict[str, Any]], lengths: list[int],
                        max_seq_length: int, policy: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Examples over max_seq_length: 'fail' names them, 'drop' removes them with a warning.

    Never truncate: TRL would cut silently and train on half an answer.
    """
    over = [(e["id"], n) for e, n in zip(examples, lengths) if n > max_seq_length]
    if over and policy == "fail":
        listed = ", ".join(f"{pid} ({n} tokens)" for pid, n in over)
        raise DataError(
            f"{len(over)} {split} example(s) exceed max_seq_length={max_seq_length}: {listed}. "
            f"Raise model.max_seq_length to at least {max(n for _, n in over)}, or set "
            "data.over_length: drop to leave them out.")
    if over:
        log.warning("dropping %d %s example(s) over max_seq_length=%d: %s", len(over), split,
                    max_seq_length, ", ".join(pid for pid, _ in over))
    keep = [e for e, n in zip(examples, lengths) if n <= max_seq_length]
    return keep, [pid for pid, _ in over]


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    return {"count": len(s), "min": s[0], "mean": round(statistics.fmean(s), 1),
            "median": statistics.median(s), "p95": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))],
            "max": s[-1], "total": sum(s)}
