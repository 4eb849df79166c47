"""Blind human ratings: which of two answers to the same source paragraph is better, the run's
tuned model's or its base model's (or another run's tuned model's), the order hidden from the rater.

The pairs come from one evaluation's predictions.jsonl (the run's latest finished one). Every
rating is one line appended at once to eval/<id>/ratings.jsonl (atomic.append_line: one write,
fsync), so a closed page loses nothing and a rater goes on at the first example they have not rated.
Which answer a rater sees as A is a coin seeded by rater, comparison and example: reopening the page
shows the same order, and the order is in the line for whoever reads the results.

From the lines: the tuned model's win rate (ties count half) with a bootstrap interval over
examples, the same per rater, the agreement between raters on the examples they both rated
(Cohen's kappa, scikit-learn's, for each pair of raters), and preference pairs (prompt / chosen /
rejected) for a later preference stage such as DPO.

`polo rate RUN` serves the page (deploy/rate_app.py); everything it computes is here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from . import prompts, runs, stats
from .atomic import append_line, atomic_write_text
from .errors import ParamsError, RunError

log = logging.getLogger(__name__)

RATINGS_FILE = "ratings.jsonl"
TUNED, BASE, TIE = "tuned", "base", "tie"
CHOICES = ("A", "B", TIE)  # what the rater presses: "A better", "B better", "tie"


@dataclass(frozen=True)
class Pair:
    """One example: its source paragraph and the two answers to it, by source ("tuned", and "base"
    or the other run's id)."""
    id: str
    original: str
    answers: dict[str, str]


@dataclass(frozen=True)
class Task:
    """What a rater rates: the examples of one evaluation of `run_id`, its tuned answers against
    `against` ("base", or another run's id whose evaluation `against_evaluation` has the same
    examples). The ratings go to `folder`/ratings.jsonl, the rated evaluation's folder."""
    run_id: str
    evaluation_id: str
    folder: Path
    against: str
    against_evaluation: str | None
    pairs: tuple[Pair, ...]

    @property
    def path(self) -> Path:
        return self.folder / RATINGS_FILE

    def pair(self, example_id: str) -> Pair:
        for p in self.pairs:
            if p.id == example_id:
                return p
        raise RunError(f"example '{example_id}' is not in evaluation {self.evaluation_id} of run {self.run_id}.")


def check_rater(name: str | None) -> str:
    """The rater's name, stripped; a ParamsError when there is none (ratings are kept per rater)."""
    name = (name or "").strip()
    if not name:
        raise ParamsError("a rating needs the rater's name: `polo rate RUN --rater NAME` (each rater's ratings, "
                          "order and place are kept apart under their name).")
    if any(c in name for c in "\n\r\t"):
        raise ParamsError(f"--rater {name!r}: a name on one line, without tabs.")
    return name


def read_predictions(folder: Path) -> pd.DataFrame:
    """An evaluation's predictions.jsonl (ids as text)."""
    path = Path(folder) / "predictions.jsonl"
    if not path.is_file():
        raise RunError(f"{path} does not exist: the evaluation wrote no answers to rate; evaluate the run again.")
    return pd.read_json(path, lines=True, dtype={"id": str})


def _finished_evaluation(run: runs.Run):
    evaluation = run.evaluation()
    if evaluation is None:
        raise RunError(f"run {run.id} has no finished evaluation, so there are no answers to rate: evaluate it "
                       f"first (polo run {run.id} --stages evaluate, or notebooks/evaluate.ipynb).")
    return evaluation


def make_task(run_id: str, evaluation_id: str, folder: Path, predictions: pd.DataFrame, against: str = BASE,
              against_answers: dict[str, str] | None = None, against_evaluation: str | None = None) -> Task:
    """The pairs of `predictions` (id, original, tuned, base): tuned against base, or against
    `against_answers` ({example id: answer}) of the run named `against`."""
    needed = {"id", "original", TUNED} | ({BASE} if against_answers is None else set())
    missing = needed - set(predictions.columns)
    if missing:
        raise RunError(f"{Path(folder) / 'predictions.jsonl'} lacks {', '.join(sorted(missing))}: evaluate the run "
                       "again to rate it.")
    pairs = []
    for row in predictions.itertuples(index=False):
        other = getattr(row, BASE) if against_answers is None else against_answers[row.id]
        pairs.append(Pair(str(row.id), str(row.original), {TUNED: str(getattr(row, TUNED)), against: str(other)}))
    return Task(run_id, evaluation_id, Path(folder), against, against_evaluation, tuple(pairs))


def load_task(run: runs.Run, against: runs.Run | None = None) -> Task:
    """The run's latest finished evaluation to rate: tuned vs base, or vs the tuned answers of the
    `against` run's latest finished evaluation, which must hold the same examples (ids and source
    texts); a RunError naming what is missing or different otherwise."""
    evaluation = _finished_evaluation(run)
    predictions = read_predictions(evaluation.path)
    if against is None:
        return make_task(run.id, evaluation.id, evaluation.path, predictions)
    if against.id == run.id:
        raise RunError(f"--against names run {run.id} itself: give another run, or leave --against out to rate "
                       "tuned vs base.")
    other_evaluation = _finished_evaluation(against)
    other = read_predictions(other_evaluation.path)
    why = stats.same_examples(predictions, other)
    if why:
        raise RunError(f"runs {run.id} (evaluation {evaluation.id}) and {against.id} (evaluation "
                       f"{other_evaluation.id}) were evaluated on different examples ({why}): evaluate both on "
                       "the same split and limit to rate their answers side by side.")
    if TUNED not in other:
        raise RunError(f"{other_evaluation.path / 'predictions.jsonl'} lacks the tuned answers: evaluate run "
                       f"{against.id} again.")
    answers = dict(zip(other["id"], other[TUNED].astype(str)))
    return make_task(run.id, evaluation.id, evaluation.path, predictions, against.id, answers, other_evaluation.id)


def order(rater: str, against: str, example_id: str) -> tuple[str, str]:
    """(the source shown as A, the source shown as B): a fair coin seeded by rater, comparison and
    example, so each rater sees each pair in one fixed order that the page never shows."""
    coin = hashlib.sha256(f"{rater}\x00{against}\x00{example_id}".encode()).digest()[0] & 1
    return (TUNED, against) if coin else (against, TUNED)


def read(path: Path) -> list[dict[str, Any]]:
    """The ratings in a ratings.jsonl, oldest first ([] before the first). A line that is not a
    rating (cut by a crash while written, or damaged by hand) is skipped with a warning that names
    it: its example counts as not rated, and the rater sees it again."""
    path = Path(path)
    if not path.is_file():
        return []
    out, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rating = json.loads(line)
        except json.JSONDecodeError:
            rating = None
        if isinstance(rating, dict) and {"rater", "example_id", "preferred"} <= set(rating):
            out.append(rating)
        else:
            bad.append(number)
    if bad:
        log.warning("%s: skipped line(s) %s, which are not ratings (cut by a crash, or edited by hand)",
                    path, ", ".join(map(str, bad[:10])))
    return out


def latest(records: list[dict[str, Any]], against: str = BASE) -> pd.DataFrame:
    """The ratings of one comparison (tuned vs `against`), the last one per rater and example (a
    rater who rated an example twice, e.g. in two tabs, changed their mind), oldest first."""
    chosen = [r for r in records if r.get("against") == against]
    columns = ["time", "rater", "example_id", "a", "b", "choice", "preferred", "note", "correction", "a_text",
               "b_text"]
    if not chosen:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(chosen)
    for column in columns:
        if column not in frame:
            frame[column] = None
    frame["example_id"] = frame["example_id"].astype(str)
    return frame.drop_duplicates(["rater", "example_id"], keep="last").reset_index(drop=True)


def position(task: Task, rater: str) -> int:
    """The index of the first example `rater` has not rated in this comparison (len(task.pairs)
    when they rated every one): where the page opens."""
    done = set(latest(read(task.path), task.against).query("rater == @rater")["example_id"])
    return next((i for i, p in enumerate(task.pairs) if p.id not in done), len(task.pairs))


def record(task: Task, rater: str, example_id: str, choice: str, note: str = "", correction: str = "") -> dict:
    """Append one rating to the evaluation's ratings.jsonl at once and return it: which source was
    A, the choice as pressed (A / B / tie) and mapped back to a source (`preferred`), the note and
    corrected answer (empty when none), and the two answers as the rater saw them."""
    rater = check_rater(rater)
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, not {choice!r}")
    pair = task.pair(example_id)
    a, b = order(rater, task.against, pair.id)
    rating = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rater": rater,
              "run_id": task.run_id, "evaluation_id": task.evaluation_id, "against": task.against,
              "against_evaluation": task.against_evaluation, "example_id": pair.id, "a": a, "b": b,
              "choice": choice, "preferred": {"A": a, "B": b}.get(choice, TIE),
              "note": (note or "").strip(), "correction": (correction or "").strip(),
              "a_text": pair.answers[a], "b_text": pair.answers[b]}
    append_line(task.path, json.dumps(rating, ensure_ascii=False))
    return rating


