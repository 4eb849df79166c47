"""Supervised fine-tuning with TRL's SFTTrainer (patched by Unsloth), on the answers only.

The pieces a notebook calls, in order: `build(lm, dataset, cfg, run)` derives the chat
markers, checks every example keeps answer tokens and returns a `Session`; `sample` shows
generations; `fit(session)` trains (live loss chart, CSV + TensorBoard logs, checkpoints,
early stopping, resume); `finish(session)` saves the adapter and the loss plot.
"""
from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import device as device_lib
from . import model as model_lib
from . import plots, progress, registry, task_eval, trackers
from .atomic import atomic_write_text
from .errors import DataError, ModelError, ParamsError, RunError
from .inference import merge_to_16bit
from .notebook import in_notebook, readable, say
from .unsloth_first import without_lines

log = logging.getLogger(__name__)

# What Unsloth's train_on_responses_only prints for each split (see build)
DROPPING_COLUMNS = "Unsloth: Dropping columns the model is not fed"
# tokens_seen: answer and prompt tokens (not padding) trained on so far, from the trainer's state
LOG_COLUMNS = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "tokens_seen"]


# ------------------------------------------------------------------ markers

@dataclass(frozen=True)
class Markers:
    """Text that opens a user turn and an assistant turn in this tokenizer's chat template."""
    instruction: str
    response: str


_SENTINELS = ("QQQ_SYSTEM_111", "QQQ_USER_222", "QQQ_ASSISTANT_333", "QQQ_USER_444")


