"""What is judged: the tuned answers of a run's latest finished evaluation against base or another run's."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import runs, stats
from ..errors import RunError
from .settings import BASE, JUDGE_FILE, TUNED


@dataclass(frozen=True)
class Pairs:
    """What is judged: the examples of one evaluation of `run_id`, its tuned answers against
    `against` ("base", or another run's id, whose evaluation `against_evaluation` has the same examples)."""
    run_id: str
    evaluation_id: str
    folder: Path
    against: str
    against_evaluation: str | None
    examples: tuple[dict[str, str], ...]  # id, original, tuned, other

    @property
    def path(self) -> Path:
        return self.folder / JUDGE_FILE


def _finished_evaluation(run: runs.Run):
    evaluation = run.evaluation()
    if evaluation is None:
        raise RunError(f"run {run.id} has no finished evaluation, so there are no answers to judge: evaluate it "
                       f"first (polo run {run.id} --stages evaluate, or notebooks/evaluate.ipynb).")
    path = evaluation.path / "predictions.jsonl"
    if not path.is_file():
        raise RunError(f"{path} does not exist: evaluation {evaluation.id} wrote no answers; evaluate the run again.")
    frame = pd.read_json(path, lines=True, dtype={"id": str})
    missing = {"id", "original", TUNED, BASE} - set(frame.columns)
    if missing or frame.empty:
        raise RunError(f"{path} {'lacks ' + ', '.join(sorted(missing)) if missing else 'is empty'}: evaluate the "
                       "run again to judge it.")
    return evaluation, frame


def load_pairs(run: runs.Run, against: runs.Run | None = None) -> Pairs:
    """The run's latest finished evaluation: tuned vs base, or vs the tuned answers of the `against`
    run's latest finished evaluation, which must hold the same examples (ids and source texts)."""
    evaluation, frame = _finished_evaluation(run)
    other_name, other_eval = BASE, None
    others = dict(zip(frame["id"], frame[BASE].astype(str)))
    if against is not None:
        if against.id == run.id:
            raise RunError(f"--against names run {run.id} itself: give another run, or leave --against out to judge "
                           "tuned vs base.")
        other_evaluation, other = _finished_evaluation(against)
        why = stats.same_examples(frame, other)
        if why:
            raise RunError(f"runs {run.id} (evaluation {evaluation.id}) and {against.id} (evaluation "
                           f"{other_evaluation.id}) were evaluated on different examples ({why}): evaluate both on "
                           "the same split and limit to judge their answers side by side.")
        other_name, other_eval = against.id, other_evaluation.id
        others = dict(zip(other["id"], other[TUNED].astype(str)))
    examples = tuple({"id": str(r.id), "original": str(r.original), "tuned": str(r.tuned), "other": others[r.id]}
                     for r in frame.itertuples(index=False))
    return Pairs(run.id, evaluation.id, evaluation.path, other_name, other_eval, examples)
