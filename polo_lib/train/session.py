"""The trainer session: SFTConfig from the params, build (the checks, then SFTTrainer), fit and finish."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import device as device_lib
from .. import model as model_lib
from .. import plots, task_eval, trackers
from ..errors import DataError, ModelError
from ..inference import merge_to_16bit
from ..notebook import in_notebook, readable
from ..unsloth_first import without_lines
from .log import _best_eval_loss, _LogRecorder, _task_figures, figures_table
from .markers import Markers, check_labels, derive_markers, label_counts
from .oom import _out_of_memory
from .resume import _quiet_checkpoint_ordering, relocate_checkpoint, resolve_resume
from .schedule import Plan, plan

# What Unsloth's train_on_responses_only prints for each split (see build)
DROPPING_COLUMNS = "Unsloth: Dropping columns the model is not fed"


@dataclass(frozen=True)
class Ready:
    """What the checks before loading found (`check_before_loading`), for the load and `build` to use: the
    schedule, the checkpoint training resumes from (None: a fresh start), the memory estimate, and the
    machine as described once for this stage (`model.load(cfg, ready.device)`)."""
    schedule: Plan
    resume_from: Path | None
    memory: Any
    device: Any = None

    def table(self) -> pd.DataFrame:
        rows = [*self.schedule.table().reset_index().itertuples(index=False, name=None),
                ("resume from", str(self.resume_from.name) if self.resume_from else "fresh start"),
                ("memory needed / free", self.memory.needed_free())]
        return pd.DataFrame(rows, columns=["check", "value"]).set_index("check")

    def __repr__(self) -> str:
        return self.table().to_string()

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def check_before_loading(cfg, dataset, run, device=None) -> Ready:
    """Every check that needs no model, in one place, before minutes are spent loading one: the trackers'
    packages, the schedule (plan().check()), the checkpoint to resume from, the memory estimate. Raises
    naming what to change; `build` takes the result (and runs it itself when given none)."""
    trackers.check(cfg.training.report_to)
    schedule = plan(cfg.training, len(dataset["train"]), cfg.overridden).check()
    resume_from = resolve_resume(run, cfg.run.resume)
    device = device_lib.as_device(device)  # described once here; the load takes it
    memory = model_lib.check_memory(model_lib.estimate_memory(cfg, device), enabled=cfg.model.memory_check)
    return Ready(schedule, resume_from, memory, device)


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


def build(lm, dataset, cfg, run, ready: Ready | None = None, live: bool | None = None,
          callbacks: list | None = None) -> Session:
    """SFTTrainer on the train split, evaluated on validation, loss on answers only.

    `ready`: what check_before_loading found (run here when not given). Fails before training when
    the chat markers are missing or when any example would keep no answer token.
    """
    from trl import SFTTrainer
    from unsloth.chat_templates import train_on_responses_only

    decisions = lm.decisions or device_lib.decide_for(cfg)  # the load's own: decided once
    ready = ready or check_before_loading(cfg, dataset, run)
    resume_from, schedule = ready.resume_from, ready.schedule
    if resume_from is not None and resume_from.resolve().parent == run.checkpoints.resolve():  # this run's own
        relocate_checkpoint(resume_from, run.checkpoints)
    markers = derive_markers(lm.tokenizer)
    train_ds, eval_ds = dataset["train"], dataset["validation"]
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


def finish(session: Session):
    """Save the adapter (+ tokenizer), optionally the merged 16-bit model, and plots/loss.png; the
    paths written, whole (notebook.readable)."""
    run, lm = session.run, session.lm
    lm.model.save_pretrained(str(run.sft_adapter))
    lm.tokenizer.save_pretrained(str(run.sft_adapter))
    saved = {"adapter": str(run.sft_adapter)}
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