def derive_markers(tokenizer) -> Markers:
    """Render a sample conversation with the tokenizer's own template and read the markers off it.

    response = what stands between the end of a user turn and an assistant answer;
    instruction = what stands between the end of an assistant turn and the next user message.
    Never hard-coded per model: a wrong marker masks every label and training "works" at loss 0.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"tokenizer '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template: "
                         "use an instruct/chat model, or set tokenizer.chat_template.")
    s, u1, a1, u2 = _SENTINELS

    def render(messages, add_generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    system = {"role": "system", "content": s}
    try:
        one_turn = render([system, {"role": "user", "content": u1}])
        with_answer = render([system, {"role": "user", "content": u1}, {"role": "assistant", "content": a1}])
        two_turns = render([system, {"role": "user", "content": u1}, {"role": "assistant", "content": a1},
                            {"role": "user", "content": u2}])
        prompt = render([system, {"role": "user", "content": u1}], add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - templates raise their own errors (e.g. role alternation)
        raise ModelError(f"the chat template cannot render system/user/assistant turns: {e}") from None
    user_end = one_turn[one_turn.index(u1) + len(u1):]
    between_ua = with_answer[with_answer.index(u1) + len(u1):with_answer.index(a1)]
    response = between_ua[len(user_end):] if between_ua.startswith(user_end) else between_ua
    generation = prompt[len(one_turn):] if prompt.startswith(one_turn) else ""
    answer_end = with_answer[with_answer.index(a1) + len(a1):]
    between_au = two_turns[two_turns.index(a1) + len(a1):two_turns.index(u2)]
    closing = answer_end.rstrip("\n")
    instruction = between_au[len(closing):] if between_au.startswith(closing) else between_au
    instruction = instruction.lstrip("\n") if instruction.strip() else instruction
    if generation.strip() and generation.strip() != response.strip():
        response = generation  # the generation prompt is what inference will see: trust it
    if not response.strip() or not instruction.strip():
        raise ModelError(f"could not derive the chat markers from the template "
                         f"(instruction={instruction!r}, response={response!r}): it has no visible "
                         "user/assistant headers, so answer-only training cannot find the answers.")
    return Markers(instruction=instruction, response=response)


def label_counts(examples, tokenizer, markers: Markers) -> list[int]:
    """Answer tokens kept per example after response-only masking, by Unsloth's own masker."""
    from unsloth.chat_templates import train_on_responses_only

    masker = train_on_responses_only(None, instruction_part=markers.instruction, response_part=markers.response,
                                     tokenizer=tokenizer, return_function=True)
    ids = [tokenizer(tokenizer.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"]
           for m in examples["messages"]]
    labels = masker({"input_ids": ids})["labels"]
    return [sum(1 for x in row if x != -100) for row in labels]


def check_labels(split: str, ids: list[str], counts: list[int], markers: Markers) -> None:
    """Fail naming every example that would train on nothing (a marker mismatch)."""
    empty = [i for i, n in zip(ids, counts) if n == 0]
    if empty:
        raise DataError(
            f"{len(empty)} of {len(ids)} {split} example(s) keep no answer token after response-only "
            f"masking: {', '.join(empty)}. The markers {markers.instruction!r} / {markers.response!r} "
            "do not match how these examples are rendered; check the tokenizer's chat template.")


# ------------------------------------------------------------------- config

def sft_config(cfg, run, decisions, plan: Plan):
    """SFTConfig from the params (TRL field names), precision and optimizer from `device.decide`,
    evaluation and save cadence from the plan (auto / epoch resolved to steps)."""
    from trl import SFTConfig

    t = cfg.training
    early = plan.patience > 0  # the plan's: the file's patience may be off for a short run
    return SFTConfig(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate, warmup_steps=plan.warmup_steps, lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        optim=decisions.optim, fp16=decisions.fp16, bf16=decisions.bf16, use_cpu=decisions.use_cpu,
        logging_steps=t.logging_steps, logging_first_step=True,
        eval_strategy="steps", eval_steps=plan.eval_steps,
        save_strategy="steps", save_steps=plan.save_steps, save_total_limit=t.save_total_limit,
        load_best_model_at_end=early, metric_for_best_model=task_eval.metric_key(t.early_stopping_metric),
        greater_is_better=task_eval.greater_is_better(t.early_stopping_metric),
        seed=t.seed, data_seed=t.seed, max_length=cfg.model.max_seq_length,
        include_num_input_tokens_seen="non_padding",
        # TensorBoard is our own callback writing into the run's logs/; the other trackers TRL's
        report_to=trackers.trainer_report_to(t.report_to, run), run_name=run.id, project=trackers.PROJECT,
        dataset_num_proc=None, packing=False, disable_tqdm=False,
    )


# ------------------------------------------------------------------ logging

class _LogRecorder:
    """Collects trainer logs into rows: CSV (atomically rewritten) and the live chart."""

    def __init__(self, csv_path: Path, live: bool, keep_until_step: int = 0, total_steps: int = 0):
        self.csv_path = csv_path
        self.total_steps = total_steps  # the plan's: the trainer's max_steps is 0 at the step-0 evaluation
        self.rows: list[dict[str, Any]] = []
        if keep_until_step and csv_path.exists():  # resuming: keep what the checkpoint covers
            self.rows = [r for r in read_train_log(csv_path).to_dict("records") if r["step"] <= keep_until_step]
        self.live = live
        self.handle = None
        self._last = None  # (time, tokens) at the previous training log
        self.latest: dict[str, Any] = {}  # last loss, eval_loss and tokens/s, for the progress file

    def on_log(self, state, logs: dict[str, Any]) -> None:
        now = time.perf_counter()
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            rate = None
            if self._last and now > self._last[0] and tokens > self._last[1]:
                rate = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
            row.update(loss=logs["loss"], learning_rate=logs.get("learning_rate"),
                       grad_norm=logs.get("grad_norm"), tokens_per_s=rate and round(rate, 1), tokens_seen=tokens)
        elif "eval_loss" in logs:
            row.update(eval_loss=logs["eval_loss"], **{k: logs[k] for k in task_eval.log_keys() if k in logs})
        else:
            return
        self.rows.append(row)
        self.write()
        self.latest.update({k: row[k] for k in ("loss", "tokens_per_s") if row.get(k) is not None})
        if row.get("eval_loss") is not None:
            self.latest.update(eval_loss=row["eval_loss"], eval_step=row["step"],
                               **{k: row[k] for k in task_eval.log_keys() if k in row})
        progress.write(self.csv_path.parent, stage="train", done=state.global_step,
                       total=state.max_steps or self.total_steps, epoch=row["epoch"], **self.latest)
        if self.live:
            self.redraw()

    def frame(self) -> pd.DataFrame:
        """The log so far; the task metrics' columns when they were scored (evaluation.during_training)."""
        task = [k for k in task_eval.log_keys() if any(k in r for r in self.rows)]
        return pd.DataFrame(self.rows, columns=LOG_COLUMNS + task)

    def write(self) -> None:
        buf = io.StringIO()
        self.frame().to_csv(buf, index=False)
        atomic_write_text(self.csv_path, buf.getvalue())

    def redraw(self) -> None:
        """One figure updated in place (IPython display handle), not one figure per step."""
        from IPython.display import display

        fig = plots.loss_curve(self.frame())
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)


