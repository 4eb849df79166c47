"""Parity of an export: the fixed prompts every export answers, the token-level agreement of two
sets of greedy answers (parity.json), and the refusal of an export whose chat template or EOS
differs from the run's tokenizer."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import inference, prompts
from ..errors import ModelError, PoloError

VERIFY_PARAGRAPH = ("YOLO frames object detection as a single regression problem, straight from "
                    "image pixels to bounding box coordinates and class probabilities.")


PARITY_PROMPTS = 3   # the test split's first paragraphs
PARITY_TOKENS = 24   # greedy new tokens per prompt


def parity_chats(run) -> tuple[list[list[dict[str, str]]], str]:
    """The fixed prompts every export answers: the Easy prompt around the test split's first
    paragraphs (the processed data of the run's params), or the check paragraph without them."""
    from .. import data

    cfg = run.params()
    try:
        test = data.load_processed(cfg.data)["test"]
    except (OSError, KeyError, PoloError):
        return [prompts.build_messages(VERIFY_PARAGRAPH)], "the export check's paragraph (no processed data here)"
    n = min(PARITY_PROMPTS, len(test))
    return inference.chats_of(test.select(range(n))), f"the first {n} paragraphs of the test split"


def compare_answers(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Token-level agreement of two sets of greedy answers (pure, table-tested): how many are
    identical, the share of tokens that agree (the common prefix of each pair over the longer
    answer), and where each pair first differs (None: identical)."""
    firsts, agreed, total = [], 0, 0
    for x, y in zip(a, b, strict=True):
        same = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        firsts.append(None if list(x) == list(y) else same)
        agreed += same
        total += max(len(x), len(y))
    return {"identical": sum(f is None for f in firsts), "of": len(firsts),
            "token_agreement": round(agreed / total, 4) if total else 1.0, "first_difference": firsts}


def parity_record(source: str, chats, pairs) -> dict[str, Any]:
    """parity.json: for each (export, against, reference ids, export ids, identical expected, why),
    the agreement figures."""
    return {"prompts": len(chats), "source": source, "max_new_tokens": PARITY_TOKENS, "greedy": True,
            "pairs": [{"export": name, "against": against, "expected": "identical" if same else "tolerance",
                       "why": why, **compare_answers(ref, got)} for name, against, ref, got, same, why in pairs]}


def _same_template(run, template: str | None, eos_id, what: str) -> None:
    """An export whose chat template or EOS differs from training would serve other prompts: refuse it."""
    tokenizer = inference.run_tokenizer(run)
    problems = []
    if (template or "").strip() != (tokenizer.chat_template or "").strip():
        problems.append("its chat template differs from the run's tokenizer")
    if eos_id is not None and int(eos_id) != tokenizer.eos_token_id:
        problems.append(f"its eos id {eos_id} is not the run's {tokenizer.eos_token_id} ({tokenizer.eos_token})")
    if problems:
        raise ModelError(f"{what}: {'; '.join(problems)}. Serving it would prompt or stop differently "
                         "from training; export from the run's adapter folder again.")
