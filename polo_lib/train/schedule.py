"""The schedule of a run (Plan): its steps, evaluation and save cadence, warmup and early stopping."""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import ParamsError


@dataclass(frozen=True)
class Plan:
    """How many optimizer steps a run takes and when it evaluates and saves, from the prepared data.

    `eval_steps` / `save_steps` may be numbers, `epoch` (once per epoch) or `auto` (about ten
    evaluations over the run, at least one per epoch); here they are resolved to steps.
    """
    train_examples: int
    steps_per_epoch: int
    total_steps: int
    eval_steps: int
    save_steps: int
    patience: int  # what this run uses: 0 where the file's patience gave way to a short run (notes)
    warmup_asked: float = 0.0
    warmup_steps: int = 0
    scheduler: str = "linear"
    patience_asked: int = 0
    notes: tuple[str, ...] = ()  # what gave way to the run length the user asked for, and why

    @property
    def evaluations(self) -> int:
        """Evaluations during training (the step-0 baseline not counted)."""
        return self.total_steps // self.eval_steps

    @property
    def eval_at(self) -> list[int]:
        return list(range(self.eval_steps, self.total_steps + 1, self.eval_steps))

    def problems(self) -> list[str]:
        """Why this schedule cannot do what the params ask, with the numbers; [] when it can."""
        how = (f"{self.train_examples} training examples / batch x accumulation = {self.steps_per_epoch} "
               f"steps per epoch; {self.total_steps} steps planned")
        if self.eval_steps > self.total_steps:
            return [f"training.eval_steps ({self.eval_steps}) is more than the {self.total_steps} steps this run "
                    f"trains ({how}): it would never evaluate. Use eval_steps: epoch ({self.steps_per_epoch}) "
                    f"or auto, or a number up to {self.total_steps} (and save_steps the same)."]
        needed = self.patience + 2
        if self.patience and self.evaluations < needed:
            return [f"early stopping (patience {self.patience}) needs at least {needed} evaluations to act, but "
                    f"eval_steps {self.eval_steps} over {self.total_steps} steps gives {self.evaluations} ({how}). "
                    f"Lower training.eval_steps and save_steps (auto or a number up to "
                    f"{self.total_steps // needed or 1}), train longer, or set early_stopping_patience: 0."]
        return []

    def warnings(self) -> list[str]:
        """What works but is probably not meant, and what gave way to the run length asked for;
        preflight shows these as warnings, the notebook's plan table as notes."""
        out = list(self.notes)
        if self.scheduler != "constant" and self.warmup_steps and self.warmup_steps * 4 >= self.total_steps:
            out.append(f"warmup is {self.warmup_steps} of {self.total_steps} steps (training.warmup_steps "
                       f"{self.warmup_asked:g}): a quarter of the run or more climbs to the learning rate; "
                       "lower warmup_steps (0.05 is a common choice) or train longer.")
        return out

    def check(self) -> Plan:
        if problems := self.problems():
            raise ParamsError(" ".join(problems))
        return self

    def table(self) -> pd.DataFrame:
        shown = self.eval_at if len(self.eval_at) <= 12 else [*self.eval_at[:10], "...", self.eval_at[-1]]
        rows = [("training examples", self.train_examples), ("steps per epoch", self.steps_per_epoch),
                ("steps planned", self.total_steps),
                ("eval_steps / save_steps", f"{self.eval_steps} / {self.save_steps}"),
                ("evaluations at steps", ", ".join(map(str, shown)) or "none"),
                ("warmup steps", self._warmup_text()),
                ("early stopping", self.early_stopping_text()),
                *[("note", n) for n in self.notes]]
        return pd.DataFrame(rows, columns=["plan", "value"]).set_index("plan")

    def early_stopping_text(self) -> str:
        if self.patience:
            return f"patience {self.patience}"
        if self.patience_asked:
            return f"off for this run (patience {self.patience_asked} asked: too few evaluations, see the note)"
        return "off"

    def record(self) -> dict[str, Any]:
        """What the run's manifest keeps of the plan (training.plan): the schedule as trained."""
        return {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                "eval_steps": self.eval_steps, "save_steps": self.save_steps, "evaluations": self.evaluations,
                "early_stopping_patience": self.patience, "early_stopping_patience_asked": self.patience_asked,
                "warmup_steps": self.warmup_steps, "notes": list(self.notes)}

    def _warmup_text(self) -> str:
        if self.warmup_asked and not self.warmup_steps and self.total_steps < SHORT_RUN_STEPS:
            return (f"0 (asked {self.warmup_asked:g}; a run under {SHORT_RUN_STEPS} steps trains every step "
                    "at its learning rate)")
        return str(self.warmup_steps)

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return str(self.table())