def read_train_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if Path(path).exists() else pd.DataFrame(columns=LOG_COLUMNS)


class _WithoutMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# transformers 5.17 orders checkpoints for rotation by mtime and, when two were saved less than a second
# apart (fast steps of a small model, on any disk), warns "mtime may not be reliable on this filesystem"
# and orders them by step number instead: what numbered checkpoints want anyway. Red noise in a notebook.
_MTIME_NOISE = _WithoutMessage("mtime may not be reliable on this filesystem")


def _quiet_checkpoint_ordering() -> None:
    logger = logging.getLogger("transformers.trainer_utils")
    if _MTIME_NOISE not in logger.filters:
        logger.addFilter(_MTIME_NOISE)


def _callbacks(recorder: _LogRecorder, cfg, run, patience: int):
    from torch.utils.tensorboard import SummaryWriter
    from transformers import EarlyStoppingCallback, TrainerCallback
    from transformers.integrations import TensorBoardCallback

    class RecorderCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                recorder.on_log(state, logs)

    callbacks = [RecorderCallback()]
    if "tensorboard" in cfg.training.report_to:
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.logs / "tensorboard"))))
    if patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience,
                                               early_stopping_threshold=cfg.training.early_stopping_threshold))
    return callbacks


# ------------------------------------------------------------------- resume

def _valid_checkpoint(path: Path) -> bool:
    return (path / "trainer_state.json").is_file()


def checkpoints(run) -> list[Path]:
    """Checkpoints of a run, oldest first (by step number)."""
    found = [p for p in run.checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(run, resume: str) -> Path | None:
    """'auto': the latest good checkpoint of this run (skipping damaged ones, with a warning) or
    none; 'never': start fresh, refused if the run already has checkpoints; else a checkpoint path."""
    existing = checkpoints(run)
    if resume == "never":
        if existing:
            raise RunError(f"run {run.id} already has checkpoints ({', '.join(p.name for p in existing)}); "
                           "starting it fresh would mix two trainings in one folder. Start a new run ("
                           + say("leave out --run-id", "run_id = None") + ") or continue this one with "
                           + say("--set run.resume=auto", "resume='auto'") + ".")
        return None
    if resume == "auto":
        for p in reversed(existing):
            if _valid_checkpoint(p):
                return p
            log.warning("checkpoint %s is damaged (no trainer_state.json); trying the one before it", p)
        if existing:
            raise RunError(f"run {run.id}: every checkpoint is damaged (no trainer_state.json in "
                           f"{', '.join(p.name for p in existing)}). Start a new run, or delete them and "
                           "resume='never'.")
        return None
    path = Path(resume).expanduser()
    if not path.is_absolute():
        path = run.checkpoints / resume
    if not path.is_dir() or not _valid_checkpoint(path):
        raise RunError(f"resume='{resume}': {path} is not a checkpoint (a folder with trainer_state.json). "
                       f"This run has: {', '.join(p.name for p in existing) or 'none'}.")
    return path


# --------------------------------------------------------------------- plan

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


# ------------------------------------------------------------------ session

def relocated(best: str | None, checkpoints_dir: Path) -> str | None:
    """Where the best checkpoint is now: the same name in `checkpoints_dir` (pure, table-tested).
    A run folder that moved (outputs/ on Google Drive, mounted again by a new Colab runtime; a
    copy on another machine) keeps the old absolute path in its checkpoints' trainer_state.json."""
    return None if not best else str(Path(checkpoints_dir) / Path(best).name)


def relocate_checkpoint(checkpoint: Path, checkpoints_dir: Path) -> str | None:
    """Point the checkpoint's best_model_checkpoint at this run folder before resuming from it;
    else the trainer cannot find the best model at the end (it only warns, and keeps the last)
    nor keep it from checkpoint rotation. Returns the best checkpoint's path."""
    import json

    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text(encoding="utf-8"))
    best = relocated(state.get("best_model_checkpoint"), checkpoints_dir)
    if best != state.get("best_model_checkpoint"):
        log.info("run folder moved: best checkpoint %s is now %s", state["best_model_checkpoint"], best)
        state["best_model_checkpoint"] = best
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")
    return best