def _score(preferred: pd.Series) -> pd.Series:
    """The tuned model's score per rating: 1 a win, 0.5 a tie, 0 a loss."""
    return preferred.map(lambda p: 1.0 if p == TUNED else 0.5 if p == TIE else 0.0)


def _win_row(frame: pd.DataFrame, per_example: pd.Series, resamples: int, seed: int) -> dict[str, Any]:
    low, high = stats.bootstrap_ci(per_example.to_numpy(), resamples=resamples, seed=seed)
    return {"examples": int(per_example.size), "ratings": len(frame),
            "wins": int((frame["preferred"] == TUNED).sum()), "ties": int((frame["preferred"] == TIE).sum()),
            "losses": int(((frame["preferred"] != TUNED) & (frame["preferred"] != TIE)).sum()),
            "win_rate": float(per_example.mean()) if per_example.size else math.nan, "low": low, "high": high}


def agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """For each pair of raters who rated two or more of the same examples: how many, the share of
    them where they chose alike, and Cohen's kappa (scikit-learn) over the three outcomes (tuned
    better, the other better, tie); NaN where it is undefined (both gave one and the same answer
    throughout). `frame`: `latest`'s ratings."""
    rows = []
    by_rater = {r: part.set_index("example_id")["preferred"] for r, part in frame.groupby("rater", sort=True)}
    labels = sorted(set(frame["preferred"]))
    for r1, r2 in combinations(by_rater, 2):
        shared = by_rater[r1].index.intersection(by_rater[r2].index)
        if len(shared) < 2:
            continue
        x, y = by_rater[r1][shared], by_rater[r2][shared]
        rows.append({"rater_1": r1, "rater_2": r2, "shared": len(shared), "agree": float((x == y).mean()),
                     "kappa": kappa(list(x), list(y), labels)})
    return pd.DataFrame(rows, columns=["rater_1", "rater_2", "shared", "agree", "kappa"])


