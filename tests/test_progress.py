"""The live view of long stages: fed from the progress file a stage writes, a bar on a terminal,
plain lines at a steady rate elsewhere, and a line per evaluation that stays in the scrollback."""
import io
import threading
import time

from polo_lib import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def train_states(total=10):
    for step in range(1, total + 1):
        yield {"stage": "train", "done": step, "total": total, "epoch": step / 5, "loss": 3.0 - step / 10,
               "tokens_per_s": 400.0, **({"eval_loss": 2.5 - step / 20, "eval_step": step} if step % 5 == 0 else {})}


def test_plain_lines_come_at_a_steady_rate_with_the_figures_and_time_left():
    out = io.StringIO()
    view = progress.View(out, interval=3600)  # one line now, then only evaluations and the end
    for state in train_states():
        view.update(state)
    view.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  train 1/10 (10%)  epoch 0.20  loss 2.900  eval_loss -  400 tok/s  elapsed ")
    assert "left " in lines[0]
    assert [line for line in lines if "eval at step" in line] == [
        "  eval at step 5/10: eval_loss 2.2500", "  eval at step 10/10: eval_loss 2.0000"]
    assert lines[-1].startswith("  train 10/10 (100%)") and "loss 2.000  eval_loss 2.000" in lines[-1]
    assert len(lines) == 4  # the first state, two evaluations, the end: not one line per step


def test_the_first_line_prints_at_once_on_a_freshly_booted_machine(monkeypatch):
    """perf_counter counts from an arbitrary origin (the boot, on Linux): a machine up for 2 s
    (a new Colab runtime, a fresh CI machine) must still show the first state at once, not only
    after `interval` seconds of uptime. The clock here starts at 2 s and moves 0.1 s a call."""
    now = iter(2.0 + 0.1 * i for i in range(1000))
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(now))
    out = io.StringIO()
    view = progress.View(out, interval=60)
    view.update(next(train_states()))
    assert out.getvalue().startswith("  train 1/10 (10%)  epoch 0.20  loss 2.900")
    view.update({"stage": "evaluate", "phase": "base model", "done": 1, "total": 6, "tokens": 10})
    assert "evaluate 1/6" in out.getvalue()  # a new stage starts its lines afresh, at once too


def test_every_state_is_a_line_when_the_interval_has_passed():
    out = io.StringIO()
    view = progress.View(out, interval=0)
    for state in train_states(4):
        view.update(state)
    view.close()
    assert [line.split("  epoch")[0] for line in out.getvalue().splitlines()] == [
        "  train 1/4 (25%)", "  train 2/4 (50%)", "  train 3/4 (75%)", "  train 4/4 (100%)"]


def test_a_terminal_gets_a_bar_with_step_loss_and_time_left():
    out = Terminal()
    view = progress.View(out)
    for state in train_states():
        view.update(state)
    view.close()
    text = out.getvalue()
    assert "\r" in text and "10/10" in text and "loss 2.000" in text and "eval_loss 2.000" in text
    assert "<00:00" in text  # tqdm's elapsed<left
    assert "  eval at step 5/10: eval_loss 2.2500\n" in text  # a line of its own, not overwritten


def test_generation_progress_names_the_model_and_speed():
    out = io.StringIO()
    view = progress.View(out, interval=0)
    view.update({"stage": "evaluate", "phase": "base model", "done": 4, "total": 6, "tokens": 310,
                 "tokens_per_s": 52.5})
    view.update({"stage": "evaluate", "phase": "tuned model", "done": 6, "total": 6, "tokens": 400,
                 "tokens_per_s": 60.0})
    view.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  evaluate 4/6 (67%)  base model  310 tokens  52.5 tok/s")
    assert lines[1].startswith("  evaluate 6/6 (100%)  tuned model  400 tokens  60.0 tok/s")


def test_a_phase_first_seen_after_a_batch_counts_its_time_from_the_writers_own_clock(tmp_path):
    """Sampling 96 answers 24 at a time: the first report comes after the first batch's 82 s. The line says
    82 s elapsed and 3 more batches left, not "elapsed 0:00 left 0:00" (the view saw the phase start only then)."""
    report = progress.generation_to(tmp_path, "align", "sampling pairs")
    report(24, 96, 4608, 82.0)
    out = io.StringIO()
    view = progress.View(out, interval=0)
    view.update(progress.read(tmp_path))
    assert out.getvalue().startswith("  align 24/96 (25%)  sampling pairs  4608 tokens  56.2 tok/s  elapsed 1:22  "
                                     "left 4:06"), out.getvalue()


def test_watch_follows_the_file_a_stage_writes_from_another_process_or_thread(tmp_path):
    out = io.StringIO()

    def stage():
        for state in train_states(6):
            progress.write(tmp_path, **state)
            time.sleep(0.05)

    with progress.watch(tmp_path, out, poll=0.01, interval=0):
        writer = threading.Thread(target=stage)
        writer.start()
        writer.join()
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("  train 6/6 (100%)")  # the final state is always shown
    assert any("eval at step 5/6" in line for line in lines)


def test_one_batch_of_answers_moves_the_bar_at_every_decoding_step(tiny_model_dir, monkeypatch, capsys):
    """The samples before training and the task metrics at an evaluation are one batch each, minutes
    on a busy CPU: the bar counts decoding steps (with the answers done and time left), not answers,
    which would sit at 0 until the batch ends."""
    from functools import partialmethod

    import tqdm.std

    from polo_lib import inference, params, prompts

    # every step drawn, however fast (TQDM_MININTERVAL does not reach tqdm.auto's asyncio class)
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", partialmethod(tqdm.std.tqdm.__init__, mininterval=0))
    lm = inference.load_base(params.load("smoke"))
    capsys.readouterr()
    inference.generate(lm, [prompts.build_messages("YOLO divides the image into a grid.")] * 2, max_new_tokens=12,
                       progress="before training")
    drawn = capsys.readouterr().err.split("\r")
    assert any(d.startswith("before training:   8%") and " 1/12 [" in d and "answers 0/2" in d for d in drawn), drawn
    assert " 12/12 [" in drawn[-1] and "answers 2/2" in drawn[-1]


def test_the_bar_of_several_batches_ends_each_batch_at_its_share_and_restarts_a_smaller_one():
    """3 batches of 2 (6 answers, at most 4 tokens each): an early end jumps to the batch's share;
    running out of memory drops the failed batch's steps and sizes the rest at the smaller batch."""
    import torch

    bar = progress.GenerationBar("answers", answers=6, batch_size=2, max_new_tokens=4, file=io.StringIO())
    ids = torch.zeros((2, 7), dtype=torch.long)
    assert bar.bar.total == 12
    for _ in range(2):
        assert bar(ids).tolist() == [False, False]  # counts, never stops a row
    assert bar.bar.n == 2
    bar.batch_done(answered=2, left=4, batch_size=2)  # both answers ended at step 2
    assert (bar.bar.n, bar.bar.total) == (4, 12)
    bar(ids)
    bar.retry(batch_size=1, left=4)  # out of memory: the rest one at a time
    assert (bar.bar.n, bar.bar.total) == (4, 20)
    bar.close()