@dataclass
class Session:
    """A trainer ready to run, and what was checked on the way."""
    trainer: Any
    lm: Any
    cfg: Any
    run: Any
    markers: Markers
    recorder: _LogRecorder
    resume_from: Path | None
    checks: pd.DataFrame
    plan: Plan | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        return self.checks._repr_html_()


def check_trainer(args, decisions) -> None:
    """The trainer's arguments against the decisions: the optimizer and mixed precision it will build
    are the decided ones (TRL or Unsloth changing them would make the manifest wrong); ModelError if not."""
    optim = getattr(args.optim, "value", args.optim)
    built = {"optimizer": optim, "fp16": bool(args.fp16), "bf16": bool(args.bf16)}
    decided = {"optimizer": decisions.optim, "fp16": decisions.fp16, "bf16": decisions.bf16}
    wrong = [f"{k}: {built[k]} built, {decided[k]} decided" for k in built if built[k] != decided[k]]
    if wrong:
        raise ModelError("the trainer does not run as decided for this machine (" + "; ".join(wrong) + "): "
                         "set training.optim and model.dtype explicitly, or report this as a bug.")


def _precision_name(args) -> str:
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def build(lm, dataset, cfg, run, live: bool | None = None, callbacks: list | None = None) -> Session:
    """SFTTrainer on the train split, evaluated on validation, loss on answers only.

    Fails before training when the chat markers are missing, when any example would keep
    no answer token, or when resuming is impossible.
    """
    from trl import SFTTrainer
    from unsloth.chat_templates import train_on_responses_only

    decisions = lm.decisions or device_lib.decide_for(cfg)  # the load's own: decided once
    resume_from = resolve_resume(run, cfg.run.resume)
    if resume_from is not None and resume_from.resolve().parent == run.checkpoints.resolve():  # this run's own
        relocate_checkpoint(resume_from, run.checkpoints)
    markers = derive_markers(lm.tokenizer)
    train_ds, eval_ds = dataset["train"], dataset["validation"]
    schedule = plan(cfg.training, len(train_ds), cfg.overridden).check()
    counts = {}
    for split, ds in (("train", train_ds), ("validation", eval_ds)):
        counts[split] = label_counts(ds, lm.tokenizer, markers)
        check_labels(split, ds["id"], counts[split], markers)
    score = task_eval.scorer(lm, eval_ds, cfg, samples_path=run.logs / "task_samples.jsonl")
    keep = ["messages"]
    _quiet_checkpoint_ordering()
    trainer = SFTTrainer(
        model=lm.model, processing_class=lm.tokenizer, args=sft_config(cfg, run, decisions, schedule),
        train_dataset=train_ds.select_columns(keep), eval_dataset=eval_ds.select_columns(keep))
    # It drops the `messages` column from both splits once tokenized, saying so once per split: the
    # model is fed the tokens, as it should be, and the user has nothing to do about it
    with without_lines(DROPPING_COLUMNS):
        trainer = train_on_responses_only(trainer, instruction_part=markers.instruction,
                                          response_part=markers.response)
    if len(trainer.train_dataset) != len(train_ds):  # TRL drops fully masked examples by itself
        raise DataError(f"the trainer kept {len(trainer.train_dataset)} of {len(train_ds)} training examples "
                        "after masking; some would train on nothing. Check the chat markers.")
    check_trainer(trainer.args, decisions)
    if score is not None:
        task_eval.attach(trainer, score)
    if live is None:
        live = in_notebook()
    step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    recorder = _LogRecorder(run.logs / "train_log.csv", live=live, keep_until_step=step,
                            total_steps=schedule.total_steps)
    for cb in _callbacks(recorder, cfg, run, schedule.patience) + list(callbacks or []):
        trainer.add_callback(cb)
    checks = pd.DataFrame([
        {"check": "instruction marker", "value": repr(markers.instruction)},
        {"check": "response marker", "value": repr(markers.response)},
        {"check": "train examples / min answer tokens", "value": f"{len(train_ds)} / {min(counts['train'])}"},
        {"check": "validation examples / min answer tokens", "value": f"{len(eval_ds)} / {min(counts['validation'])}"},
        {"check": "steps planned", "value": str(schedule.total_steps)},
        {"check": "evaluate / save every", "value": f"{schedule.eval_steps} / {schedule.save_steps} steps "
                                                    f"({schedule.evaluations} evaluations)"},
        {"check": "early stopping", "value": schedule.early_stopping_text()},
        *[{"check": "note", "value": n} for n in schedule.notes],
        {"check": "task metrics at each evaluation",
         "value": f"{len(score.ids)} validation example(s), up to {score.max_new_tokens} new tokens; early stopping "
                  f"on {task_eval.metric_key(cfg.training.early_stopping_metric)}" if score else "off"},
        {"check": "optimizer / precision", "value": f"{getattr(trainer.args.optim, 'value', trainer.args.optim)} / "
                                                    f"{_precision_name(trainer.args)}"},
        {"check": "resume from", "value": str(resume_from.name) if resume_from else "fresh start"},
    ]).set_index("check")
    run.update_manifest(training={"plan": schedule.record()})  # the schedule as trained, notes included
    return Session(trainer, lm, cfg, run, markers, recorder, resume_from, checks, schedule)