def kappa(x: list[str], y: list[str], labels: list[str]) -> float:
    """Cohen's kappa of two label lists (scikit-learn); NaN when one label runs throughout (0/0)."""
    from sklearn.metrics import cohen_kappa_score

    if len(set(x) | set(y)) < 2:  # one label throughout: chance agreement is 1, kappa is 0/0
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(cohen_kappa_score(x, y, labels=labels))


@dataclass(frozen=True)
class Results:
    """One comparison's ratings summed up. `overall` and each row of `per_rater`: examples, ratings,
    wins / ties / losses of the tuned model, win_rate (ties count half) and its bootstrap interval
    (low, high). Overall, each example counts once (its raters' scores averaged), and the interval
    resamples examples. `agreement`: `agreement`'s table, empty with fewer than two raters per example."""
    run_id: str
    evaluation_id: str
    against: str
    overall: dict[str, Any]
    per_rater: pd.DataFrame
    agreement: pd.DataFrame

    @property
    def mean_kappa(self) -> float:
        """Mean Cohen's kappa over the pairs of raters (Light's kappa for three or more); NaN without any."""
        kappas = self.agreement["kappa"].dropna() if not self.agreement.empty else pd.Series(dtype=float)
        return float(kappas.mean()) if len(kappas) else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "evaluation_id": self.evaluation_id, "against": self.against,
                "overall": self.overall, "per_rater": self.per_rater.to_dict(orient="records"),
                "agreement": self.agreement.to_dict(orient="records"), "mean_kappa": self.mean_kappa}


