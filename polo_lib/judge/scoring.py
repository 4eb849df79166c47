"""judge.jsonl summed up: win rate with its interval, order disagreements, agreement with people, terminal lines."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import paths, stats
from ..ratings import kappa, latest, read
from .pairs import Pairs
from .settings import BASE, RATINGS_FILE, TIE, TUNED, rubric_hash
from .verdicts import read_verdicts


def read_human_ratings(path: Path, against: str) -> pd.DataFrame:
    """People's ratings of the same comparison from ratings.jsonl (`polo rate`), read by the rating tool's own
    reader: one row per rater and example (their last rating of it), columns example_id, rater, preferred
    ("tuned", the other side's name, or "tie")."""
    return latest(read(path), against)[["example_id", "rater", "preferred"]].reset_index(drop=True)


@dataclass(frozen=True)
class Results:
    """The judge's verdicts on one comparison under one judge model and rubric, summed up.

    Per example, each order scores the tuned answer 1 (preferred), 0.5 (tie) or 0; the example's score
    is the mean of its two orders, so a verdict that follows the position (A, then A again once
    swapped) scores 0.5 and counts as an order disagreement, not as a win."""
    judge_model: str
    rubric_hash: str
    against: str
    examples: int               # in the evaluation
    judged: int                 # with a parsed verdict in both orders: the win rate's examples
    wins: int                   # both orders (or one, the other a tie) prefer tuned
    losses: int
    ties: int                   # score 0.5: both ties, or the orders disagree outright
    win_rate: float             # tuned's mean score (ties half)
    low: float                  # bootstrap interval over examples
    high: float
    order_disagreements: int    # examples whose preferred answer changed when A and B swapped
    unparseable: int            # replies (orders) without a verdict after every attempt
    unparseable_examples: int   # examples left out of the win rate for it
    missing: int                # orders not judged yet (failed requests, or an interrupted run)
    human: dict[str, Any] | None  # ratings, raters, examples, accuracy, kappa: the judge against people
    per_example: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def results(pairs: Pairs, judge_model: str, rubric: str, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Results:
    """judge.jsonl's verdicts for this comparison, judge model and rubric (the last per example and
    order), with the human ratings of the same pairs when there are any."""
    r_hash = rubric_hash(rubric)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in read_verdicts(pairs.path):
        if (r["judge_model"], r["rubric_hash"], r.get("against"), r.get("against_evaluation")) == \
                (judge_model, r_hash, pairs.against, pairs.against_evaluation):
            latest[(str(r["id"]), r["order"])] = r
    score = {TUNED: 1.0, TIE: 0.5, pairs.against: 0.0}
    rows, unparseable, unparseable_examples, missing = [], 0, 0, 0
    for example in pairs.examples:
        orders = [latest.get((example["id"], o)) for o in ("tuned_first", "other_first")]
        missing += sum(o is None for o in orders)
        bad = sum(o is not None and o.get("preferred") is None for o in orders)
        unparseable, unparseable_examples = unparseable + bad, unparseable_examples + (bad > 0)
        if any(o is None or o.get("preferred") is None for o in orders):
            rows.append({"id": example["id"], "tuned_first": orders[0] and orders[0].get("preferred"),
                         "other_first": orders[1] and orders[1].get("preferred"), "score": math.nan,
                         "disagree": None, "label": None})
            continue
        first, second = (o["preferred"] for o in orders)
        s = (score[first] + score[second]) / 2
        label = TUNED if s > 0.5 else pairs.against if s < 0.5 else TIE
        rows.append({"id": example["id"], "tuned_first": first, "other_first": second, "score": s,
                     "disagree": first != second, "label": label})
    frame = pd.DataFrame(rows)
    judged = frame.dropna(subset=["score"])
    low, high = stats.bootstrap_ci(judged["score"].to_numpy(), resamples, confidence, seed)
    return Results(judge_model=judge_model, rubric_hash=r_hash, against=pairs.against, examples=len(pairs.examples),
                   judged=len(judged), wins=int((judged["score"] > 0.5).sum()),
                   losses=int((judged["score"] < 0.5).sum()), ties=int((judged["score"] == 0.5).sum()),
                   win_rate=float(judged["score"].mean()) if len(judged) else math.nan, low=low, high=high,
                   order_disagreements=int(judged["disagree"].sum()), unparseable=unparseable,
                   unparseable_examples=unparseable_examples,
                   missing=missing, human=agreement(judged, read_human_ratings(pairs.folder / RATINGS_FILE,
                                                                               pairs.against), pairs.against),
                   per_example=json.loads(frame.to_json(orient="records")))


def agreement(judged: pd.DataFrame, ratings: pd.DataFrame, against: str) -> dict[str, Any] | None:
    """The judge's label per example (tuned, the other side, or tie) against each person's rating of
    it: how many ratings, by how many raters, on how many examples; the share where they agree
    (accuracy) and Cohen's kappa (scikit-learn) over the three outcomes. None without shared pairs."""
    labels = dict(zip(judged["id"], judged["label"]))
    shared = ratings[ratings["example_id"].isin(labels)] if len(ratings) else ratings
    if shared.empty:
        return None
    judge_says = [labels[i] for i in shared["example_id"]]
    people_say = list(shared["preferred"])
    return {"ratings": len(shared), "raters": int(shared["rater"].nunique()),
            "examples": int(shared["example_id"].nunique()),
            "accuracy": float(sum(j == p for j, p in zip(judge_says, people_say)) / len(shared)),
            "kappa": kappa(judge_says, people_say, [TUNED, against, TIE])}


def summary_lines(res: Results, pairs: Pairs, rubric_path: Path | None = None) -> list[str]:
    """The results for a terminal: the agreement with people first (how far to trust the judge), then
    the win rate, the order disagreements and what could not be read."""
    other = "base" if pairs.against == BASE else f"run {pairs.against}'s tuned answers"
    rubric = f"rubric {res.rubric_hash}" + (f" ({paths.display(rubric_path)})" if rubric_path else "")
    lines = [f"judge {res.judge_model}, {rubric}: run {pairs.run_id} (evaluation {pairs.evaluation_id}), tuned vs "
             f"{other}, {res.examples} examples, each asked in both orders"]
    h = res.human
    if h:
        kappa = "undefined (one outcome throughout)" if math.isnan(h["kappa"]) else f"{h['kappa']:.2f}"
        lines.append(f"agreement with people: {h['ratings']} ratings by {h['raters']} rater(s) on {h['examples']} "
                     f"examples: accuracy {h['accuracy']:.2f}, Cohen's kappa {kappa}")
    else:
        lines.append("agreement with people: no human ratings of these pairs yet (polo rate), so nothing says how "
                     "far this judge can be trusted")
    if res.judged:
        interval = "" if math.isnan(res.low) else f" [{res.low:.2f}, {res.high:.2f}]"
        lines.append(f"win rate of tuned (ties half): {res.win_rate:.2f}{interval} over {res.judged} examples: "
                     f"{res.wins} won, {res.losses} lost, {res.ties} tied or order-dependent")
    else:
        lines.append("win rate of tuned: none (no example has a verdict in both orders)")
    lines.append(f"order disagreements: {res.order_disagreements} of {res.judged} examples changed verdict when A "
                 "and B swapped")
    lines.append(f"unparseable replies: {res.unparseable} (no final VERDICT line after every attempt; "
                 f"{res.unparseable_examples} example(s) left out of the win rate)")
    if res.missing:
        lines.append(f"not judged yet: {res.missing} request(s); run the same command again to ask them")
    lines.append(f"verdicts: {pairs.path}")
    return lines