def fit(session: Session):
    """Train (resuming when the session says so); returns the headline figures as a table to read
    (figures_table: a time figure says what it measures)."""
    run, trainer = session.run, session.trainer
    start = time.perf_counter()
    run.update_manifest(training={"status": "running", "resume_from": str(session.resume_from or "")})
    baseline = 0.0
    try:
        if session.resume_from is None:
            trainer.evaluate()  # eval_loss at step 0: the base model's, so "did it improve" has a baseline
            baseline = time.perf_counter() - start
        trainer.train(resume_from_checkpoint=str(session.resume_from) if session.resume_from else None)
    except device_lib.out_of_memory_errors() as e:
        raise _out_of_memory(session, e) from None
    seconds = time.perf_counter() - start
    state = trainer.state
    log_df = session.recorder.frame()
    losses = log_df["loss"].dropna()
    evals = log_df["eval_loss"].dropna()
    early = [cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "EarlyStoppingCallback"]
    stopped_early = bool(early) and state.global_step < state.max_steps and \
        early[0].early_stopping_patience_counter >= early[0].early_stopping_patience
    rates = log_df["tokens_per_s"].dropna()
    counts = model_lib.parameter_table(session.lm.model)
    session.result = {
        "trainable_params": int(counts.loc["trainable", "parameters"]),
        "total_params": int(counts.loc["total", "parameters"]),
        "trainable_%": float(counts.loc["trainable", "share_%"]),
        "steps": state.global_step, "max_steps": state.max_steps, "epochs": round(state.epoch or 0, 3),
        "loss_first": float(losses.iloc[0]) if len(losses) else None,
        "loss_last": float(losses.iloc[-1]) if len(losses) else None,
        "eval_loss_first": float(evals.iloc[0]) if len(evals) else None,
        "eval_loss_best": _best_eval_loss(log_df),
        "early_stopping_metric": task_eval.metric_key(session.cfg.training.early_stopping_metric),
        "best_metric": float(state.best_metric) if state.best_metric is not None else None,
        "task_metrics": _task_figures(log_df),
        "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
        "early_stopped": stopped_early,
        "early_stopped_at_step": state.global_step if stopped_early else None,
        "early_stopping_patience": session.plan.patience if session.plan else None,
        "plan_notes": list(session.plan.notes) if session.plan else [],
        "tokens_per_s": round(float(rates.median()), 1) if len(rates) else None,
        "train_seconds": round(seconds, 1), "baseline_eval_seconds": round(baseline, 1),
        "resumed_from": session.resume_from.name if session.resume_from else None,
    }
    run.update_manifest(training={"status": "finished", **session.result})
    return readable(figures_table(session.result))


# What each time figure of a training measures: fit's table and report.md show these words beside them.
TIME_FIGURES = {
    "train_seconds": "wall seconds of the whole training: the step-0 evaluation of the base model, then every "
                     "step with its evaluations and checkpoints",
    "baseline_eval_seconds": "of train_seconds, the step-0 evaluation of the base model (eval_loss, and the task "
                             "metrics when evaluation.during_training is on); 0 when resumed",
    # written by runs trained before baseline_eval_seconds replaced it; summaries keep it as they are
    "train_runtime": "Trainer.train's own seconds: train_seconds without the step-0 evaluation (older runs)",
}


