"""Supervised fine-tuning with TRL's SFTTrainer (patched by Unsloth), on the answers only.

The pieces a notebook calls, in order: `build(lm, dataset, cfg, run)` derives the chat
markers, checks every example keeps answer tokens and returns a `Session`; `sample` shows
generations; `fit(session)` trains (live loss chart, CSV + TensorBoard logs, checkpoints,
early stopping, resume); `finish(session)` saves the adapter and the loss plot. The names
below are the package's: `from polo_lib import train; train.build(...)`.

  markers    the chat markers read off the tokenizer's template; every example keeps answer tokens
  schedule   Plan: steps, evaluation and save cadence, warmup and early stopping (plan, resolve_warmup)
  resume     a run's checkpoints, which to resume from, a moved run's best one found again; mtime noise quiet
  log        train_log.csv, the live chart and the progress file; the headline figures read from the log
  oom        out of memory in training: the ways out and the command that continues the run
  session    SFTConfig, build (the checks, then SFTTrainer), fit and finish; Session
  samples    greedy generations before and after training, side by side
"""
from .log import LOG_COLUMNS, TIME_FIGURES, _best_eval_loss, _LogRecorder, _task_figures, figures_table, read_train_log  # noqa: F401
from .markers import _SENTINELS, Markers, check_labels, derive_markers, label_counts  # noqa: F401
from .oom import WayOut, _out_of_memory, continue_command, oom_ways_out, smaller_micro_batch  # noqa: F401
from .resume import (  # noqa: F401
    _MTIME_NOISE,
    _quiet_checkpoint_ordering,
    _valid_checkpoint,
    _WithoutMessage,
    checkpoints,
    relocate_checkpoint,
    relocated,
    resolve_resume,
)
from .samples import sample, side_by_side  # noqa: F401
from .schedule import CADENCE_KEYS, LENGTH_KEYS, PATIENCE_KEY, SHORT_RUN_STEPS, Plan, plan, resolve_warmup  # noqa: F401
from .session import (  # noqa: F401
    DROPPING_COLUMNS,
    Ready,
    Session,
    _callbacks,
    _precision_name,
    build,
    check_before_loading,
    check_trainer,
    finish,
    fit,
    sft_config,
)