# transformers' warmup multiplies the learning rate by step / warmup: the first optimizer step of
# any warmup trains at learning rate 0. In a long run that is one step of thousands; in a 4-step
# run it is a quarter of the training (three learning rates in a 2-step queue gave the same loss).
SHORT_RUN_STEPS = 20


def resolve_warmup(asked: float, total_steps: int) -> int:
    """`training.warmup_steps` as optimizer steps: a number >= 1 is steps, below 1 a fraction of
    the run, rounded down (transformers rounds up); a run under SHORT_RUN_STEPS steps gets none,
    so each of its few steps trains at the learning rate asked for."""
    if total_steps < SHORT_RUN_STEPS:
        return 0
    return min(total_steps, int(asked) if asked >= 1 else math.floor(asked * total_steps))


# Keys that set how long a run trains, and the schedule sized for it (params' dotted names).
LENGTH_KEYS = {"training.max_steps", "training.num_train_epochs"}
CADENCE_KEYS = {"training.eval_steps", "training.save_steps"}
PATIENCE_KEY = "training.early_stopping_patience"


def plan(training, n_train: int, overridden: Collection[str] = ()) -> Plan:
    """Resolve the step counts of a run: a pure function of the training params, the data size
    and which keys were set on top of the params file (`Params.overridden`).

    A params file's cadence and patience are sized for the file's run length. When the user
    shortens the run (max_steps, or epochs where max_steps is off) for a quick look, they give way
    for this run, said in `notes`: a numeric cadence longer than the run becomes `auto`, and a
    patience with too few evaluations to act is turned off (training goes on to the last step).
    A cadence or patience the user set themselves never gives way: `problems` refuses it.
    """
    t = training
    per_epoch = max(1, math.ceil(math.ceil(n_train / t.per_device_train_batch_size) / t.gradient_accumulation_steps))
    total = t.max_steps if t.max_steps > 0 else math.ceil(per_epoch * t.num_train_epochs)

    def resolve(value) -> int:
        if value == "epoch":
            return per_epoch
        if value == "auto":  # ~10 evaluations, at least one per epoch
            return max(1, min(per_epoch, math.ceil(total / 10)))
        return int(value)

    user = set(overridden)
    length_key = "training.max_steps" if t.max_steps > 0 else "training.num_train_epochs"
    length = f"max_steps {total}" if t.max_steps > 0 else f"{t.num_train_epochs:g} epoch(s) = {total} steps"
    shortened = length_key in user
    steps = {"eval_steps": resolve(t.eval_steps), "save_steps": resolve(t.save_steps)}
    notes = []
    if shortened and not user & CADENCE_KEYS:
        for key, value in steps.items():
            if value > total:
                steps[key] = resolve("auto")
                notes.append(f"training.{key} {value} (the params file's) is more than the {total} steps asked "
                             f"for ({length}): every {steps[key]} step(s) (auto) in this run.")
    patience = t.early_stopping_patience
    evaluations, needed = total // steps["eval_steps"], patience + 2
    if patience and evaluations < needed and shortened and not user & (CADENCE_KEYS | {PATIENCE_KEY}):
        notes.append(f"early stopping off for this run: patience {patience} (the params file's) needs at least "
                     f"{needed} evaluations to act, and {length} with eval_steps {steps['eval_steps']} gives "
                     f"{evaluations}. All {total} steps train and the last step's adapter is kept; for early stopping, "
                     "train longer.")
        patience = 0
    return Plan(n_train, per_epoch, total, steps["eval_steps"], steps["save_steps"], patience,
                warmup_asked=t.warmup_steps, warmup_steps=resolve_warmup(t.warmup_steps, total),
                scheduler=t.lr_scheduler_type, patience_asked=t.early_stopping_patience, notes=tuple(notes))