def figures_table(figures: dict[str, Any]) -> pd.DataFrame:
    """Headline figures as a table: value, and what a time figure measures (TIME_FIGURES)."""
    table = pd.DataFrame({"value": pd.Series(figures, dtype=object)})
    table["meaning"] = [TIME_FIGURES.get(k, "") for k in table.index]
    return table


def _best_eval_loss(log_df: pd.DataFrame) -> float | None:
    """The lowest eval_loss after training began (the step-0 baseline is the base model's), or the
    baseline when training never evaluated."""
    evals = log_df.dropna(subset=["eval_loss"])
    trained = evals[evals["step"] > 0]["eval_loss"]
    values = trained if len(trained) else evals["eval_loss"]
    return float(values.min()) if len(values) else None


def _task_figures(log_df: pd.DataFrame) -> dict[str, float]:
    """The task metrics scored during training: at the first evaluation (step 0: the base model),
    the last, and the best after step 0 (in each metric's own direction)."""
    out = {}
    for metric in registry.during_training():
        name, key = metric.name, metric.log_key
        if key not in log_df:
            continue
        values = log_df.dropna(subset=[key])
        if not len(values):
            continue
        trained = values[values["step"] > 0][key]
        out[f"{name}_first"], out[f"{name}_last"] = float(values[key].iloc[0]), float(values[key].iloc[-1])
        if len(trained):
            out[f"{name}_best"] = float(trained.max() if metric.higher_is_better else trained.min())
    return out


# ------------------------------------------------------------ out of memory

@dataclass(frozen=True)
class WayOut:
    """One way out of an out-of-memory failure: what to change and whether the run can continue
    with it (only a new split of the same effective batch can; other changes need a new run)."""
    what: str
    overrides: dict[str, Any]
    continues_run: bool


