"""Task metrics at each evaluation during training (`evaluation.during_training`).

Eval loss and task quality can part ways (on the CPU demo eval loss falls while chrF and glossary
coverage fall too), so a fixed sample of validation examples (the first N, in turn from each paper)
is answered greedily at every evaluation and scored with the cheap task metrics
(`metrics.during_training`: chrF, SARI, glossary coverage, Hangul share). The scores join eval_loss
in the trainer's own metrics, so train_log.csv, TensorBoard, trackers, the live chart, early
stopping (`training.early_stopping_metric`) and a sweep's pruner all see them; the answers go to
logs/task_samples.jsonl, one line per evaluation.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics, registry
from .errors import DataError
from .registry import greater_is_better  # noqa: F401 - the direction of an early-stopping metric


def log_keys() -> tuple[str, ...]:
    """The keys the trainer logs at each evaluation (eval_chrf, ...: the registry's metrics scored during
    training), and what one evaluation's scoring cost (eval_task_seconds)."""
    return (*(m.log_key for m in registry.during_training()), "eval_task_seconds")


def metric_key(name: str) -> str:
    """The trainer's metric for an early_stopping_metric name: eval_loss, eval_chrf, ..."""
    return name if name.startswith("eval_") else f"eval_{name}"


@dataclass
class TaskScorer:
    """Answers the sample and scores it; each call is one evaluation."""
    lm: Any
    ids: list[str]
    sources: list[str]
    references: list[str]
    chats: list[list[dict[str, str]]]
    max_new_tokens: int
    glossary: list
    samples_path: Path | None = None

    def __call__(self, step: int) -> dict[str, float]:
        from .inference import generate

        start = time.perf_counter()
        answers = [g.text for g in generate(self.lm, self.chats, max_new_tokens=self.max_new_tokens,
                                            batch_size=len(self.chats), progress=f"task metrics at step {step}")]
        scores = metrics.during_training(self.sources, answers, self.references, self.glossary)
        scores["task_seconds"] = round(time.perf_counter() - start, 2)
        if self.samples_path is not None:
            line = {"step": step, **scores, "answers": dict(zip(self.ids, answers))}
            with self.samples_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        return scores


def sample_indices(papers: list[str], n: int) -> list[int]:
    """Which validation examples are scored: the first n, taken in turn from each paper (in the
    order the papers first appear), so a run on several papers watches all of them; with one
    paper, simply the first n. Pure: table-tested."""
    by_paper: dict[str, list[int]] = {}
    for i, paper in enumerate(papers):
        by_paper.setdefault(paper, []).append(i)
    queues, chosen = list(by_paper.values()), []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def scorer(lm, validation, cfg, samples_path: Path | None = None) -> TaskScorer | None:
    """The scorer for these params, or None when evaluation.during_training is 0.

    Refused before training when early stopping follows glossary coverage and no sample source
    holds a glossary term (the metric would be NaN at every evaluation and stop nothing)."""
    from .inference import chats_of

    n = cfg.evaluation.during_training
    if not n:
        return None
    papers = validation["paper"] if "paper" in validation.column_names else [""] * len(validation)
    rows = validation.select(sample_indices(list(papers), n))
    glossary = metrics.load_glossary()
    sources = list(rows["original"])
    if cfg.training.early_stopping_metric == "term_coverage" and \
            not any(metrics.english_term_spans(s, glossary) for s in sources):
        raise DataError(f"training.early_stopping_metric is term_coverage, but none of the {len(rows)} validation "
                        "example(s) scored during training holds a glossary term (data/glossary.yaml), so it would "
                        "be NaN at every evaluation: raise evaluation.during_training, add the terms to the "
                        "glossary, or stop on chrf or eval_loss.")
    return TaskScorer(lm, list(rows["id"]), sources, list(rows["simplified"]), chats_of(rows),
                      cfg.evaluation.during_training_max_new_tokens, glossary, samples_path)


def attach(trainer, score: TaskScorer) -> None:
    """Score at every evaluation: the trainer's evaluation loop returns the task metrics with its
    loss, before the trainer logs them and before early stopping and the best-checkpoint choice
    read them."""
    loop = trainer.evaluation_loop

    def evaluation_loop(*args, **kwargs):
        output = loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        output.metrics.update({f"{prefix}_{k}": v for k, v in score(trainer.state.global_step).items()})
        return output

    trainer.evaluation_loop = evaluation_loop