def results(task: Task, resamples: int = 10_000, seed: int = 0) -> Results:
    """The task's comparison summed up from its ratings.jsonl (see Results)."""
    return summarize(read(task.path), task.against, task.run_id, task.evaluation_id, len(task.pairs),
                     resamples, seed)


def summarize(records: list[dict[str, Any]], against: str, run_id: str, evaluation_id: str, of_examples: int,
              resamples: int = 10_000, seed: int = 0) -> Results:
    """Results of one comparison from ratings (`read`'s records) of an evaluation of `of_examples` examples."""
    frame = latest(records, against)
    frame = frame.assign(score=_score(frame["preferred"]))
    per_example = frame.groupby("example_id")["score"].mean()
    rows = []
    for rater, part in frame.groupby("rater", sort=True):
        rows.append({"rater": rater, **_win_row(part, part.set_index("example_id")["score"], resamples, seed)})
    per_rater = pd.DataFrame(rows, columns=["rater", "examples", "ratings", "wins", "ties", "losses", "win_rate",
                                            "low", "high"])
    return Results(run_id, evaluation_id, against,
                   {"raters": int(frame["rater"].nunique()), "of_examples": of_examples,
                    **_win_row(frame, per_example, resamples, seed)},
                   per_rater, agreement(frame))


def summaries(run: runs.Run) -> list[Results]:
    """Every comparison rated in the run's latest finished evaluation (report.md); [] without ratings."""
    evaluation = run.evaluation()
    if evaluation is None or not (evaluation.path / RATINGS_FILE).is_file():
        return []
    records = read(evaluation.path / RATINGS_FILE)
    examples = len(read_predictions(evaluation.path))
    return [summarize(records, against, run.id, evaluation.id, examples)
            for against in dict.fromkeys(r["against"] for r in records if r.get("against"))]


def preference_pairs(task: Task) -> list[dict[str, Any]]:
    """The task's ratings as preference pairs in TRL's conversational format: `prompt` (the Easy
    prompt's system and user messages, as in training), `chosen` and `rejected` (one assistant
    message each), with where each came from. The preferred answer over the other (ties give
    none); a corrected answer over both answers (a correction equal to an answer adds nothing)."""
    out = []
    for r in latest(read(task.path), task.against).itertuples(index=False):
        texts = {r.a: r.a_text, r.b: r.b_text}
        candidates = []
        if r.preferred in texts:
            other = r.b if r.preferred == r.a else r.a
            candidates.append((r.preferred, texts[r.preferred], other, texts[other]))
        correction = (r.correction or "").strip()
        if correction:
            candidates += [("correction", correction, source, texts[source]) for source in (r.a, r.b)]
        prompt = prompts.build_messages(task.pair(r.example_id).original)
        for chosen_from, chosen, rejected_from, rejected in candidates:
            if chosen.strip() == rejected.strip():
                continue
            out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}], "id": r.example_id,
                        "rater": r.rater, "chosen_from": chosen_from, "rejected_from": rejected_from,
                        "run_id": task.run_id, "evaluation_id": task.evaluation_id})
    return out


def export_pairs(task: Task, path: Path) -> tuple[Path, int]:
    """`preference_pairs` written as JSONL to `path` (atomically); (path, how many)."""
    pairs = preference_pairs(task)
    text = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    return atomic_write_text(Path(path), text), len(pairs)