def smaller_micro_batch(batch: int) -> int:
    """The largest divisor of `batch` that is at most half of it (1 for 1, 2 or 3): the micro-batch
    that keeps the effective batch whole with more accumulation."""
    return max(d for d in range(1, batch // 2 + 1) if batch % d == 0) if batch > 1 else 1


def oom_ways_out(training, lora, max_seq_length: int, longest: int | None, four_bit: bool) -> list[WayOut]:
    """The ways out of running out of memory in training, best first, from the params and whether the
    base already loaded in 4-bit (`four_bit`: then a 4-bit base is no way out)."""
    bs, ga = training.per_device_train_batch_size, training.gradient_accumulation_steps
    out = []
    if bs > 1:
        new = smaller_micro_batch(bs)
        more = ga * bs // new
        out.append(WayOut(f"a smaller micro-batch, the same effective batch of {bs * ga}: "
                          f"per_device_train_batch_size {bs} -> {new}, gradient_accumulation_steps {ga} -> {more}",
                          {"training.per_device_train_batch_size": new, "training.gradient_accumulation_steps": more},
                          continues_run=True))
    if lora.use_gradient_checkpointing == "false":
        out.append(WayOut("recompute activations instead of keeping them: lora.use_gradient_checkpointing "
                          "'unsloth' on a GPU ('true' on a CPU)", {"lora.use_gradient_checkpointing": "unsloth"},
                          continues_run=False))
    if longest and longest < max_seq_length:
        out.append(WayOut(f"a shorter sequence limit: model.max_seq_length {max_seq_length} -> {longest} (the longest "
                          "training example; nothing is cut)", {"model.max_seq_length": longest}, continues_run=False))
    if bs == 1 and not four_bit:
        out.append(WayOut("the model itself does not fit at micro-batch 1: a 4-bit base (model.load_in_4bit: true; "
                          "NF4 weights take a quarter of 16-bit ones)", {"model.load_in_4bit": True},
                          continues_run=False))
    elif bs == 1:
        out.append(WayOut("the model does not fit at micro-batch 1 even on its 4-bit base: a smaller lora.r, fewer "
                          "lora.target_modules, or a smaller model", {}, continues_run=False))
    return out


def continue_command(run, overrides: dict[str, Any]) -> str:
    """The command line that continues `run` with `overrides` (its params.yaml, the changes as --set)."""
    return f"polo run {run.params_path} --run-id {run.id} " + " ".join(f"--set {k}={v}" for k, v in overrides.items())


def _out_of_memory(session: Session, error: BaseException) -> RunError:
    """The run's record and a RunError for an out-of-memory failure: the step, the memory figures,
    the ways out and the exact command that continues the run from its last checkpoint."""
    from .data import load_stats
    from .inference import free_memory

    cfg, run, state = session.cfg, session.run, session.trainer.state
    try:
        longest = load_stats(cfg.data)["token_lengths"]["train"]["max"]
    except (OSError, KeyError, ValueError):
        longest = None
    session.trainer.model.zero_grad(set_to_none=True)  # the gradients of the failed step
    free_memory()
    memory = device_lib.memory_in_use()
    ways = oom_ways_out(cfg.training, cfg.lora, cfg.model.max_seq_length, longest,
                        four_bit=model_lib.count_4bit_layers(session.lm.model) > 0)
    last = next((p.name for p in reversed(checkpoints(run)) if _valid_checkpoint(p)), None)
    follow = next((w for w in ways if w.continues_run), None)
    command = continue_command(run, follow.overrides) if follow else None
    record = {"step": state.global_step + 1, "error": f"{type(error).__name__}: {str(error)[:300]}",
              "memory": memory, "ways_out": [w.what for w in ways], "continue_from": last, "command": command}
    run.update_manifest(training={"status": "failed", "out_of_memory": record})
    figures = ", ".join(f"{k} {v}" for k, v in memory.items() if k != "device")
    lines = [f"out of memory ({memory['device']}) in training step {record['step']} of {state.max_steps} "
             f"({type(error).__name__}); memory in GiB: {figures}.", "Ways out:"]
    lines += [f"  - {w.what}" + (" (this run continues)" if w.continues_run else " (a new run)") for w in ways]
    if command:
        where = f"from {last}" if last else "from step 0 (no checkpoint was saved yet)"
        lines.append(f"Continue this run {where} with the first: {command}\n  (in a notebook: train.ipynb "
                     f"with run_id = '{run.id}' and overrides = {follow.overrides})")
    return RunError("\n".join(lines))


def finish(session: Session):
    """Save the adapter (+ tokenizer), optionally the merged 16-bit model, and plots/loss.png; the
    paths written, whole (notebook.readable)."""
    run, lm = session.run, session.lm
    lm.model.save_pretrained(str(run.adapter))
    lm.tokenizer.save_pretrained(str(run.adapter))
    saved = {"adapter": str(run.adapter)}
    if session.cfg.training.save_merged_16bit:
        merged = run.path / "merged_16bit"
        if model_lib.count_4bit_layers(lm.model):  # LoRA cannot be folded into NF4 weights in place
            merge_to_16bit(session.cfg, run, merged)
        else:
            lm.model.save_pretrained_merged(str(merged), lm.tokenizer, save_method="merged_16bit")
        saved["merged_16bit"] = str(merged)
    fig = plots.loss_curve(session.recorder.frame(), title=f"run {run.id}")
    saved["loss_plot"] = str(plots.save(fig, run.plots / "loss.png"))
    run.update_manifest(artifacts=saved)
    run.update_summary(training=session.result)
    return readable(pd.DataFrame([saved]).T.rename(columns={0: "path"}))  # each path whole


# ---------------------------------------------------------------- samples

def sample(lm, split, n: int = 3, max_new_tokens: int = 128, progress: str | None = "samples") -> pd.DataFrame:
    """Greedy generations for the first n examples of a split (id, original, reference, output),
    under a bar named `progress` (minutes on a busy CPU; None: no bar)."""
    from .inference import chats_of, generate

    rows = split.select(range(min(n, len(split))))
    outputs = generate(lm, chats_of(rows), max_new_tokens=max_new_tokens, progress=progress)
    return pd.DataFrame({"id": rows["id"], "original": rows["original"],
                         "reference": rows["simplified"], "output": [g.text for g in outputs]}).set_index("id")


def side_by_side(before: pd.DataFrame, after: pd.DataFrame | None = None):
    """The samples before training (and after, beside them) to read: every text whole, wrapped
    (notebook.readable; `.data` is the DataFrame)."""
    table = before.rename(columns={"output": "before training"})
    if after is not None:
        table["after training"] = after["output"]
    return readable(table)
