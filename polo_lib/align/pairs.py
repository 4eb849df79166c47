"""Preference pairs for DPO: sampled from the SFT model and scored by the weighted rewards (`self_pairs`), or read
from a file in TRL's preference format (human ratings exported by `polo rate --export-pairs`, or any source)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_write_text
from ..errors import DataError
from . import rewards as rewards_lib


def best_and_worst(scores: pd.Series, margin: float) -> tuple[int, int] | None:
    """(index of the best answer, of the worst) of one paragraph's candidates by weighted reward, or None when the
    best is not ahead of the worst by at least `margin` (ties and near ties teach nothing and add noise). The
    first of equal bests and the last of equal worsts, so the choice is repeatable."""
    if len(scores) < 2:
        return None
    best, worst = int(scores.values.argmax()), len(scores) - 1 - int(scores.values[::-1].argmin())
    gap = scores.iloc[best] - scores.iloc[worst]
    return (best, worst) if gap > 0 and gap >= margin else None


def build(candidates: pd.DataFrame, weights: Mapping[str, float], margin: float) -> tuple[list[dict], pd.DataFrame]:
    """Pairs from scored candidates (one row per answer: id, prompt, answer, and a column per reward): per
    paragraph the best against the worst when the margin holds. Returns the pairs (TRL's conversational format,
    each with its scores, for the audit file) and the candidates with their weighted reward."""
    scored = candidates.assign(weighted=rewards_lib.weighted(candidates, weights).round(4))
    pairs = []
    for example_id, group in scored.groupby("id", sort=False):
        chosen = best_and_worst(group["weighted"].reset_index(drop=True), margin)
        if chosen is None:
            continue
        best, worst = group.iloc[chosen[0]], group.iloc[chosen[1]]
        pairs.append({
            "id": example_id, "prompt": best["prompt"],
            "chosen": [{"role": "assistant", "content": best["answer"]}],
            "rejected": [{"role": "assistant", "content": worst["answer"]}],
            "margin": round(float(best["weighted"] - worst["weighted"]), 4),
            "chosen_scores": {k: round(float(best[k]), 4) for k in ("weighted", *weights)},
            "rejected_scores": {k: round(float(worst[k]), 4) for k in ("weighted", *weights)},
        })
    return pairs, scored


def self_pairs(lm, rows, align, glossary: Sequence[Any], folder: Path, batch_size: int, on_batch=None) -> list[dict]:
    """`align.num_generations` sampled answers per training paragraph from the loaded (SFT) model, `batch_size` at
    once, scored by the weighted rewards, paired best against worst; pairs.jsonl (with their scores) and
    candidates.csv (every answer and its rewards) written into `folder` for a reader to audit; `on_batch` as
    inference.generate takes it (the run's progress file). DataError when no paragraph gives a pair."""
    from ..inference import chats_of, generate

    chats = chats_of(rows)
    n = align.num_generations
    answers = generate(lm, [c for c in chats for _ in range(n)], max_new_tokens=align.max_new_tokens,
                       batch_size=min(len(chats) * n, batch_size), do_sample=True,
                       temperature=align.temperature, seed=align.seed, progress="self pairs: sampling answers",
                       on_batch=on_batch)
    repeat = lambda values: [v for v in values for _ in range(n)]  # noqa: E731
    texts = [g.text for g in answers]
    table = rewards_lib.components(list(align.rewards), repeat(rows["original"]), texts, repeat(rows["simplified"]),
                                   glossary)
    candidates = pd.concat([pd.DataFrame({"id": repeat(rows["id"]), "prompt": repeat(chats), "answer": texts}),
                            table], axis=1)
    pairs, scored = build(candidates, align.rewards, align.pair_margin)
    folder.mkdir(parents=True, exist_ok=True)
    scored.drop(columns="prompt").to_csv(folder / "candidates.csv", index=False)
    atomic_write_text(folder / "pairs.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    if not pairs:
        raise DataError(f"no preference pair: for none of the {len(chats)} paragraphs did the best of {n} sampled "
                        f"answers beat the worst by align.pair_margin ({align.pair_margin}); see "
                        f"{folder / 'candidates.csv'}. Lower align.pair_margin, raise align.num_generations or "
                        "align.temperature.")
    return pairs
