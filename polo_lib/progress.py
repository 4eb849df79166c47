"""Live progress of a run's long stages, in the terminal that started them.

A stage writes its state into `<run>/logs/progress.json` (training at every logged step,
evaluation at every generated batch); `watch` reads that file while the stage runs, in the
notebook's kernel or in this process alike, and shows it: on a terminal a bar per stage with
step / total, epoch, last train and eval loss, tokens/s and time left, and a line per evaluation
that stays in the scrollback; elsewhere (CI, a log file) plain lines at a steady rate.

In-process work that takes more than a few seconds shows a tqdm.auto bar (a widget in a notebook,
a bar on the terminal's stderr): GenerationBar for generating answers, counted in decoding steps so
that one batch (the samples before training, the task metrics at an evaluation) moves too.

Core layer: it imports only `atomic`, so train and evaluate can write and pipeline can watch.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from . import registry
from .atomic import atomic_write_json

FILE = "progress.json"
PLAIN_SECONDS = float(os.environ.get("POLO_PROGRESS_SECONDS", "15"))  # a plain line at most this often


def write(folder: Path | None, **state: Any) -> None:
    """Replace the progress of the stage running in `folder` (a run's logs/); None: not in a run."""
    if folder is not None:
        atomic_write_json(Path(folder) / FILE, {**state, "updated": time.time()})


def generation_to(folder: Path | None, stage: str, phase: str):
    """An `on_batch` for inference.generate that writes a generating stage's progress into `folder` (answers
    done, new tokens, tokens/s): what `polo run` shows while the stage's notebook generates."""
    def on_batch(done: int, total: int, tokens: int, seconds: float) -> None:
        write(folder, stage=stage, phase=phase, done=done, total=total, tokens=tokens,
              tokens_per_s=round(tokens / seconds, 1) if seconds else None, elapsed_s=round(seconds, 1))
    return on_batch


def read(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(folder) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # not written yet, or replaced while read
        return None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe(state: dict[str, Any]) -> str:
    """The figures after the bar: epoch, losses and speed (training), or the model and speed (evaluation)."""
    if state.get("stage") == "train":
        return (f"epoch {_number(state.get('epoch'), 2)}  loss {_number(state.get('loss'))}  "
                f"eval_loss {_number(state.get('eval_loss'))}  {_number(state.get('tokens_per_s'), 0)} tok/s")
    if state.get("stage") == "align" and state.get("margin") is not None:  # DPO: chosen over rejected
        return (f"margin {_number(state['margin'])}  chosen preferred {_number(state.get('accuracy'), 2)}  "
                f"loss {_number(state.get('loss'))}")
    if state.get("stage") == "align" and not state.get("phase"):  # each reward component, then the KL to SFT
        parts = state.get("rewards") or {}
        shown = "  ".join(f"{k} {_number(v, 2)}" for k, v in parts.items())
        return (f"reward {_number(state.get('reward'))}  {shown}  kl {_number(state.get('kl'))}  "
                f"answer tokens {_number(state.get('completion_length'), 0)}").replace("    ", "  ")
    return f"{state.get('phase', '')}  {state.get('tokens', 0)} tokens  {_number(state.get('tokens_per_s'), 1)} tok/s"


class GenerationBar:
    """A bar over the decoding steps of generating `answers` answers, `batch_size` at a time, at most
    `max_new_tokens` steps a batch: it moves at every step (a stopping criterion of model.generate
    that never stops anything), so a single batch of a few minutes shows counts and time left. A
    batch whose answers all end early moves the bar to that batch's end, so the time left is an upper
    bound. `desc` None: no bar (the server's batches, the chat's answers)."""

    def __init__(self, desc: str | None, answers: int, batch_size: int, max_new_tokens: int,
                 file: TextIO | None = None):
        from tqdm.auto import tqdm

        self.answers, self.max_new_tokens = answers, max_new_tokens
        self.steps_before = 0  # the bar's position at the start of the batch running now
        self.bar = tqdm(total=self._steps(answers, batch_size), desc=desc, unit="token", file=file,
                        disable=desc is None, postfix=f"answers 0/{answers}")

    def _steps(self, answers: int, batch_size: int) -> int:
        return -(-answers // max(1, batch_size)) * self.max_new_tokens

    def __call__(self, input_ids, scores=None, **kwargs):
        """One decoding step done (transformers' StoppingCriteria: no row stops here)."""
        import torch

        if self.bar.n < self.steps_before + self.max_new_tokens:
            self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def batch_done(self, answered: int, left: int, batch_size: int) -> None:
        """A batch ended: `answered` answers so far, `left` still to write `batch_size` at a time
        (smaller than asked after running out of memory)."""
        self.steps_before = self.bar.n = self.steps_before + self.max_new_tokens
        self.bar.total = self.bar.n + self._steps(left, batch_size)
        self.bar.set_postfix_str(f"answers {answered}/{self.answers}", refresh=False)
        self.bar.refresh()

    def retry(self, batch_size: int, left: int) -> None:
        """The batch ran out of memory: it starts again, smaller; the steps it made count no more."""
        self.bar.n = self.steps_before
        self.bar.total = self.steps_before + self._steps(left, batch_size)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class View:
    """Shows successive progress states of one stage on `stream`: a tqdm bar on a terminal,
    plain lines at most every `interval` seconds elsewhere; evaluations as lines of their own."""

    def __init__(self, stream: TextIO | None = None, interval: float = PLAIN_SECONDS, tty: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.bar = None
        self.key = None  # (stage, phase): a new one starts a new bar
        self.started = time.perf_counter()
        # None: no plain line yet, so the first state prints at once. Not 0.0: perf_counter counts
        # from an arbitrary origin (boot, on Linux), and a machine up for less than `interval`
        # seconds (a fresh Colab runtime or CI machine) would never print the first line.
        self.last_line: float | None = None
        self.last_eval = None
        self.state: dict[str, Any] = {}
        self.printed: dict[str, Any] | None = None  # the state the last plain line showed

    def _elapsed(self) -> float:
        """Seconds the phase has run: the writer's own count when it gives one (`elapsed_s`, as of the state's
        `updated`), since its first report comes only after a batch of work; else since this view saw it start."""
        if self.state.get("elapsed_s") is not None:
            since = time.time() - self.state["updated"] if self.state.get("updated") else 0.0
            return self.state["elapsed_s"] + max(0.0, since)
        return time.perf_counter() - self.started

    def _left(self, done: int, total: int) -> float | None:
        return self._elapsed() / done * (total - done) if done and total else None

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, state: dict[str, Any]) -> None:
        key = (state.get("stage"), state.get("phase"))
        if key != self.key:
            self.close()
            self.key, self.started, self.last_line = key, time.perf_counter(), None
        done, total = int(state.get("done") or 0), int(state.get("total") or 0)
        evaluation = (state.get("eval_step"), state.get("eval_loss"))
        if evaluation[1] is not None and evaluation != self.last_eval:
            self.last_eval = evaluation
            task = "".join(f", {m.label} {_number(state[m.log_key], 3)}" for m in registry.during_training()
                           if state.get(m.log_key) is not None)
            if state.get("eval_task_seconds") is not None:
                task += f" (scored in {state['eval_task_seconds']:.1f} s)"
            self._say(f"  eval at step {evaluation[0]}/{total}: eval_loss {_number(evaluation[1], 4)}{task}")
        self.state = state
        if self.tty:
            self._draw_bar(state, done, total)
        elif self.last_line is None or time.perf_counter() - self.last_line >= self.interval or (
                total and done >= total and (self.printed or {}).get("done") != done):
            self.line()

    def _draw_bar(self, state: dict[str, Any], done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            unit = "step" if state.get("stage") in ("train", "align") else "example"
            # the terminal's size, 100 x 20 where it reports none (a pty without a size: tqdm draws nothing)
            size = shutil.get_terminal_size((100, 20))
            self.bar = tqdm(total=total or None, desc=f"  {state.get('stage')}", unit=unit, file=self.stream,
                            ncols=size.columns or 100, nrows=size.lines or 20, initial=done, leave=True)
        self.bar.n = done
        self.bar.set_postfix_str(describe(state), refresh=False)
        self.bar.refresh()

    def line(self) -> None:
        """One plain line of the last state: stage, done/total, figures, elapsed and time left."""
        s = self.state
        if not s:
            return
        done, total = int(s.get("done") or 0), int(s.get("total") or 0)
        share = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"  {s.get('stage')} {done}/{total or '?'}{share}  {describe(s)}  "
              f"elapsed {_clock(self._elapsed())}  left {_clock(self._left(done, total))}",
              file=self.stream, flush=True)
        self.last_line, self.printed = time.perf_counter(), s

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.state and not self.tty and self.printed is not self.state:
            self.line()  # the last state, so the log ends where the stage ended
        self.state = {}


@contextmanager
def watch(folder: Path, stream: TextIO | None = None, poll: float = 0.5, **view: Any) -> Iterator[View]:
    """Show the progress a stage writes into `folder` while the block runs (a thread polls it)."""
    shown = View(stream, **view)
    stop = threading.Event()
    seen = {"updated": read(folder).get("updated") if read(folder) else None}

    def loop() -> None:
        while not stop.wait(poll):
            state = read(folder)
            if state and state.get("updated") != seen["updated"]:
                seen["updated"] = state.get("updated")
                shown.update(state)

    thread = threading.Thread(target=loop, name="polo-progress", daemon=True)
    thread.start()
    try:
        yield shown
    finally:
        stop.set()
        thread.join()
        state = read(folder)
        if state and state.get("updated") != seen["updated"]:
            shown.update(state)
        shown.close()
